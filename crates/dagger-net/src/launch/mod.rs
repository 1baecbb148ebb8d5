//! Starting worker processes: on this machine, over SSH, with SLURM's `srun`, and the SPMD
//! start-up where `mpirun`/`srun` started every rank of the program at once.
//!
//! # The worker-process protocol
//!
//! A worker is the user's own executable started again, with the same arguments, and these
//! environment variables (names in [`vars`]):
//!
//! | variable | value |
//! |---|---|
//! | `DAGGER_ROLE` | `worker` |
//! | `DAGGER_HEAD` | `host:port` of the head to connect to |
//! | `DAGGER_WORKER_ID` | the worker's id, from 1 (the head is 0) |
//! | `DAGGER_THREADS` | compute threads to run; `0`: as many as the CPUs the worker may use |
//! | `DAGGER_SECRET` | the cluster secret (hex), for local and `srun` workers |
//! | `DAGGER_SECRET_STDIN` | `1` for SSH workers: read one line of hex from standard input instead |
//! | `DAGGER_TLS_FINGERPRINT` | optional: pin of the head's TLS certificate |
//!
//! plus the extra pairs of [`WorkerEnv::extra`]. The secret never appears on a command line:
//! local and `srun` children get it through their environment, and SSH writes it to the
//! remote command's standard input.
//!
//! # Choosing a launcher without changing the program
//!
//! [`LaunchSpec::from_env`] reads `DAGGER_WORKERS`, `DAGGER_HOSTS`, `DAGGER_LAUNCHER` and
//! friends (see there). A program started by `mpirun -n 3 ./prog` or, inside an allocation,
//! `srun -n 3 ./prog` is instead an SPMD program: [`spmd_rank`] tells each process its rank;
//! rank 0 becomes the head and [`publish_head`]s its address, the others [`wait_for_head`].
//! The runtime checks, in this order: `DAGGER_ROLE` (a started worker), [`spmd_rank`],
//! [`LaunchSpec::from_env`].
//!
//! # Lifetime
//!
//! [`launch`] returns when every worker process has started (for SSH and SLURM: when the
//! remote shell or `srun` task has started the program), or with an error saying why not.
//! The returned [`Launched`] owns the processes: dropping it, or a [`WorkerProcess`], ends
//! them. On Linux, local children, `ssh` clients and `srun` also die when this process dies,
//! however it dies, and a remote SSH worker is killed when its SSH session ends.
//!
//! ```no_run
//! use dagger_net::launch::{launch, LaunchSpec, WorkerEnv};
//!
//! # fn main() -> Result<(), dagger_net::launch::LaunchError> {
//! let spec = LaunchSpec::Local { workers: 2, threads: 4 };
//! let env = WorkerEnv::new("127.0.0.1:4000", "00112233445566778899aabbccddeeff");
//! let mut workers = launch(&spec, &env)?;
//! // ... the workers connect to 127.0.0.1:4000 as workers 1 and 2 ...
//! let more = workers.launch_more(&LaunchSpec::Local { workers: 1, threads: 4 }, &env)?;
//! assert_eq!(more, vec![3]);
//! workers.kill(1)?;
//! drop(workers); // ends workers 2 and 3
//! # Ok(())
//! # }
//! ```

mod env;
mod error;
mod local;
mod process;
mod rendezvous;
mod slurm;
mod spmd;
mod ssh;
mod sys;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::LaunchError;
pub use rendezvous::{
    publish_head, rendezvous_path, rendezvous_path_with, wait_for_head, HeadRendezvous,
};
pub use spmd::{spmd_rank, SpmdKind, SpmdRank};

use process::Proc;

