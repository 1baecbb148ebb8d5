//! SPMD start-up under Open MPI's `mpirun`: rank 0 publishes its address in the rendezvous
//! file, the other ranks find it there and connect.

mod support;

use std::process::Command;
use std::time::Instant;

use support::PROBE;
use support::{missing, random_hex, ready, run_bounded, sha256_hex, Report, TempDir, PATIENCE};

/// Runs `mpirun -n 3` of the probe in SPMD mode; rank 0's report and those of ranks 1 and 2.
fn mpirun_probe(secret: &str, rendezvous: Option<&std::path::Path>) -> (Report, Vec<Report>) {
    // Open MPI 4 races with a concurrent mpirun creating its session directory in the
    // shared temp dir: give each run its own (the ranks inherit it).
    let tmp = TempDir::new("dagger-mpi-tmp");
    let mut cmd = Command::new("mpirun");
    cmd.env("TMPDIR", tmp.path());
    cmd.args(["-n", "3", "--oversubscribe", "-x", "DAGGER_SECRET"])
        .env("DAGGER_SECRET", secret)
        // Open MPI refuses to run as root without these (harmless otherwise).
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("DAGGER_RENDEZVOUS");
    if let Some(path) = rendezvous {
        cmd.args(["-x", "DAGGER_RENDEZVOUS"])
            .env("DAGGER_RENDEZVOUS", path);
    }
    cmd.args([PROBE, "spmd"]);
    let started = Instant::now();
    let out = run_bounded(&mut cmd, PATIENCE).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mpirun failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("mpirun -n 3 took {:?}", started.elapsed());
    let head = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HEAD "))
        .map(Report::parse)
        .unwrap_or_else(|| panic!("no HEAD line in:\n{stdout}"));
    let peers = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PEER "))
        .map(Report::parse)
        .collect();
    // Checked before `tmp` goes.
    let path = std::path::Path::new(head.get("path"));
    assert!(
        rendezvous.is_some() || path.starts_with(tmp.path()),
        "{head:?}"
    );
    assert!(
        !path.exists(),
        "rank 0 left its rendezvous file {} behind",
        path.display()
    );
    (head, peers)
}

fn check(secret: &str, head: &Report, peers: &[Report]) {
    assert_eq!((head.get("rank"), head.get("size")), ("0", "3"), "{head:?}");
    assert_eq!(head.get("kind"), "mpi");
    assert_eq!(head.get("secret"), sha256_hex(secret));
    let ranks: Vec<&str> = peers.iter().map(|p| p.get("rank")).collect();
    assert_eq!(ranks, ["1", "2"], "{peers:?}");
    for p in peers {
        assert_eq!((p.get("size"), p.get("kind")), ("3", "mpi"), "{p:?}");
        assert_eq!(
            p.get("secret"),
            sha256_hex(secret),
            "DAGGER_SECRET did not reach every rank"
        );
        assert_eq!(
            p.get("fp"),
            "abcd01",
            "the fingerprint did not come through the file"
        );
    }
}

#[test]
fn mpirun_ranks_meet_through_the_default_rendezvous_file() {
    if !ready("mpirun", missing(&["mpirun"])) {
        return;
    }
    let secret = random_hex(32);
    let (head, peers) = mpirun_probe(&secret, None);
    check(&secret, &head, &peers);
    // The default path is derived from Open MPI's job id, in the ranks' temp dir.
    assert!(head.get("path").contains("dagger-rendezvous-"), "{head:?}");
}

#[test]
fn mpirun_ranks_meet_through_dagger_rendezvous() {
    if !ready("mpirun", missing(&["mpirun"])) {
        return;
    }
    let dir = TempDir::new("dagger-mpi");
    let path = dir.path().join("sub").join("head");
    let secret = random_hex(32);
    let (head, peers) = mpirun_probe(&secret, Some(&path));
    check(&secret, &head, &peers);
    assert_eq!(head.get("path"), path.display().to_string());
}
