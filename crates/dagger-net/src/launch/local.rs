//! Worker processes on this machine.

use std::process::{Command, Stdio};
use std::sync::Arc;

use super::process::{Proc, Stop};
use super::{sys, vars, LaunchError, LauncherKind, WorkerEnv, WorkerProcess};

/// Removes the launcher's variables inherited from this process and sets `vars`.
pub(super) fn set_env(cmd: &mut Command, vars: &[(String, String)]) {
    for name in vars::SCRUBBED {
        cmd.env_remove(name);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
}

/// `0` threads: this machine's CPUs shared among the workers.
fn resolve_threads(threads: usize, workers: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / workers.max(1)).max(1)
}

pub(super) fn launch(
    workers: usize,
    threads: usize,
    env: &WorkerEnv,
) -> Result<Vec<WorkerProcess>, LaunchError> {
    if workers == 0 {
        return Ok(Vec::new());
    }
    let (exe, args) = env.program()?;
    let threads = resolve_threads(threads, workers);
    let mut started = Vec::with_capacity(workers);
    for i in 0..workers {
        let id = env.first_id + i as u32;
        let mut vars = env.common_vars();
        vars.push((vars::WORKER_ID.into(), id.to_string()));
        vars.push((vars::THREADS.into(), threads.to_string()));
        vars.push((vars::SECRET.into(), env.secret_hex.clone()));
        if let Some(cpus) = env.pin_cpus.as_deref().filter(|c| !c.is_empty()) {
            let first = (id.max(1) as usize - 1) * threads;
            let mine: Vec<String> = (0..threads)
                .map(|k| cpus[(first + k) % cpus.len()].to_string())
                .collect();
            vars.push((vars::PIN_CPUS.into(), mine.join(",")));
        }
        let mut cmd = Command::new(&exe);
        cmd.args(&args).stdin(Stdio::null());
        set_env(&mut cmd, &vars);
        sys::detach(&mut cmd, sys::SIGKILL);
        // On failure, `started` drops and ends the workers started so far.
        let child = sys::spawn(cmd).map_err(|source| LaunchError::Spawn {
            program: exe.clone(),
            source,
        })?;
        started.push(WorkerProcess {
            id,
            host: Some("localhost".into()),
            kind: LauncherKind::Local,
            proc: Arc::new(Proc::new(child, Stop::Kill, None)),
        });
    }
    Ok(started)
}