/// Names of the environment variables of the worker protocol and of the launcher
/// configuration.
pub mod vars {
    /// `worker` in a process started by a launcher.
    pub const ROLE: &str = "DAGGER_ROLE";
    /// `host:port` of the head.
    pub const HEAD: &str = "DAGGER_HEAD";
    /// The worker's id (from 1).
    pub const WORKER_ID: &str = "DAGGER_WORKER_ID";
    /// Compute threads of the worker (`0`: all CPUs it may use).
    pub const THREADS: &str = "DAGGER_THREADS";
    /// The cluster secret, hex.
    pub const SECRET: &str = "DAGGER_SECRET";
    /// A file holding the cluster secret.
    pub const SECRET_FILE: &str = "DAGGER_SECRET_FILE";
    /// `1`: read the secret as one line of hex from standard input.
    pub const SECRET_STDIN: &str = "DAGGER_SECRET_STDIN";
    /// SHA-256 fingerprint (hex) of the head's TLS certificate.
    pub const TLS_FINGERPRINT: &str = "DAGGER_TLS_FINGERPRINT";
    /// Path of the SPMD rendezvous file.
    pub const RENDEZVOUS: &str = "DAGGER_RENDEZVOUS";
    /// `local`, `ssh` or `slurm`: which launcher [`super::LaunchSpec::from_env`] picks.
    pub const LAUNCHER: &str = "DAGGER_LAUNCHER";
    /// Number of workers (local processes, or `srun` tasks).
    pub const WORKERS: &str = "DAGGER_WORKERS";
    /// Comma-separated SSH hosts (`host` or `user@host`), one worker each.
    pub const HOSTS: &str = "DAGGER_HOSTS";
    /// SSH port.
    pub const SSH_PORT: &str = "DAGGER_SSH_PORT";
    /// SSH identity file.
    pub const SSH_IDENTITY: &str = "DAGGER_SSH_IDENTITY";
    /// Extra `ssh` arguments, separated by whitespace.
    pub const SSH_OPTS: &str = "DAGGER_SSH_OPTS";
    /// Path of the program on the SSH hosts, when it differs from the local one.
    pub const SSH_EXE: &str = "DAGGER_SSH_EXE";
    /// Extra `srun` arguments, separated by whitespace.
    pub const SRUN_ARGS: &str = "DAGGER_SRUN_ARGS";
    /// Compute threads per worker.
    pub const WORKER_THREADS: &str = "DAGGER_WORKER_THREADS";
    /// `1`: local workers pin their compute threads to CPUs of their own, and the head's
    /// network thread gives way to them.
    pub const PIN_THREADS: &str = "DAGGER_PIN_THREADS";
    /// The CPUs (`0,1,2`) a local worker pins its compute threads to, the thread serving
    /// slot `i` to the `i`-th (see [`super::WorkerEnv::pin_cpus`]).
    pub const PIN_CPUS: &str = "DAGGER_PIN_CPUS";

    /// Variables a launcher sets or that configure launching: never inherited by a child
    /// from the head's own environment.
    pub(crate) const SCRUBBED: &[&str] = &[
        ROLE,
        HEAD,
        WORKER_ID,
        THREADS,
        SECRET,
        SECRET_FILE,
        SECRET_STDIN,
        TLS_FINGERPRINT,
        RENDEZVOUS,
        LAUNCHER,
        WORKERS,
        HOSTS,
        SSH_PORT,
        SSH_IDENTITY,
        SSH_OPTS,
        SSH_EXE,
        SRUN_ARGS,
        WORKER_THREADS,
        PIN_THREADS,
        PIN_CPUS,
        super::slurm::ID_BASE_VAR,
    ];
}

