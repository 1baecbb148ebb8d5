//! A started local process (a worker, an `ssh` client, an `srun`): ending it, reaping it,
//! and relaying its standard error while watching for the start-up marker.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStderr, ChildStdin, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::sys;
use super::LaunchError;

/// How long ending processes may take before they are killed outright.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// How long a local worker whose handle is dropped may take to exit on its own before it is
/// killed: the runtime asks its workers to exit before it drops them, and a worker that
/// exits rather than being killed writes out its buffered output, and a tool watching it
/// (a profiler, a coverage run) its report. Ending a worker on purpose
/// ([`Proc::kill`]) does not wait.
pub(super) const EXIT_WAIT: Duration = Duration::from_secs(1);

/// The line the start-up wrappers write to standard error once the worker program is
/// about to run (the relay swallows it).
pub(super) const STARTED_MARKER: &str = "#dagger-worker-started#";

/// The line the start-up wrappers write to standard error when the worker cannot start
/// (after a message saying why).
pub(super) const FAILED_MARKER: &str = "#dagger-worker-failed#";

/// Lines of standard error kept for error messages.
const TAIL_LINES: usize = 40;

/// How a process is asked to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// `SIGKILL` to its process group (local workers), when dropped only after it had
    /// [`EXIT_WAIT`] to exit on its own.
    Kill,
    /// Close its standard input: the remote wrapper kills the worker and exits, and so does
    /// `ssh`.
    CloseStdin,
    /// `SIGTERM`: `srun` cancels its step.
    Term,
}

struct State {
    child: Child,
    /// Set once the child is reaped.
    status: Option<ExitStatus>,
    stdin: Option<ChildStdin>,
}

impl State {
    fn poll(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }
}

/// A started process, ended and reaped when dropped.
pub(super) struct Proc {
    pid: u32,
    stop: Stop,
    state: Mutex<State>,
    relay: Option<Arc<Relay>>,
}

