//! Workers as the tasks of one `srun` job step.
//!
//! `srun` passes its whole environment to every task, so each task computes its own worker
//! id in a small POSIX sh wrapper: `DAGGER_WORKER_ID = DAGGER_WORKER_ID_BASE + SLURM_PROCID`.
//! The wrapper also checks that the program exists on the node and reports the start on
//! standard error, which `srun` relays here.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use super::process::{Proc, Relay, Started, Stop, FAILED_MARKER, GRACE, STARTED_MARKER};
use super::{find_program, local, sys, vars, LaunchError, LauncherKind, WorkerEnv};
use super::{Launched, WorkerProcess};

/// Variable carrying the first worker id of the step to the wrapper (removed before the
/// worker runs).
pub(super) const ID_BASE_VAR: &str = "DAGGER_WORKER_ID_BASE";

fn wrapper() -> String {
    format!(
        "DAGGER_WORKER_ID=$(( {ID_BASE_VAR} + SLURM_PROCID )); export DAGGER_WORKER_ID; \
         unset {ID_BASE_VAR}; \
         if [ ! -x \"$1\" ] || [ -d \"$1\" ]; then \
           echo \"dagger: $1 is not an executable file on $(uname -n)\" >&2; \
           echo \"{FAILED_MARKER}\" >&2; exit 127; fi; \
         echo \"{STARTED_MARKER}\" >&2; exec \"$@\""
    )
}

/// The `srun` arguments before the program.
fn srun_args(workers: usize, threads: usize, extra_args: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--ntasks={workers}"),
        "--job-name=dagger-workers".to_string(),
        "--kill-on-bad-exit=0".to_string(),
        "--overlap".to_string(),
        "--export=ALL".to_string(),
    ];
    if threads > 0 {
        args.push(format!("--cpus-per-task={threads}"));
    }
    args.extend(extra_args.iter().cloned());
    args
}

pub(super) fn launch(
    workers: usize,
    threads: usize,
    extra_args: &[String],
    env: &WorkerEnv,
) -> Result<Vec<WorkerProcess>, LaunchError> {
    if workers == 0 {
        return Ok(Vec::new());
    }
    let srun = find_program("srun").ok_or_else(|| LaunchError::MissingProgram {
        program: "srun".into(),
        hint: "the SLURM launcher runs the workers as an srun job step; run on a node of a \
               Slurm cluster (Debian: slurm-client)"
            .into(),
    })?;
    let (exe, args) = env.program()?;
    let mut vars = env.common_vars();
    vars.push((ID_BASE_VAR.into(), env.first_id.to_string()));
    vars.push((vars::THREADS.into(), threads.to_string()));
    vars.push((vars::SECRET.into(), env.secret_hex.clone()));

    let mut cmd = Command::new(&srun);
    cmd.args(srun_args(workers, threads, extra_args))
        .args(["/bin/sh", "-c", &wrapper(), "dagger-worker"])
        .arg(&exe)
        .args(&args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    local::set_env(&mut cmd, &vars);
    // srun cancels its step on SIGTERM.
    sys::detach(&mut cmd, sys::SIGTERM);
    let mut child = sys::spawn(cmd).map_err(|source| LaunchError::Spawn {
        program: srun.clone(),
        source,
    })?;
    let relay = match child.stderr.take().map(|e| Relay::start(e, "srun")) {
        Some(Ok(relay)) => relay,
        failed => {
            drop(Proc::new(child, Stop::Term, None));
            return Err(LaunchError::Io {
                context: "cannot relay the standard error of srun".into(),
                source: match failed {
                    Some(Err(e)) => e,
                    _ => std::io::Error::other("it is not piped"),
                },
            });
        }
    };
    let proc = Arc::new(Proc::new(child, Stop::Term, Some(Arc::clone(&relay))));
    let ids = env.first_id..env.first_id + workers as u32;
    let mut started = Launched {
        workers: ids
            .clone()
            .map(|id| WorkerProcess {
                id,
                host: None,
                kind: LauncherKind::Slurm,
                proc: Arc::clone(&proc),
            })
            .collect(),
        next_id: 0,
    };
    drop(proc);

    let what = format!("the srun step of workers {}..={}", ids.start, ids.end - 1);
    match relay.wait_started(workers, Instant::now() + env.start_timeout) {
        Started::Yes => {
            relay.start_forwarding();
            Ok(std::mem::take(&mut started.workers))
        }
        Started::Failed => Err(LaunchError::StartFailed {
            what,
            status: None,
            stderr: relay.tail(),
        }),
        Started::Ended => {
            let proc = &started.workers[0].proc;
            proc.wait_until(Instant::now() + GRACE);
            Err(LaunchError::StartFailed {
                what,
                status: proc.try_wait().ok().flatten(),
                stderr: relay.tail(),
            })
        }
        Started::TimedOut => Err(LaunchError::StartTimeout {
            what: format!("{what} (srun may be waiting for resources)"),
            waited: env.start_timeout,
            stderr: relay.tail(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let args = srun_args(3, 0, &["--nodes=2".into()]);
        assert!(args.contains(&"--ntasks=3".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--cpus-per-task")));
        assert_eq!(args.last().unwrap(), "--nodes=2");
        assert!(srun_args(1, 4, &[]).contains(&"--cpus-per-task=4".to_string()));
        assert!(!wrapper().contains('\''));
    }
}
