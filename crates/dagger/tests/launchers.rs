//! A real cluster started by each launcher: SSH workers through a throwaway sshd, SLURM
//! workers as `srun` steps of a single-node test cluster, and SPMD ranks under `mpirun`.
//! The same test binary is the worker program. Missing services skip a test (with the
//! reason), except under `DAGGER_REQUIRE_SERVICES=1` as in CI.

#[path = "../../dagger-net/tests/support/mod.rs"]
mod support;

use dagger::prelude::*;
use dagger::{current_processor, LaunchSpec, WorkerId};
use std::process::Command;
use support::{missing, random_hex, ready, run_bounded, TempDir, PATIENCE};

dagger::init_before_main!();

#[dagger::task]
fn whereami() -> (u32, u32) {
    (current_processor().worker.0, std::process::id())
}

#[dagger::task]
fn make(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[dagger::task]
fn total(xs: &[u64]) -> u64 {
    xs.iter().sum()
}

/// Runs tasks on every worker of `ctx` and moves a value between the first two.
fn exercise(ctx: &Context, workers: &[u32]) {
    ctx.enter(|| {
        for &w in workers {
            let (ran_on, pid) = spawn!(whereami(); scope = Scope::worker(w))
                .fetch()
                .unwrap();
            assert_eq!(ran_on, w);
            assert_ne!(pid, std::process::id());
        }
        let data = spawn!(make(1000); scope = Scope::worker(workers[0]));
        let sum = spawn!(total(&data); scope = Scope::worker(workers[1]));
        assert_eq!(sum.fetch().unwrap(), 499_500);
    });
}

#[test]
fn ssh_workers_run_tasks() {
    if !ready("ssh workers", support::sshd::missing_programs()) {
        return;
    }
    let sshd = support::sshd::Sshd::start().unwrap();
    let ctx = Context::builder()
        .threads(1)
        .workers(sshd.spec(vec!["127.0.0.1".into(); 2], 2))
        .build()
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()));
    let ids: Vec<WorkerId> = ctx.workers().iter().map(|w| w.id).collect();
    assert_eq!(ids, [WorkerId(1), WorkerId(2)]);
    exercise(&ctx, &[1, 2]);
}

#[test]
fn slurm_workers_run_tasks() {
    if !ready("slurm workers", support::slurm::missing_programs()) {
        return;
    }
    let cluster = support::slurm::SlurmCluster::start().unwrap();
    let job = cluster.allocate(3).unwrap();
    // srun, started by the head, finds the test cluster through the head's environment.
    std::env::set_var("SLURM_CONF", cluster.conf());
    let ctx = Context::builder()
        .threads(1)
        .workers(LaunchSpec::Slurm {
            workers: 2,
            threads: 1,
            extra_args: vec![format!("--jobid={job}")],
        })
        .build()
        .unwrap_or_else(|e| panic!("{e}\nslurmctld log:\n{}", cluster.log("slurmctld.log")));
    assert_eq!(ctx.workers().len(), 2);
    exercise(&ctx, &[1, 2]);
}

/// Set in the ranks `mpirun_ranks_form_a_cluster` starts: rank 0 runs that test's head part.
const RANK_ZERO: &str = "DAGGER_TEST_RANK_ZERO";

/// Runs `mpirun -n ranks` of this test binary, whose rank 0 runs
/// `mpirun_ranks_form_a_cluster` as the head; `secret`: the `DAGGER_SECRET` of every rank.
fn mpirun_this_test(ranks: u32, secret: Option<&str>) -> std::process::Output {
    // Open MPI races with a concurrent mpirun over its session directory: one per run.
    let tmp = TempDir::new("dagger-mpi-tmp");
    let mut cmd = Command::new("mpirun");
    cmd.env("TMPDIR", tmp.path())
        .args(["-n", &ranks.to_string(), "--oversubscribe", "-x", RANK_ZERO])
        .env(RANK_ZERO, "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("DAGGER_RENDEZVOUS")
        .env_remove("DAGGER_SECRET_FILE");
    match secret {
        Some(s) => cmd.args(["-x", "DAGGER_SECRET"]).env("DAGGER_SECRET", s),
        None => cmd.env_remove("DAGGER_SECRET"),
    };
    cmd.arg(std::env::current_exe().unwrap()).args([
        "--exact",
        "mpirun_ranks_form_a_cluster",
        "--nocapture",
        "--test-threads=1",
    ]);
    run_bounded(&mut cmd, PATIENCE).unwrap()
}

#[test]
fn mpirun_ranks_form_a_cluster() {
    if std::env::var_os(RANK_ZERO).is_some() {
        // Rank 0 of the run below (ranks 1 and 2 became workers before `main`).
        dagger::init().unwrap();
        let ctx = Context::global();
        let ids: Vec<WorkerId> = ctx.workers().iter().map(|w| w.id).collect();
        assert_eq!(ids, [WorkerId(1), WorkerId(2)]);
        exercise(ctx, &[1, 2]);
        println!("RANK0 OK");
        return;
    }
    if !ready("mpirun ranks", missing(&["mpirun"])) {
        return;
    }
    let out = mpirun_this_test(3, Some(&random_hex(32)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("RANK0 OK"),
        "mpirun failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_spmd_rank_without_the_secret_says_what_is_missing() {
    if !ready("mpirun ranks", missing(&["mpirun"])) {
        return;
    }
    let out = mpirun_this_test(2, None);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("needs the cluster secret"), "{all}");
    assert!(all.contains("DAGGER_SECRET"), "{all}");
}
