//! Helpers of the launcher tests: a stand-in head that collects the probes' reports, temp
//! dirs and free ports, process checks, and the skip rule for missing services.
#![allow(dead_code)] // each test file uses a part

pub mod slurm;
pub mod sshd;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The probe worker binary (empty where this module serves tests of another crate, which
/// start their own binary as workers).
pub const PROBE: &str = match option_env!("CARGO_BIN_EXE_dagger-launch-probe") {
    Some(p) => p,
    None => "",
};

/// Bound on every wait of the tests.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Whether missing services fail the tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var("DAGGER_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `true` when nothing is `missing`; otherwise says why `test` is skipped and returns
/// `false`, or panics when `DAGGER_REQUIRE_SERVICES=1`.
pub fn ready(test: &str, missing: Vec<String>) -> bool {
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test} needs {}, which is not installed",
        missing.join(", ")
    );
    assert!(
        !services_required(),
        "{why} (DAGGER_REQUIRE_SERVICES=1: no skipping; run .ci/services/install.sh)"
    );
    eprintln!("{why}: skipped");
    false
}

/// A program on `PATH` or in the usual sbin directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The names in `names` that [`find_binary`] cannot find.
pub fn missing(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| find_binary(n).is_none())
        .map(|n| n.to_string())
        .collect()
}

/// `n` random bytes, hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `s`, hex (what the probe reports instead of the secret).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One probe's report: its `key=value` fields.
#[derive(Debug, Clone)]
pub struct Report(pub BTreeMap<String, String>);

impl Report {
    pub fn parse(line: &str) -> Report {
        Report(
            line.trim_end()
                .split('\t')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("<missing>", String::as_str)
    }

    pub fn id(&self) -> u32 {
        self.get("id").parse().expect("a numeric id")
    }

    pub fn pid(&self) -> u32 {
        self.get("pid").parse().expect("a numeric pid")
    }
}

/// A connected probe.
pub struct Conn {
    pub report: Report,
    stream: TcpStream,
}

impl Conn {
    /// Waits up to `timeout` for the probe's end of the connection to close.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "worker {:?} still connected after {timeout:?}",
                    self.report
                ));
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("reading from worker: {e}")),
            }
        }
    }

    /// Whether the probe's end is still open (nothing to read and no end of stream).
    pub fn is_open(&self) -> bool {
        self.stream.set_nonblocking(true).ok();
        let mut buf = [0u8; 1];
        let open = matches!(
            self.stream.peek(&mut buf),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).ok();
        open
    }
}

/// A stand-in head: a listener on 127.0.0.1 whose connections arrive on a channel.
pub struct Head {
    addr: String,
    incoming: mpsc::Receiver<TcpStream>,
}

impl Head {
    pub fn start() -> Head {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let addr = listener.local_addr().expect("local address").to_string();
        let (tx, incoming) = mpsc::channel();
        // Blocks in accept until the test process ends: harmless.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if tx.send(stream).is_err() {
                    break;
                }
            }
        });
        Head { addr, incoming }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits for `n` probes to connect and report; returns them by id (or rank).
    /// Accepts the `n` workers a head program started and checks that they are workers 1..=n
    /// and got `secret`.
    pub fn accept_workers(&self, n: usize, secret: &str) -> Vec<Conn> {
        let conns = self.accept(n, PATIENCE).unwrap();
        for (conn, id) in conns.iter().zip(1..) {
            let r = &conn.report;
            assert_eq!(r.id(), id, "{r:?}");
            assert_eq!(r.get("secret"), sha256_hex(secret), "{r:?}");
        }
        conns
    }

    pub fn accept(&self, n: usize, timeout: Duration) -> Result<Vec<Conn>, String> {
        let deadline = Instant::now() + timeout;
        let mut conns = Vec::new();
        while conns.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let stream = self.incoming.recv_timeout(left).map_err(|_| {
                format!(
                    "only {} of {n} workers connected within {timeout:?}",
                    conns.len()
                )
            })?;
            stream
                .set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .ok();
            let mut line = String::new();
            BufReader::new(stream.try_clone().map_err(|e| e.to_string())?)
                .read_line(&mut line)
                .map_err(|e| format!("reading a worker's report: {e}"))?;
            conns.push(Conn {
                report: Report::parse(&line),
                stream,
            });
        }
        conns.sort_by_key(|c| c.report.get("id").parse::<u32>().unwrap_or(u32::MAX));
        Ok(conns)
    }
}

/// Whether process `pid` is gone (or a zombie) within `timeout`.
pub fn process_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        };
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The first process whose command line contains `needle`, as `pid: cmdline`.
pub fn process_with_argument(needle: &str) -> Option<String> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                return Some(format!("{pid}: {cmdline}"));
            }
        }
    }
    None
}

/// Runs `cmd` to completion within `timeout`, returning its output; kills it on timeout.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = pipe.read_to_end(&mut v);
                let _ = tx.send(v);
            });
        }
        rx
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A process the child left behind may hold the pipes open: do not wait for it long.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
            .unwrap_or_default()
    };
    Ok(std::process::Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

/// `dagger-launch-probe head` (possibly under `salloc`): a head program that launches
/// workers as its environment says and keeps them until its standard input closes.
pub struct HeadProgram {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// The worker ids it reported.
    pub ids: String,
}

impl HeadProgram {
    /// Starts `cmd` and waits for it to report its launched workers.
    pub fn start(cmd: &mut std::process::Command) -> Result<HeadProgram, String> {
        use std::process::Stdio;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let stderr = std::sync::Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    eprint!("{text}");
                    stderr.lock().unwrap().push_str(&text);
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let mut head = HeadProgram {
            child,
            stdin: None,
            stderr,
            ids: String::new(),
        };
        head.stdin = head.child.stdin.take();
        match rx.recv_timeout(PATIENCE) {
            Ok(line) if line.starts_with("LAUNCHED ") => {
                head.ids = line["LAUNCHED ".len()..].trim().to_string();
                Ok(head)
            }
            other => {
                head.kill();
                Err(format!(
                    "the head program did not launch its workers ({other:?}): {}",
                    head.stderr.lock().unwrap()
                ))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills it (no destructor runs) and checks that the workers it started go with it: each
    /// one's connection closes and its process ends.
    pub fn kill_and_expect_workers_gone(&mut self, workers: &mut [Conn]) {
        self.kill();
        for conn in workers {
            conn.wait_closed(PATIENCE).unwrap();
            let pid = conn.report.pid();
            assert!(
                process_gone(pid, PATIENCE),
                "worker {pid} outlived its head"
            );
        }
    }

    /// Closes its standard input (it then drops its workers and exits); its exit status.
    pub fn finish(&mut self) -> Result<std::process::ExitStatus, String> {
        self.stdin = None;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err("the head program did not exit".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HeadProgram {
    fn drop(&mut self) {
        self.kill();
    }
}
