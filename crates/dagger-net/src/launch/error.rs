//! Why a launch failed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why workers could not be started, or an SPMD rank could not find its head.
#[derive(Debug)]
#[non_exhaustive]
pub enum LaunchError {
    /// An environment variable has a value that cannot be used.
    BadEnv {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is incomplete or contradictory.
    Config(String),
    /// No worker has this id (here).
    UnknownWorker(u32),
    /// A program the launcher needs is not installed (not on `PATH`).
    MissingProgram {
        /// The program (`ssh`, `srun`).
        program: String,
        /// What it was needed for, and how to get it.
        hint: String,
    },
    /// A local process could not be started.
    Spawn {
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// `ssh` could not reach the host (refused, unresolvable, timed out, ...).
    HostUnreachable {
        /// The host, as given.
        host: String,
        /// What `ssh` wrote to standard error.
        stderr: String,
    },
    /// `ssh` reached the host, but logging in failed.
    SshAuth {
        /// The host, as given.
        host: String,
        /// What `ssh` wrote to standard error.
        stderr: String,
    },
    /// The launcher process (`ssh`, `srun`) or the remote start-up ended before the worker
    /// started.
    StartFailed {
        /// What was being started, e.g. `worker 3 on host h (ssh)`.
        what: String,
        /// The exit status of the local launcher process.
        status: Option<ExitStatus>,
        /// What it wrote to standard error.
        stderr: String,
    },
    /// The workers did not start within [`super::WorkerEnv::start_timeout`].
    StartTimeout {
        /// What was being started.
        what: String,
        /// How long the launcher waited.
        waited: Duration,
        /// What the launcher wrote to standard error so far.
        stderr: String,
    },
    /// No head published its address in time.
    RendezvousTimeout {
        /// The rendezvous file waited for.
        path: PathBuf,
        /// How long.
        waited: Duration,
    },
    /// The rendezvous file cannot be used.
    Rendezvous {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Other I/O failed.
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
}

fn stderr_suffix(f: &mut fmt::Formatter<'_>, stderr: &str) -> fmt::Result {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        Ok(())
    } else {
        write!(f, "; its standard error:\n{stderr}")
    }
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::BadEnv { var, value, reason } => {
                write!(f, "environment variable {var}={value:?}: {reason}")
            }
            LaunchError::Config(msg) => write!(f, "launch configuration: {msg}"),
            LaunchError::UnknownWorker(id) => write!(f, "there is no worker {id}"),
            LaunchError::MissingProgram { program, hint } => {
                write!(f, "`{program}` was not found on PATH: {hint}")
            }
            LaunchError::Spawn { program, source } => {
                write!(f, "cannot start {}: {source}", program.display())
            }
            LaunchError::HostUnreachable { host, stderr } => {
                write!(f, "ssh cannot reach host {host}")?;
                stderr_suffix(f, stderr)
            }
            LaunchError::SshAuth { host, stderr } => {
                write!(
                    f,
                    "ssh could not log in to {host} (ssh runs with BatchMode=yes: it needs a \
                     key, from the agent or the identity file, that the host accepts)"
                )?;
                stderr_suffix(f, stderr)
            }
            LaunchError::StartFailed {
                what,
                status,
                stderr,
            } => {
                write!(f, "{what} did not start")?;
                if let Some(status) = status {
                    write!(f, " ({status})")?;
                }
                stderr_suffix(f, stderr)
            }
            LaunchError::StartTimeout {
                what,
                waited,
                stderr,
            } => {
                write!(f, "{what} had not started after {waited:?}")?;
                stderr_suffix(f, stderr)
            }
            LaunchError::RendezvousTimeout { path, waited } => write!(
                f,
                "no head published its address in {} within {waited:?}: did rank 0 start \
                 and reach dagger's start-up? If the ranks run on different machines, set \
                 DAGGER_RENDEZVOUS to a path on a file system they share",
                path.display()
            ),
            LaunchError::Rendezvous { path, reason } => {
                write!(f, "rendezvous file {}: {reason}", path.display())
            }
            LaunchError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for LaunchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LaunchError::Spawn { source, .. } | LaunchError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Phrases with which OpenSSH reports that it could not reach a host.
const UNREACHABLE: &[&str] = &[
    "connection refused",
    "could not resolve hostname",
    "name or service not known",
    "no route to host",
    "network is unreachable",
    "connection timed out",
    "operation timed out",
    "connection closed by",
    "connection reset by",
];

/// Classifies the failure of an `ssh` that exited before the worker started.
pub(super) fn ssh_failure(
    host: &str,
    what: String,
    status: Option<ExitStatus>,
    stderr: String,
) -> LaunchError {
    let lower = stderr.to_lowercase();
    // ssh itself exits with 255 on its own errors; other codes come from the remote side.
    let ssh_error = status.and_then(|s| s.code()) == Some(255);
    if ssh_error && lower.contains("permission denied") {
        LaunchError::SshAuth {
            host: host.to_string(),
            stderr,
        }
    } else if ssh_error && UNREACHABLE.iter().any(|p| lower.contains(p)) {
        LaunchError::HostUnreachable {
            host: host.to_string(),
            stderr,
        }
    } else {
        LaunchError::StartFailed {
            what,
            status,
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn status(code: i32) -> Option<ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        Some(ExitStatus::from_raw(code << 8))
    }

    #[cfg(unix)]
    #[test]
    fn classifies_ssh_failures() {
        let f = |code, msg: &str| ssh_failure("h", "w".into(), status(code), msg.into());
        assert!(matches!(
            f(255, "root@h: Permission denied (publickey)."),
            LaunchError::SshAuth { .. }
        ));
        assert!(matches!(
            f(255, "ssh: connect to host h port 1: Connection refused"),
            LaunchError::HostUnreachable { .. }
        ));
        assert!(matches!(
            f(127, "dagger: /x is not an executable file on h"),
            LaunchError::StartFailed { .. }
        ));
        let msg = f(255, "ssh: Could not resolve hostname nope").to_string();
        assert!(
            msg.contains("cannot reach host h") && msg.contains("Could not resolve"),
            "{msg}"
        );
    }
}
