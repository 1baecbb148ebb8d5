//! Task graphs: shapes and dependence patterns, ported from `TaskGraph` in `core/core.cc`.
//!
//! A graph has `timesteps` rows; row `t` holds the points `offset_at_timestep(t) ..
//! offset_at_timestep(t) + width_at_timestep(t)`. Point `p` of row `t` depends on the points
//! of row `t - 1` listed by `dependencies(dependence_set_at_timestep(t), p)` (inclusive
//! intervals), restricted to the points that row actually has.

use super::kernel::{random_uniform, Kernel};
use std::collections::BTreeSet;

/// The dependence pattern of a graph (`-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DependenceType {
    /// No dependencies.
    Trivial,
    /// Each point depends on itself.
    NoComm,
    /// Each point depends on itself and its two neighbours.
    Stencil1D,
    /// `stencil_1d` with wrap-around at the edges.
    Stencil1DPeriodic,
    /// A diamond (the width grows by one per step, then shrinks).
    Dom,
    /// A binary tree fanning out from point 0.
    Tree,
    /// Butterflies with strides 1, 2, 4, ...
    Fft,
    /// Each point depends on every point.
    AllToAll,
    /// Each point depends on its `radix` nearest neighbours.
    Nearest,
    /// Each point depends on `radix` points spread across the width.
    Spread,
    /// `nearest` with each dependency kept with probability `-fraction`.
    RandomNearest,
}

/// Every dependence name the reference accepts, in its (alphabetical) order, with `None` for
/// the one whose dependence function the reference does not define.
const DEPENDENCE_NAMES: [(&str, Option<DependenceType>); 12] = [
    ("all_to_all", Some(DependenceType::AllToAll)),
    ("dom", Some(DependenceType::Dom)),
    ("fft", Some(DependenceType::Fft)),
    ("nearest", Some(DependenceType::Nearest)),
    ("no_comm", Some(DependenceType::NoComm)),
    ("random_nearest", Some(DependenceType::RandomNearest)),
    ("random_spread", None),
    ("spread", Some(DependenceType::Spread)),
    ("stencil_1d", Some(DependenceType::Stencil1D)),
    (
        "stencil_1d_periodic",
        Some(DependenceType::Stencil1DPeriodic),
    ),
    ("tree", Some(DependenceType::Tree)),
    ("trivial", Some(DependenceType::Trivial)),
];

impl DependenceType {
    /// Every type this port supports.
    #[cfg(test)]
    pub const ALL: [DependenceType; 11] = [
        DependenceType::Trivial,
        DependenceType::NoComm,
        DependenceType::Stencil1D,
        DependenceType::Stencil1DPeriodic,
        DependenceType::Dom,
        DependenceType::Tree,
        DependenceType::Fft,
        DependenceType::AllToAll,
        DependenceType::Nearest,
        DependenceType::Spread,
        DependenceType::RandomNearest,
    ];

    /// The type called `name`, or an error naming the `-type` flag.
    pub fn from_name(name: &str) -> Result<DependenceType, String> {
        match DEPENDENCE_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, Some(t))) => Ok(*t),
            Some((_, None)) => Err(format!(
                "-type {name}: the reference lists this type but defines no dependence \
                 function for it (its dependencies() asserts), so it cannot be ported"
            )),
            None => Err(format!(
                "invalid flag \"-type {name}\" (expected one of: {})",
                Self::names().join(", ")
            )),
        }
    }

    /// The names of the supported types, in the reference's order.
    pub fn names() -> Vec<&'static str> {
        DEPENDENCE_NAMES
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(n, _)| *n)
            .collect()
    }

    /// The reference's name of the type.
    pub fn name(self) -> &'static str {
        DEPENDENCE_NAMES
            .iter()
            .find(|(_, t)| *t == Some(self))
            .map_or("?", |(n, _)| n)
    }

    /// Whether the type repeats with a user-set period (`needs_period`).
    pub fn needs_period(self) -> bool {
        matches!(self, DependenceType::Spread | DependenceType::RandomNearest)
    }
}

/// One task graph and its kernel (the reference's `task_graph_t`). Integers are C `long`s.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskGraph {
    /// Position of the graph among those of the run (0 for the first, +1 per `-and`).
    pub graph_index: i64,
    /// `-steps`: number of rows.
    pub timesteps: i64,
    /// `-width`: the widest row.
    pub max_width: i64,
    /// `-type`.
    pub dependence: DependenceType,
    /// `-radix`: dependencies per point of `nearest`, `spread` and `random_nearest`.
    pub radix: i64,
    /// `-period`: dependence sets of `spread` and `random_nearest` (-1 until defaulted).
    pub period: i64,
    /// `-fraction`: probability of each candidate dependency of `random_nearest`.
    pub fraction_connected: f64,
    /// The kernel each task runs.
    pub kernel: Kernel,
    /// `-output`: bytes each task produces (at least 16).
    pub output_bytes_per_task: usize,
    /// `-scratch`: bytes of scratch memory per task.
    pub scratch_bytes_per_task: usize,
    /// `-field`: a layout hint for some reference implementations (0 means `timesteps`).
    pub nb_fields: i64,
}

