//! The few operating-system calls the launchers need beyond `std`: signalling a process
//! group, tying a child's life to this process (Linux), and this process's user id.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// `SIGKILL`.
pub(super) const SIGKILL: i32 = 9;
/// `SIGTERM`.
pub(super) const SIGTERM: i32 = 15;
/// `ESRCH`, "no such process".
#[cfg(target_os = "linux")]
const ESRCH: i32 = 3;

#[cfg(unix)]
mod ffi {
    use std::ffi::c_int;
    #[cfg(target_os = "linux")]
    use std::ffi::c_ulong;

    extern "C" {
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
        pub fn getuid() -> u32;
        #[cfg(target_os = "linux")]
        pub fn getppid() -> c_int;
        #[cfg(target_os = "linux")]
        pub fn prctl(option: c_int, arg2: c_ulong, ...) -> c_int;
    }

    #[cfg(target_os = "linux")]
    pub const PR_SET_PDEATHSIG: c_int = 1;
}

/// Prepares `cmd` so that its process leads a process group of its own (a terminal's
/// Ctrl-C reaches only the head, and [`signal_group`] reaches the child's own children too)
/// and, on Linux, gets `death_signal` when this process dies.
pub(super) fn detach(cmd: &mut Command, death_signal: i32) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as i32;
            let hook = move || {
                // SAFETY: prctl and getppid are async-signal-safe system calls with plain
                // integer arguments.
                unsafe {
                    if ffi::prctl(ffi::PR_SET_PDEATHSIG, death_signal as std::ffi::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent died before prctl took effect: the signal will not come.
                    // (ESRCH: no allocation between fork and exec.)
                    if ffi::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(ESRCH));
                    }
                }
                Ok(())
            };
            // SAFETY: the hook only makes async-signal-safe system calls and allocates
            // nothing.
            unsafe {
                cmd.pre_exec(hook);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (cmd, death_signal);
}

/// Sends `sig` to the process group led by `pid` (see [`detach`]), or to the process alone
/// if the group is gone.
pub(super) fn signal_group(child: &mut Child, sig: i32) {
    #[cfg(unix)]
    {
        let pid = child.id() as i32;
        // SAFETY: kill has no memory-safety preconditions. The group id is the pid of a child
        // we have not reaped yet, or (after reaping) a group that may still hold its children:
        // Linux does not reuse a pid that names an existing process group.
        unsafe {
            if ffi::kill(-pid, sig) != 0 {
                ffi::kill(pid, sig);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = sig;
        let _ = child.kill();
    }
}

/// The real user id of this process (`None` off Unix).
pub(super) fn own_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        // SAFETY: getuid cannot fail and has no preconditions.
        Some(unsafe { ffi::getuid() })
    }
    #[cfg(not(unix))]
    None
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Spawns `cmd` from one long-lived thread.
///
/// Linux delivers a child's "parent died" signal when the *thread* that forked it exits, not
/// the process: spawning from a thread of a pool that may shrink, or from a test's thread,
/// would kill the worker early. One thread that lives as long as the process avoids that.
pub(super) fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("dagger-launch-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let Some(spawner) = spawner else {
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: SpawnJob = Box::new(move || {
        let _ = reply_tx.send(cmd.spawn());
    });
    let sent = spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(job);
    if let Err(mpsc::SendError(job)) = sent {
        // The thread is gone (it cannot panic; this is defensive): spawn from here.
        job();
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the launcher's spawning thread is gone")))
}
