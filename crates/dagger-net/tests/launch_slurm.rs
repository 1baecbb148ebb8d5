//! The SLURM launcher and SPMD start-up under `srun`, on a throwaway single-node cluster.
//! One test, so that one cluster serves every check (its start-up costs about a second).

mod support;

use std::time::Instant;

use dagger_net::launch::{launch, LaunchError, LaunchSpec, LauncherKind, WorkerEnv};
use support::slurm::{missing_programs, SlurmCluster};
use support::{process_with_argument, random_hex, ready, run_bounded, sha256_hex, Head, Report};
use support::{PATIENCE, PROBE};

#[test]
fn slurm_workers_run_as_srun_steps_inside_an_allocation() {
    if !ready("slurm", missing_programs()) {
        return;
    }
    let started = Instant::now();
    let cluster = SlurmCluster::start().unwrap();
    eprintln!("slurm cluster up after {:?}", started.elapsed());
    let job = cluster.allocate(3).unwrap();

    let head = Head::start();
    let secret = random_hex(32);
    let mut env = WorkerEnv::new(head.addr(), &secret);
    env.exe = Some(PROBE.into());
    env.args = Some(vec!["--probe-arg".into()]);
    env.first_id = 5;
    env.extra = vec![
        // srun runs with the worker environment: this is how it finds the test cluster.
        ("SLURM_CONF".into(), cluster.conf().display().to_string()),
        ("DAGGER_PROBE_TAG".into(), "slurm tag".into()),
    ];
    let in_job = vec![format!("--jobid={job}")];
    let spec = LaunchSpec::Slurm {
        workers: 2,
        threads: 1,
        extra_args: in_job.clone(),
    };
    let mut launched = launch(&spec, &env)
        .unwrap_or_else(|e| panic!("{e}\nslurmctld log:\n{}", cluster.log("slurmctld.log")));
    assert_eq!(launched.ids(), [5, 6]);
    for w in launched.workers() {
        assert_eq!(
            (w.kind(), w.host(), w.pid()),
            (LauncherKind::Slurm, None, None)
        );
    }
    let mut conns = head.accept(2, PATIENCE).unwrap();
    for (conn, (id, rank)) in conns.iter().zip([(5, "0"), (6, "1")]) {
        let r = &conn.report;
        assert_eq!((r.id(), r.get("rank")), (id, rank), "{r:?}");
        assert_eq!(
            r.get("job"),
            job,
            "the workers did not run in the allocation"
        );
        assert_eq!(r.get("threads"), "1");
        assert_eq!(r.get("via"), "env");
        assert_eq!(r.get("secret"), sha256_hex(&secret));
        assert_eq!(r.get("tag"), "slurm tag");
        assert_eq!(r.get("args"), "--probe-arg");
    }
    assert_eq!(
        process_with_argument(&secret),
        None,
        "the secret is on a command line"
    );

    // More workers while the first step runs: a second step, sharing the CPUs.
    let spec_one = LaunchSpec::Slurm {
        workers: 1,
        threads: 1,
        extra_args: in_job.clone(),
    };
    assert_eq!(launched.launch_more(&spec_one, &env).unwrap(), [7]);
    let mut late = head.accept(1, PATIENCE).unwrap();
    assert_eq!((late[0].report.id(), late[0].report.get("rank")), (7, "0"));

    // Killing a worker ends its step (here it alone); the other step runs on.
    assert_eq!(launched.kill(7).unwrap(), [7]);
    late[0].wait_closed(PATIENCE).unwrap();
    assert!(conns[0].is_open() && conns[1].is_open());

    // Dropping the handles ends the first step.
    drop(launched);
    for conn in &mut conns {
        conn.wait_closed(PATIENCE).unwrap();
    }

    // srun's own refusal comes back as the error.
    let bad = LaunchSpec::Slurm {
        workers: 1,
        threads: 1,
        extra_args: vec!["--partition=nope".into()],
    };
    let err = launch(&bad, &env).unwrap_err();
    assert!(matches!(err, LaunchError::StartFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("partition"), "{err}");

    // A program missing on the node is reported by the task wrapper.
    let mut missing_exe = env.clone();
    missing_exe.exe = Some("/nonexistent/dagger-probe".into());
    let err = launch(&spec_one, &missing_exe).unwrap_err();
    assert!(err.to_string().contains("not an executable file"), "{err}");

    // `salloc -n 2 prog head` with DAGGER_LAUNCHER=slurm: configured by the environment,
    // the program starts its workers in its own allocation.
    let mut program = support::HeadProgram::start(
        cluster
            .command("salloc")
            .args(["--ntasks=2", "--time=5", PROBE, "head"])
            .env("DAGGER_LAUNCHER", "slurm")
            .env("DAGGER_SECRET", &secret)
            .env("DAGGER_PROBE_HEAD", head.addr()),
    )
    .unwrap();
    assert_eq!(program.ids, "1,2");
    let mut conns = head.accept_workers(2, &secret);
    for conn in &conns {
        let r = &conn.report;
        assert_eq!(r.get("args"), "head", "{r:?}");
        assert_ne!(r.get("job"), job, "expected salloc's new allocation");
    }
    assert!(program.finish().unwrap().success());
    for conn in &mut conns {
        conn.wait_closed(PATIENCE).unwrap();
    }

    // SPMD: `srun -n 3 prog` inside the allocation; rank 0 is the head.
    let out = run_bounded(
        cluster
            .command("srun")
            .args([
                &format!("--jobid={job}"),
                "--ntasks=3",
                "--overlap",
                PROBE,
                "spmd",
            ])
            .env("DAGGER_SECRET", &secret)
            .env_remove("DAGGER_RENDEZVOUS"),
        PATIENCE,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "srun spmd failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let head_report = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HEAD "))
        .map(Report::parse)
        .unwrap_or_else(|| panic!("no HEAD line in:\n{stdout}"));
    assert_eq!(
        (
            head_report.get("rank"),
            head_report.get("size"),
            head_report.get("kind")
        ),
        ("0", "3", "slurm")
    );
    assert!(
        head_report.get("path").contains(&format!("slurm-{job}.")),
        "{head_report:?}"
    );
    let peers: Vec<Report> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("PEER "))
        .map(Report::parse)
        .collect();
    let ranks: Vec<&str> = peers.iter().map(|p| p.get("rank")).collect();
    assert_eq!(ranks, ["1", "2"], "{stdout}");
    for p in &peers {
        assert_eq!((p.get("size"), p.get("kind")), ("3", "slurm"));
        assert_eq!(p.get("secret"), sha256_hex(&secret));
    }
    drop(cluster);
    eprintln!("slurm test took {:?}", started.elapsed());
}