/// Where and how many workers to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchSpec {
    /// Worker processes on this machine.
    Local {
        /// Number of worker processes.
        workers: usize,
        /// Compute threads per worker; `0`: this machine's CPUs divided among the workers
        /// (at least one each).
        threads: usize,
    },
    /// One worker per host entry, started through `ssh` (a host may appear more than once).
    ///
    /// The remote program runs in the head's working directory when that exists there, else
    /// in the login directory. Its standard output and error come back through `ssh`.
    Ssh {
        /// Hosts, as `host` or `user@host`.
        hosts: Vec<String>,
        /// Compute threads per worker; `0`: all CPUs of the host.
        threads: usize,
        /// SSH port (`-p`); `None`: ssh's default.
        port: Option<u16>,
        /// SSH identity file (`-i`); `None`: ssh's default keys and agent.
        identity: Option<PathBuf>,
        /// Extra `ssh` arguments, placed before the launcher's own (so an `-o` given here
        /// wins over the launcher's defaults `BatchMode=yes` and `ConnectTimeout`).
        ssh_options: Vec<String>,
        /// Path of the program on the hosts; `None`: the same absolute path as here.
        exe: Option<PathBuf>,
    },
    /// Workers as the tasks of one `srun` job step, normally inside an allocation
    /// (`salloc`/`sbatch`); the step may share CPUs with other steps (`--overlap`, Slurm
    /// 20.11 or later), so more workers can be added later.
    ///
    /// Slurm cannot end a single task of a step: [`Launched::kill`] of one of these workers
    /// ends the whole step. To remove one such worker, ask it to exit over its connection.
    Slurm {
        /// Number of workers (`srun --ntasks`).
        workers: usize,
        /// Compute threads per worker; `> 0` also asks Slurm for that many CPUs per task
        /// (`--cpus-per-task`); `0`: all CPUs Slurm gives the task.
        threads: usize,
        /// Extra `srun` arguments (e.g. `--nodes=4`, `--jobid=N`, `--partition=p`).
        extra_args: Vec<String>,
    },
}

impl LaunchSpec {
    /// The launch configured by environment variables, `Ok(None)` when none is (or when this
    /// process is itself a started worker, `DAGGER_ROLE` set, so that workers never launch
    /// more workers).
    ///
    /// - `DAGGER_WORKERS=N`: `N` local worker processes (`0`: none);
    /// - `DAGGER_HOSTS=h1,user@h2,...`: one SSH worker per entry, with optional
    ///   `DAGGER_SSH_PORT`, `DAGGER_SSH_IDENTITY`, `DAGGER_SSH_OPTS` (whitespace-separated
    ///   `ssh` arguments) and `DAGGER_SSH_EXE` (the program's path on the hosts);
    /// - `DAGGER_LAUNCHER=local|ssh|slurm` forces one; `slurm` needs an allocation
    ///   (`SLURM_JOB_ID`), starts `DAGGER_WORKERS` workers (default: the allocation's
    ///   `SLURM_NTASKS`, else its `SLURM_JOB_NUM_NODES`) and passes `DAGGER_SRUN_ARGS`;
    /// - `DAGGER_WORKER_THREADS=T`: compute threads per worker (default `0`, see the
    ///   variants of [`LaunchSpec`]).
    ///
    /// Empty values count as unset. A value that cannot be used is an error naming the
    /// variable.
    pub fn from_env() -> Result<Option<LaunchSpec>, LaunchError> {
        LaunchSpec::from_vars(|name| std::env::var(name).ok())
    }

    /// [`LaunchSpec::from_env`] with the variables looked up by `lookup` instead of in this
    /// process's environment.
    ///
    /// ```
    /// use dagger_net::launch::LaunchSpec;
    /// let vars = |name: &str| match name {
    ///     "DAGGER_WORKERS" => Some("3".to_string()),
    ///     _ => None,
    /// };
    /// assert_eq!(
    ///     LaunchSpec::from_vars(vars).unwrap(),
    ///     Some(LaunchSpec::Local { workers: 3, threads: 0 })
    /// );
    /// ```
    pub fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<LaunchSpec>, LaunchError> {
        env::spec_from_vars(&lookup)
    }

    /// How many workers this spec starts.
    pub fn workers(&self) -> usize {
        match self {
            LaunchSpec::Local { workers, .. } | LaunchSpec::Slurm { workers, .. } => *workers,
            LaunchSpec::Ssh { hosts, .. } => hosts.len(),
        }
    }

