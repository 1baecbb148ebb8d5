//! Clusters: a head process and worker processes (the same binary) that run registered task
//! functions for it, hold their results, and pass data to each other directly.
//!
//! The head listens (loopback unless configured otherwise) and starts its workers with a
//! launcher (local processes, SSH, SLURM) or, under `mpirun`/`srun`, is rank 0 of a job whose
//! other ranks join it. Every connection is authenticated with the cluster secret and the
//! hash of the registered functions; optional TLS pins each process's self-signed certificate.

mod head;
mod inbox;
mod io;
mod msg;
mod node;
mod ring;
mod worker;

pub use msg::WorkerStats;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::id::WorkerId;
use crate::remote::functions::table;
use dagger_net::launch::{vars, LaunchSpec, Launched, WorkerEnv};
use dagger_net::{Hello, NetConfig, Role as NetRole, Secret, TlsConfig, TlsIdentity};
use head::Head;
use io::Io;
use node::Node;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of the head of a cluster, for [`ContextBuilder::cluster`].
///
/// ```no_run
/// use dagger_core::{ClusterOptions, Context, LaunchSpec};
/// use std::time::Duration;
///
/// let ctx = Context::builder()
///     .cluster(
///         ClusterOptions::new()
///             .launch(LaunchSpec::Local { workers: 2, threads: 4 })
///             .heartbeat_timeout(Duration::from_secs(5)),
///     )
///     .build()?;
/// # Ok::<(), dagger_core::Error>(())
/// ```
///
/// [`ContextBuilder::cluster`]: crate::ContextBuilder::cluster
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub(crate) launch: Option<LaunchSpec>,
    pub(crate) bind: String,
    pub(crate) secret: Option<Secret>,
    pub(crate) tls: bool,
    pub(crate) join_timeout: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) pin_threads: bool,
    /// Workers that start by themselves and join (SPMD ranks), beside launched ones.
    pub(crate) expect: Vec<u32>,
    /// Where to publish the head's address for them.
    pub(crate) rendezvous: Option<std::path::PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            launch: None,
            bind: std::env::var("DAGGER_BIND").unwrap_or_else(|_| "127.0.0.1:0".to_string()),
            secret: None,
            tls: std::env::var("DAGGER_TLS").is_ok_and(|v| v == "1"),
            join_timeout: Duration::from_secs(120),
            heartbeat_timeout: Duration::from_secs(10),
            pin_threads: std::env::var(vars::PIN_THREADS).is_ok_and(|v| v == "1"),
            expect: Vec::new(),
            rendezvous: None,
        }
    }
}

impl ClusterOptions {
    /// The defaults: no workers started, listen on loopback (`DAGGER_BIND` overrides), secret
    /// from `DAGGER_SECRET`/`DAGGER_SECRET_FILE` or a fresh one, TLS if `DAGGER_TLS=1`,
    /// workers get 120 s to join, a worker silent for 10 s is declared dead, threads pinned
    /// if `DAGGER_PIN_THREADS=1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Workers to start with the context.
    pub fn launch(mut self, spec: LaunchSpec) -> Self {
        self.launch = Some(spec);
        self
    }

    /// The address the head listens on (`127.0.0.1:0` by default: loopback, any port; use
    /// `0.0.0.0:0` or a host address for workers on other machines).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.bind = addr.into();
        self
    }

    /// The cluster secret every process proves it knows (it is passed to launched workers
    /// through their environment or stdin, never on a command line).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Encrypts every connection with TLS, each process pinning the others' self-signed
    /// certificates.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// How long started workers get to join.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// A worker that sends nothing for this long is declared dead: its tasks run elsewhere
    /// and the values it held are made again when needed.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// Gives the compute threads of [local](LaunchSpec::Local) workers the CPUs of this
    /// machine: each is pinned to a CPU of its own (worker `w` with `t` threads takes the
    /// `t` CPUs after the first `(w - 1) * t` that this process may use, wrapping around),
    /// and the head's network thread runs at the lowest priority, on the CPU time they
    /// leave, instead of taking turns with them. Off by default (`DAGGER_PIN_THREADS=1`
    /// turns it on).
    ///
    /// For graphs whose workers wait on each other step by step (a stencil) on a machine
    /// that runs nothing else: a worker whose thread shares a CPU, or waits for the head's
    /// bookkeeping to finish its turn, holds up every other worker. Two programs pinned
    /// this way on one machine share the same CPUs. Workers started by other launchers
    /// are not pinned (`srun --cpu-bind` and `mpirun --bind-to` do that).
    ///
    /// ```no_run
    /// use dagger_core::{ClusterOptions, Context, LaunchSpec};
    ///
    /// let ctx = Context::builder()
    ///     .cluster(
    ///         ClusterOptions::new()
    ///             .launch(LaunchSpec::Local { workers: 2, threads: 1 })
    ///             .pin_threads(true),
    ///     )
    ///     .build()?;
    /// # Ok::<(), dagger_core::Error>(())
    /// ```
    pub fn pin_threads(mut self, on: bool) -> Self {
        self.pin_threads = on;
        self
    }
}

