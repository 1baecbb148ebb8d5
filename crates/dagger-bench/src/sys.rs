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
