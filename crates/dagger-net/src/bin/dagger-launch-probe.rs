//! A stand-in worker for the launcher tests of `dagger_net::launch`.
//!
//! - Started by a launcher (`DAGGER_ROLE=worker`): reads the worker protocol's variables and
//!   the secret (from `DAGGER_SECRET`, or one line of standard input when
//!   `DAGGER_SECRET_STDIN=1`), connects to `DAGGER_HEAD` with a plain TCP stream, sends one
//!   tab-separated line of `key=value` fields describing itself (the secret only as its
//!   SHA-256), then reads until the head closes the connection. With
//!   `DAGGER_PROBE_EXIT_FILE`, it then takes `DAGGER_PROBE_EXIT_MS` milliseconds (a worker
//!   finishing its work on the way out) and writes that file before it exits.
//! - `dagger-launch-probe spmd`, started as every rank by `mpirun` or `srun`: rank 0 listens
//!   on 127.0.0.1, publishes its address in the rendezvous file, collects one line from every
//!   other rank and prints them (`PEER <line>`, then `HEAD <fields>`); the other ranks find
//!   the head through the file, send their line and wait for the head to close.
//!
//! - `dagger-launch-probe head`: a stand-in head program that launches workers as configured
//!   by the environment ([`LaunchSpec::from_env`]: `DAGGER_WORKERS`, `DAGGER_HOSTS`, ...),
//!   itself with the same arguments, pointed at `DAGGER_PROBE_HEAD` with the secret of
//!   `DAGGER_SECRET`; prints `LAUNCHED <ids>`, then keeps the workers until its standard input
//!   ends (or it is killed, which must take the workers with it).
//!
//! Errors go to standard error with exit status 2.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use dagger_net::launch::{
    launch, publish_head, rendezvous_path, spmd_rank, wait_for_head, LaunchSpec, SpmdRank,
    WorkerEnv,
};
use sha2::{Digest, Sha256};

/// Bound on every wait, so that a broken test never leaves a probe behind for long.
const PATIENCE: Duration = Duration::from_secs(60);

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> Result<String, String> {
    var(name).ok_or_else(|| format!("{name} is not set"))
}

/// A field value without the separators of the line.
fn clean(value: &str) -> String {
    value.replace(['\t', '\n', '\r'], " ")
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| "unknown".into())
}

fn line(fields: &[(&str, String)]) -> String {
    let mut out = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", clean(v)))
        .collect::<Vec<_>>()
        .join("\t");
    out.push('\n');
    out
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let mut last = format!("{addr} resolves to no address");
    for sock in addr
        .to_socket_addrs()
        .map_err(|e| format!("bad head address {addr}: {e}"))?
    {
        match TcpStream::connect_timeout(&sock, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {sock}: {e}"),
        }
    }
    Err(last)
}

/// Sends `report`, then blocks until the head closes the connection.
fn report_and_wait(head: &str, report: &str) -> Result<(), String> {
    let mut stream = connect(head)?;
    stream
        .write_all(report.as_bytes())
        .map_err(|e| format!("cannot send to the head: {e}"))?;
    stream.set_read_timeout(Some(PATIENCE)).ok();
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A reset is the head going away too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(format!("waiting for the head to close: {e}")),
        }
    }
}

fn worker() -> Result<(), String> {
    let head = required("DAGGER_HEAD")?;
    let id = required("DAGGER_WORKER_ID")?;
    let threads = required("DAGGER_THREADS")?;
    let (secret, via) = if var("DAGGER_SECRET_STDIN").as_deref() == Some("1") {
        let mut secret = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut secret)
            .map_err(|e| format!("cannot read the secret from standard input: {e}"))?;
        (secret.trim().to_string(), "stdin")
    } else {
        (required("DAGGER_SECRET")?, "env")
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let or_dash = |name: &str| var(name).unwrap_or_else(|| "-".into());
    let report = line(&[
        ("id", id),
        ("threads", threads),
        ("secret", sha256_hex(&secret)),
        ("via", via.into()),
        ("host", hostname()),
        ("pid", std::process::id().to_string()),
        ("rank", or_dash("SLURM_PROCID")),
        ("job", or_dash("SLURM_JOB_ID")),
        ("fp", or_dash("DAGGER_TLS_FINGERPRINT")),
        ("tag", or_dash("DAGGER_PROBE_TAG")),
        ("args", args.join("\u{1f}")),
        ("cwd", cwd),
    ]);
    report_and_wait(&head, &report)?;
    if let Some(file) = var("DAGGER_PROBE_EXIT_FILE") {
        let ms = var("DAGGER_PROBE_EXIT_MS").map_or(Ok(0), |v| v.parse::<u64>());
        let ms = ms.map_err(|e| format!("DAGGER_PROBE_EXIT_MS: {e}"))?;
        std::thread::sleep(Duration::from_millis(ms));
        std::fs::write(&file, b"exited").map_err(|e| format!("cannot write {file}: {e}"))?;
    }
    Ok(())
}

