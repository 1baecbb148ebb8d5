//! Configuration from environment variables, SPMD rank discovery and the rendezvous file:
//! no services needed, and no test touches this process's environment.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dagger_net::launch::{
    publish_head, rendezvous_path_with, wait_for_head, LaunchError, LaunchSpec, SpmdKind, SpmdRank,
};
use support::TempDir;

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn spec(pairs: &[(&str, &str)]) -> Result<Option<LaunchSpec>, LaunchError> {
    LaunchSpec::from_vars(vars(pairs))
}

fn error(pairs: &[(&str, &str)]) -> String {
    match spec(pairs) {
        Err(e) => e.to_string(),
        Ok(s) => panic!("expected an error for {pairs:?}, got {s:?}"),
    }
}

#[test]
fn nothing_configured_means_no_launch() {
    assert_eq!(spec(&[]).unwrap(), None);
    assert_eq!(spec(&[("DAGGER_WORKERS", "0")]).unwrap(), None);
    assert_eq!(
        spec(&[("DAGGER_WORKERS", "  ")]).unwrap(),
        None,
        "empty counts as unset"
    );
    // A started worker never launches more, whatever it inherited.
    let worker = [("DAGGER_ROLE", "worker"), ("DAGGER_WORKERS", "4")];
    assert_eq!(spec(&worker).unwrap(), None);
}

#[test]
fn local_workers() {
    assert_eq!(
        spec(&[("DAGGER_WORKERS", "4"), ("DAGGER_WORKER_THREADS", "2")]).unwrap(),
        Some(LaunchSpec::Local {
            workers: 4,
            threads: 2
        })
    );
    assert_eq!(
        spec(&[("DAGGER_LAUNCHER", "LOCAL"), ("DAGGER_WORKERS", "1")]).unwrap(),
        Some(LaunchSpec::Local {
            workers: 1,
            threads: 0
        })
    );
}

#[test]
fn ssh_hosts() {
    let got = spec(&[
        ("DAGGER_HOSTS", "node1, alice@node2,node1"),
        ("DAGGER_SSH_PORT", "2222"),
        ("DAGGER_SSH_IDENTITY", "/keys/id"),
        ("DAGGER_SSH_OPTS", "-o Compression=yes  -4"),
        ("DAGGER_SSH_EXE", "/opt/app/bin/prog"),
        ("DAGGER_WORKER_THREADS", "8"),
    ])
    .unwrap();
    assert_eq!(
        got,
        Some(LaunchSpec::Ssh {
            hosts: vec!["node1".into(), "alice@node2".into(), "node1".into()],
            threads: 8,
            port: Some(2222),
            identity: Some(PathBuf::from("/keys/id")),
            ssh_options: vec!["-o".into(), "Compression=yes".into(), "-4".into()],
            exe: Some(PathBuf::from("/opt/app/bin/prog")),
        })
    );
    let minimal = spec(&[("DAGGER_LAUNCHER", "ssh"), ("DAGGER_HOSTS", "h")]).unwrap();
    assert!(matches!(
        minimal,
        Some(LaunchSpec::Ssh {
            port: None,
            identity: None,
            ..
        })
    ));
}

#[test]
fn slurm_inside_an_allocation() {
    let alloc = [
        ("DAGGER_LAUNCHER", "slurm"),
        ("SLURM_JOB_ID", "42"),
        ("SLURM_NTASKS", "6"),
    ];
    assert_eq!(
        spec(&alloc).unwrap(),
        Some(LaunchSpec::Slurm {
            workers: 6,
            threads: 0,
            extra_args: vec![]
        })
    );
    let mut explicit = alloc.to_vec();
    explicit.extend([
        ("DAGGER_WORKERS", "2"),
        ("DAGGER_SRUN_ARGS", "--nodes=2 --exclusive"),
    ]);
    assert_eq!(
        spec(&explicit).unwrap(),
        Some(LaunchSpec::Slurm {
            workers: 2,
            threads: 0,
            extra_args: vec!["--nodes=2".into(), "--exclusive".into()]
        })
    );
    let by_nodes = [
        ("DAGGER_LAUNCHER", "slurm"),
        ("SLURM_JOB_ID", "1"),
        ("SLURM_JOB_NUM_NODES", "3"),
    ];
    assert!(matches!(
        spec(&by_nodes).unwrap(),
        Some(LaunchSpec::Slurm { workers: 3, .. })
    ));
}

