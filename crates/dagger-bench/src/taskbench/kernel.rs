//! Task Bench kernels (`core/core_kernel.cc`), their FLOP and byte counts (`core/core.cc`),
//! the deterministic random generator (`core/core_random.cc`) and per-thread scratch memory.

use std::cell::RefCell;
use std::hint::black_box;

/// The kernel a task runs (`-kernel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KernelType {
    /// Does nothing.
    Empty,
    /// An integer multiply-modulo chain of `-iter` steps.
    BusyWait,
    /// Copies `-iter` samples of the task's scratch memory.
    MemoryBound,
    /// `-iter` rounds of 64 fused multiply-adds (`a = a * a + a`).
    ComputeBound,
    /// `-iter` rounds of 32 multiply-adds (`c += a * b`).
    ComputeBound2,
    /// `compute_bound` with a per-task iteration count drawn from `-imbalance`.
    LoadImbalance,
    /// `compute_bound` for a share of `-iter`, `memory_bound` for the rest (`-mem-fraction`).
    ComputeAndMem,
}

/// Every kernel name the reference accepts, in the reference's (alphabetical) order, with
/// `None` for the ones this port cannot run.
const KERNEL_NAMES: [(&str, Option<KernelType>); 10] = [
    ("busy_wait", Some(KernelType::BusyWait)),
    ("compute_and_mem", Some(KernelType::ComputeAndMem)),
    ("compute_bound", Some(KernelType::ComputeBound)),
    ("compute_bound2", Some(KernelType::ComputeBound2)),
    ("compute_dgemm", None),
    ("empty", Some(KernelType::Empty)),
    ("io_bound", None),
    ("load_imbalance", Some(KernelType::LoadImbalance)),
    ("memory_bound", Some(KernelType::MemoryBound)),
    ("memory_daxpy", None),
];

impl KernelType {
    /// The kernel called `name`, or an error naming the `-kernel` flag.
    pub fn from_name(name: &str) -> Result<KernelType, String> {
        match KERNEL_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, Some(k))) => Ok(*k),
            Some((_, None)) => Err(format!(
                "-kernel {name}: not supported by this port (the reference needs BLAS for \
                 compute_dgemm/memory_daxpy and leaves io_bound unimplemented)"
            )),
            None => Err(format!(
                "invalid flag \"-kernel {name}\" (expected one of: {})",
                Self::names().join(", ")
            )),
        }
    }

    /// The names of the kernels this port runs, in the reference's order.
    pub fn names() -> Vec<&'static str> {
        KERNEL_NAMES
            .iter()
            .filter(|(_, k)| k.is_some())
            .map(|(n, _)| *n)
            .collect()
    }

    /// The reference's name of the kernel.
    pub fn name(self) -> &'static str {
        KERNEL_NAMES
            .iter()
            .find(|(_, k)| *k == Some(self))
            .map_or("?", |(n, _)| n)
    }

    /// Whether the kernel reads and writes the task's scratch memory.
    pub fn uses_scratch(self) -> bool {
        matches!(self, KernelType::MemoryBound | KernelType::ComputeAndMem)
    }
}

/// A kernel and its parameters (the reference's `kernel_t`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kernel {
    /// Which kernel.
    pub kind: KernelType,
    /// `-iter`: rounds of the kernel's inner loop.
    pub iterations: i64,
    /// `-sample`: how many pieces the scratch memory is cut into (memory kernels).
    pub samples: i32,
    /// `-imbalance`: spread of the per-task iteration counts of `load_imbalance`, in [0, 2].
    pub imbalance: f64,
    /// `-mem-fraction`: share of the iterations of `compute_and_mem` that copy memory.
    pub fraction_mem: f64,
}

impl Default for Kernel {
    /// The reference's default: `{EMPTY, 0, 16, 0.0}` (and a memory fraction of 0).
    fn default() -> Self {
        Kernel {
            kind: KernelType::Empty,
            iterations: 0,
            samples: 16,
            imbalance: 0.0,
            fraction_mem: 0.0,
        }
    }
}

impl Kernel {
    /// Runs the kernel for task (`graph_index`, `timestep`, `point`); `scratch` is the
    /// task's scratch memory (empty unless the kernel uses it). Returns a value derived
    /// from the work so that it cannot be optimized away.
    pub fn execute(&self, graph_index: i64, timestep: i64, point: i64, scratch: &mut [u8]) -> f64 {
        match self.kind {
            KernelType::Empty => 0.0,
            KernelType::BusyWait => busy_wait(self.iterations) as f64,
            KernelType::MemoryBound => {
                memory(scratch, self.samples, self.iterations, timestep);
                0.0
            }
            KernelType::ComputeBound => compute(self.iterations),
            KernelType::ComputeBound2 => compute2(self.iterations),
            KernelType::LoadImbalance => {
                compute(self.imbalance_iterations(graph_index, timestep, point))
            }
            KernelType::ComputeAndMem => {
                let mem_iter = self.mem_iterations();
                let dot = compute(self.iterations - mem_iter);
                memory(scratch, self.samples, mem_iter, timestep);
                dot
            }
        }
    }