impl TaskGraph {
    /// The reference's `default_graph(graph_index)`.
    pub fn new(graph_index: i64) -> TaskGraph {
        TaskGraph {
            graph_index,
            timesteps: 4,
            max_width: 4,
            dependence: DependenceType::Trivial,
            radix: 3,
            period: -1,
            fraction_connected: 0.25,
            kernel: Kernel::default(),
            output_bytes_per_task: 16,
            scratch_bytes_per_task: 0,
            nb_fields: 0,
        }
    }

    /// The first point of row `timestep` (0 before the first row).
    pub fn offset_at_timestep(&self, timestep: i64) -> i64 {
        if timestep < 0 {
            return 0;
        }
        match self.dependence {
            DependenceType::Dom => 0.max(timestep + self.max_width - self.timesteps),
            _ => 0,
        }
    }

    /// The number of points of row `timestep` (0 before the first row).
    pub fn width_at_timestep(&self, timestep: i64) -> i64 {
        if timestep < 0 {
            return 0;
        }
        match self.dependence {
            DependenceType::Dom => self
                .max_width
                .min((timestep + 1).min(self.timesteps - timestep)),
            DependenceType::Tree => self.max_width.min(1i64 << timestep.min(62)),
            _ => self.max_width,
        }
    }

    /// How many different dependence sets the pattern cycles through.
    pub fn max_dependence_sets(&self) -> i64 {
        match self.dependence {
            DependenceType::Fft => (self.max_width as f64).log2().ceil() as i64,
            DependenceType::Spread | DependenceType::RandomNearest => self.period,
            _ => 1,
        }
    }

    /// The dependence set used by row `timestep`.
    pub fn dependence_set_at_timestep(&self, timestep: i64) -> i64 {
        match self.dependence {
            DependenceType::Fft => {
                let sets = self.max_dependence_sets();
                (timestep + sets - 1) % sets
            }
            DependenceType::Spread | DependenceType::RandomNearest => {
                timestep % self.max_dependence_sets()
            }
            _ => 0,
        }
    }

    /// Calls `f(first, last)` for each inclusive interval of points (of the previous row)
    /// that `point` depends on in dependence set `dset` (`TaskGraph::dependencies`).
    pub fn for_each_dependency(&self, dset: i64, point: i64, mut f: impl FnMut(i64, i64)) {
        let w = self.max_width;
        match self.dependence {
            DependenceType::Trivial => {}
            DependenceType::NoComm => f(point, point),
            DependenceType::Stencil1D => f(0.max(point - 1), (point + 1).min(w - 1)),
            DependenceType::Stencil1DPeriodic => {
                f(0.max(point - 1), (point + 1).min(w - 1));
                if point - 1 < 0 {
                    f(w - 1, w - 1);
                }
                if point + 1 >= w {
                    f(0, 0);
                }
            }
            DependenceType::Dom => f(0.max(point - 1), point),
            DependenceType::Tree => f(point / 2, point / 2),
            DependenceType::Fft => self.fft(dset, point, f),
            DependenceType::AllToAll => f(0, w - 1),
            DependenceType::Nearest => {
                if self.radix > 0 {
                    f(
                        0.max(point - self.radix / 2),
                        (point + (self.radix - 1) / 2).min(w - 1),
                    );
                }
            }
            DependenceType::Spread => {
                for i in 0..self.radix {
                    let dep = (point + i * w / self.radix + if i > 0 { dset } else { 0 }) % w;
                    f(dep, dep);
                }
            }
            DependenceType::RandomNearest => self.random_runs(
                point,
                0.max(point - self.radix / 2),
                (point + (self.radix - 1) / 2).min(w - 1),
                |i| [self.graph_index, self.radix, dset, i, point],
                f,
            ),
        }
    }