#[test]
fn bad_values_name_the_variable() {
    for (pairs, var, hint) in [
        (
            vec![("DAGGER_WORKERS", "three")],
            "DAGGER_WORKERS",
            "whole number",
        ),
        (
            vec![("DAGGER_WORKERS", "-1")],
            "DAGGER_WORKERS",
            "whole number",
        ),
        (
            vec![("DAGGER_WORKERS", "2"), ("DAGGER_WORKER_THREADS", "x")],
            "DAGGER_WORKER_THREADS",
            "whole number",
        ),
        (
            vec![("DAGGER_LAUNCHER", "pbs")],
            "DAGGER_LAUNCHER",
            "local, ssh or slurm",
        ),
        (vec![("DAGGER_HOSTS", "a,,b")], "DAGGER_HOSTS", "empty"),
        (
            vec![("DAGGER_HOSTS", "-oProxyCommand=x")],
            "DAGGER_HOSTS",
            "not a host name",
        ),
        (
            vec![("DAGGER_HOSTS", "a"), ("DAGGER_SSH_PORT", "70000")],
            "DAGGER_SSH_PORT",
            "port",
        ),
        (
            vec![("DAGGER_HOSTS", "a"), ("DAGGER_SSH_PORT", "0")],
            "DAGGER_SSH_PORT",
            "port",
        ),
        (
            vec![("DAGGER_HOSTS", "a"), ("DAGGER_SSH_EXE", "bin/prog")],
            "DAGGER_SSH_EXE",
            "absolute",
        ),
        (
            vec![
                ("DAGGER_LAUNCHER", "slurm"),
                ("SLURM_JOB_ID", "1"),
                ("SLURM_NTASKS", "x"),
            ],
            "SLURM_NTASKS",
            "whole number",
        ),
    ] {
        let err = error(&pairs);
        assert!(err.contains(var) && err.contains(hint), "{pairs:?}: {err}");
    }
}

#[test]
fn contradictions_and_gaps_are_explained() {
    for (pairs, hint) in [
        (
            vec![("DAGGER_WORKERS", "2"), ("DAGGER_HOSTS", "a")],
            "DAGGER_LAUNCHER",
        ),
        (vec![("DAGGER_LAUNCHER", "local")], "needs DAGGER_WORKERS"),
        (vec![("DAGGER_LAUNCHER", "ssh")], "needs DAGGER_HOSTS"),
        (
            vec![
                ("DAGGER_LAUNCHER", "ssh"),
                ("DAGGER_HOSTS", "a"),
                ("DAGGER_WORKERS", "2"),
            ],
            "does not use DAGGER_WORKERS",
        ),
        (
            vec![
                ("DAGGER_LAUNCHER", "local"),
                ("DAGGER_WORKERS", "1"),
                ("DAGGER_HOSTS", "a"),
            ],
            "does not use DAGGER_HOSTS",
        ),
        (vec![("DAGGER_LAUNCHER", "slurm")], "SLURM_JOB_ID"),
        (
            vec![("DAGGER_LAUNCHER", "slurm"), ("SLURM_JOB_ID", "1")],
            "set DAGGER_WORKERS",
        ),
    ] {
        let err = error(&pairs);
        assert!(err.contains(hint), "{pairs:?}: {err}");
    }
}

#[test]
fn spmd_ranks() {
    let rank = |pairs: &[(&str, &str)]| SpmdRank::from_vars(vars(pairs));
    let ompi = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "3")];
    assert_eq!(
        rank(&ompi),
        Some(SpmdRank {
            rank: 1,
            size: 3,
            kind: SpmdKind::Mpi
        })
    );
    assert_eq!(
        rank(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]),
        Some(SpmdRank {
            rank: 0,
            size: 2,
            kind: SpmdKind::Mpi
        })
    );
    assert_eq!(
        rank(&[("PMIX_RANK", "2"), ("PMI_SIZE", "4")]).map(|r| (r.rank, r.size)),
        Some((2, 4))
    );
    assert_eq!(rank(&[("PMIX_RANK", "2")]), None, "no size known");
    let step = [
        ("SLURM_PROCID", "2"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_STEP_ID", "0"),
    ];
    let got = rank(&step).unwrap();
    assert_eq!(
        (got.rank, got.size, got.kind, got.is_head()),
        (2, 4, SpmdKind::Slurm, false)
    );
    // A batch script is no step; a launched worker is no rank; MPI wins over the srun
    // step that runs its daemons.
    assert_eq!(rank(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]), None);
    let mut worker = step.to_vec();
    worker.push(("DAGGER_ROLE", "worker"));
    assert_eq!(rank(&worker), None);
    let mut both = step.to_vec();
    both.extend(ompi);
    assert_eq!(rank(&both).map(|r| r.kind), Some(SpmdKind::Mpi));
    // Nonsense is ignored.
    assert_eq!(
        rank(&[("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "3")]),
        None
    );
    assert_eq!(
        rank(&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "3")]),
        None
    );
}