    /// `select_imbalance_iterations`: the iteration count of one `load_imbalance` task.
    pub fn imbalance_iterations(&self, graph_index: i64, timestep: i64, point: i64) -> i64 {
        let value = random_uniform(&[graph_index, timestep, point]);
        ((1.0 + (value - 0.5) * self.imbalance) * self.iterations as f64).round() as i64
    }

    /// The memory iterations of `compute_and_mem` (`int mem_iter = iterations * fraction`).
    fn mem_iterations(&self) -> i64 {
        (self.iterations as f64 * self.fraction_mem) as i64
    }
}

/// `execute_kernel_busy_wait`.
fn busy_wait(iterations: i64) -> i64 {
    let mut acc: i64 = 113;
    for _ in 0..black_box(iterations) {
        acc = black_box(acc * 139 % 2_147_483_647);
    }
    acc
}

/// `execute_kernel_compute`: 64 doubles, `a = a * a + a` each round (the reference's AVX2
/// path when the CPU has FMA, its scalar path otherwise).
fn compute(iterations: i64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features `compute_fma` is compiled for.
            return unsafe { compute_fma(black_box(iterations)) };
        }
    }
    compute_scalar(black_box(iterations))
}

/// The reference's AVX2 path: sixteen 4-wide vectors, one fused multiply-add each per round.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn compute_fma(iterations: i64) -> f64 {
    // `_mm256_set_pd(1, 2, 3, 4)` puts 4.0 in lane 0.
    let mut a = [0.0f64; 64];
    for (i, x) in a.iter_mut().enumerate() {
        *x = (4 - i % 4) as f64;
    }
    for _ in 0..iterations {
        for x in a.iter_mut() {
            *x = x.mul_add(*x, *x);
        }
    }
    a.iter().product()
}

/// The reference's scalar path.
fn compute_scalar(iterations: i64) -> f64 {
    let mut a = [1.2345f64; 64];
    for _ in 0..iterations {
        for x in a.iter_mut() {
            *x = *x * *x + *x;
        }
    }
    a.iter().product()
}

/// `execute_kernel_compute2`.
fn compute2(iterations: i64) -> f64 {
    const N: usize = 32;
    let a = [1.2345f64; N];
    let b = [1.010101f64; N];
    let mut c = [0.0f64; N];
    for _ in 0..black_box(iterations) {
        for i in 0..N {
            c[i] += a[i] * b[i];
        }
    }
    c.iter().sum()
}

/// `copy`: copies the first half of `buf` onto its second half, in three parts (an
/// unaligned prologue, a 32-byte aligned body and an epilogue) like the reference.
fn copy(buf: &mut [u8]) {
    let len = buf.len();
    let addr = buf.as_ptr() as usize;
    // The reference assumes the prologue fits; clamp it so tiny samples stay in bounds.
    let prolog = if addr % 32 == 0 {
        0
    } else {
        (32 - addr % 32).min(len)
    };
    let aligned = (len - prolog) / 64 * 64;
    let epilog = len - prolog - aligned;
    if prolog > 0 {
        buf.copy_within(0..prolog / 2, prolog / 2);
    }
    buf.copy_within(prolog..prolog + aligned / 2, prolog + aligned / 2);
    if epilog > 0 {
        let start = prolog + aligned;
        buf.copy_within(start..start + epilog / 2, start + epilog / 2);
    }
    black_box(buf);
}

/// `execute_kernel_memory`: `iterations` sample copies, starting at a sample that rotates
/// with the timestep.
fn memory(scratch: &mut [u8], samples: i32, iterations: i64, timestep: i64) {
    let samples = i64::from(samples.max(1));
    let sample_bytes = scratch.len() / samples as usize;
    let mut run = |start: i64, count: i64| {
        let from = start as usize * sample_bytes;
        copy(&mut scratch[from..from + count as usize * sample_bytes]);
    };
    let mut iter = 0;
    // prologue: up to the end of the scratch memory
    let start = (timestep * iterations + iter).rem_euclid(samples);
    let n = samples.min(start + iterations) - start;
    if n > 0 {
        run(start, n);
        iter += n;
    }
    // body: whole passes over the scratch memory
    while iter + samples <= iterations {
        run((timestep * iterations + iter).rem_euclid(samples), samples);
        iter += samples;
    }
    // epilogue: the rest
    let start = (timestep * iterations + iter).rem_euclid(samples);
    let n = iterations - iter;
    if n > 0 {
        run(start, n);
    }
}