    /// Calls `f(first, last)` for each inclusive interval of points (of the next row) that
    /// depend on `point` in dependence set `dset` (`TaskGraph::reverse_dependencies`).
    pub fn for_each_reverse_dependency(&self, dset: i64, point: i64, mut f: impl FnMut(i64, i64)) {
        let w = self.max_width;
        match self.dependence {
            DependenceType::Trivial
            | DependenceType::NoComm
            | DependenceType::Stencil1D
            | DependenceType::Stencil1DPeriodic
            | DependenceType::Fft
            | DependenceType::AllToAll => self.for_each_dependency(dset, point, f),
            DependenceType::Dom => f(point, (w - 1).min(point + 1)),
            DependenceType::Tree => {
                let (child1, child2) = (point * 2, point * 2 + 1);
                if child1 < w && child2 < w {
                    f(child1, child2);
                } else if child1 < w {
                    f(child1, child1);
                }
            }
            DependenceType::Nearest => {
                if self.radix > 0 {
                    f(
                        0.max(point - (self.radix - 1) / 2),
                        (point + self.radix / 2).min(w - 1),
                    );
                }
            }
            DependenceType::Spread => {
                for i in 0..self.radix {
                    let dep =
                        (point - i * w / self.radix - if i > 0 { dset } else { 0 }).rem_euclid(w);
                    f(dep, dep);
                }
            }
            DependenceType::RandomNearest => self.random_runs(
                point,
                0.max(point - (self.radix - 1) / 2),
                (point + self.radix / 2).min(w - 1),
                |i| [self.graph_index, self.radix, dset, point, i],
                f,
            ),
        }
    }

    /// The FFT butterfly: `point - 2^dset`, `point`, `point + 2^dset` (where in range).
    fn fft(&self, dset: i64, point: i64, mut f: impl FnMut(i64, i64)) {
        let stride = 1i64 << dset;
        if point - stride >= 0 {
            f(point - stride, point - stride);
        }
        f(point, point);
        if point + stride < self.max_width {
            f(point + stride, point + stride);
        }
    }

    /// The runs of consecutive candidates in `first..=last` that the random draw keeps
    /// (the candidate equal to `point` is always kept when `radix > 0`).
    fn random_runs(
        &self,
        point: i64,
        first: i64,
        last: i64,
        seed: impl Fn(i64) -> [i64; 5],
        mut f: impl FnMut(i64, i64),
    ) {
        let mut run_start = -1;
        let mut i = first;
        while i <= last {
            let value = random_uniform(&seed(i));
            let include = value < self.fraction_connected || (self.radix > 0 && i == point);
            if include {
                if run_start < 0 {
                    run_start = i;
                }
            } else {
                if run_start >= 0 {
                    f(run_start, i - 1);
                }
                run_start = -1;
            }
            i += 1;
        }
        if run_start >= 0 {
            f(run_start, i - 1);
        }
    }

    /// The dependency intervals of `point` in `dset`, as a vector.
    #[cfg(test)]
    pub fn dependencies(&self, dset: i64, point: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        self.for_each_dependency(dset, point, |a, b| v.push((a, b)));
        v
    }

    /// The reverse dependency intervals of `point` in `dset`, as a vector.
    #[cfg(test)]
    pub fn reverse_dependencies(&self, dset: i64, point: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        self.for_each_reverse_dependency(dset, point, |a, b| v.push((a, b)));
        v
    }

    /// Calls `f(dep)` for each point of row `timestep - 1` that `point` of row `timestep`
    /// depends on, in the reference's order (the inputs of the task, in order).
    pub fn for_each_input(&self, timestep: i64, point: i64, mut f: impl FnMut(i64)) {
        let last_offset = self.offset_at_timestep(timestep - 1);
        let last_end = last_offset + self.width_at_timestep(timestep - 1);
        let dset = self.dependence_set_at_timestep(timestep);
        self.for_each_dependency(dset, point, |a, b| {
            for dep in a.max(last_offset)..=b.min(last_end - 1) {
                f(dep);
            }
        });
    }

