//! Workers on other hosts, started through `ssh`.
//!
//! Each worker gets its own `ssh` session running, through the remote login shell,
//!
//! ```text
//! exec env DAGGER_ROLE=worker ... DAGGER_SECRET_STDIN=1 /bin/sh -c '<wrapper>' dagger-worker <cwd> <exe> <args>...
//! ```
//!
//! The wrapper changes to `<cwd>` if it exists, checks that `<exe>` is executable, reads the
//! secret line from its standard input and hands it to the worker through a pipe (so the
//! worker reads it from *its* standard input), reports the start on standard error, and then
//! watches the session's standard input: when that ends (the head closed it, or `ssh` died
//! and sshd closed the session) it kills the worker. When the worker exits first, the
//! wrapper exits with its status, and so does `ssh`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::process::{Proc, Relay, Started, Stop, FAILED_MARKER, GRACE, STARTED_MARKER};
use super::{error, find_program, sys, vars, LaunchError, Launched, LauncherKind};
use super::{WorkerEnv, WorkerProcess};

/// The remote wrapper (POSIX sh; no single quotes, it is itself single-quoted).
fn wrapper() -> String {
    format!(
        "cd \"$1\" 2>/dev/null; shift; \
         if [ ! -x \"$1\" ] || [ -d \"$1\" ]; then \
           echo \"dagger: $1 is not an executable file on $(uname -n)\" >&2; \
           echo \"{FAILED_MARKER}\" >&2; exit 127; fi; \
         IFS= read -r s || {{ echo \"dagger: no secret on standard input\" >&2; \
           echo \"{FAILED_MARKER}\" >&2; exit 97; }}; \
         exec 3<&0; \
         printf \"%s\\n\" \"$s\" | \"$@\" 3<&- & c=$!; s=; \
         echo \"{STARTED_MARKER}\" >&2; \
         {{ while read -r _; do :; done <&3; kill -KILL $c; }} >/dev/null 2>&1 & w=$!; \
         exec 3<&-; wait $c 2>/dev/null; r=$?; kill $w 2>/dev/null; exit $r"
    )
}

/// Quotes `s` for a POSIX shell (and for csh, as long as `s` holds no `!` or newline, which
/// [`WorkerEnv`] validation and [`check_word`] rule out for everything but paths).
pub(super) fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'-' | b'.' | b'/' | b',' | b':' | b'@' | b'%' | b'+' | b'='
                )
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A word for the remote command line: UTF-8, without NUL or line breaks.
fn check_word<'a>(what: &str, word: &'a OsStr) -> Result<&'a str, LaunchError> {
    match word.to_str() {
        Some(s) if !s.contains(['\0', '\n', '\r']) => Ok(s),
        _ => Err(LaunchError::Config(format!(
            "{what} {word:?} cannot be passed through ssh: it is not UTF-8 or holds a line break"
        ))),
    }
}

fn check_host(host: &str) -> Result<(), LaunchError> {
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && !host.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(LaunchError::Config(format!("bad ssh host {host:?}")))
    }
}

/// The ssh part of a [`super::LaunchSpec::Ssh`].
pub(super) struct SshSpec<'a> {
    pub(super) hosts: &'a [String],
    pub(super) threads: usize,
    pub(super) port: Option<u16>,
    pub(super) identity: Option<&'a Path>,
    pub(super) ssh_options: &'a [String],
    pub(super) exe: Option<&'a Path>,
}

/// The remote command line of worker `id`.
fn remote_command(
    spec: &SshSpec<'_>,
    env: &WorkerEnv,
    id: u32,
    cwd: &str,
    exe: &str,
    args: &[&str],
) -> String {
    let mut vars = env.common_vars();
    vars.push((vars::WORKER_ID.into(), id.to_string()));
    vars.push((vars::THREADS.into(), spec.threads.to_string()));
    vars.push((vars::SECRET_STDIN.into(), "1".into()));
    let mut cmd = String::from("exec env");
    for (k, v) in &vars {
        cmd.push(' ');
        cmd.push_str(&sh_quote(&format!("{k}={v}")));
    }
    cmd.push_str(" /bin/sh -c ");
    cmd.push_str(&sh_quote(&wrapper()));
    cmd.push_str(" dagger-worker ");
    cmd.push_str(&sh_quote(cwd));
    cmd.push(' ');
    cmd.push_str(&sh_quote(exe));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(a));
    }
    cmd
}

