//! Running task graphs on dagger: one dagger task per point, the points it depends on passed
//! as task arguments, and the reference's `execute_point` checks in every task.

use super::graph::TaskGraph;
use super::kernel::{with_scratch, MAGIC_VALUE};
use dagger::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// Bytes of one (timestep, point) stamp: a pair of C `long`s.
pub const STAMP_BYTES: usize = 16;

/// What a task produces: `-output` bytes filled with its (timestep, point) stamp, repeated
/// (any bytes after the last whole stamp stay zero, as the reference leaves them unwritten).
/// Encoded as a byte string, as the reference sends it: one copy each way, where serde's
/// default for `[u8]` (a sequence) costs an encoder and decoder step per byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output(Box<[u8]>);

impl serde::Serialize for Output {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Output {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Output, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Output;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a task's output bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Output, E> {
                Ok(Output(v.into()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Output, E> {
                Ok(Output(v.into_boxed_slice()))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

impl Output {
    /// An output of `bytes` bytes stamped (`timestep`, `point`).
    pub fn new(bytes: usize, timestep: i64, point: i64) -> Output {
        let mut buf = vec![0u8; bytes].into_boxed_slice();
        for stamp in buf.chunks_exact_mut(STAMP_BYTES) {
            stamp[..8].copy_from_slice(&timestep.to_ne_bytes());
            stamp[8..].copy_from_slice(&point.to_ne_bytes());
        }
        Output(buf)
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The (timestep, point) stamps, in order.
    pub fn stamps(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0.chunks_exact(STAMP_BYTES).map(|s| {
            let mut t = [0u8; 8];
            let mut p = [0u8; 8];
            t.copy_from_slice(&s[..8]);
            p.copy_from_slice(&s[8..]);
            (i64::from_ne_bytes(t), i64::from_ne_bytes(p))
        })
    }

    /// Mutable bytes (for tests that corrupt an output).
    #[cfg(test)]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The reference's `TaskGraph::execute_point`: checks that `inputs` are the outputs of the
/// points that (`timestep`, `point`) depends on, in order, then runs the kernel and returns
/// the task's output. Every failed check is an error naming the task and the bad input.
pub fn execute_point(
    graph: &TaskGraph,
    timestep: i64,
    point: i64,
    inputs: &[&Output],
) -> Result<Output, String> {
    // Formatted only when a check fails: this runs in every task.
    let task = || {
        format!(
            "task (graph {} timestep {timestep} point {point})",
            graph.graph_index
        )
    };
    if !(0..graph.timesteps).contains(&timestep) {
        return Err(format!("{}: timestep out of range", task()));
    }
    let offset = graph.offset_at_timestep(timestep);
    if !(offset..offset + graph.width_at_timestep(timestep)).contains(&point) {
        return Err(format!("{}: point out of range", task()));
    }
    let mut idx = 0;
    let mut error = None;
    graph.for_each_input(timestep, point, |dep| {
        if error.is_some() {
            return;
        }
        let Some(input) = inputs.get(idx) else {
            error = Some(format!(
                "{}: missing input {idx} (from point {dep} of timestep {})",
                task(),
                timestep - 1
            ));
            return;
        };
        if input.len() != graph.output_bytes_per_task {
            error = Some(format!(
                "{}: input {idx} has {} bytes, expected {}",
                task(),
                input.len(),
                graph.output_bytes_per_task
            ));
            return;
        }
        if let Some((pos, (t, p))) = input
            .stamps()
            .enumerate()
            .find(|(_, s)| *s != (timestep - 1, dep))
        {
            error = Some(format!(
                "{}: corrupted input {idx} at position {pos}: expected (timestep {} point \
                 {dep}) but got (timestep {t} point {p})",
                task(),
                timestep - 1
            ));
        }
        idx += 1;
    });
    if let Some(e) = error {
        return Err(e);
    }
    if idx != inputs.len() {
        return Err(format!(
            "{}: got {} inputs, expected {idx}",
            task(),
            inputs.len()
        ));
    }
    let output = Output::new(graph.output_bytes_per_task, timestep, point);
    let kernel = graph.kernel;
    let result = with_scratch(graph.scratch_bytes_per_task, |scratch| {
        if let Some(first) = scratch.get(..8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(first);
            if u64::from_ne_bytes(word) != MAGIC_VALUE {
                return Err(format!(
                    "{}: scratch memory does not start with MAGIC_VALUE",
                    task()
                ));
            }
        }
        Ok(kernel.execute(graph.graph_index, timestep, point, scratch))
    })?;
    black_box(result);
    Ok(output)
}

/// The body of each dagger task.
pub(crate) fn point_task(
    graph: TaskGraph,
    timestep: i64,
    point: i64,
    inputs: Vec<&Output>,
) -> Result<Output, String> {
    execute_point(&graph, timestep, point, &inputs)
}

/// The body of each task when the graph runs on worker processes (`--workers`): the same as
/// [`point_task`], registered so that it can run in another process.
#[dagger::task]
pub(crate) fn point_task_remote(
    graph: TaskGraph,
    timestep: i64,
    point: i64,
    inputs: Vec<&Output>,
) -> Result<Output, String> {
    execute_point(&graph, timestep, point, &inputs)
}

/// Touches this thread's scratch memory so that it is allocated before timing starts.
fn warm_scratch(bytes: usize) {
    with_scratch(bytes, |s| black_box(s.len()));
}

/// What one run of a set of graphs measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunStats {
    /// Wall time from the first spawn to the last task's end, in seconds.
    pub elapsed: f64,
    /// Tasks spawned.
    pub tasks: i64,
    /// Inputs handed to tasks (each one a dependency).
    pub inputs: i64,
}

/// Spawns the tasks of one graph, a row at a time, keeping the previous row's handles.
struct Builder {
    graph: TaskGraph,
    /// Tasks of the previous row, by point minus `prev_offset`.
    prev: Vec<DTask<Output>>,
    prev_offset: i64,
    /// Whether a task of the current row takes each task of `prev` as input.
    consumed: Vec<bool>,
    /// Tasks no other task takes as input: the run ends when they have finished.
    sinks: Vec<DTask<Output>>,
    /// Scratch buffers for one task's input indices and (non-contiguous) input handles.
    idx: Vec<usize>,
    picked: Vec<DTask<Output>>,
    tasks: i64,
    inputs: i64,
    /// Worker processes: with any, point `p` runs on worker `1 + p * workers / max_width`
    /// (blocks of neighbouring points per worker, like the reference's MPI mapping), or on
    /// any worker the scheduler picks when `free_placement`.
    workers: usize,
    free_placement: Option<Scope>,
}

impl Builder {
    fn new(graph: TaskGraph, workers: usize, free_placement: Option<Scope>) -> Builder {
        Builder {
            graph,
            workers,
            free_placement,
            prev: Vec::new(),
            prev_offset: 0,
            consumed: Vec::new(),
            sinks: Vec::new(),
            idx: Vec::new(),
            picked: Vec::new(),
            tasks: 0,
            inputs: 0,
        }
    }

    /// Spawns row `t`.
    fn step(&mut self, t: i64) {
        let graph = self.graph;
        let offset = graph.offset_at_timestep(t);
        let width = graph.width_at_timestep(t);
        let mut row = Vec::with_capacity(width as usize);
        for p in offset..offset + width {
            self.idx.clear();
            let prev_offset = self.prev_offset;
            let idx = &mut self.idx;
            graph.for_each_input(t, p, |dep| idx.push((dep - prev_offset) as usize));
            for &i in &self.idx {
                self.consumed[i] = true;
            }
            let contiguous = self.idx.windows(2).all(|w| w[1] == w[0] + 1);
            let task = if self.workers > 0 {
                let scope = match &self.free_placement {
                    Some(any) => any.clone(),
                    None => Scope::worker(
                        1 + (p as usize * self.workers / graph.max_width as usize) as u32,
                    ),
                };
                self.picked.clear();
                self.picked
                    .extend(self.idx.iter().map(|&i| self.prev[i].clone()));
                spawn!(point_task_remote(graph, t, p, &self.picked)?; scope = scope)
            } else if contiguous {
                let inputs: &[DTask<Output>] = match (self.idx.first(), self.idx.last()) {
                    (Some(&a), Some(&b)) => &self.prev[a..=b],
                    _ => &[],
                };
                spawn!(point_task(graph, t, p, inputs)?)
            } else {
                self.picked.clear();
                self.picked
                    .extend(self.idx.iter().map(|&i| self.prev[i].clone()));
                spawn!(point_task(graph, t, p, &self.picked)?)
            };
            self.inputs += self.idx.len() as i64;
            row.push(task);
        }
        self.picked.clear();
        self.tasks += width;
        for (task, used) in self.prev.drain(..).zip(&self.consumed) {
            if !used {
                self.sinks.push(task);
            }
        }
        self.prev = row;
        self.prev_offset = offset;
        self.consumed.clear();
        self.consumed.resize(width as usize, false);
    }

    /// The tasks to wait for once every row is spawned.
    fn finish(mut self) -> (Vec<DTask<Output>>, i64, i64) {
        self.sinks.append(&mut self.prev);
        (self.sinks, self.tasks, self.inputs)
    }
}

/// Runs `graphs` concurrently on `ctx` and times them (from before the first spawn to the
/// end of the last task), like the reference's main loop. When `ctx` has worker processes
/// the tasks run on them (registered task function, each point pinned to one worker).
#[cfg(test)]
pub fn run_graphs(ctx: &Context, graphs: &[TaskGraph]) -> Result<RunStats, String> {
    run_graphs_placed(ctx, graphs, false)
}

/// [`run_graphs`]; with worker processes and `free_placement`, each task may run on any
/// worker (the scheduler picks) instead of its point's worker.
pub fn run_graphs_placed(
    ctx: &Context,
    graphs: &[TaskGraph],
    free_placement: bool,
) -> Result<RunStats, String> {
    ctx.enter(|| {
        let scratch = graphs
            .iter()
            .map(|g| g.scratch_bytes_per_task)
            .max()
            .unwrap_or(0);
        if scratch > 0 {
            let warm: Vec<DTask<()>> = (0..ctx.num_threads() as u32)
                .map(|i| spawn!(warm_scratch(scratch); scope = Scope::worker(0).thread(i)))
                .collect();
            dagger::wait_all(&warm).map_err(|e| e.to_string())?;
        }

        let workers = ctx.workers().len();
        let free = if free_placement && workers > 0 {
            Some(crate::workers::on_workers(workers)?)
        } else {
            None
        };
        let start = Instant::now();
        let mut builders: Vec<Builder> = graphs
            .iter()
            .map(|g| Builder::new(*g, workers, free.clone()))
            .collect();
        let steps = graphs.iter().map(|g| g.timesteps).max().unwrap_or(0);
        for t in 0..steps {
            for b in builders.iter_mut().filter(|b| t < b.graph.timesteps) {
                b.step(t);
            }
        }
        let mut stats = RunStats {
            elapsed: 0.0,
            tasks: 0,
            inputs: 0,
        };
        let mut sinks = Vec::new();
        for b in builders {
            let (s, tasks, inputs) = b.finish();
            sinks.extend(s);
            stats.tasks += tasks;
            stats.inputs += inputs;
        }
        let result = dagger::wait_all(&sinks);
        stats.elapsed = start.elapsed().as_secs_f64();
        drop(sinks);
        result.map_err(|e| format!("Task Bench detected an error: {}", e.root()))?;
        Ok(stats)
    })
}
