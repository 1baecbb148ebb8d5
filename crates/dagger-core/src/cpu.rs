//! Where this process's threads run: the CPUs it may use, pinning a thread to one of them,
//! and lowering a thread's priority (Linux; elsewhere the CPUs are `0..n` and the rest does
//! nothing).

/// The CPUs this process may run on, in increasing order.
pub(crate) fn available() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    if let Some(cpus) = linux::affinity() {
        return cpus;
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Pins the calling thread to `cpu`; false where that is not possible (no such CPU, or not
/// Linux).
pub(crate) fn pin_current_thread(cpu: usize) -> bool {
    #[cfg(target_os = "linux")]
    return linux::pin(cpu);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        false
    }
}

/// Gives the calling thread the lowest priority (nice 19): it then runs on the CPU time
/// that threads of normal priority leave, and gives way to them as soon as they wake.
pub(crate) fn lower_current_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    return linux::lowest_priority();
    #[cfg(not(target_os = "linux"))]
    false
}

/// Reads a list of CPUs such as `0,1,4`; `None` if it is not one.
pub(crate) fn parse_list(s: &str) -> Option<Vec<usize>> {
    let cpus: Option<Vec<usize>> = s.split(',').map(|c| c.trim().parse().ok()).collect();
    cpus.filter(|c| !c.is_empty())
}

#[cfg(target_os = "linux")]
mod linux {
    /// `cpu_set_t`: 1024 bits.
    type CpuSet = [u64; 16];

    extern "C" {
        fn sched_getaffinity(pid: i32, size: usize, mask: *mut CpuSet) -> i32;
        fn sched_setaffinity(pid: i32, size: usize, mask: *const CpuSet) -> i32;
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }

    const PRIO_PROCESS: i32 = 0;

    pub(super) fn affinity() -> Option<Vec<usize>> {
        let mut set: CpuSet = [0; 16];
        // SAFETY: `set` is a writable `cpu_set_t` of the size given.
        let rc = unsafe { sched_getaffinity(0, std::mem::size_of::<CpuSet>(), &mut set) };
        if rc != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..set.len() * 64)
            .filter(|&c| set[c / 64] & (1 << (c % 64)) != 0)
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }

    pub(super) fn pin(cpu: usize) -> bool {
        let mut set: CpuSet = [0; 16];
        let Some(word) = set.get_mut(cpu / 64) else {
            return false;
        };
        *word |= 1 << (cpu % 64);
        // SAFETY: `set` is a `cpu_set_t` of the size given; pid 0 is the calling thread.
        unsafe { sched_setaffinity(0, std::mem::size_of::<CpuSet>(), &set) == 0 }
    }

    pub(super) fn lowest_priority() -> bool {
        // On Linux the nice value belongs to each thread: `who` 0 is the calling one.
        // SAFETY: plain system call on the calling thread.
        unsafe { setpriority(PRIO_PROCESS, 0, 19) == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_may_use_some_cpus() {
        let cpus = available();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
    }

    #[test]
    fn cpu_lists_read_back() {
        assert_eq!(parse_list("0,1,4"), Some(vec![0, 1, 4]));
        assert_eq!(parse_list("3"), Some(vec![3]));
        assert_eq!(parse_list(""), None);
        assert_eq!(parse_list("1,x"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_pinned_runs_on_that_cpu_only() {
        let cpu = *available().last().unwrap();
        let allowed = std::thread::spawn(move || {
            assert!(pin_current_thread(cpu));
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .join()
        .unwrap();
        let line = allowed
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(cpu.to_string().as_str())
        );
        assert!(!pin_current_thread(100_000), "no such CPU");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowered_has_nice_19_and_the_others_keep_theirs() {
        let nice = |stat: &str| -> i64 {
            // Fields after the command (which may hold spaces): nice is field 19 overall.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            rest.split_whitespace().nth(16).unwrap().parse().unwrap()
        };
        let before = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
        let lowered = std::thread::spawn(|| {
            assert!(lower_current_thread_priority());
            std::fs::read_to_string("/proc/thread-self/stat").unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(nice(&lowered), 19);
        assert_eq!(
            nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()),
            before
        );
    }
}