    /// Checks the graph as the reference's `App::check` does (its asserts become errors).
    pub fn check(&self) -> Result<(), String> {
        let name = self.dependence.name();
        let which = format!("graph {} (-type {name})", self.graph_index);
        if self.dependence.needs_period() && self.period == 0 {
            return Err(format!(
                "{which}: requires a non-zero period (specify with -period)"
            ));
        }
        if !self.dependence.needs_period() && self.period != 0 {
            return Err(format!(
                "{which}: does not support user-configurable period (-period)"
            ));
        }
        if self.dependence == DependenceType::Spread {
            if self.radix <= 0 {
                return Err(format!("{which}: requires -radix > 0"));
            }
            let spread = (self.max_width + self.radix - 1) / self.radix;
            if self.period > spread {
                return Err(format!(
                    "{which}: requires a period that is at most {spread} (-period)"
                ));
            }
        }
        if self.dependence == DependenceType::Fft && self.max_width < 2 {
            // The reference divides by zero here (log2(1) = 0 dependence sets).
            return Err(format!("{which}: requires -width >= 2"));
        }
        if self.kernel.kind.uses_scratch() {
            if self.scratch_bytes_per_task == 0 {
                return Err(format!(
                    "graph {}: -kernel {} requires -scratch > 0",
                    self.graph_index,
                    self.kernel.kind.name()
                ));
            }
            if self.kernel.samples <= 0 {
                return Err(format!(
                    "graph {}: -kernel {} requires -sample > 0",
                    self.graph_index,
                    self.kernel.kind.name()
                ));
            }
        }
        if self.scratch_bytes_per_task % 8 != 0 {
            return Err(format!(
                "graph {}: -scratch {} must be a multiple of 8",
                self.graph_index, self.scratch_bytes_per_task
            ));
        }
        for t in 0..self.timesteps {
            let offset = self.offset_at_timestep(t);
            let width = self.width_at_timestep(t);
            let dset = self.dependence_set_at_timestep(t);
            if offset < 0
                || width < 0
                || offset + width > self.max_width
                || dset < 0
                || dset > self.max_dependence_sets()
            {
                return Err(format!("{which}: malformed row {t}"));
            }
        }
        for dset in 0..self.max_dependence_sets() {
            let mut deps: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); self.max_width as usize];
            for point in 0..self.max_width {
                let mut dup = None;
                self.for_each_dependency(dset, point, |a, b| {
                    for dp in a..=b {
                        if !deps[point as usize].insert(dp) {
                            dup = Some(dp);
                        }
                    }
                });
                if let Some(dp) = dup {
                    return Err(format!(
                        "{which}: point {point} depends twice on point {dp} in dependence \
                         set {dset} (the reference asserts no duplicates; try a larger -width)"
                    ));
                }
            }
            for point in 0..self.max_width {
                let mut bad = None;
                self.for_each_reverse_dependency(dset, point, |a, b| {
                    for rdp in a..=b {
                        let ok = (0..self.max_width).contains(&rdp)
                            && deps[rdp as usize].contains(&point);
                        if !ok {
                            bad = Some(rdp);
                        }
                    }
                });
                if let Some(rdp) = bad {
                    return Err(format!(
                        "{which}: reverse dependency {point} -> {rdp} in dependence set \
                         {dset} has no matching dependency"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Tasks and dependencies of the graph (the counting loop of `App::report_timing`),
    /// with dependencies split into local and nonlocal when `nodes > 0`.
    pub fn count(&self, nodes: i64) -> Counts {
        let mut c = Counts::default();
        for t in 0..self.timesteps {
            let offset = self.offset_at_timestep(t);
            let width = self.width_at_timestep(t);
            let last_offset = self.offset_at_timestep(t - 1);
            let last_width = self.width_at_timestep(t - 1);
            let dset = self.dependence_set_at_timestep(t);
            c.tasks += width;
            for p in offset..offset + width {
                let (mut node_first, mut node_last) = (0, -1);
                if nodes > 0 {
                    let point_node = p * nodes / self.max_width;
                    node_first = point_node * self.max_width / nodes;
                    node_last = (point_node + 1) * self.max_width / nodes - 1;
                }
                self.for_each_dependency(dset, p, |a, b| {
                    let (first, last) = clamp(a, b, last_offset, last_offset + last_width - 1);
                    c.deps += last - first + 1;
                    if nodes > 0 {
                        let (i0, i1) = clamp(first, last, 0, node_first - 1);
                        let (l0, l1) = clamp(first, last, node_first, node_last);
                        let (f0, f1) = clamp(first, last, node_last + 1, self.max_width - 1);
                        c.nonlocal_deps += i1 - i0 + 1;
                        c.local_deps += l1 - l0 + 1;
                        c.nonlocal_deps += f1 - f0 + 1;
                    }
                });
            }
        }
        c
    }
}

/// Task and dependency counts of a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Tasks.
    pub tasks: i64,
    /// Dependencies (edges) between tasks.
    pub deps: i64,
    /// Dependencies within one node (with `-nodes`).
    pub local_deps: i64,
    /// Dependencies across nodes (with `-nodes`).
    pub nonlocal_deps: i64,
}

/// The reference's `clamp`: the interval `start..=end` cut to `min..=max` (empty intervals
/// come out with `last = first - 1`).
fn clamp(start: i64, end: i64, min: i64, max: i64) -> (i64, i64) {
    if end < min {
        (min, min - 1)
    } else if start > max {
        (max, max - 1)
    } else {
        (start.max(min), end.min(max))
    }
}