pub(super) fn launch(
    spec: &SshSpec<'_>,
    env: &WorkerEnv,
) -> Result<Vec<WorkerProcess>, LaunchError> {
    if spec.hosts.is_empty() {
        return Ok(Vec::new());
    }
    for host in spec.hosts {
        check_host(host)?;
    }
    let ssh = find_program("ssh").ok_or_else(|| LaunchError::MissingProgram {
        program: "ssh".into(),
        hint: "it starts workers on the hosts of DAGGER_HOSTS / LaunchSpec::Ssh; install an \
               OpenSSH client (Debian: openssh-client)"
            .into(),
    })?;
    let (local_exe, args) = env.program()?;
    let exe = spec.exe.unwrap_or(&local_exe);
    let exe = check_word("the program path", exe.as_os_str())?.to_string();
    let args = args
        .iter()
        .map(|a| check_word("the argument", a))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = std::env::current_dir().ok();
    let cwd = cwd
        .as_deref()
        .and_then(|d| d.to_str())
        .filter(|d| !d.contains(['\0', '\n', '\r']))
        .unwrap_or(".");
    let connect_timeout = env
        .start_timeout
        .clamp(Duration::from_secs(1), Duration::from_secs(30));

    let mut started = Launched::default();
    let mut relays = Vec::with_capacity(spec.hosts.len());
    for (i, host) in spec.hosts.iter().enumerate() {
        let id = env.first_id + i as u32;
        let mut cmd = Command::new(&ssh);
        cmd.args(spec.ssh_options)
            .args(["-T", "-x", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("ConnectTimeout={}", connect_timeout.as_secs()));
        if let Some(port) = spec.port {
            cmd.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = spec.identity {
            cmd.arg("-i")
                .arg(identity)
                .args(["-o", "IdentitiesOnly=yes"]);
        }
        cmd.arg(host)
            .arg(remote_command(spec, env, id, cwd, &exe, &args))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        for name in vars::SCRUBBED {
            cmd.env_remove(name);
        }
        sys::detach(&mut cmd, sys::SIGKILL);
        let mut child = sys::spawn(cmd).map_err(|source| LaunchError::Spawn {
            program: ssh.clone(),
            source,
        })?;
        // The secret goes to the wrapper's standard input, which stays open: closing it ends
        // the worker. A small write into an empty pipe does not block.
        if let Some(stdin) = child.stdin.as_mut() {
            use std::io::Write;
            let _ = writeln!(stdin, "{}", env.secret_hex);
        }
        let relay = match child
            .stderr
            .take()
            .map(|e| Relay::start(e, &format!("ssh-{id}")))
        {
            Some(Ok(relay)) => relay,
            failed => {
                drop(Proc::new(child, Stop::CloseStdin, None));
                return Err(LaunchError::Io {
                    context: "cannot relay the standard error of ssh".into(),
                    source: match failed {
                        Some(Err(e)) => e,
                        _ => std::io::Error::other("it is not piped"),
                    },
                });
            }
        };
        started.workers.push(WorkerProcess {
            id,
            host: Some(host.clone()),
            kind: LauncherKind::Ssh,
            proc: Arc::new(Proc::new(child, Stop::CloseStdin, Some(Arc::clone(&relay)))),
        });
        relays.push(relay);
    }

    let deadline = Instant::now() + env.start_timeout;
    for (w, relay) in started.workers.iter().zip(&relays) {
        let host = w.host.as_deref().unwrap_or_default();
        let what = format!("worker {} on {host} (ssh)", w.id);
        match relay.wait_started(1, deadline) {
            Started::Yes => {}
            Started::Ended | Started::Failed => {
                w.proc.wait_until(Instant::now() + GRACE);
                let status = w.proc.try_wait().ok().flatten();
                return Err(error::ssh_failure(host, what, status, relay.tail()));
            }
            Started::TimedOut => {
                return Err(LaunchError::StartTimeout {
                    what,
                    waited: env.start_timeout,
                    stderr: relay.tail(),
                })
            }
        }
    }
    for relay in &relays {
        relay.start_forwarding();
    }
    Ok(std::mem::take(&mut started.workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
        assert!(!wrapper().contains('\''));
    }

    #[test]
    fn bad_hosts() {
        for h in ["", "-oProxyCommand=x", "a b", "a\nb"] {
            assert!(check_host(h).is_err(), "{h:?}");
        }
        assert!(check_host("user@host.example").is_ok());
    }
}
