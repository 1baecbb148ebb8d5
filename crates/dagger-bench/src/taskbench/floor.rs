//! `floor`: what this machine allows a message-bound stencil across two processes, without
//! any runtime: the bound that dagger's cross-process METG is measured against.
//!
//! Two processes (this binary and a copy of it) run Task Bench's `stencil_1d` of width 4,
//! two columns each, with the `compute_bound` kernel: every timestep each process runs its
//! two tasks and sends the other the value its border column made (16 bytes over a Unix
//! socket), then reads the other's with a blocking read: one thread per process, like an MPI
//! rank. Two orders:
//!
//! * `border-first`: the border column runs first and its value is sent before the inner
//!   column runs, so the message travels while the receiver computes (what MPI codes do);
//! * `border-last`: both columns run, then the exchange: nothing hides its latency.
//!
//! and two ways to receive: `direct` (the computing thread reads the socket) and `hand-off`
//! (another thread of the process reads it and hands the value over through a mutex and
//! condition variable, as dagger's I/O thread hands messages to its compute threads).
//!
//! The sweep is `taskbench metg`'s: `-iter` halves from 262 144 until the efficiency (FLOP/s
//! against the first point) drops below 25 %; granularity = elapsed × 2 threads / tasks;
//! METG(50 %) is reported like `taskbench metg` does. `--runs R`: best of R runs per point
//! (default 7); `--n N`: timesteps per run (default 1000).

use super::kernel::{Kernel, KernelType};
use super::{metg_fields, peak_rate, relative_to_peak, sweep_fields, MetgPoint};
use crate::json::Line;
use crate::Config;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command};
use std::time::Instant;

/// Set in the copy of this binary that plays the other process: the socket to connect to.
const PEER_VAR: &str = "DAGGER_BENCH_FLOOR_PEER";
const START_ITER: i64 = 1 << 18;