/// FLOPs of one task (`count_flops_per_task`).
pub fn flops_per_task(k: &Kernel, graph_index: i64, timestep: i64, point: i64) -> i64 {
    match k.kind {
        KernelType::Empty | KernelType::BusyWait | KernelType::MemoryBound => 0,
        KernelType::ComputeBound => 2 * 64 * k.iterations + 64,
        KernelType::ComputeBound2 => 2 * 32 * k.iterations,
        KernelType::LoadImbalance => {
            2 * 64 * k.imbalance_iterations(graph_index, timestep, point) + 64
        }
        KernelType::ComputeAndMem => {
            ((2 * 64 * k.iterations) as f64 * (1.0 - k.fraction_mem) + 64.0) as i64
        }
    }
}

/// Bytes copied by one task (`count_bytes_per_task`).
pub fn bytes_per_task(k: &Kernel, scratch_bytes: u64) -> i64 {
    let samples = u64::try_from(k.samples).unwrap_or(0).max(1);
    match k.kind {
        KernelType::MemoryBound => {
            (scratch_bytes.wrapping_mul(k.iterations as u64) / samples) as i64
        }
        KernelType::ComputeAndMem => {
            ((scratch_bytes.wrapping_mul(k.iterations as u64)) as f64 * k.fraction_mem
                / samples as f64) as i64
        }
        _ => 0,
    }
}

/// MurmurHash3, x64 128-bit variant (Austin Appleby's public-domain reference), which the
/// reference's `gen_bits` runs with seed 1234567.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> [u64; 2] {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    fn fmix64(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
    fn word(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &b)| acc | (u64::from(b) << (8 * i)))
    }
    let mix1 = |k: u64| k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix2 = |k: u64| k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    let (mut h1, mut h2) = (u64::from(seed), u64::from(seed));
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        h1 ^= mix1(word(&block[..8]));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix2(word(&block[8..]));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    if tail.len() > 8 {
        h2 ^= mix2(word(&tail[8..]));
    }
    if !tail.is_empty() {
        h1 ^= mix1(word(&tail[..tail.len().min(8)]));
    }
    h1 ^= data.len() as u64;
    h2 ^= data.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    [h1, h2]
}

/// `random_uniform`: a deterministic value in [0, 1) from the bytes of `seed` (an array of
/// C `long`s, hashed in memory order).
pub fn random_uniform(seed: &[i64]) -> f64 {
    let mut bytes = [0u8; 64];
    let n = seed.len().min(8) * 8;
    for (chunk, v) in bytes.chunks_exact_mut(8).zip(seed) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    murmur3_x64_128(&bytes[..n], 1_234_567)[0] as f64 * (-64f64).exp2()
}

/// The value the reference writes all over scratch memory (`MAGIC_VALUE`, "SCRATCHB").
pub const MAGIC_VALUE: u64 = 0x5C4A_7C8B;

/// One cache line of scratch memory (64-byte aligned, like a fresh `malloc` or better).
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Line(#[allow(dead_code)] [u64; 8]); // read through `as_bytes`

thread_local! {
    /// This thread's scratch memory, shared by the tasks that run on it one after another
    /// (the reference's per-worker `extra_local_memory`).
    static SCRATCH: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `bytes` bytes of this thread's scratch memory, prepared with
/// [`MAGIC_VALUE`] (`prepare_scratch`) when first allocated. `bytes` must be a multiple of 8.
pub fn with_scratch<R>(bytes: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    if bytes == 0 {
        return f(&mut []);
    }
    let lines = bytes.div_ceil(64);
    let prepare = |v: &mut Vec<Line>| {
        if v.len() < lines {
            v.clear();
            v.resize(lines, Line([MAGIC_VALUE; 8]));
        }
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            prepare(&mut v);
            f(&mut as_bytes(&mut v)[..bytes])
        }
        // Only reachable if a kernel ever waited inside a task: use private memory.
        Err(_) => {
            let mut v = Vec::new();
            prepare(&mut v);
            f(&mut as_bytes(&mut v)[..bytes])
        }
    })
}

fn as_bytes(v: &mut [Line]) -> &mut [u8] {
    let len = std::mem::size_of_val(v);
    // SAFETY: `Line` is plain old data without padding; any byte pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), len) }
}