/// A worker process of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Its id.
    pub id: WorkerId,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id on that host.
    pub pid: u32,
    /// Its compute threads.
    pub threads: u32,
    /// Where other processes reach it.
    pub addr: String,
}

/// The running cluster of a head context.
pub(crate) struct Cluster {
    node: Arc<Node>,
    head: Arc<Head>,
    launched: Mutex<Option<Launched>>,
    worker_env: WorkerEnv,
    join_timeout: Duration,
    pin_threads: bool,
    _heartbeat: std::thread::JoinHandle<()>,
}

fn net_error(e: impl std::fmt::Display) -> Error {
    Error::Config(e.to_string())
}

impl Cluster {
    /// Starts the head of `ctx`: listens, launches workers, waits for them to join.
    pub(crate) fn start(ctx: &Context, opts: ClusterOptions) -> Result<Arc<Cluster>> {
        let secret = match opts.secret.clone() {
            Some(s) => s,
            None => match Secret::from_env().map_err(net_error)? {
                Some(s) => s,
                None => Secret::generate().map_err(net_error)?,
            },
        };
        let mut config = NetConfig::new(secret.clone());
        let mut fingerprint = None;
        if opts.tls {
            let identity = TlsIdentity::generate().map_err(net_error)?;
            fingerprint = Some(identity.fingerprint());
            config = config.with_tls(TlsConfig::new(identity));
        }
        let io = Io::start("dagger-io").map_err(net_error)?;
        let hello = Hello::new(NetRole::Head, table().hash()).with_peer_id(0);
        let node = Node::new(0, io, config, hello);
        let head = Head::new(&node, ctx.registry_ref(), opts.heartbeat_timeout);
        node.set_role(head.clone());
        let mut addr = node.listen(opts.bind.clone()).map_err(net_error)?;
        if let Some(port) = addr.strip_prefix("0.0.0.0:") {
            // Listening on every interface: workers reach it by this host's name.
            addr = format!("{}:{port}", hostname());
        }
        crate::remote::attach(ctx, head.clone());
        ctx.registry_ref()
            .remote
            .set_mover(Arc::new(node::NodeMover(Arc::downgrade(&node))));
        let heartbeat = {
            let head = Arc::downgrade(&head);
            std::thread::Builder::new()
                .name("dagger-heartbeat".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(500));
                    match head.upgrade() {
                        Some(h) => h.heartbeat(),
                        None => return,
                    }
                })
                .map_err(net_error)?
        };
        let mut worker_env = WorkerEnv::new(addr, secret.to_hex());
        worker_env.tls_fingerprint = fingerprint;
        let cluster = Arc::new(Cluster {
            node,
            head,
            launched: Mutex::new(None),
            worker_env,
            join_timeout: opts.join_timeout,
            pin_threads: opts.pin_threads,
            _heartbeat: heartbeat,
        });
        if let Some(spec) = &opts.launch {
            cluster.launch(spec)?;
        }
        // Removed (by dropping) once the ranks that read it joined.
        let _published = match &opts.rendezvous {
            Some(path) => Some(
                dagger_net::launch::publish_head(
                    path,
                    &cluster.worker_env.head,
                    cluster.worker_env.tls_fingerprint.as_deref(),
                )
                .map_err(net_error)?,
            ),
            None => None,
        };
        if !opts.expect.is_empty() {
            cluster
                .head
                .wait_joined(&opts.expect, cluster.join_timeout, &|_| None)
                .map_err(Error::Config)?;
        }
        Ok(cluster)
    }

    /// Where workers connect.
    pub(crate) fn addr(&self) -> &str {
        &self.worker_env.head
    }

    /// Starts more workers and waits for them to join.
    pub(crate) fn launch(&self, spec: &LaunchSpec) -> Result<Vec<WorkerId>> {
        let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let mut env = self.worker_env.clone();
        if self.pin_threads && matches!(spec, LaunchSpec::Local { .. }) {
            env.pin_cpus = Some(crate::cpu::available());
            // The priority belongs to the thread: lowering it again changes nothing.
            self.node.io.spawn(async {
                if !crate::cpu::lower_current_thread_priority() {
                    log::warn!("cannot lower the priority of the head's network thread");
                }
            });
        }
        env.first_id = launched
            .as_ref()
            .map_or(1, |l| l.next_id())
            .max(self.head.worker_ids().last().map_or(1, |m| m + 1));
        let more = dagger_net::launch::launch(spec, &env).map_err(net_error)?;
        let ids = more.ids();
        match launched.as_mut() {
            Some(l) => l.extend(more).map_err(net_error)?,
            None => *launched = Some(more),
        }
        drop(launched);
        if let Err(e) = self
            .head
            .wait_joined(&ids, self.join_timeout, &|missing| self.exited(missing))
        {
            let detail = self.stderr_of(&ids);
            return Err(Error::Config(format!("{e}{detail}")));
        }
        Ok(ids.into_iter().map(WorkerId).collect())
    }

    /// Why one of the launched workers `ids` will never join: its process exited.
    fn exited(&self, ids: &[u32]) -> Option<String> {
        let launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let l = launched.as_ref()?;
        ids.iter().find_map(|id| match l.get(*id)?.try_wait() {
            Ok(Some(status)) => Some(format!("worker {id} exited before it joined ({status})")),
            _ => None,
        })
    }

    fn stderr_of(&self, ids: &[u32]) -> String {
        let launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let Some(l) = launched.as_ref() else {
            return String::new();
        };
        let mut out = String::new();
        for id in ids {
            if let Some(p) = l.get(*id) {
                let tail = p.stderr_tail();
                if !tail.trim().is_empty() {
                    out.push_str(&format!("\nworker {id} said:\n{tail}"));
                }
            }
        }
        out
    }

    pub(crate) fn workers(&self) -> Vec<WorkerInfo> {
        self.head
            .worker_ids()
            .into_iter()
            .filter_map(|id| {
                self.head
                    .describe(id)
                    .map(|(hostname, pid, threads, addr)| WorkerInfo {
                        id: WorkerId(id),
                        hostname,
                        pid,
                        threads,
                        addr,
                    })
            })
            .collect()
    }

    pub(crate) fn stats(&self, id: u32) -> Result<WorkerStats> {
        self.head
            .stats(id, Duration::from_secs(30))
            .map_err(Error::Cluster)
    }

    /// Stops sending tasks to the workers, lets them finish, and ends them.
    pub(crate) fn remove(&self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            self.head
                .retire(&self.node, id, Duration::from_secs(600))
                .map_err(Error::Cluster)?;
        }
        for &id in ids {
            self.head
                .wait_left(id, self.join_timeout)
                .map_err(Error::Cluster)?;
        }
        let mut launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = launched.as_mut() {
            for &id in ids {
                if let Some(p) = l.remove(id) {
                    // It exits by itself after the shutdown message; reap it without waiting
                    // forever.
                    for _ in 0..2000 {
                        if !matches!(p.try_wait(), Ok(None)) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let _ = p.kill();
                }
            }
        }
        Ok(())
    }

    /// Kills worker `id` at once (for fault-injection tests).
    pub(crate) fn kill(&self, id: u32) -> Result<()> {
        let launched = self.launched.lock().unwrap_or_else(|e| e.into_inner());
        let p = launched
            .as_ref()
            .and_then(|l| l.get(id))
            .ok_or_else(|| Error::Config(format!("worker {id} was not started by this head")))?;
        p.kill().map_err(net_error)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.head.shutdown(&self.node);
        // The I/O tasks hold the node: stopping them frees it, and with it the head.
        self.node.io.stop();
        // Launched processes are killed when `launched` drops, if they did not exit yet.
    }
}

