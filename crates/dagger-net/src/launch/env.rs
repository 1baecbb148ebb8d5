//! [`LaunchSpec::from_env`]: the launch configured by environment variables.

use std::path::PathBuf;

use super::{split_args, vars, LaunchError, LaunchSpec};

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The variable's value, trimmed; empty counts as unset.
fn get(lookup: Lookup<'_>, var: &str) -> Option<String> {
    lookup(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn bad(var: &str, value: &str, reason: impl Into<String>) -> LaunchError {
    LaunchError::BadEnv {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn count(lookup: Lookup<'_>, var: &str) -> Result<Option<usize>, LaunchError> {
    get(lookup, var)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| bad(var, &v, "expected a whole number (0, 1, 2, ...)"))
        })
        .transpose()
}

fn hosts(lookup: Lookup<'_>) -> Result<Option<Vec<String>>, LaunchError> {
    let Some(list) = get(lookup, vars::HOSTS) else {
        return Ok(None);
    };
    let mut hosts = Vec::new();
    for host in list.split(',').map(str::trim) {
        if host.is_empty() {
            return Err(bad(
                vars::HOSTS,
                &list,
                "an entry of the comma-separated list is empty",
            ));
        }
        if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                vars::HOSTS,
                &list,
                format!("{host:?} is not a host name (expected host or user@host)"),
            ));
        }
        hosts.push(host.to_string());
    }
    Ok(Some(hosts))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Launcher {
    Local,
    Ssh,
    Slurm,
}

fn launcher(lookup: Lookup<'_>) -> Result<Option<Launcher>, LaunchError> {
    let Some(v) = get(lookup, vars::LAUNCHER) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "local" => Ok(Some(Launcher::Local)),
        "ssh" => Ok(Some(Launcher::Ssh)),
        "slurm" => Ok(Some(Launcher::Slurm)),
        _ => Err(bad(vars::LAUNCHER, &v, "expected local, ssh or slurm")),
    }
}

fn ssh_spec(
    lookup: Lookup<'_>,
    hosts: Vec<String>,
    threads: usize,
) -> Result<LaunchSpec, LaunchError> {
    let port = get(lookup, vars::SSH_PORT)
        .map(|v| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(
                vars::SSH_PORT,
                &v,
                "expected a port number (1 to 65535)",
            )),
        })
        .transpose()?;
    let exe = get(lookup, vars::SSH_EXE).map(PathBuf::from);
    if let Some(exe) = &exe {
        if !exe.is_absolute() {
            return Err(bad(
                vars::SSH_EXE,
                &exe.to_string_lossy(),
                "expected an absolute path",
            ));
        }
    }
    Ok(LaunchSpec::Ssh {
        hosts,
        threads,
        port,
        identity: get(lookup, vars::SSH_IDENTITY).map(PathBuf::from),
        ssh_options: get(lookup, vars::SSH_OPTS)
            .as_deref()
            .map(split_args)
            .unwrap_or_default(),
        exe,
    })
}

fn slurm_spec(
    lookup: Lookup<'_>,
    workers: Option<usize>,
    threads: usize,
) -> Result<LaunchSpec, LaunchError> {
    if get(lookup, "SLURM_JOB_ID").is_none() {
        return Err(LaunchError::Config(
            "DAGGER_LAUNCHER=slurm needs a Slurm allocation, and SLURM_JOB_ID is not set: run \
             the program inside salloc or an sbatch script"
                .into(),
        ));
    }
    let workers = match workers {
        Some(n) => n,
        None => match count(lookup, "SLURM_NTASKS")? {
            Some(n) => n,
            None => count(lookup, "SLURM_JOB_NUM_NODES")?.ok_or_else(|| {
                LaunchError::Config(
                    "DAGGER_LAUNCHER=slurm: set DAGGER_WORKERS (the allocation sets neither \
                     SLURM_NTASKS nor SLURM_JOB_NUM_NODES)"
                        .into(),
                )
            })?,
        },
    };
    Ok(LaunchSpec::Slurm {
        workers,
        threads,
        extra_args: get(lookup, vars::SRUN_ARGS)
            .as_deref()
            .map(split_args)
            .unwrap_or_default(),
    })
}

pub(super) fn spec_from_vars(lookup: Lookup<'_>) -> Result<Option<LaunchSpec>, LaunchError> {
    if get(lookup, vars::ROLE).is_some() {
        return Ok(None);
    }
    let launcher = launcher(lookup)?;
    let threads = count(lookup, vars::WORKER_THREADS)?.unwrap_or(0);
    let workers = count(lookup, vars::WORKERS)?;
    let hosts = hosts(lookup)?;
    let spec = match launcher {
        None => match (workers, hosts) {
            (Some(_), Some(_)) => {
                return Err(LaunchError::Config(
                    "both DAGGER_WORKERS and DAGGER_HOSTS are set: set DAGGER_LAUNCHER=local \
                     or DAGGER_LAUNCHER=ssh to choose"
                        .into(),
                ))
            }
            (Some(0), None) | (None, None) => None,
            (Some(workers), None) => Some(LaunchSpec::Local { workers, threads }),
            (None, Some(hosts)) => Some(ssh_spec(lookup, hosts, threads)?),
        },
        Some(Launcher::Local) => {
            if hosts.is_some() {
                return Err(LaunchError::Config(
                    "DAGGER_LAUNCHER=local does not use DAGGER_HOSTS: unset one of them".into(),
                ));
            }
            let workers = workers.ok_or_else(|| {
                LaunchError::Config("DAGGER_LAUNCHER=local needs DAGGER_WORKERS=<number>".into())
            })?;
            Some(LaunchSpec::Local { workers, threads })
        }
        Some(Launcher::Ssh) => {
            if workers.is_some() {
                return Err(LaunchError::Config(
                    "DAGGER_LAUNCHER=ssh starts one worker per DAGGER_HOSTS entry and does not \
                     use DAGGER_WORKERS: unset it, or repeat a host to start more workers there"
                        .into(),
                ));
            }
            let hosts = hosts.ok_or_else(|| {
                LaunchError::Config("DAGGER_LAUNCHER=ssh needs DAGGER_HOSTS=host1,host2,...".into())
            })?;
            Some(ssh_spec(lookup, hosts, threads)?)
        }
        Some(Launcher::Slurm) => {
            if hosts.is_some() {
                return Err(LaunchError::Config(
                    "DAGGER_LAUNCHER=slurm does not use DAGGER_HOSTS: Slurm places the workers"
                        .into(),
                ));
            }
            Some(slurm_spec(lookup, workers, threads)?)
        }
    };
    Ok(spec)
}