#[test]
fn rendezvous_paths() {
    let path = |pairs: &[(&str, &str)]| rendezvous_path_with(vars(pairs));
    assert_eq!(
        path(&[("DAGGER_RENDEZVOUS", "/shared/run1"), ("SLURM_JOB_ID", "1")]).unwrap(),
        PathBuf::from("/shared/run1")
    );
    let ompi = path(&[("OMPI_MCA_ess_base_jobid", "712835073")]).unwrap();
    assert!(ompi.starts_with(std::env::temp_dir()), "{ompi:?}");
    assert!(
        ompi.to_string_lossy().ends_with("ompi-712835073"),
        "{ompi:?}"
    );
    let pmix = path(&[("PMIX_NAMESPACE", "slurm.pmix.7.0")]).unwrap();
    assert!(
        pmix.to_string_lossy().ends_with("pmix-slurm.pmix.7.0"),
        "{pmix:?}"
    );
    let odd = path(&[("PMIX_NAMESPACE", "a/../b c")]).unwrap();
    assert_eq!(
        odd.parent(),
        Some(std::env::temp_dir().as_path()),
        "{odd:?}"
    );
    let slurm = path(&[("SLURM_JOB_ID", "9"), ("SLURM_STEP_ID", "2")]).unwrap();
    assert!(slurm.to_string_lossy().ends_with("slurm-9.2"), "{slurm:?}");
    let err = path(&[("SLURM_JOB_ID", "9")]).unwrap_err().to_string();
    assert!(err.contains("DAGGER_RENDEZVOUS"), "{err}");
}

#[test]
fn rendezvous_publish_and_wait() {
    let dir = TempDir::new("dagger-rendezvous-test");
    let path = dir.path().join("nested").join("head");

    let waiter = {
        let path = path.clone();
        std::thread::spawn(move || wait_for_head(&path, Duration::from_secs(30)))
    };
    let published = publish_head(&path, "10.1.2.3:4567", Some("ab:cd")).unwrap();
    assert_eq!(published.path(), path);
    let (addr, fp) = waiter.join().unwrap().unwrap();
    assert_eq!(
        (addr.as_str(), fp.as_deref()),
        ("10.1.2.3:4567", Some("ab:cd"))
    );

    // Publishing again replaces the file whole; no temporary files are left.
    let again = publish_head(&path, "10.1.2.3:9999", None).unwrap();
    assert_eq!(
        wait_for_head(&path, Duration::ZERO).unwrap(),
        ("10.1.2.3:9999".to_string(), None)
    );
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["head"]);
    drop(again);
    assert!(!path.exists(), "the guard removes the file");
    drop(published); // already gone: fine

    assert!(publish_head(&path, "has space:1", None).is_err());
    let kept = publish_head(&path, "h:1", None).unwrap().keep();
    assert!(kept.exists());
}

#[test]
fn rendezvous_timeouts_and_bad_files() {
    let dir = TempDir::new("dagger-rendezvous-test");
    let path = dir.path().join("head");
    let started = Instant::now();
    let err = wait_for_head(&path, Duration::from_millis(200)).unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(err, LaunchError::RendezvousTimeout { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("DAGGER_RENDEZVOUS") && msg.contains(&path.display().to_string()),
        "{msg}"
    );

    std::fs::write(&path, "something else\n").unwrap();
    let err = wait_for_head(&path, Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("does not start with"), "{err}");
    std::fs::write(&path, "dagger-rendezvous 1\nfuture-field x\n").unwrap();
    let err = wait_for_head(&path, Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("no head address"), "{err}");
    std::fs::write(&path, "dagger-rendezvous 1\nfuture-field x\nhead h:1\n").unwrap();
    assert_eq!(wait_for_head(&path, Duration::ZERO).unwrap().0, "h:1");

    // A file another user planted is refused (needs root to plant one).
    let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if is_root {
        let status = std::process::Command::new("chown")
            .arg("65534")
            .arg(&path)
            .status();
        if status.is_ok_and(|s| s.success()) {
            let err = wait_for_head(&path, Duration::ZERO).unwrap_err();
            assert!(
                err.to_string().contains("belongs to user id 65534"),
                "{err}"
            );
        }
    }
}