    /// Which launcher this spec uses.
    pub fn kind(&self) -> LauncherKind {
        match self {
            LaunchSpec::Local { .. } => LauncherKind::Local,
            LaunchSpec::Ssh { .. } => LauncherKind::Ssh,
            LaunchSpec::Slurm { .. } => LauncherKind::Slurm,
        }
    }
}

/// The launcher that started a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LauncherKind {
    /// A process on this machine.
    Local,
    /// A process on a host reached by `ssh`.
    Ssh,
    /// A task of an `srun` job step.
    Slurm,
}

impl fmt::Display for LauncherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LauncherKind::Local => "local",
            LauncherKind::Ssh => "ssh",
            LauncherKind::Slurm => "slurm",
        })
    }
}

/// What every started worker is told, and which program it is.
#[derive(Clone)]
pub struct WorkerEnv {
    /// `host:port` the workers connect to.
    pub head: String,
    /// The cluster secret, hex.
    pub secret_hex: String,
    /// Id of the first worker started; the others follow in order. Ids start at 1 (the
    /// head is 0); to add workers later use [`Launched::next_id`] or
    /// [`Launched::launch_more`].
    pub first_id: u32,
    /// SHA-256 fingerprint (hex) of the head's TLS certificate, if TLS is on.
    pub tls_fingerprint: Option<String>,
    /// More environment variables for the workers. For SLURM they are also in `srun`'s own
    /// environment (which `srun` passes on to its tasks), so they can carry `SLURM_*`
    /// settings for `srun`, such as `SLURM_CONF`.
    pub extra: Vec<(String, String)>,
    /// The program to start; `None`: this process's executable ([`std::env::current_exe`]).
    pub exe: Option<PathBuf>,
    /// Its arguments; `None`: this process's arguments.
    pub args: Option<Vec<OsString>>,
    /// How long [`launch`] waits for SSH and SLURM workers to start (connecting, logging in,
    /// `srun` getting its step) before it gives up with [`LaunchError::StartTimeout`].
    pub start_timeout: Duration,
    /// The CPUs that local workers pin their compute threads to, if any: worker `w` with
    /// `t` threads takes the `t` that follow the first `(w - 1) * t`, wrapping around.
    /// Workers of the other launchers are not pinned.
    pub pin_cpus: Option<Vec<usize>>,
}

impl WorkerEnv {
    /// Workers of `head` with cluster secret `secret_hex`, ids from 1, no TLS, no extra
    /// variables, this program with its arguments, and a start timeout of 60 s.
    pub fn new(head: impl Into<String>, secret_hex: impl Into<String>) -> WorkerEnv {
        WorkerEnv {
            head: head.into(),
            secret_hex: secret_hex.into(),
            first_id: 1,
            tls_fingerprint: None,
            extra: Vec::new(),
            exe: None,
            args: None,
            start_timeout: Duration::from_secs(60),
            pin_cpus: None,
        }
    }