/// Name of this host.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resident set size of this process in bytes (0 where unknown).
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// How this process was started.
enum Start {
    /// A worker started by a launcher.
    Worker {
        head: String,
        id: u32,
        threads: Option<usize>,
        fingerprint: Option<String>,
    },
    /// A rank of an SPMD run (`mpirun`, `srun`): rank 0 is the head, the others its workers.
    Spmd(dagger_net::launch::SpmdRank),
    /// Not a worker.
    Head,
}

fn start_from_env() -> Result<Start> {
    if std::env::var("DAGGER_ROLE").ok().as_deref() != Some("worker") {
        return Ok(match dagger_net::launch::spmd_rank() {
            Some(rank) => Start::Spmd(rank),
            None => Start::Head,
        });
    }
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            Error::Config(format!(
                "DAGGER_ROLE=worker but {name} is not set (workers are started by a head)"
            ))
        })
    };
    let head = var("DAGGER_HEAD")?;
    let id = var("DAGGER_WORKER_ID")?
        .parse::<u32>()
        .map_err(|_| Error::Config("DAGGER_WORKER_ID must be a number".into()))?;
    Ok(Start::Worker {
        head,
        id,
        threads: threads_from_env()?,
        fingerprint: std::env::var("DAGGER_TLS_FINGERPRINT").ok(),
    })
}

