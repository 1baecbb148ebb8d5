//! Security of clusters against real worker processes on 127.0.0.1: processes without the
//! cluster secret or with another binary's registry are refused, malformed bytes on any
//! listener close that one connection and nothing else, TLS clusters work and refuse plain
//! connections, and the secret never shows on a worker's command line.
//!
//! Worker processes are started from this same test binary (`init_before_main!`). Every
//! wait for another process is bounded; every process started here is killed on drop.

use dagger::prelude::*;
use dagger::remote::functions::table;
use dagger::{ClusterOptions, Context, LaunchSpec, Secret, WorkerId, WorkerInfo};
use dagger_net::auth::PROTOCOL_VERSION;
use dagger_net::frame::encode_header;
use dagger_net::{Hello, NetConfig, NetError, Role, TlsConfig, TlsIdentity};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;

dagger::init_before_main!();

#[dagger::task]
fn whoami() -> (u32, u32) {
    (dagger::current_processor().worker.0, std::process::id())
}

#[dagger::task]
fn make(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[dagger::task]
fn total(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

/// One point of a stencil step (see `common::spawn_stencil`).
#[dagger::task]
fn mix(seed: u64, inputs: Vec<&u64>) -> u64 {
    common::mix_values(seed, inputs.into_iter().copied())
}

/// How long any one wait for another process may take.
const WAIT: Duration = Duration::from_secs(30);

/// A peer must close a connection that sent it bad bytes well within this; it is below the
/// listeners' handshake timeout (10 s), so a close in time is caused by the bytes sent and
/// not by the timeout that ends silent connections.
const CLOSE_WITHIN: Duration = Duration::from_secs(8);

fn cluster(opts: ClusterOptions, workers: usize) -> Context {
    Context::builder()
        .threads(2)
        .cluster(opts.launch(LaunchSpec::Local {
            workers,
            threads: 1,
        }))
        .build()
        .expect("the cluster starts")
}

/// Waits (bounded) for a task and returns its value.
fn get<T: Clone + Send + Sync + 'static>(task: &DTask<T>, what: &str) -> T {
    let deadline = Instant::now() + WAIT;
    while !task.is_ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    task.fetch()
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Every worker of `ctx` runs tasks, and values move between every ordered pair of workers.
fn assert_cluster_works(ctx: &Context) {
    let workers = ctx.workers();
    assert!(!workers.is_empty(), "the cluster has workers");
    ctx.enter(|| {
        for w in &workers {
            let t = spawn!(whoami(); scope = Scope::worker(w.id));
            assert_eq!(
                get(&t, &format!("a task on worker {}", w.id.0)),
                (w.id.0, w.pid),
                "the task ran in worker {}'s process",
                w.id.0
            );
        }
        for a in &workers {
            for b in &workers {
                if a.id != b.id {
                    assert_moves(a, b);
                }
            }
        }
    });
}

/// A value made on worker `from` is used by a task on worker `to` (call inside `enter`).
fn assert_moves(from: &WorkerInfo, to: &WorkerInfo) {
    let n = 1000 + 17 * u64::from(from.id.0) + u64::from(to.id.0);
    let data = spawn!(make(n); scope = Scope::worker(from.id));
    let sum = spawn!(total(&data); scope = Scope::worker(to.id));
    assert_eq!(
        get(
            &sum,
            &format!(
                "moving a value from worker {} to worker {}",
                from.id.0, to.id.0
            )
        ),
        n * (n - 1) / 2
    );
}

fn head_addr(ctx: &Context) -> String {
    ctx.cluster_addr()
        .expect("the context is the head of a cluster")
}

fn registry_hash() -> u64 {
    table().hash()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A client of `dagger_net`: the result of connecting to `addr` with `config` and `hello`.
fn net_connect(addr: &str, config: &NetConfig, hello: Hello) -> Result<(), NetError> {
    let config = config
        .clone()
        .with_connect_timeout(Duration::from_secs(10))
        .with_handshake_timeout(Duration::from_secs(10));
    runtime().block_on(async {
        let (mut conn, _) = dagger_net::connect(addr, &config, hello).await?;
        let _ = conn.close().await;
        Ok(())
    })
}

/// A child process killed (and reaped) when dropped.
struct Proc(Child);

impl Proc {
    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {WAIT:?}",
                self.0.id()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary as worker `id` of the head at `head`, knowing `secret`, the way
/// a launcher would (environment only; its arguments match no test, in case it does not
/// become a worker).
fn start_worker(head: &str, id: u32, secret: &Secret) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
    cmd.args(["--exact", "no_such_test_a_worker_runs_no_tests"]);
    for var in [
        "DAGGER_SECRET_FILE",
        "DAGGER_SECRET_STDIN",
        "DAGGER_TLS_FINGERPRINT",
        "DAGGER_BIND",
        "DAGGER_WORKERS",
        "DAGGER_HOSTS",
        "DAGGER_LAUNCHER",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("DAGGER_ROLE", "worker")
        .env("DAGGER_HEAD", head)
        .env("DAGGER_WORKER_ID", id.to_string())
        .env("DAGGER_THREADS", "1")
        .env("DAGGER_SECRET", secret.to_hex())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Proc(cmd.spawn().expect("the worker process starts"))
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused() {
    let secret = Secret::generate().unwrap();
    let ctx = cluster(ClusterOptions::new().secret(secret.clone()), 1);
    let before = ctx.workers();
    let head = head_addr(&ctx);

    let wrong = Secret::generate().unwrap();
    assert_ne!(wrong, secret);
    let mut intruder = start_worker(&head, 7, &wrong);
    let pid = intruder.0.id();
    let status = intruder.wait_exit();
    let stderr = intruder.stderr();
    assert!(
        !status.success(),
        "the refused worker exits with an error: {status}"
    );
    assert!(
        stderr.contains("authentication failed"),
        "the refused worker says why: {stderr:?}"
    );
    assert!(!stderr.contains(&wrong.to_hex()) && !stderr.contains(&secret.to_hex()));

    let after = ctx.workers();
    assert_eq!(after, before, "the refused worker never joined");
    assert!(after.iter().all(|w| w.pid != pid && w.id != WorkerId(7)));
    assert_cluster_works(&ctx);

    // The same start with the right secret joins: only the secret made the difference.
    let mut good = start_worker(&head, 8, &secret);
    let good_pid = good.0.id();
    let deadline = Instant::now() + WAIT;
    while !ctx.workers().iter().any(|w| w.id == WorkerId(8)) {
        if let Some(status) = good.0.try_wait().unwrap() {
            panic!(
                "the worker with the right secret exited ({status}): {}",
                good.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the worker with the right secret did not join"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let joined = ctx.workers();
    let w8 = joined.iter().find(|w| w.id == WorkerId(8)).unwrap();
    assert_eq!(w8.pid, good_pid);
    assert_cluster_works(&ctx);
    ctx.remove_workers(&[WorkerId(8)]).unwrap();
    assert!(good.wait_exit().success(), "a removed worker exits cleanly");
}

#[test]
fn a_process_with_another_registry_is_refused() {
    let secret = Secret::generate().unwrap();
    let ctx = cluster(ClusterOptions::new().secret(secret.clone()), 2);
    let before = ctx.workers();
    let mut targets = vec![("the head".to_string(), head_addr(&ctx))];
    targets.extend(
        before
            .iter()
            .map(|w| (format!("worker {}", w.id.0), w.addr.clone())),
    );
    let other_binary = registry_hash() ^ 0x5a5a_0123_4567_89ab;
    for (name, addr) in &targets {
        // Another binary: it knows the secret but registered other tasks.
        let err = net_connect(
            addr,
            &NetConfig::new(secret.clone()),
            Hello::new(Role::Worker, other_binary).with_peer_id(40),
        )
        .expect_err("a process of another binary is refused");
        assert!(
            matches!(err, NetError::RegistryMismatch { ours, theirs }
                if ours == other_binary && theirs == registry_hash()),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("different binary")
                && text
                    .contains("registered tasks or its dagger build (version and sources) differ"),
            "{name}: {text}"
        );
        // The same binary without the secret is refused as such.
        let err = net_connect(
            addr,
            &NetConfig::new(Secret::generate().unwrap()),
            Hello::new(Role::Worker, registry_hash()).with_peer_id(41),
        )
        .expect_err("a process without the secret is refused");
        assert!(matches!(err, NetError::AuthFailed), "{name}: {err:?}");
        assert!(
            err.to_string().contains("authentication failed"),
            "{name}: {err}"
        );
    }
    assert_eq!(ctx.workers(), before, "no refused process joined");
    assert_cluster_works(&ctx);
}

/// Bytes sent to a listener by a client that does not follow the protocol.
struct Attack {
    name: &'static str,
    bytes: Vec<u8>,
    /// Whether the client then closes its sending side (else it keeps the connection open
    /// and waits for the peer to close it).
    half_close: bool,
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = encode_header(payload.len(), false).to_vec();
    out.extend_from_slice(payload);
    out
}

/// A well-formed hello (see `dagger_net::auth`) of a worker of this binary.
fn hello_message() -> Vec<u8> {
    let mut h = Vec::with_capacity(56);
    h.extend_from_slice(b"DGNT");
    h.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    h.push(1); // worker
    h.push(1); // a peer id follows
    h.extend_from_slice(&33u64.to_be_bytes());
    h.extend_from_slice(&registry_hash().to_be_bytes());
    h.extend((0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    assert_eq!(h.len(), 56);
    h
}

fn pseudo_random(n: usize, mut state: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

fn attacks() -> Vec<Attack> {
    let hello = hello_message();
    let attack = |name, bytes, half_close| Attack {
        name,
        bytes,
        half_close,
    };
    vec![
        // (a) garbage
        attack(
            "garbage: an HTTP request",
            b"GET / HTTP/1.1\r\nHost: dagger\r\n\r\n".to_vec(),
            false,
        ),
        attack(
            "garbage: 4 KiB of random bytes",
            pseudo_random(4096, 0x9e37_79b9_7f4a_7c15),
            false,
        ),
        // (b) truncated frames, then the client closes
        attack(
            "a frame of 56 bytes cut after 20, then close",
            [&encode_header(56, false)[..], &hello[..20]].concat(),
            true,
        ),
        attack("half a frame header, then close", vec![0, 0], true),
        // (c) absurd lengths: the peer must not wait for (or allocate) them
        attack(
            "a frame header announcing 16 MiB",
            vec![0x00, 0xff, 0xff, 0xff, 1, 2, 3],
            false,
        ),
        attack(
            "a frame header announcing 1 MiB during the handshake",
            vec![0x00, 0x10, 0x00, 0x00, 1, 2, 3],
            false,
        ),
        attack("a frame header with every bit set", vec![0xff; 4], false),
        // (d) well-formed frames before authentication
        attack(
            "a well-formed message frame instead of a hello",
            frame(&[7, 0, 0, 0, 0, 0, 0, 0, 1]),
            false,
        ),
        attack(
            "a hello, then a message frame instead of the proof",
            [frame(&hello), frame(&[7, 0, 0, 0, 0, 0, 0, 0, 1])].concat(),
            false,
        ),
        attack(
            "a hello, then a wrong proof",
            [frame(&hello), frame(&[0u8; 32])].concat(),
            false,
        ),
        attack(
            "a hello, a wrong proof, then a message frame",
            [frame(&hello), frame(&[0u8; 32]), frame(&[7, 1])].concat(),
            false,
        ),
    ]
}

fn closed_by_peer(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        IoKind::ConnectionReset | IoKind::ConnectionAborted | IoKind::BrokenPipe
    )
}

/// Reads until the peer closes the connection (end of stream or reset), at most `within`.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Err(format!(
                "the peer did not close the connection within {within:?}"
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if closed_by_peer(&e) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    IoKind::WouldBlock | IoKind::TimedOut | IoKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("unexpected read error: {e}")),
        }
    }
}

/// Whether the peer still keeps `stream` open (reads whatever it sent, without waiting).
fn still_open(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == IoKind::WouldBlock => return true,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// Sends `attack` to the listener at `addr` and checks that the listener closes that
/// connection in time, while a silent connection opened just before is still open (so it
/// is the bytes that got the connection closed, not a timeout). Returns the silent
/// connection, still open: hanging up is a case of its own (see
/// `clients_hanging_up_during_the_handshake_do_not_stop_the_listeners`).
fn run_attack(addr: &str, attack: &Attack) -> Result<TcpStream, String> {
    let mut silent = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let started = Instant::now();
    match s.write_all(&attack.bytes) {
        Ok(()) => {
            if attack.half_close {
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
            }
            wait_closed(&mut s, CLOSE_WITHIN)?;
        }
        Err(e) if closed_by_peer(&e) => {}
        Err(e) => return Err(format!("write: {e}")),
    }
    if !still_open(&mut silent) {
        return Err(format!(
            "a silent connection was closed too ({:?} after the attack started): the close \
             was not caused by the bytes sent",
            started.elapsed()
        ));
    }
    Ok(silent)
}

/// The listeners of the head and of every worker of `ctx`.
fn listeners(ctx: &Context) -> Vec<(String, String)> {
    let mut out = vec![("the head".to_string(), head_addr(ctx))];
    out.extend(
        ctx.workers()
            .into_iter()
            .map(|w| (format!("worker {}", w.id.0), w.addr)),
    );
    out
}

/// A new worker joins (through the head's listener) and takes a value from every worker
/// that was there before (through their listeners: it has no connection to them yet).
fn assert_listeners_accept(ctx: &Context, old: &[WorkerInfo]) {
    let new = ctx
        .add_workers(LaunchSpec::Local {
            workers: 1,
            threads: 1,
        })
        .expect("a new worker joins");
    let now = ctx.workers();
    let newcomer = now.iter().find(|w| w.id == new[0]).expect("it is listed");
    ctx.enter(|| {
        for w in old {
            assert_moves(w, newcomer);
        }
    });
    assert_cluster_works(ctx);
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let ctx = cluster(ClusterOptions::new(), 2);
    assert_cluster_works(&ctx);
    let before = ctx.workers();
    let targets = listeners(&ctx);
    assert_eq!(targets.len(), 3);
    let mut silent = Vec::new();
    for (name, addr) in &targets {
        for attack in attacks() {
            silent.push(
                run_attack(addr, &attack)
                    .unwrap_or_else(|e| panic!("{name} at {addr}, {}: {e}", attack.name)),
            );
        }
    }
    assert_eq!(
        ctx.workers(),
        before,
        "every worker is still there, nobody joined"
    );
    assert_cluster_works(&ctx);
    assert_listeners_accept(&ctx, &before);
    drop(silent);
}

/// Connects to `addr`, sends `bytes`, reads the `reply` bytes the listener sends back (so
/// that nothing is left unread and closing sends a clean end of stream), and hangs up.
fn hang_up(addr: &str, bytes: &[u8], reply: usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; reply];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading the {reply} bytes {addr} sends: {e}"));
}

#[test]
fn clients_hanging_up_during_the_handshake_do_not_stop_the_listeners() {
    let ctx = Context::builder()
        .threads(2)
        .cluster(
            ClusterOptions::new()
                .join_timeout(Duration::from_secs(20))
                .launch(LaunchSpec::Local {
                    workers: 2,
                    threads: 1,
                }),
        )
        .build()
        .expect("the cluster starts");
    assert_cluster_works(&ctx);
    let before = ctx.workers();
    // A hello frame is 4 + 56 bytes, a proof frame 4 + 32.
    for (_, addr) in listeners(&ctx) {
        // What a port scanner or a TCP health check does: connect, close.
        hang_up(&addr, &[], 60);
        // A client that gives up after the hellos.
        hang_up(&addr, &frame(&hello_message()), 60 + 36);
    }
    assert_eq!(ctx.workers(), before);
    assert_listeners_accept(&ctx, &before);
}

/// The fingerprint of the head's TLS certificate, as given to a launched worker.
fn head_fingerprint(worker_pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{worker_pid}/environ")).expect("read environ");
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"DAGGER_TLS_FINGERPRINT="))
        .map(|fp| String::from_utf8(fp.to_vec()).unwrap())
        .expect("a worker of a TLS head is told the head's fingerprint")
}

fn tls_config(secret: &Secret, pin: &str) -> NetConfig {
    let tls = TlsConfig::new(TlsIdentity::generate().unwrap())
        .with_peer_fingerprint(pin)
        .unwrap();
    NetConfig::new(secret.clone()).with_tls(tls)
}

/// Workers of one host write each other notes that a task was made into shared memory,
/// which is not encrypted: not in a cluster configured with TLS. A stencil split over both workers
/// (each border point waits for a note from the other worker) gets them all on its TLS
/// connections.
fn assert_no_shared_notes_under_tls(ctx: &Context) {
    const WIDTH: usize = 4;
    const STEPS: usize = 20;
    let workers: Vec<u32> = ctx.workers().iter().map(|w| w.id.0).collect();
    ctx.enter(|| {
        let (rows, expect) = common::spawn_stencil(WIDTH, STEPS, |_, c, seed, ins| {
            spawn!(mix(seed, &ins); scope = Scope::worker(workers[c * 2 / WIDTH]))
        });
        for (s, row) in rows.iter().enumerate() {
            for (c, t) in row.iter().enumerate() {
                assert_eq!(get(t, "a stencil point"), expect[s][c], "step {s}, point {c}");
            }
        }
    });
    for w in ctx.workers() {
        let stats = ctx.worker_stats(w.id).unwrap();
        assert!(stats.sent_ahead > 0, "worker {}: {stats:?}", w.id.0);
        assert_eq!(stats.inbox_notes, 0, "worker {}: {stats:?}", w.id.0);
    }
}

#[test]
fn tls_cluster_runs_and_refuses_plain_connections() {
    let secret = Secret::generate().unwrap();
    let ctx = cluster(ClusterOptions::new().tls(true).secret(secret.clone()), 2);
    assert_cluster_works(&ctx);
    assert_no_shared_notes_under_tls(&ctx);
    let before = ctx.workers();
    let head = head_addr(&ctx);
    let hello = || Hello::new(Role::Worker, registry_hash()).with_peer_id(50);

    // Plain TCP with the right secret and registry: refused by the head and the workers
    // (promptly, not by a timeout).
    for (name, addr) in listeners(&ctx) {
        let err = net_connect(&addr, &NetConfig::new(secret.clone()), hello())
            .expect_err("a plain connection to a TLS listener is refused");
        // Typically the listener's TLS alert, which the client reports as "the peer speaks
        // TLS but TLS is off in this process"; never a timeout.
        assert!(
            matches!(err, NetError::Tls(_) | NetError::Io(_) | NetError::Closed),
            "{name}: the listener should refuse a plain connection at once: {err:?}"
        );
    }

    // TLS pinning the wrong certificate: the client refuses the head.
    let err = net_connect(&head, &tls_config(&secret, &"ab".repeat(32)), hello())
        .expect_err("a wrong pin is refused");
    assert!(
        matches!(err, NetError::FingerprintMismatch { .. }),
        "{err:?}"
    );

    // TLS to the right certificate still needs the secret and the same registry.
    let pin = head_fingerprint(before[0].pid);
    let err = net_connect(
        &head,
        &tls_config(&Secret::generate().unwrap(), &pin),
        hello(),
    )
    .expect_err("TLS without the secret is refused");
    assert!(matches!(err, NetError::AuthFailed), "{err:?}");
    let err = net_connect(
        &head,
        &tls_config(&secret, &pin),
        Hello::new(Role::Worker, registry_hash() ^ 1).with_peer_id(51),
    )
    .expect_err("TLS from another binary is refused");
    assert!(matches!(err, NetError::RegistryMismatch { .. }), "{err:?}");

    // Raw bytes that are no TLS at all.
    let mut silent = Vec::new();
    for (name, addr) in listeners(&ctx) {
        for attack in attacks() {
            silent.push(
                run_attack(&addr, &attack)
                    .unwrap_or_else(|e| panic!("{name} at {addr} (TLS), {}: {e}", attack.name)),
            );
        }
    }

    assert_eq!(ctx.workers(), before, "no refused process joined");
    assert_cluster_works(&ctx);
    assert_listeners_accept(&ctx, &before);
    drop(silent);
}

#[test]
fn the_secret_is_not_on_worker_command_lines() {
    // A secret whose encodings are easy to spot.
    let bytes: Vec<u8> = (0..32u8).map(|i| 0xa0 ^ i.wrapping_mul(29)).collect();
    let secret = Secret::from_bytes(bytes.clone()).unwrap();
    let ctx = cluster(ClusterOptions::new().secret(secret.clone()), 2);
    let workers = ctx.workers();
    assert_eq!(workers.len(), 2);
    let hex = secret.to_hex();
    let needles: Vec<Vec<u8>> = vec![
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        bytes.clone(),
        // any 8-byte piece of the hex encoding
        hex.as_bytes()[..16].to_vec(),
        hex.as_bytes()[hex.len() - 16..].to_vec(),
    ];
    for w in &workers {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", w.pid))
            .unwrap_or_else(|e| panic!("reading worker {}'s command line: {e}", w.id.0));
        assert!(!cmdline.is_empty(), "worker {} has a command line", w.id.0);
        for needle in &needles {
            assert!(
                !cmdline.windows(needle.len()).any(|win| win == &needle[..]),
                "worker {}'s command line holds the secret: {}",
                w.id.0,
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
    // They do know it: they joined and run tasks.
    assert_cluster_works(&ctx);
}