impl Proc {
    /// Wraps a spawned child; its standard input (if piped) is kept open until the process
    /// is asked to stop.
    pub(super) fn new(mut child: Child, stop: Stop, relay: Option<Arc<Relay>>) -> Proc {
        let stdin = child.stdin.take();
        Proc {
            pid: child.id(),
            stop,
            state: Mutex::new(State {
                child,
                status: None,
                stdin,
            }),
            relay,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn try_wait(&self) -> Result<Option<ExitStatus>, LaunchError> {
        self.state().poll().map_err(|source| LaunchError::Io {
            context: format!("cannot check process {}", self.pid),
            source,
        })
    }

    /// Waits until the process has ended or `deadline` has passed; whether it ended.
    pub(super) fn wait_until(&self, deadline: Instant) -> bool {
        let mut pause = Duration::from_millis(2);
        loop {
            match self.state().poll() {
                Ok(Some(_)) | Err(_) => return true,
                Ok(None) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Asks the process to end, the way its kind wants.
    fn begin_stop(&self) {
        let mut state = self.state();
        if matches!(state.poll(), Ok(Some(_))) {
            return;
        }
        match self.stop {
            Stop::Kill => sys::signal_group(&mut state.child, sys::SIGKILL),
            Stop::CloseStdin => drop(state.stdin.take()),
            Stop::Term => sys::signal_group(&mut state.child, sys::SIGTERM),
        }
    }

    /// Kills the process (and its group) if it still runs, and reaps it.
    fn force(&self) {
        let mut state = self.state();
        if let Ok(Some(_)) = state.poll() {
            return;
        }
        sys::signal_group(&mut state.child, sys::SIGKILL);
        state.stdin = None;
        if let Ok(status) = state.child.wait() {
            state.status = Some(status);
        }
    }

    /// Ends the process and waits for it.
    pub(super) fn kill(&self) -> Result<(), LaunchError> {
        shutdown_all([self], Instant::now() + GRACE);
        match self.try_wait()? {
            Some(_) => Ok(()),
            None => Err(LaunchError::Io {
                context: format!("process {} did not end", self.pid),
                source: io::Error::other("still running after SIGKILL"),
            }),
        }
    }

    pub(super) fn stderr_tail(&self) -> String {
        self.relay.as_ref().map(|r| r.tail()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        end_all([&*self], Instant::now() + GRACE);
    }
}

/// [`shutdown_all`] for processes whose handles are dropped: local workers first get up to
/// [`EXIT_WAIT`] (all together) to exit on their own.
pub(super) fn end_all<'a>(procs: impl IntoIterator<Item = &'a Proc>, deadline: Instant) {
    let procs: Vec<&Proc> = procs.into_iter().collect();
    let exit_by = (Instant::now() + EXIT_WAIT).min(deadline);
    for p in procs.iter().filter(|p| p.stop == Stop::Kill) {
        p.wait_until(exit_by);
    }
    shutdown_all(procs, deadline);
}

/// Asks all `procs` to end at once, gives them until `deadline`, then kills the rest; all
/// are reaped on return.
pub(super) fn shutdown_all<'a>(procs: impl IntoIterator<Item = &'a Proc>, deadline: Instant) {
    let procs: Vec<&Proc> = procs.into_iter().collect();
    for p in &procs {
        p.begin_stop();
    }
    for p in &procs {
        // Local workers get SIGKILL at once: no need to wait for them.
        if p.stop != Stop::Kill {
            p.wait_until(deadline);
        }
        p.force();
    }
}

/// What [`Relay::wait_started`] saw.
pub(super) enum Started {
    /// All expected markers arrived.
    Yes,
    /// A wrapper reported that its worker cannot start.
    Failed,
    /// Standard error closed first: the process has ended (or is ending).
    Ended,
    /// The deadline passed.
    TimedOut,
}

#[derive(Default)]
struct RelayState {
    started: usize,
    failed: usize,
    eof: bool,
    forwarding: bool,
    tail: VecDeque<String>,
}

/// Reads a child's standard error on a thread of its own: swallows start-up markers, keeps
/// the last lines, and (once told to) copies the lines to this process's standard error.
pub(super) struct Relay {
    state: Mutex<RelayState>,
    changed: Condvar,
}

impl Relay {
    /// Starts relaying `stderr`.
    pub(super) fn start(stderr: ChildStderr, name: &str) -> io::Result<Arc<Relay>> {
        let relay = Arc::new(Relay {
            state: Mutex::new(RelayState::default()),
            changed: Condvar::new(),
        });
        let this = Arc::clone(&relay);
        std::thread::Builder::new()
            .name(format!("dagger-stderr-{name}"))
            .spawn(move || this.run(stderr))?;
        Ok(relay)
    }

    fn lock(&self) -> MutexGuard<'_, RelayState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self, stderr: ChildStderr) {
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            let mut state = self.lock();
            let marker = line.trim_end();
            if marker.ends_with(STARTED_MARKER) || marker.ends_with(FAILED_MARKER) {
                if marker.ends_with(STARTED_MARKER) {
                    state.started += 1;
                } else {
                    state.failed += 1;
                }
                self.changed.notify_all();
                continue;
            }
            if state.forwarding {
                let _ = writeln!(io::stderr().lock(), "{line}");
            }
            if state.tail.len() == TAIL_LINES {
                state.tail.pop_front();
            }
            state.tail.push_back(line.to_string());
        }
        self.lock().eof = true;
        self.changed.notify_all();
    }

    /// Waits until `expected` markers arrived, standard error closed, or `deadline` passed.
    pub(super) fn wait_started(&self, expected: usize, deadline: Instant) -> Started {
        let mut state = self.lock();
        loop {
            if state.failed > 0 {
                return Started::Failed;
            }
            if state.started >= expected {
                return Started::Yes;
            }
            if state.eof {
                return Started::Ended;
            }
            let now = Instant::now();
            if now >= deadline {
                return Started::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// From now on copies lines to this process's standard error, starting with those kept
    /// so far.
    pub(super) fn start_forwarding(&self) {
        let mut state = self.lock();
        if !state.forwarding {
            state.forwarding = true;
            let mut err = io::stderr().lock();
            for line in &state.tail {
                let _ = writeln!(err, "{line}");
            }
        }
    }

    /// The last lines, joined.
    pub(super) fn tail(&self) -> String {
        let state = self.lock();
        let mut out = String::new();
        for line in &state.tail {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}