fn spmd_head(rank: SpmdRank) -> Result<(), String> {
    let path = rendezvous_path().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    let published =
        publish_head(&path, &addr.to_string(), Some("abcd01")).map_err(|e| e.to_string())?;
    // Never wait forever for ranks that will not come.
    std::thread::spawn(|| {
        std::thread::sleep(PATIENCE);
        eprintln!("probe error: the other ranks did not all connect within {PATIENCE:?}");
        std::process::exit(3);
    });
    let mut peers = Vec::new();
    let mut streams = Vec::new();
    for _ in 1..rank.size {
        let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        stream.set_read_timeout(Some(PATIENCE)).ok();
        let mut reader = BufReader::new(stream);
        let mut peer = String::new();
        reader
            .read_line(&mut peer)
            .map_err(|e| format!("reading a rank's report: {e}"))?;
        peers.push(peer.trim_end().to_string());
        streams.push(reader);
    }
    peers.sort();
    let mut out = std::io::stdout().lock();
    for peer in &peers {
        let _ = writeln!(out, "PEER {peer}");
    }
    let secret = var("DAGGER_SECRET").unwrap_or_default();
    let _ = write!(
        out,
        "HEAD {}",
        line(&[
            ("rank", rank.rank.to_string()),
            ("size", rank.size.to_string()),
            ("kind", rank.kind.to_string()),
            ("secret", sha256_hex(&secret)),
            ("path", path.display().to_string()),
        ])
    );
    let _ = out.flush();
    drop(published);
    Ok(())
}

fn spmd() -> Result<(), String> {
    let rank = spmd_rank().ok_or("not started as an SPMD rank (no MPI or srun rank variables)")?;
    if rank.is_head() {
        return spmd_head(rank);
    }
    let path = rendezvous_path().map_err(|e| e.to_string())?;
    let (head, fp) = wait_for_head(&path, PATIENCE).map_err(|e| e.to_string())?;
    let report = line(&[
        ("rank", rank.rank.to_string()),
        ("size", rank.size.to_string()),
        ("kind", rank.kind.to_string()),
        (
            "secret",
            sha256_hex(&var("DAGGER_SECRET").unwrap_or_default()),
        ),
        ("fp", fp.unwrap_or_else(|| "-".into())),
        ("host", hostname()),
    ]);
    report_and_wait(&head, &report)
}

fn head() -> Result<(), String> {
    let spec = LaunchSpec::from_env()
        .map_err(|e| e.to_string())?
        .ok_or("no launch configured in the environment")?;
    let env = WorkerEnv::new(required("DAGGER_PROBE_HEAD")?, required("DAGGER_SECRET")?);
    let launched = launch(&spec, &env).map_err(|e| e.to_string())?;
    let ids: Vec<String> = launched.ids().iter().map(u32::to_string).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "LAUNCHED {}", ids.join(","));
    let _ = out.flush();
    // Keep the workers until the test closes our standard input.
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
    drop(launched);
    Ok(())
}

fn main() -> ExitCode {
    // A started worker first: it gets the head's arguments too.
    let result = if var("DAGGER_ROLE").as_deref() == Some("worker") {
        worker()
    } else if std::env::args().nth(1).as_deref() == Some("spmd") {
        spmd()
    } else if std::env::args().nth(1).as_deref() == Some("head") {
        head()
    } else {
        Err(
            "run me as a dagger worker (DAGGER_ROLE=worker), as `dagger-launch-probe spmd` \
             under mpirun/srun, or as `dagger-launch-probe head`"
                .into(),
        )
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe error: {e}");
            ExitCode::from(2)
        }
    }
}
