//! A throwaway OpenSSH server on 127.0.0.1: its own host key, one authorized user key, a
//! free port, all in a temp dir; stopped (by its pid) on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dagger_net::launch::LaunchSpec;

use super::{find_binary, free_port, missing, run_bounded, TempDir, PATIENCE};

/// The programs an SSH test needs.
pub fn missing_programs() -> Vec<String> {
    missing(&["ssh", "sshd", "ssh-keygen"])
}

/// The user running the tests.
pub fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let out = Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "root".into())
}

/// Makes an ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) -> Result<(), String> {
    let out = run_bounded(
        Command::new(find_binary("ssh-keygen").ok_or("no ssh-keygen")?)
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path),
        PATIENCE,
    )?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub struct Sshd {
    dir: TempDir,
    child: Child,
    pub port: u16,
    /// The key the server accepts.
    pub user_key: PathBuf,
}

impl Sshd {
    pub fn start() -> Result<Sshd, String> {
        let sshd = find_binary("sshd").ok_or("no sshd")?;
        // sshd (as root) needs its privilege separation directory; install.sh makes it too.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = TempDir::new("dagger-sshd");
        let d = dir.path();
        keygen(&d.join("hostkey"))?;
        keygen(&d.join("userkey"))?;
        let authorized = d.join("authorized_keys");
        std::fs::copy(d.join("userkey.pub"), &authorized).map_err(|e| e.to_string())?;
        let mut last_error = String::new();
        // The free port may be taken again before sshd binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\n\
                     AuthorizedKeysFile {auth}\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     StrictModes no\nUsePAM no\nPidFile {pid}\n",
                    host = d.join("hostkey").display(),
                    auth = authorized.display(),
                    pid = d.join("sshd.pid").display(),
                ),
            )
            .map_err(|e| e.to_string())?;
            let log = d.join("sshd.log");
            let mut child = Command::new(&sshd)
                .arg("-D")
                .arg("-f")
                .arg(&config)
                .arg("-E")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", sshd.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "sshd exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Sshd {
                        user_key: d.join("userkey"),
                        dir,
                        child,
                        port,
                    });
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "sshd did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Err(last_error)
    }

    /// `ssh` options for this throwaway server (no host key checks, no user config).
    pub fn ssh_options() -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        .map(String::from)
        .to_vec()
    }

    /// An SSH launch of one worker per host through this server.
    pub fn spec(&self, hosts: Vec<String>, threads: usize) -> LaunchSpec {
        LaunchSpec::Ssh {
            hosts,
            threads,
            port: Some(self.port),
            identity: Some(self.user_key.clone()),
            ssh_options: Sshd::ssh_options(),
            exe: None,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