    /// The program and arguments to start.
    fn program(&self) -> Result<(PathBuf, Vec<OsString>), LaunchError> {
        let exe = match &self.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(|source| LaunchError::Io {
                context: "cannot find this program's executable".into(),
                source,
            })?,
        };
        let args = match &self.args {
            Some(args) => args.clone(),
            None => std::env::args_os().skip(1).collect(),
        };
        Ok((exe, args))
    }

    /// The protocol variables common to every launcher (not the id, threads or secret).
    fn common_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (vars::ROLE.to_string(), "worker".to_string()),
            (vars::HEAD.to_string(), self.head.clone()),
        ];
        if let Some(fp) = &self.tls_fingerprint {
            vars.push((vars::TLS_FINGERPRINT.to_string(), fp.clone()));
        }
        vars.extend(self.extra.iter().cloned());
        vars
    }

    fn validate(&self, workers: usize) -> Result<(), LaunchError> {
        let config = |msg: String| Err(LaunchError::Config(msg));
        if self.head.is_empty()
            || self
                .head
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return config(format!(
                "bad head address {:?}: expected host:port",
                self.head
            ));
        }
        if self.secret_hex.is_empty()
            || self.secret_hex.len() % 2 != 0
            || !self.secret_hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return config("the cluster secret (WorkerEnv::secret_hex) is not valid hex".into());
        }
        if let Some(fp) = &self.tls_fingerprint {
            if fp.is_empty() || !fp.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return config(format!("bad TLS fingerprint {fp:?}: expected hex"));
            }
        }
        if self.first_id == 0 {
            return config("worker ids start at 1 (0 is the head): first_id is 0".into());
        }
        let last = u64::from(self.first_id) + workers as u64;
        if last > u64::from(u32::MAX) {
            return config(format!(
                "worker ids from {} for {workers} workers do not fit in u32",
                self.first_id
            ));
        }
        for (key, value) in &self.extra {
            let valid_name = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return config(format!(
                    "bad environment variable name {key:?} in WorkerEnv::extra"
                ));
            }
            if vars::SCRUBBED.contains(&key.as_str()) {
                return config(format!(
                    "{key} in WorkerEnv::extra: the launcher sets or removes this variable itself"
                ));
            }
            if value.contains(['\0', '\n', '\r']) {
                return config(format!(
                    "the value of {key} in WorkerEnv::extra holds a NUL or line break"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("head", &self.head)
            .field("secret_hex", &"<redacted>")
            .field("first_id", &self.first_id)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("extra", &self.extra)
            .field("exe", &self.exe)
            .field("args", &self.args)
            .field("start_timeout", &self.start_timeout)
            .finish()
    }
}

/// Starts the workers `spec` describes, with ids from `env.first_id`, and returns when all
/// of them have started (see the [module docs](self)).
///
/// All or nothing: when one worker fails to start, the ones already started are ended and
/// the error says what went wrong (a missing `ssh`/`srun`, an unreachable host, an SSH
/// authentication failure with ssh's own message, `srun`'s refusal, a program missing on a
/// host, or the [`WorkerEnv::start_timeout`] passing).
pub fn launch(spec: &LaunchSpec, env: &WorkerEnv) -> Result<Launched, LaunchError> {
    env.validate(spec.workers())?;
    let workers = match spec {
        LaunchSpec::Local { workers, threads } => local::launch(*workers, *threads, env)?,
        LaunchSpec::Ssh {
            hosts,
            threads,
            port,
            identity,
            ssh_options,
            exe,
        } => ssh::launch(
            &ssh::SshSpec {
                hosts,
                threads: *threads,
                port: *port,
                identity: identity.as_deref(),
                ssh_options,
                exe: exe.as_deref(),
            },
            env,
        )?,
        LaunchSpec::Slurm {
            workers,
            threads,
            extra_args,
        } => slurm::launch(*workers, *threads, extra_args, env)?,
    };
    let next_id = env.first_id + spec.workers() as u32;
    Ok(Launched { workers, next_id })
}

/// The worker processes one or more [`launch`]es started, by id. Dropping it ends them all
/// (at once, waiting a few seconds at most for SSH sessions and `srun` steps to wind down).
#[derive(Debug, Default)]
pub struct Launched {
    /// Sorted by id.
    workers: Vec<WorkerProcess>,
    next_id: u32,
}

impl Launched {
    /// The workers, by increasing id.
    pub fn workers(&self) -> &[WorkerProcess] {
        &self.workers
    }

    /// The worker ids, increasing.
    pub fn ids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.id).collect()
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The worker with this id.
    pub fn get(&self, id: u32) -> Option<&WorkerProcess> {
        self.index(id).map(|i| &self.workers[i])
    }

    /// The id after the highest id ever held here (removed workers included), at least 1:
    /// the `first_id` for workers added later.
    pub fn next_id(&self) -> u32 {
        self.next_id.max(1)
    }

    /// Starts more workers, with ids from [`Launched::next_id`] (`env.first_id` is ignored),
    /// and adds them; returns their ids.
    pub fn launch_more(
        &mut self,
        spec: &LaunchSpec,
        env: &WorkerEnv,
    ) -> Result<Vec<u32>, LaunchError> {
        let env = WorkerEnv {
            first_id: self.next_id(),
            ..env.clone()
        };
        let more = launch(spec, &env)?;
        let ids = more.ids();
        self.extend(more)?;
        Ok(ids)
    }

    /// Adds workers launched separately. Fails, changing nothing (and ending `more`'s
    /// workers as it drops), if an id is already here.
    pub fn extend(&mut self, mut more: Launched) -> Result<(), LaunchError> {
        let have: BTreeSet<u32> = self.workers.iter().map(|w| w.id).collect();
        if let Some(w) = more.workers.iter().find(|w| have.contains(&w.id)) {
            return Err(LaunchError::Config(format!(
                "worker id {} is already in use",
                w.id
            )));
        }
        self.next_id = self.next_id.max(more.next_id);
        self.workers.append(&mut more.workers);
        self.workers.sort_by_key(|w| w.id);
        Ok(())
    }

    /// Takes the worker with this id out, without ending it (its process ends when the
    /// returned handle drops).
    pub fn remove(&mut self, id: u32) -> Option<WorkerProcess> {
        self.index(id).map(|i| self.workers.remove(i))
    }

    /// Ends the worker with this id and removes it, with every worker that shared its process
    /// (all tasks of its `srun` step, for SLURM); returns the ids ended.
    pub fn kill(&mut self, id: u32) -> Result<Vec<u32>, LaunchError> {
        let Some(i) = self.index(id) else {
            return Err(LaunchError::UnknownWorker(id));
        };
        let proc = Arc::clone(&self.workers[i].proc);
        let ended: Vec<u32> = self
            .workers
            .iter()
            .filter(|w| Arc::ptr_eq(&w.proc, &proc))
            .map(|w| w.id)
            .collect();
        self.workers.retain(|w| !Arc::ptr_eq(&w.proc, &proc));
        proc.kill()?;
        Ok(ended)
    }

    /// The workers whose process has ended (with its exit status: for SSH that of the
    /// remote program, or 255 when ssh failed; for SLURM that of `srun`). They stay here
    /// until [`Launched::remove`]d or [`Launched::kill`]ed.
    pub fn exited(&self) -> Vec<(u32, ExitStatus)> {
        self.workers
            .iter()
            .filter_map(|w| w.try_wait().ok().flatten().map(|s| (w.id, s)))
            .collect()
    }

    fn index(&self, id: u32) -> Option<usize> {
        self.workers.binary_search_by_key(&id, |w| w.id).ok()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let mut procs: Vec<Arc<Proc>> = Vec::new();
        for w in self.workers.drain(..) {
            if !procs.iter().any(|p| Arc::ptr_eq(p, &w.proc)) {
                procs.push(w.proc);
            }
        }
        // Processes still shared with a removed WorkerProcess stay alive with it.
        let owned: Vec<Proc> = procs
            .into_iter()
            .filter_map(|p| Arc::try_unwrap(p).ok())
            .collect();
        process::end_all(&owned, Instant::now() + process::GRACE);
    }
}