/// In the peer process: serves the sweep and exits. Returns normally only when this
/// process is not a peer.
pub fn serve_if_peer() {
    let Ok(path) = std::env::var(PEER_VAR) else {
        return;
    };
    let code = match peer(&path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("dagger-bench floor peer: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// One command to both processes: run `steps` timesteps of `iterations` per task.
#[derive(Clone, Copy)]
struct Command16 {
    iterations: i64,
    steps: u32,
    border_first: bool,
    hand_off: bool,
}

impl Command16 {
    fn encode(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.iterations.to_le_bytes());
        b[8..12].copy_from_slice(&self.steps.to_le_bytes());
        b[12] = self.border_first as u8;
        b[13] = self.hand_off as u8;
        b
    }

    fn decode(b: &[u8; 16]) -> Command16 {
        Command16 {
            iterations: i64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            steps: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            border_first: b[12] != 0,
            hand_off: b[13] != 0,
        }
    }
}

fn peer(path: &str) -> std::io::Result<()> {
    let mut s = UnixStream::connect(path)?;
    let mut cmd = [0u8; 16];
    loop {
        match s.read_exact(&mut cmd) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        steps(&mut s, Command16::decode(&cmd))?;
    }
}

/// Runs the timesteps of `cmd` on this process's two columns.
fn steps(s: &mut UnixStream, cmd: Command16) -> std::io::Result<f64> {
    let kernel = Kernel {
        kind: KernelType::ComputeBound,
        iterations: cmd.iterations,
        ..Kernel::default()
    };
    let value = [0u8; 16];
    let mut receive = Receive::new(s, cmd)?;
    let mut sum = 0.0;
    for t in 0..cmd.steps as i64 {
        if cmd.border_first {
            sum += kernel.execute(0, t, 1, &mut []);
            s.write_all(&value)?;
            sum += kernel.execute(0, t, 0, &mut []);
        } else {
            sum += kernel.execute(0, t, 0, &mut []);
            sum += kernel.execute(0, t, 1, &mut []);
            s.write_all(&value)?;
        }
        receive.next(s)?;
    }
    receive.finish()?;
    Ok(sum)
}

/// How the other process's values reach the computing thread.
enum Receive {
    /// It reads them itself.
    Direct,
    /// A reader thread reads them and counts them here.
    HandOff {
        arrived: std::sync::Arc<(std::sync::Mutex<u32>, std::sync::Condvar)>,
        taken: u32,
        reader: std::thread::JoinHandle<std::io::Result<()>>,
    },
}

impl Receive {
    fn new(s: &UnixStream, cmd: Command16) -> std::io::Result<Receive> {
        if !cmd.hand_off {
            return Ok(Receive::Direct);
        }
        let mut r = s.try_clone()?;
        let arrived = std::sync::Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
        let counted = arrived.clone();
        let reader = std::thread::spawn(move || {
            let mut value = [0u8; 16];
            for _ in 0..cmd.steps {
                r.read_exact(&mut value)?;
                *counted.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                counted.1.notify_one();
            }
            Ok(())
        });
        Ok(Receive::HandOff {
            arrived,
            taken: 0,
            reader,
        })
    }

    /// Waits for the other process's next value.
    fn next(&mut self, s: &mut UnixStream) -> std::io::Result<()> {
        match self {
            Receive::Direct => s.read_exact(&mut [0u8; 16]),
            Receive::HandOff { arrived, taken, .. } => {
                *taken += 1;
                let (count, cv) = &**arrived;
                let mut n = count.lock().unwrap_or_else(|e| e.into_inner());
                while *n < *taken {
                    n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Receive::Direct => Ok(()),
            Receive::HandOff { reader, .. } => reader
                .join()
                .map_err(|_| std::io::Error::other("the reader thread panicked"))?,
        }
    }
}

/// The peer process, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(cfg: &Config) -> Result<(), String> {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
        move |e| format!("floor: {what}: {e}")
    }
    let path = std::env::temp_dir().join(format!("dagger-bench-floor-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io("listen"))?;
    let exe = std::env::current_exe().map_err(io("find this binary"))?;
    let child = Command::new(exe)
        .env(PEER_VAR, &path)
        .spawn()
        .map_err(io("start the peer process"))?;
    let mut peer = Peer(child);
    let accepted = accept_peer(&listener, &mut peer);
    let _ = std::fs::remove_file(&path);
    let mut s = accepted?;
    let steps = cfg.n.unwrap_or(1000) as u32;
    let mut run = |iterations: i64, border_first: bool, hand_off: bool| -> Result<f64, String> {
        let cmd = Command16 {
            iterations,
            steps,
            border_first,
            hand_off,
        };
        let start = Instant::now();
        s.write_all(&cmd.encode()).map_err(io("command the peer"))?;
        steps_checked(&mut s, cmd)?;
        Ok(start.elapsed().as_secs_f64())
    };
    // Warm-up: both processes' caches and frequencies.
    run(1024, true, false)?;
    for (border_first, hand_off) in [(true, false), (false, false), (true, true), (false, true)] {
        sweep(cfg, steps, border_first, hand_off, &mut run)?;
    }
    Ok(())
}

/// The peer's connection, or why it did not come within 30 s.
fn accept_peer(listener: &UnixListener, peer: &mut Peer) -> Result<UnixStream, String> {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("floor: listen: {e}"))?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("floor: accept the peer: {e}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("floor: accept the peer: {e}")),
        }
        if let Ok(Some(status)) = peer.0.try_wait() {
            return Err(format!(
                "floor: the peer process exited ({status}) before connecting"
            ));
        }
        if Instant::now() > deadline {
            return Err("floor: the peer process did not connect within 30 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn steps_checked(s: &mut UnixStream, cmd: Command16) -> Result<(), String> {
    steps(s, cmd)
        .map(|sum| {
            std::hint::black_box(sum);
        })
        .map_err(|e| format!("floor: exchanging values with the peer: {e}"))
}

fn sweep(
    cfg: &Config,
    steps: u32,
    border_first: bool,
    hand_off: bool,
    run: &mut impl FnMut(i64, bool, bool) -> Result<f64, String>,
) -> Result<(), String> {
    let tasks = 4.0 * steps as f64;
    let flops = |iterations: i64| (2 * 64 * iterations + 64) as f64 * tasks;
    let mut points: Vec<MetgPoint> = Vec::new();
    let mut iter = START_ITER;
    loop {
        let mut best = f64::INFINITY;
        for _ in 0..cfg.runs {
            best = best.min(run(iter, border_first, hand_off)?);
        }
        let rate = flops(iter) / best;
        let peak = peak_rate(&points, rate);
        let p = MetgPoint {
            iter,
            seconds: best,
            granularity_us: best * 2.0 / tasks * 1e6,
            rate,
            efficiency: rate / peak,
        };
        points.push(p);
        if p.efficiency < 0.25 || iter == 1 {
            break;
        }
        iter /= 2;
    }
    relative_to_peak(&mut points);
    let order = if border_first {
        "border-first"
    } else {
        "border-last"
    };
    let line = Line::new("taskbench-floor", "two-processes")
        .str("order", order)
        .str("receive", if hand_off { "hand-off" } else { "direct" })
        .str("type", "stencil_1d")
        .int("width", 4)
        .int("steps", steps as u64)
        .str("kernel", "compute_bound")
        .int("threads", 2)
        .int("workers", 0);
    sweep_fields(metg_fields(line, &points), &points, cfg.runs).print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for (iterations, steps, border_first, hand_off) in
            [(0, 0, false, true), (1 << 18, 1000, true, false)]
        {
            let c = Command16::decode(
                &Command16 {
                    iterations,
                    steps,
                    border_first,
                    hand_off,
                }
                .encode(),
            );
            assert_eq!(
                (c.iterations, c.steps, c.border_first, c.hand_off),
                (iterations, steps, border_first, hand_off)
            );
        }
    }

    /// Every order and way of receiving exchanges one value per timestep, and both sides
    /// end together.
    #[test]
    fn both_orders_exchange_one_value_per_step() {
        for (border_first, hand_off) in [(true, false), (false, false), (true, true), (false, true)]
        {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            let cmd = Command16 {
                iterations: 4,
                steps: 50,
                border_first,
                hand_off,
            };
            let other = std::thread::spawn(move || steps(&mut b, cmd).unwrap());
            let mine = steps(&mut a, cmd).unwrap();
            assert_eq!(mine, other.join().unwrap(), "the same work on both sides");
            // The other side is gone (its socket dropped): nothing was left unread.
            assert!(matches!(a.read(&mut [0u8; 1]), Ok(0)), "nothing left over");
        }
    }
}