fn threads_from_env() -> Result<Option<usize>> {
    match std::env::var("DAGGER_THREADS") {
        Ok(t) if t != "0" => t
            .parse::<usize>()
            .map(Some)
            .map_err(|_| Error::Config("DAGGER_THREADS must be a number".into())),
        _ => Ok(None),
    }
}

/// The secret of an SPMD run: every rank must be given the same one.
fn spmd_secret(rank: &dagger_net::launch::SpmdRank) -> Result<Secret> {
    Secret::from_env().map_err(net_error)?.ok_or_else(|| {
        Error::Config(format!(
            "rank {} of an SPMD run ({}) needs the cluster secret: set DAGGER_SECRET (or \
             DAGGER_SECRET_FILE) for every rank, e.g. `mpirun -x DAGGER_SECRET`",
            rank.rank, rank.kind
        ))
    })
}

/// Starts rank `rank` of an SPMD run: rank 0 becomes the head of the global context and
/// waits for the other ranks; the others serve it as workers and never return.
fn start_spmd(rank: dagger_net::launch::SpmdRank) -> Result<()> {
    let secret = spmd_secret(&rank)?;
    let path = dagger_net::launch::rendezvous_path().map_err(net_error)?;
    if rank.is_head() {
        let mut opts = ClusterOptions::new().secret(secret);
        opts.expect = (1..rank.size).collect();
        opts.rendezvous = Some(path);
        Context::builder().cluster(opts).build_global()?;
        return Ok(());
    }
    let timeout = ClusterOptions::new().join_timeout;
    let (head, fingerprint) =
        dagger_net::launch::wait_for_head(&path, timeout).map_err(net_error)?;
    let e = run_worker(head, rank.rank, threads_from_env()?, fingerprint, secret).unwrap_err();
    eprintln!("dagger rank {}: {e}", rank.rank);
    std::process::exit(1);
}

fn worker_secret() -> Result<Secret> {
    if std::env::var("DAGGER_SECRET_STDIN").is_ok_and(|v| v == "1") {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| {
            Error::Config(format!("cannot read the cluster secret from stdin: {e}"))
        })?;
        return Secret::from_hex(line.trim()).map_err(net_error);
    }
    Secret::from_env()
        .map_err(net_error)?
        .ok_or_else(|| Error::Config("a worker needs the cluster secret (DAGGER_SECRET)".into()))
}

/// Writing to a connection whose peer died must be an error, not the end of this process.
/// Rust's runtime sets this up before `main`, but a worker may start before `main` (from
/// `init_before_main!`), and never reaches it.
fn ignore_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_IGN: usize = 1;
        // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; it only changes how
        // the process reacts to writes on closed sockets and pipes.
        unsafe {
            signal(SIGPIPE, SIG_IGN);
        }
    }
}

