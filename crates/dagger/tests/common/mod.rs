//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Condvar, Mutex};

/// A latch the test opens to release tasks that block on it (no sleeps as synchronisation).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    pub fn wait(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }
}

/// One point of the test stencils: a hash of its seed and its inputs.
pub fn mix_values(seed: u64, inputs: impl IntoIterator<Item = u64>) -> u64 {
    inputs.into_iter().fold(seed, |acc, x| {
        acc.wrapping_mul(0x9E37_79B9).wrapping_add(x) % 1_000_003
    })
}

/// A 1-d stencil of `width` points over `steps` steps, spawned whole before any of it runs:
/// point `c` of step `s` reads points `c - 1 ..= c + 1` of step `s - 1` and has seed
/// `s * width + c`; `point(s, c, seed, inputs)` spawns it. The points of step 0 read a task
/// of this process that ends once every point is spawned. Returns the tasks by step, and the
/// values they must have (see [`mix_values`]).
pub fn spawn_stencil(
    width: usize,
    steps: usize,
    point: impl Fn(usize, usize, u64, Vec<dagger::DTask<u64>>) -> dagger::DTask<u64>,
) -> (Vec<Vec<dagger::DTask<u64>>>, Vec<Vec<u64>>) {
    let reads = |c: usize| c.saturating_sub(1)..(c + 2).min(width);
    let mut expect = vec![vec![mix_values(0, [0]); width]; steps];
    for s in 0..steps {
        for c in 0..width {
            expect[s][c] = match s {
                0 => mix_values(c as u64, [0]),
                _ => mix_values((s * width + c) as u64, expect[s - 1][reads(c)].to_vec()),
            };
        }
    }
    let (open, opened) = std::sync::mpsc::channel::<()>();
    let gate = dagger::spawn(move || {
        let _ = opened.recv();
        0u64
    });
    let mut rows: Vec<Vec<dagger::DTask<u64>>> = Vec::with_capacity(steps);
    for s in 0..steps {
        let row = (0..width)
            .map(|c| match s {
                0 => point(0, c, c as u64, vec![gate.clone()]),
                _ => point(s, c, (s * width + c) as u64, rows[s - 1][reads(c)].to_vec()),
            })
            .collect();
        rows.push(row);
    }
    open.send(()).expect("the gate task waits");
    (rows, expect)
}