/// One started worker. Dropping it ends its process (for a SLURM task, once no other
/// handle to its `srun` step is left).
pub struct WorkerProcess {
    id: u32,
    host: Option<String>,
    kind: LauncherKind,
    proc: Arc<Proc>,
}

impl WorkerProcess {
    /// The worker's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The host it runs on, as given (`localhost` for local workers); `None` for SLURM tasks,
    /// which run where Slurm puts them.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The worker's process id, for local workers (remote ones are not known here).
    pub fn pid(&self) -> Option<u32> {
        match self.kind {
            LauncherKind::Local => Some(self.proc.pid()),
            _ => None,
        }
    }

    /// The process id of the local process that manages this worker: the worker itself, its
    /// `ssh` client, or its `srun`.
    pub fn launcher_pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Which launcher started it.
    pub fn kind(&self) -> LauncherKind {
        self.kind
    }

    /// Ends the worker (for SLURM: the whole `srun` step it belongs to) and waits for its
    /// local process. Ending an ended worker does nothing.
    pub fn kill(&self) -> Result<(), LaunchError> {
        self.proc.kill()
    }

    /// The exit status of its local process (see [`Launched::exited`]) if that has ended.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, LaunchError> {
        self.proc.try_wait()
    }

    /// The last lines `ssh` or `srun` (and the remote program) wrote to standard error, to
    /// explain a worker that died; empty for local workers, whose standard error is this
    /// process's.
    pub fn stderr_tail(&self) -> String {
        self.proc.stderr_tail()
    }
}

