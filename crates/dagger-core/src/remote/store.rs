//! The values a process holds for others, and running calls that arrive from other
//! processes.

use super::functions::{table, AnyValue, ArgValue, Args, Codec, MutArg, Stored, TaskFn};
use super::wire::{Location, WireArg, WireCall, WireOptions};
use crate::context::Context;
use crate::error::BoxError;
use crate::options::Options;
use crate::remote::data::DataLink;
use crate::scope::Scope;
use crate::task::DTask;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A value held for others: decoded, or still as the bytes it arrived as (a value put here
/// or moved here, decoded by the first task that reads it).
enum Entry {
    Typed(Stored),
    Raw(bytes::Bytes),
}

/// The values one process holds, by id.
pub struct Store {
    worker: u32,
    values: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

impl Store {
    /// An empty store of process `worker`.
    pub fn new(worker: u32) -> Self {
        Store {
            worker,
            values: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// The process this store belongs to.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.values.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn location(&self, id: u64) -> Location {
        Location {
            worker: self.worker,
            id,
            bytes: 0,
        }
    }

    /// Keeps `value`; returns where it is.
    pub fn insert(&self, value: Stored) -> Location {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map().insert(id, Entry::Typed(value));
        self.location(id)
    }

    /// Keeps the encoded bytes of a value (decoded when a task first reads it).
    pub fn insert_bytes(&self, bytes: bytes::Bytes) -> Location {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let len = bytes.len() as u64;
        self.map().insert(id, Entry::Raw(bytes));
        Location {
            bytes: len,
            ..self.location(id)
        }
    }

    /// The value with id `id`, decoded with `codec` if it is still encoded.
    pub fn get(
        &self,
        id: u64,
        codec: &Codec,
    ) -> Result<Arc<dyn std::any::Any + Send + Sync>, BoxError> {
        let raw = match self.map().get(&id) {
            Some(Entry::Typed(s)) => return Ok(s.value.clone()),
            Some(Entry::Raw(b)) => b.clone(),
            None => {
                return Err(
                    format!("process {} holds no value {id} (it was freed)", self.worker).into(),
                )
            }
        };
        let value = (codec.decode)(&raw)?;
        let mut map = self.map();
        if let Some(e) = map.get_mut(&id) {
            *e = Entry::Typed(Stored {
                value: value.clone(),
                encode: codec.encode,
                type_name: (codec.type_name)(),
            });
        }
        Ok(value)
    }

    /// Takes the value with id `id` out, decoded with `codec`, unshared (so it can be
    /// changed in place); put it back with [`put_back`](Store::put_back).
    pub fn take_unique(&self, id: u64, codec: &Codec) -> Result<AnyValue, BoxError> {
        let entry = self
            .map()
            .remove(&id)
            .ok_or_else(|| format!("process {} holds no value {id} (it was freed)", self.worker))?;
        match entry {
            Entry::Raw(b) => (codec.decode)(&b),
            // Someone else holds the value still (an encoding for a fetch): change a copy.
            Entry::Typed(s) => match Arc::strong_count(&s.value) {
                1 => Ok(s.value),
                _ => (codec.decode)(&s.to_bytes()?),
            },
        }
    }

    /// Keeps `value` (of the type of `codec`) under id `id` again.
    pub fn put_back(&self, id: u64, value: AnyValue, codec: &Codec) {
        self.map().insert(
            id,
            Entry::Typed(Stored {
                value,
                encode: codec.encode,
                type_name: (codec.type_name)(),
            }),
        );
    }

    /// The encoded bytes of the value with id `id`.
    pub fn encode(&self, id: u64) -> Result<bytes::Bytes, BoxError> {
        let typed = match self.map().get(&id) {
            Some(Entry::Typed(s)) => s.clone(),
            Some(Entry::Raw(b)) => return Ok(b.clone()),
            None => {
                return Err(
                    format!("process {} holds no value {id} (it was freed)", self.worker).into(),
                )
            }
        };
        typed.to_bytes().map(bytes::Bytes::from)
    }

    /// Drops the value with id `id`; false if it was not here.
    pub fn free(&self, id: u64) -> bool {
        let removed = self.map().remove(&id);
        removed.is_some()
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fetches encoded values from other processes (blocking).
pub trait Fetch: Send + Sync {
    /// The encoded bytes of the value at `loc`.
    fn fetch(&self, loc: Location) -> Result<bytes::Bytes, BoxError>;
}

impl<T: DataLink + ?Sized> Fetch for T {
    fn fetch(&self, loc: Location) -> Result<bytes::Bytes, BoxError> {
        DataLink::fetch(self, loc)
    }
}

fn resolve_one(
    arg: &WireArg,
    codec: &super::functions::Codec,
    store: &Store,
    fetch: &dyn Fetch,
) -> Result<Arc<dyn std::any::Any + Send + Sync>, BoxError> {
    match arg {
        WireArg::Value(bytes) => (codec.decode)(bytes),
        WireArg::Ref(loc) if loc.worker == store.worker() => store.get(loc.id, codec),
        WireArg::Ref(loc) => {
            let bytes = crate::sched::blocking(|| fetch.fetch(*loc)).map_err(|e| InputLost {
                worker: loc.worker,
                message: e.to_string(),
            })?;
            (codec.decode)(&bytes)
        }
        WireArg::Many(_) => Err("a nested collection cannot be one value".into()),
    }
}

/// An input of a call could not be fetched from the process holding it (that process is
/// gone or unreachable): the call may succeed once the input is made again elsewhere.
#[derive(Debug)]
pub struct InputLost {
    /// The process that held the input.
    pub worker: u32,
    /// Why the fetch failed.
    pub message: String,
}

impl std::fmt::Display for InputLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an input held by process {} could not be fetched: {}",
            self.worker, self.message
        )
    }
}

impl std::error::Error for InputLost {}

/// Decodes the arguments of a call of `entry`.
pub fn resolve_args(
    entry: &TaskFn,
    args: &[WireArg],
    store: &Store,
    fetch: &dyn Fetch,
) -> Result<Vec<ArgValue>, BoxError> {
    if args.len() != entry.params.len() {
        return Err(format!(
            "task function {} takes {} arguments but the call has {}",
            entry.name,
            entry.params.len(),
            args.len()
        )
        .into());
    }
    entry
        .params
        .iter()
        .zip(args)
        .map(|(p, a)| match a {
            WireArg::Many(items) => {
                let elem = p
                    .elem
                    .as_ref()
                    .ok_or_else(|| format!("{} does not take a collection", entry.name))?;
                items
                    .iter()
                    .map(|i| resolve_one(i, elem, store, fetch))
                    .collect::<Result<Vec<_>, _>>()
                    .map(ArgValue::Many)
            }
            other => resolve_one(other, &p.codec, store, fetch).map(ArgValue::One),
        })
        .collect()
}

fn options_from_wire(w: &WireOptions) -> Options {
    let mut o = Options::new();
    if let Some(n) = &w.name {
        o = o.name(n.as_str());
    }
    if let Some(p) = w.priority {
        o = o.priority(p);
    }
    if let Some(t) = w.time_util_ns {
        o = o.time_util(Duration::from_nanos(t));
    }
    if let Some(a) = w.alloc_util {
        o = o.alloc_util(a);
    }
    if let Some(c) = w.occupancy {
        o = o.occupancy(c);
    }
    if let Some(a) = w.allow_errors {
        o = o.allow_errors(a);
    }
    o
}

/// The serialisable part of `o`.
pub fn options_to_wire(o: &Options) -> WireOptions {
    WireOptions {
        name: o.name.as_deref().map(str::to_string),
        priority: o.priority,
        time_util_ns: o.time_util.map(|d| d.as_nanos() as u64),
        alloc_util: o.alloc_util,
        occupancy: o.occupancy,
        allow_errors: o.allow_errors,
        inherited: None,
    }
}

/// Runs a call that arrived from another process as a task on `ctx`: resolves its arguments
/// (fetching remote ones), calls the function, keeps the result in `store`, and yields where
/// the result is and how long the function ran (nanoseconds).
pub fn run_call(
    ctx: &Context,
    call: WireCall,
    store: Arc<Store>,
    fetch: Arc<dyn Fetch>,
) -> Result<DTask<(Location, u64)>, BoxError> {
    let entry = table()
        .get(call.func)
        .ok_or_else(|| format!("no task function has id {}", call.func))?;
    let mut opts = options_from_wire(&call.options);
    if opts.name.is_none() {
        opts = opts.name(entry.name);
    }
    if let Some(t) = call.thread {
        opts = opts.scope(Scope::worker(store.worker()).thread(t));
    }
    let inherited = call.options.inherited.as_deref().map(options_from_wire);
    let body = move || -> Result<(Location, u64), BoxError> {
        let values = resolve_args(entry, &call.args, &store, &*fetch)?;
        let started = std::time::Instant::now();
        let stored = (entry.invoke)(&Args::new(entry.name, &values))?;
        let run_ns = started.elapsed().as_nanos() as u64;
        Ok((store.insert(stored), run_ns))
    };
    Ok(ctx.enter(|| match inherited {
        Some(inh) => crate::options::with_options(inh, || crate::task::try_spawn_with(opts, body)),
        None => crate::task::try_spawn_with(opts, body),
    }))
}

/// Runs a call of a data-dependency region that arrived from the head, as a task on `ctx`:
/// the arguments marked in `writes` are values of `store` (`Ref`s to this process) that the
/// function changes in place; they stay here, changed. Yields the encoded result and how long
/// the function ran (nanoseconds).
pub fn run_in_place(
    ctx: &Context,
    call: WireCall,
    writes: Vec<bool>,
    store: Arc<Store>,
    fetch: Arc<dyn Fetch>,
) -> Result<DTask<(Vec<u8>, u64)>, BoxError> {
    let entry = table()
        .get(call.func)
        .ok_or_else(|| format!("no task function has id {}", call.func))?;
    if call.args.len() != entry.params.len() || writes.len() != call.args.len() {
        return Err(format!(
            "task function {} takes {} arguments but the call has {}",
            entry.name,
            entry.params.len(),
            call.args.len()
        )
        .into());
    }
    let mut opts = options_from_wire(&call.options);
    if opts.name.is_none() {
        opts = opts.name(entry.name);
    }
    if let Some(t) = call.thread {
        opts = opts.scope(Scope::worker(store.worker()).thread(t));
    }
    let body = move || -> Result<(Vec<u8>, u64), BoxError> {
        let mut values = Vec::with_capacity(call.args.len());
        let mut lent: Vec<(usize, u64)> = Vec::new();
        let mut failed = None;
        for (i, ((p, a), &w)) in entry.params.iter().zip(&call.args).zip(&writes).enumerate() {
            let v = match (w, a) {
                (true, WireArg::Ref(loc)) if loc.worker == store.worker() => {
                    store.take_unique(loc.id, &p.codec).map(|v| {
                        lent.push((i, loc.id));
                        ArgValue::Mut(MutArg::new(v))
                    })
                }
                (true, _) => Err(format!(
                    "argument {} of {} is changed in place, so it must be held here",
                    i + 1,
                    entry.name
                )
                .into()),
                (false, other) => resolve_one(other, &p.codec, &store, &*fetch).map(ArgValue::One),
            };
            match v {
                Ok(v) => values.push(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let ran = match failed {
            Some(e) => Err(e),
            None => {
                let started = std::time::Instant::now();
                // A panic is caught by the task and reported; the lent values are then lost,
                // which only matters to the region that already fails.
                let r = (entry.invoke)(&Args::new(entry.name, &values));
                r.map(|stored| (stored, started.elapsed().as_nanos() as u64))
            }
        };
        // the changed values stay here, under the ids the head knows them by
        for (v, (i, id)) in values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                ArgValue::Mut(m) => Some((i, m)),
                _ => None,
            })
            .map(|(_, m)| m)
            .zip(lent)
        {
            store.put_back(id, v.into_inner(), &entry.params[i].codec);
        }
        let (stored, run_ns) = ran?;
        Ok((stored.to_bytes()?, run_ns))
    };
    Ok(ctx.enter(|| crate::task::try_spawn_with(opts, body)))
}
