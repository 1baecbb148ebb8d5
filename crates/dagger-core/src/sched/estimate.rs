//! Learned run-time estimates.
//!
//! The model: each (function, processor kind) pair keeps an exponentially weighted moving
//! average of measured run times in nanoseconds (weight 1/4 for the newest sample; the first
//! sample sets the average). A pair that was never measured is estimated at 0: optimistic, so
//! an untried processor gets tried once and measured. An explicit `time_util` option replaces
//! all of it.
//!
//! Tasks whose placement involves a choice are measured every time they run; tasks that run on
//! the shared thread pool are sampled (one run in 64 per thread) to keep the fast path cheap.

use crate::hash::IdMap;
use crate::id::ProcessorKind;
use std::any::TypeId;
use std::hash::BuildHasher;
use std::sync::Mutex;

#[derive(Clone, Copy, Debug)]
struct Ewma {
    ns: f64,
    samples: u64,
}

const SHARDS: usize = 16;

type Shard = IdMap<TypeId, Vec<(ProcessorKind, Ewma)>>;

pub(crate) struct Estimates {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::hash::BuildHasherDefault<crate::hash::IdHasher>,
}

impl Estimates {
    pub(crate) fn new() -> Self {
        Estimates {
            shards: (0..SHARDS).map(|_| Mutex::new(IdMap::default())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, sig: TypeId) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(sig) as usize) % SHARDS]
    }

    pub(crate) fn record(&self, sig: TypeId, kind: ProcessorKind, ns: u64) {
        let mut shard = self.shard(sig).lock().unwrap_or_else(|e| e.into_inner());
        let per_kind = shard.entry(sig).or_default();
        match per_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, e)) => {
                e.ns += (ns as f64 - e.ns) / 4.0;
                e.samples += 1;
            }
            None => per_kind.push((
                kind,
                Ewma {
                    ns: ns as f64,
                    samples: 1,
                },
            )),
        }
    }

    /// Estimated nanoseconds for `sig` on each kind in `kinds` (same order).
    pub(crate) fn estimate(&self, sig: TypeId, kinds: &[ProcessorKind]) -> Vec<u64> {
        let shard = self.shard(sig).lock().unwrap_or_else(|e| e.into_inner());
        let per_kind = shard.get(&sig);
        kinds
            .iter()
            .map(|k| {
                per_kind
                    .and_then(|v| v.iter().find(|(kk, _)| kk == k))
                    .map_or(0.0, |(_, e)| e.ns) as u64
            })
            .collect()
    }

    /// The estimate for `sig` on `kind` and its number of samples, if measured.
    pub(crate) fn get(&self, sig: TypeId, kind: ProcessorKind) -> Option<(u64, u64)> {
        let shard = self.shard(sig).lock().unwrap_or_else(|e| e.into_inner());
        shard
            .get(&sig)?
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, e)| (e.ns as u64, e.samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_and_prior() {
        let e = Estimates::new();
        let sig = TypeId::of::<u8>();
        let other = ProcessorKind::of::<u16>();
        assert_eq!(e.estimate(sig, &[ProcessorKind::THREAD]), vec![0]);
        e.record(sig, ProcessorKind::THREAD, 1000);
        e.record(sig, ProcessorKind::THREAD, 2000);
        assert_eq!(e.get(sig, ProcessorKind::THREAD), Some((1250, 2)));
        // an unmeasured kind is optimistic, so it gets tried
        assert_eq!(
            e.estimate(sig, &[ProcessorKind::THREAD, other]),
            vec![1250, 0]
        );
        e.record(sig, other, 10);
        assert_eq!(
            e.estimate(sig, &[ProcessorKind::THREAD, other]),
            vec![1250, 10]
        );
    }
}