impl fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("launcher_pid", &self.proc.pid())
            .finish()
    }
}

/// Splits a whitespace-separated argument list (no quoting).
fn split_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The first executable file called `name` in the directories of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    find_program_in(name, &std::env::var_os("PATH")?)
}

fn find_program_in(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    meta.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> WorkerEnv {
        WorkerEnv::new("127.0.0.1:1", "00ff")
    }

    #[test]
    fn worker_env_validation() {
        assert!(env().validate(3).is_ok());
        let bad = |e: WorkerEnv| e.validate(1).unwrap_err().to_string();
        assert!(bad(WorkerEnv {
            secret_hex: "xyz".into(),
            ..env()
        })
        .contains("not valid hex"));
        assert!(bad(WorkerEnv {
            head: "a b".into(),
            ..env()
        })
        .contains("head address"));
        assert!(bad(WorkerEnv {
            first_id: 0,
            ..env()
        })
        .contains("start at 1"));
        let extra = |k: &str, v: &str| WorkerEnv {
            extra: vec![(k.into(), v.into())],
            ..env()
        };
        assert!(bad(extra("DAGGER_SECRET", "x")).contains("sets or removes"));
        assert!(bad(extra("A=B", "x")).contains("bad environment variable name"));
        assert!(bad(extra("A", "x\ny")).contains("line break"));
        assert!(extra("SLURM_CONF", "/tmp/x y").validate(1).is_ok());
        let e = WorkerEnv {
            first_id: u32::MAX,
            ..env()
        };
        assert!(e
            .validate(2)
            .unwrap_err()
            .to_string()
            .contains("do not fit"));
        assert!(!format!("{:?}", env()).contains("00ff"));
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LaunchSpec>();
        check::<WorkerEnv>();
        check::<Launched>();
        check::<WorkerProcess>();
        check::<LaunchError>();
        check::<SpmdRank>();
        check::<HeadRendezvous>();
    }

    #[test]
    fn program_lookup() {
        let path = std::env::join_paths(["/nonexistent-dir", "/bin", "/usr/bin"]).unwrap();
        assert!(find_program_in("sh", &path).is_some());
        assert!(find_program_in("dagger-no-such-program", &path).is_none());
        assert!(find_program_in("sh", std::ffi::OsStr::new("")).is_none());
    }

    #[test]
    fn launched_bookkeeping_without_processes() {
        let mut l = Launched::default();
        assert_eq!(l.next_id(), 1);
        assert!(l.is_empty());
        assert!(l.kill(3).unwrap_err().to_string().contains("no worker 3"));
        assert!(l.remove(1).is_none());
        let empty = launch(
            &LaunchSpec::Local {
                workers: 0,
                threads: 1,
            },
            &env(),
        )
        .unwrap();
        assert!(empty.is_empty());
        l.extend(empty).unwrap();
        assert_eq!(l.next_id(), 1);
    }
}