/// Runs this process as worker `id` of the head at `head` until the head ends it.
fn run_worker(
    head: String,
    id: u32,
    threads: Option<usize>,
    fingerprint: Option<String>,
    secret: Secret,
) -> Result<std::convert::Infallible> {
    ignore_sigpipe();
    let mut builder = Context::builder()
        .worker_id(WorkerId(id))
        .thread_name(format!("dagger-w{id}"));
    if let Some(t) = threads {
        builder = builder.threads(t);
    }
    if let Ok(list) = std::env::var(vars::PIN_CPUS) {
        let cpus = crate::cpu::parse_list(&list).ok_or_else(|| {
            Error::Config(format!(
                "{}={list:?} is not a list of CPUs like 0,1,2",
                vars::PIN_CPUS
            ))
        })?;
        builder = builder.pin_cpus(cpus);
    }
    let ctx = builder.build()?;
    let mut config = NetConfig::new(secret);
    let mut my_fingerprint = None;
    if let Some(fp) = &fingerprint {
        let identity = TlsIdentity::generate().map_err(net_error)?;
        my_fingerprint = Some(identity.fingerprint());
        let tls = TlsConfig::new(identity)
            .with_peer_fingerprint(fp)
            .map_err(net_error)?;
        config = config.with_tls(tls);
    }
    let io = Io::start(&format!("dagger-w{id}-io")).map_err(net_error)?;
    let hello = Hello::new(NetRole::Worker, table().hash()).with_peer_id(u64::from(id));
    let node = Node::new(id, io, config.clone(), hello);
    // Notes in shared memory are not encrypted: not where the cluster asked for TLS.
    let worker = worker::Worker::new(ctx.clone(), fingerprint.is_none());
    node.set_role(worker.clone());
    worker.take_notes(&node);
    let head_is_local =
        head.starts_with("127.") || head.starts_with("localhost") || head.starts_with("[::1]");
    let bind = std::env::var("DAGGER_BIND").unwrap_or_else(|_| {
        if head_is_local {
            "127.0.0.1:0"
        } else {
            "0.0.0.0:0"
        }
        .to_string()
    });
    let mut addr = node
        .listen(bind.clone())
        .map_err(|e| Error::Config(format!("worker {id} cannot listen on {bind}: {e}")))?;
    let link = {
        let node2 = node.clone();
        let head2 = head.clone();
        node.io
            .run(async move {
                let (conn, _) = dagger_net::connect(head2.as_str(), &config, hello).await?;
                let local_ip = conn.local_addr().ip();
                Ok::<_, dagger_net::NetError>((io::open_link(conn, 0, node2), local_ip))
            })
            .unwrap_or(Err(dagger_net::NetError::Closed))
            .map_err(|e| {
                Error::Config(format!("worker {id} cannot reach the head at {head}: {e}"))
            })?
    };
    let (link, local_ip) = link;
    if addr.starts_with("0.0.0.0:") {
        // Advertise the address this host uses to reach the head.
        addr = format!("{local_ip}:{}", &addr["0.0.0.0:".len()..]);
    }
    node.add_link(link.clone());
    link.send(msg::Msg::Join {
        threads: ctx.num_threads() as u32,
        addr,
        fingerprint: my_fingerprint,
        hostname: hostname(),
        pid: std::process::id(),
    });
    loop {
        std::thread::park();
    }
}

/// Starts this process's part of a cluster, as configured by its environment:
///
/// * started as a worker (`DAGGER_ROLE=worker`, set by the head's launcher): runs the worker
///   until the head ends it, then exits the process — this call never returns;
/// * started as one rank of an SPMD run (`mpirun`/`mpiexec`, or an `srun` job step): rank 0
///   makes the global context the head of a cluster, publishes its address in the
///   rendezvous file (`DAGGER_RENDEZVOUS`, or a per-job file in the temporary directory) and
///   returns once every other rank joined; the other ranks serve it as workers and never
///   return. Every rank needs the same `DAGGER_SECRET` (or `DAGGER_SECRET_FILE`);
/// * otherwise, with `DAGGER_WORKERS`, `DAGGER_HOSTS` or `DAGGER_LAUNCHER` set: makes the
///   global context the head of a cluster and starts its workers;
/// * otherwise: nothing (the program runs on this process's threads).
///
/// Call it first thing in `main` (or use `#[dagger::main]`).
pub fn init() -> Result<()> {
    match start_from_env()? {
        Start::Worker {
            head,
            id,
            threads,
            fingerprint,
        } => {
            let e = worker_secret()
                .and_then(|secret| run_worker(head, id, threads, fingerprint, secret))
                .unwrap_err();
            eprintln!("dagger worker {id}: {e}");
            std::process::exit(1);
        }
        Start::Spmd(rank) => start_spmd(rank),
        Start::Head => {
            let launch = LaunchSpec::from_env().map_err(net_error)?;
            if let Some(spec) = launch {
                Context::builder()
                    .cluster(ClusterOptions::new().launch(spec))
                    .build_global()?;
            }
            Ok(())
        }
    }
}
