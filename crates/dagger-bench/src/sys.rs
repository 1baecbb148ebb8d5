//! Process measurements from /proc (Linux).

/// Resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of the whole process, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // after the command name: state is field 0; utime and stime are fields 11 and 12
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // USER_HZ is 100 on every Linux architecture that dagger targets.
    100.0
}

extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

/// Asks glibc to return free heap memory to the operating system.
pub fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        malloc_trim(0);
    }
}

/// Time each thread of process `pid` has run on a CPU so far, in nanoseconds, by thread id
/// with its name (`/proc/<pid>/task/*/schedstat`); empty if the process is gone.
pub fn thread_run_ns(pid: u32) -> Vec<(u32, String, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            let ns = stat.split_whitespace().next()?.parse().ok()?;
            Some((tid, name.trim_end().to_string(), ns))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_has_run() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(5) {
            std::hint::black_box(0);
        }
        let threads = thread_run_ns(std::process::id());
        assert!(!threads.is_empty());
        assert!(threads.iter().any(|(_, _, ns)| *ns > 0), "{threads:?}");
        assert!(thread_run_ns(u32::MAX).is_empty());
    }
}
