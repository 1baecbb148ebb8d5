//! A throwaway single-node Slurm cluster on 127.0.0.1: its own munged (own key and socket),
//! slurmctld and slurmd in the foreground as children of the test, free ports, all state in a
//! temp dir; jobs cancelled and daemons stopped (by their pids) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_binary, free_port, missing, run_bounded, TempDir, PATIENCE};

/// The programs a SLURM test needs.
pub fn missing_programs() -> Vec<String> {
    missing(&[
        "munged",
        "slurmctld",
        "slurmd",
        "srun",
        "salloc",
        "sinfo",
        "squeue",
        "scancel",
    ])
}

pub struct SlurmCluster {
    /// Daemons in start order (stopped in reverse).
    daemons: Vec<(String, Child)>,
    conf: PathBuf,
    dir: TempDir,
}

fn spawn_daemon(program: &str, args: &[&str], conf: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let path = find_binary(program).ok_or(format!("no {program}"))?;
    Command::new(&path)
        .args(args)
        .env("SLURM_CONF", conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group, so that stopping it reaches its helpers (slurmscriptd).
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
fn poll(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SlurmCluster {
    pub fn start() -> Result<SlurmCluster, String> {
        let dir = TempDir::new("dagger-slurm");
        let d = dir.path().to_path_buf();
        for sub in ["spool", "state", "log"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
        }
        let conf = d.join("slurm.conf");
        let mut cluster = SlurmCluster {
            daemons: Vec::new(),
            conf: conf.clone(),
            dir,
        };

        // munged with its own key and socket: nothing shared with a system munged.
        let key = d.join("munge.key");
        std::fs::write(&key, super::random_hex(512)).map_err(|e| e.to_string())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400))
                .map_err(|e| e.to_string())?;
        }
        let socket = d.join("munge.sock");
        let arg = |name: &str, path: &Path| format!("--{name}={}", path.display());
        let munged = spawn_daemon(
            "munged",
            &[
                "--foreground",
                "--force",
                &arg("socket", &socket),
                &arg("key-file", &key),
                &arg("pid-file", &d.join("munged.pid")),
                &arg("log-file", &d.join("log/munged.log")),
                &arg("seed-file", &d.join("munge.seed")),
            ],
            &conf,
        )?;
        cluster.daemons.push(("munged".into(), munged));
        if !poll(Duration::from_secs(10), || socket.exists()) {
            return Err(format!(
                "munged did not start: {}",
                cluster.log("munged.log")
            ));
        }

        let cpus = 8; // slurmd is told to believe the configuration (config_overrides)
        std::fs::write(
            &conf,
            format!(
                "ClusterName=daggertest\n\
                 SlurmctldHost=localhost\n\
                 SlurmUser={user}\nSlurmdUser={user}\n\
                 AuthType=auth/munge\nAuthInfo=socket={socket}\nCredType=cred/munge\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SchedulerType=sched/backfill\nSelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\nSlurmdParameters=config_overrides\n\
                 ReturnToService=2\nKillWait=2\nMpiDefault=none\nMailProg=/bin/true\n\
                 SlurmctldPort={ctld}\nSlurmdPort={slurmd}\n\
                 NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP \
                 OverSubscribe=YES\n",
                user = super::sshd::current_user(),
                socket = socket.display(),
                d = d.display(),
                ctld = free_port(),
                slurmd = free_port(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let conf_arg = conf.to_string_lossy().to_string();
        let ctld = spawn_daemon("slurmctld", &["-D", "-f", &conf_arg], &conf)?;
        cluster.daemons.push(("slurmctld".into(), ctld));
        let slurmd = spawn_daemon("slurmd", &["-D", "-N", "localhost", "-f", &conf_arg], &conf)?;
        cluster.daemons.push(("slurmd".into(), slurmd));

        let idle = poll(Duration::from_secs(30), || {
            cluster
                .run("sinfo", &["-h", "-o", "%T"])
                .is_ok_and(|out| out.trim() == "idle")
        });
        if !idle {
            return Err(format!(
                "the node did not become idle within 30 s; slurmctld log:\n{}\nslurmd log:\n{}",
                cluster.log("slurmctld.log"),
                cluster.log("slurmd.log")
            ));
        }
        Ok(cluster)
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A command for this cluster's client programs.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(find_binary(program).unwrap_or_else(|| program.into()));
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Runs a client program; its standard output, or an error with its standard error.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = run_bounded(self.command(program).args(args), PATIENCE)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{program} {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// An allocation of `ntasks` tasks (`salloc --no-shell`); its job id.
    pub fn allocate(&self, ntasks: usize) -> Result<String, String> {
        let out = run_bounded(
            self.command("salloc")
                .args(["--no-shell", "--time=5", "--job-name=dagger-test"])
                .arg(format!("--ntasks={ntasks}")),
            PATIENCE,
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr
            .lines()
            .find_map(|l| l.split("Granted job allocation ").nth(1))
            .map(|id| id.trim().to_string())
            .ok_or_else(|| format!("salloc failed ({}): {stderr}", out.status))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("log").join(name)).unwrap_or_default()
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        if self.daemons.len() == 3 {
            let user = super::sshd::current_user();
            let _ = self.run("scancel", &["--user", &user]);
            poll(Duration::from_secs(15), || {
                self.run("squeue", &["-h"])
                    .is_ok_and(|out| out.trim().is_empty())
            });
        }
        while let Some((_, mut child)) = self.daemons.pop() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(Stdio::null())
                .status();
            if !poll(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            }) {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &group])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.wait();
            }
        }
    }
}
