//! The values a process holds for others, and running calls that arrive from other
//! processes.

use super::functions::{
    table, AnyValue, ArgValue, Args, Codec, EncodedArg, Encoding, MutArg, Param, Stored, TaskFn,
};
use super::wire::{Location, ValueBytes, WireArg, WireCall, WireOptions};
use crate::context::Context;
use crate::error::BoxError;
use crate::hash::IdMap;
use crate::options::Options;
use crate::remote::data::DataLink;
use crate::scope::Scope;
use crate::shared_bytes::decode_from;
use crate::task::DTask;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A value held for others: decoded (with its encoded bytes, once a fetch made them or if it
/// arrived as bytes, so that later fetches send them again without encoding), or still as
/// the bytes it arrived as (a value put here or moved here, decoded by the first task that
/// reads it).
enum Entry {
    Typed(Stored, Option<Encoding>),
    Raw(bytes::Bytes),
}

impl Entry {
    /// Bytes of encodings kept beside a decoded value (not counting the value's own
    /// buffers that an encoding shares).
    fn cached(&self) -> usize {
        match self {
            Entry::Typed(_, Some(e)) => e.copied(),
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Values {
    map: IdMap<u64, Entry>,
    /// Sum of [`Entry::cached`] over `map`.
    cached: usize,
}

impl Values {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.map.remove(&id)?;
        self.cached -= e.cached();
        Some(e)
    }
}

/// Default bound of the encodings a store keeps beside decoded values (1 GiB).
pub const DEFAULT_ENCODED_CACHE: usize = 1 << 30;

/// The values one process holds, by id.
pub struct Store {
    worker: u32,
    values: Mutex<Values>,
    next: AtomicU64,
    /// At most this many bytes of encodings are kept beside decoded values; past it, a
    /// value is encoded again for every fetch.
    cache_limit: usize,
}

impl Store {
    /// An empty store of process `worker`.
    pub fn new(worker: u32) -> Self {
        Self::with_cache_limit(worker, DEFAULT_ENCODED_CACHE)
    }

    /// An empty store keeping at most `cache_limit` bytes of encodings beside decoded
    /// values (encoded once, sent again to every process that fetches them, freed with the
    /// value).
    pub fn with_cache_limit(worker: u32, cache_limit: usize) -> Self {
        Store {
            worker,
            values: Mutex::new(Values::default()),
            next: AtomicU64::new(1),
            cache_limit,
        }
    }

    /// The process this store belongs to.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Values> {
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
        self.map().map.insert(id, Entry::Typed(value, None));
        self.location(id)
    }

    /// Keeps the encoded bytes of a value (decoded when a task first reads it).
    pub fn insert_bytes(&self, bytes: bytes::Bytes) -> Location {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let len = bytes.len() as u64;
        self.map().map.insert(id, Entry::Raw(bytes));
        Location {
            bytes: len,
            ..self.location(id)
        }
    }

    fn freed(&self, id: u64) -> BoxError {
        format!("process {} holds no value {id} (it was freed)", self.worker).into()
    }

    /// Keeps `encoding`, the encoding of value `id`, beside it if the bound allows.
    fn keep_encoding(&self, values: &mut Values, id: u64, encoding: &Encoding) {
        if values.cached + encoding.copied() > self.cache_limit {
            return;
        }
        if let Some(Entry::Typed(_, slot @ None)) = values.map.get_mut(&id) {
            *slot = Some(encoding.clone());
            values.cached += encoding.copied();
        }
    }

    /// The value with id `id`, decoded with `codec` if it is still encoded.
    pub fn get(
        &self,
        id: u64,
        codec: &Codec,
    ) -> Result<Arc<dyn std::any::Any + Send + Sync>, BoxError> {
        let raw = match self.map().map.get(&id) {
            Some(Entry::Typed(s, _)) => return Ok(s.value.clone()),
            Some(Entry::Raw(b)) => b.clone(),
            None => return Err(self.freed(id)),
        };
        let value = decode_from(&raw, codec.decode)?;
        let mut values = self.map();
        if let Some(e) = values.map.get_mut(&id) {
            if matches!(e, Entry::Raw(_)) {
                *e = Entry::Typed(
                    Stored {
                        value: value.clone(),
                        encode: codec.encode,
                        encode_parts: codec.encode_parts,
                        encode_small: codec.encode_small,
                        type_name: (codec.type_name)(),
                    },
                    None,
                );
                self.keep_encoding(&mut values, id, &Encoding::from(raw));
            }
        }
        Ok(value)
    }

    /// Takes the value with id `id` out, decoded with `codec`, unshared (so it can be
    /// changed in place); put it back with [`put_back`](Store::put_back).
    pub fn take_unique(&self, id: u64, codec: &Codec) -> Result<AnyValue, BoxError> {
        let entry = self.map().remove(id).ok_or_else(|| self.freed(id))?;
        match entry {
            Entry::Raw(b) => decode_from(&b, codec.decode),
            // Someone else holds the value still (an encoding for a fetch): change a copy.
            Entry::Typed(s, _) => match Arc::strong_count(&s.value) {
                1 => Ok(s.value),
                _ => (codec.decode)(&s.to_bytes()?),
            },
        }
    }

    /// Keeps `value` (of the type of `codec`) under id `id` again.
    pub fn put_back(&self, id: u64, value: AnyValue, codec: &Codec) {
        let entry = Entry::Typed(
            Stored {
                value,
                encode: codec.encode,
                encode_parts: codec.encode_parts,
                encode_small: codec.encode_small,
                type_name: (codec.type_name)(),
            },
            None,
        );
        let mut values = self.map();
        if let Some(old) = values.map.insert(id, entry) {
            values.cached -= old.cached();
        }
    }

    /// The encoding of the value with id `id` if it takes at most
    /// [`SMALL_VALUE`](super::functions::SMALL_VALUE) bytes.
    pub fn small_encoding(&self, id: u64) -> Option<ValueBytes> {
        use super::functions::SMALL_VALUE;
        let values = self.map();
        match values.map.get(&id)? {
            Entry::Typed(_, Some(e)) => {
                (e.len() <= SMALL_VALUE).then(|| ValueBytes::from(&e.to_bytes()[..]))
            }
            Entry::Raw(b) => (b.len() <= SMALL_VALUE).then(|| ValueBytes::from(&b[..])),
            Entry::Typed(s, None) => (s.encode_small)(s.value.as_ref()),
        }
    }

    /// The encoding of the value with id `id`, if it is at hand (no encoding needed).
    pub fn encoded(&self, id: u64) -> Option<Encoding> {
        match self.map().map.get(&id) {
            Some(Entry::Typed(_, Some(e))) => Some(e.clone()),
            Some(Entry::Raw(b)) => Some(Encoding::from(b.clone())),
            _ => None,
        }
    }

    /// The encoding of the value with id `id` (encoded once: the encoding is kept for later
    /// fetches, within the store's bound). The bytes of large
    /// [`SharedBytes`](crate::SharedBytes) in the value are pieces of it, not copies.
    pub fn encode(&self, id: u64) -> Result<Encoding, BoxError> {
        let typed = match self.map().map.get(&id) {
            Some(Entry::Typed(_, Some(e))) => return Ok(e.clone()),
            Some(Entry::Raw(b)) => return Ok(Encoding::from(b.clone())),
            Some(Entry::Typed(s, None)) => s.clone(),
            None => return Err(self.freed(id)),
        };
        let encoding = typed.to_parts()?;
        self.keep_encoding(&mut self.map(), id, &encoding);
        Ok(encoding)
    }

    /// Bytes of encodings kept beside decoded values.
    pub fn cached_bytes(&self) -> usize {
        self.map().cached
    }

    /// Drops the value with id `id`; false if it was not here.
    pub fn free(&self, id: u64) -> bool {
        let removed = self.map().remove(id);
        removed.is_some()
    }

    /// Drops the values with ids `ids` (those not here are skipped), under one lock.
    pub fn free_many(&self, ids: &[u64]) {
        let removed: Vec<Entry> = {
            let mut values = self.map();
            ids.iter().filter_map(|&id| values.remove(id)).collect()
        };
        // The values are dropped after the lock is released.
        drop(removed);
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.map().map.len()
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
            decode_from(&bytes, codec.decode)
        }
        WireArg::Many(_) => Err("a nested collection cannot be one value".into()),
        WireArg::After(task) | WireArg::AfterOn { task, .. } => Err(format!(
            "the call was sent ahead of the result of task {task}, which was not made here"
        )
        .into()),
        WireArg::Local(pieces) => {
            let here = crate::context::current_processor();
            let thread = here.thread_index();
            let (loc, _) = pieces
                .iter()
                .find(|(loc, t)| {
                    loc.worker == store.worker() && t.is_none_or(|t| Some(t) == thread)
                })
                .ok_or_else(|| format!("the shard has no piece on {here}, where the task runs"))?;
            store.get(loc.id, codec)
        }
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
    entry: &'static TaskFn,
    args: &mut [WireArg],
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
        .map(|(p, a)| resolve_arg(entry.name, p, a, store, fetch))
        .collect()
}

/// Argument `a` of a call of `name`, for parameter `p`: one value, or a collection of values.
/// An encoded value is moved out of `a`, to be decoded when the function asks for it.
fn resolve_arg(
    name: &str,
    p: &'static Param,
    a: &mut WireArg,
    store: &Store,
    fetch: &dyn Fetch,
) -> Result<ArgValue, BoxError> {
    match a {
        WireArg::Value(bytes) => Ok(ArgValue::Encoded(EncodedArg::new(
            std::mem::take(bytes),
            &p.codec,
        ))),
        WireArg::Many(items) => {
            let elem = p
                .elem
                .as_ref()
                .ok_or_else(|| format!("{name} does not take a collection"))?;
            items
                .iter()
                .map(|i| resolve_one(i, elem, store, fetch))
                .collect::<Result<Vec<_>, _>>()
                .map(ArgValue::Many)
        }
        other => resolve_one(other, &p.codec, store, fetch).map(ArgValue::One),
    }
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

/// The options a call that arrived runs with here: those it carries, named after its
/// function unless it has a name, and on its exact thread of this worker if it names one.
fn call_options(call: &WireCall, entry: &TaskFn, store: &Store) -> Options {
    let mut opts = call
        .options
        .as_deref()
        .map(options_from_wire)
        .unwrap_or_default();
    if opts.name.is_none() {
        opts = opts.name(function_name(entry.name));
    }
    if let Some(t) = call.thread {
        opts = opts.scope(Scope::worker(store.worker()).thread(t));
    }
    opts
}

/// `name` in an `Arc`, the same one for every call of that function run by this thread (one
/// made per call was an allocation per task).
fn function_name(name: &'static str) -> Arc<str> {
    /// Names kept per thread (a worker's thread runs the calls of a few functions).
    const KEPT: usize = 16;
    thread_local! {
        static NAMES: std::cell::RefCell<Vec<(&'static str, Arc<str>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    // `try_with`: a call run from a thread-local destructor finds the names gone.
    NAMES
        .try_with(|names| {
            let mut names = names.try_borrow_mut().ok()?;
            if let Some((_, kept)) = names.iter().find(|(n, _)| std::ptr::eq(*n, name)) {
                return Some(kept.clone());
            }
            if names.len() == KEPT {
                names.remove(0);
            }
            let made: Arc<str> = Arc::from(name);
            names.push((name, made.clone()));
            Some(made)
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| Arc::from(name))
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
    run_claimed(ctx, call, store, fetch, None)
}

/// Whether a call sent to this process has started, or was taken back before it did (so
/// that another process runs it: work stealing).
#[derive(Debug, Default)]
pub struct Claim(AtomicU8);

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const REVOKED: u8 = 2;

impl Claim {
    /// A call not started yet.
    pub fn new() -> Self {
        Claim(AtomicU8::new(QUEUED))
    }

    /// Marks the call started; false if it was taken back.
    pub fn start(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes the call back; false if it already started.
    pub fn revoke(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, REVOKED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the call was taken back.
    pub fn is_revoked(&self) -> bool {
        self.0.load(Ordering::Acquire) == REVOKED
    }
}

/// Like [`run_call`]; the call does nothing if `claim` is revoked before it starts (its task
/// then fails with a message saying so, which the caller does not report).
pub fn run_claimed(
    ctx: &Context,
    call: WireCall,
    store: Arc<Store>,
    fetch: Arc<dyn Fetch>,
    claim: Option<Arc<Claim>>,
) -> Result<DTask<(Location, u64)>, BoxError> {
    run_after(ctx, call, store, fetch, claim, Vec::new())
}

/// The head's tasks a call sent ahead waits for (its [`WireArg::After`] arguments), each with
/// the task running it in this process.
pub(crate) type Afters = Vec<(u64, DTask<(Location, u64)>)>;

/// Like [`run_claimed`], for a call sent ahead of its inputs: it starts once the tasks in
/// `after` ended here (and fails without running if one of them failed), their results
/// taking the place of its `After` arguments.
pub(crate) fn run_after(
    ctx: &Context,
    mut call: WireCall,
    store: Arc<Store>,
    fetch: Arc<dyn Fetch>,
    claim: Option<Arc<Claim>>,
    after: Afters,
) -> Result<DTask<(Location, u64)>, BoxError> {
    let entry = table()
        .get(call.func)
        .ok_or_else(|| format!("no task function has id {}", call.func))?;
    let opts = call_options(&call, entry, &store);
    let inherited = call
        .options
        .as_deref()
        .and_then(|o| o.inherited.as_deref())
        .map(options_from_wire);
    let deps: Vec<crate::task::JobRef> = after.iter().map(|(_, t)| t.job()).collect();
    let body = move || -> Result<(Location, u64), BoxError> {
        if claim.as_ref().is_some_and(|c| !c.start()) {
            return Err("taken back to run in another process".into());
        }
        for (task, made) in &after {
            let (loc, _) = made.fetch()?;
            resolve_after(&mut call.args, *task, loc);
        }
        let values = resolve_args(entry, &mut call.args, &store, &*fetch)?;
        let started = std::time::Instant::now();
        let stored = (entry.invoke)(&Args::new(entry.name, &values))?;
        let run_ns = started.elapsed().as_nanos() as u64;
        Ok((store.insert(stored), run_ns))
    };
    let spawn = move || {
        if deps.is_empty() {
            return crate::task::try_spawn_with(opts, body);
        }
        let args = [crate::task::ArgInfo::after(deps)];
        let site = crate::task::Site {
            name: Some(entry.name),
            function: std::any::TypeId::of::<Afters>(),
            args: &args,
        };
        crate::task::spawn_raw(&site, Some(opts), body)
    };
    Ok(ctx.enter(|| match inherited {
        Some(inh) => crate::options::with_options(inh, spawn),
        None => spawn(),
    }))
}

/// Points the `After(task)` arguments of a call (depth first) at `loc`.
pub(crate) fn resolve_after(args: &mut [WireArg], task: u64, loc: Location) {
    WireArg::each_mut(args, &mut |a| {
        if matches!(a, WireArg::After(t) if *t == task) {
            *a = WireArg::Ref(loc);
        }
    });
}

/// Whether a call waits for a head task sent to this worker (has an `After` argument).
pub(crate) fn waits_here(args: &[WireArg]) -> bool {
    let mut found = false;
    WireArg::each(args, &mut |a| found |= matches!(a, WireArg::After(_)));
    found
}

/// The head's tasks a call waits for (its `After` arguments, depth first, each once), the
/// first eight held without an allocation.
pub(crate) struct AfterList {
    first: [u64; 8],
    len: usize,
    rest: Vec<u64>,
}

impl AfterList {
    pub(crate) fn of(args: &[WireArg]) -> AfterList {
        let mut list = AfterList {
            first: [0; 8],
            len: 0,
            rest: Vec::new(),
        };
        WireArg::each(args, &mut |a| match a {
            WireArg::After(t) if !list.iter().any(|u| u == *t) => list.push(*t),
            _ => {}
        });
        list
    }

    fn push(&mut self, task: u64) {
        match self.first.get_mut(self.len) {
            Some(slot) => *slot = task,
            None => self.rest.push(task),
        }
        self.len += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let held = self.len.min(self.first.len());
        self.first[..held].iter().chain(&self.rest).copied()
    }
}

/// The head's tasks, being made on other workers, that a call waits for (its `AfterOn`
/// arguments, depth first, each once): the worker making each, the task, and its place
/// among the calls the head sent that worker.
pub(crate) fn afters_elsewhere(args: &[WireArg], out: &mut Vec<(u32, u64, u64)>) {
    WireArg::each(args, &mut |a| match a {
        WireArg::AfterOn { task, worker, seq }
            if !out.iter().any(|(w, t, _)| (w, t) == (worker, task)) =>
        {
            out.push((*worker, *task, *seq))
        }
        _ => {}
    });
}

/// Puts the result of the head's task `task`, made on worker `worker`, in place of the call's
/// `AfterOn` arguments naming it: its encoding when it is `small`, else where it is. Returns
/// how many arguments it replaced.
pub(crate) fn resolve_after_on(
    args: &mut [WireArg],
    task: u64,
    worker: u32,
    loc: Location,
    small: Option<&[u8]>,
) -> usize {
    let mut replaced = 0;
    WireArg::each_mut(args, &mut |a| {
        if a.is_after_on(task, worker) {
            *a = match small {
                Some(bytes) => WireArg::Value(bytes[..].into()),
                None => WireArg::Ref(loc),
            };
            replaced += 1;
        }
    });
    replaced
}

/// Runs a call of a data-dependency region that arrived from the head, as a task on `ctx`:
/// the arguments marked in `writes` are values of `store` (`Ref`s to this process) that the
/// function changes in place; they stay here, changed. Yields the encoded result and how long
/// the function ran (nanoseconds).
pub fn run_in_place(
    ctx: &Context,
    mut call: WireCall,
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
    let opts = call_options(&call, entry, &store);
    let body = move || -> Result<(Vec<u8>, u64), BoxError> {
        let mut values = Vec::with_capacity(call.args.len());
        let mut lent: Vec<(usize, u64)> = Vec::new();
        let mut failed = None;
        let params = entry.params.iter().zip(&mut call.args).zip(&writes);
        for (i, ((p, a), &w)) in params.enumerate() {
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
                (false, other) => resolve_arg(entry.name, p, other, &store, &*fetch),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_awaited_here_are_listed_once_in_order_past_eight() {
        let after = WireArg::After;
        for n in [0u64, 1, 8, 9, 20] {
            // Each task twice, some inside a collection, between other arguments.
            let mut args = vec![WireArg::Value(vec![1u8][..].into())];
            for t in 0..n {
                args.push(after(t));
                args.push(WireArg::Many(vec![after(t), WireArg::After(100 + t)]));
            }
            let list = AfterList::of(&args);
            let want: Vec<u64> = (0..n).flat_map(|t| [t, 100 + t]).collect();
            assert_eq!(list.iter().collect::<Vec<_>>(), want);
            assert_eq!(list.len(), want.len());
        }
    }

    #[test]
    fn inputs_made_elsewhere_are_listed_once_and_resolved_by_task_and_worker() {
        // The place among the calls sent to the worker: a different one per (task, worker).
        let on = |task, worker| WireArg::AfterOn {
            task,
            worker,
            seq: task * 10 + u64::from(worker),
        };
        let loc = Location {
            worker: 3,
            id: 17,
            bytes: 900,
        };
        let mut args = vec![
            on(5, 3),
            WireArg::Many(vec![on(5, 3), on(6, 2), WireArg::After(7)]),
            on(5, 2),
        ];
        let mut waits = Vec::new();
        afters_elsewhere(&args, &mut waits);
        assert_eq!(waits, vec![(3, 5, 53), (2, 6, 62), (2, 5, 52)]);
        // Task 5 made on worker 3: its two arguments, not the one naming worker 2.
        assert_eq!(resolve_after_on(&mut args, 5, 3, loc, None), 2);
        assert_eq!(args[0], WireArg::Ref(loc));
        assert_eq!(args[2], on(5, 2));
        // A small result goes in as its encoding.
        assert_eq!(resolve_after_on(&mut args, 6, 2, loc, Some(&[1, 2])), 1);
        assert_eq!(
            args[1],
            WireArg::Many(vec![
                WireArg::Ref(loc),
                WireArg::Value(vec![1, 2].into()),
                WireArg::After(7)
            ])
        );
        waits.clear();
        afters_elsewhere(&args, &mut waits);
        assert_eq!(waits, vec![(2, 5, 52)]);
        assert_eq!(resolve_after_on(&mut args, 5, 3, loc, None), 0);
    }

    #[test]
    fn values_are_encoded_once_within_the_bound_and_freed_with_their_encoding() {
        let store = Store::with_cache_limit(1, 100);
        let a = store.insert(Stored::new(vec![7u8; 60])).id;
        let b = store.insert(Stored::new(vec![8u8; 60])).id;
        assert!(store.encoded(a).is_none());
        let first = store.encode(a).unwrap();
        let again = store.encode(a).unwrap();
        // The same bytes, not a second encoding.
        assert_eq!(first.parts()[0].as_ptr(), again.parts()[0].as_ptr());
        assert_eq!(store.encoded(a).unwrap(), first);
        assert_eq!(store.cached_bytes(), first.len());
        // Past the bound: encoded on every fetch, nothing kept.
        let b1 = store.encode(b).unwrap();
        let b2 = store.encode(b).unwrap();
        assert_eq!(b1, b2);
        assert_ne!(b1.parts()[0].as_ptr(), b2.parts()[0].as_ptr());
        assert_eq!(store.cached_bytes(), first.len());
        assert!(store.free(a));
        assert_eq!(store.cached_bytes(), 0);
        store.encode(b).unwrap();
        assert_eq!(store.cached_bytes(), b1.len());
        store.free_many(&[b, a, 99]);
        assert_eq!(store.cached_bytes(), 0);
        assert!(store.is_empty());
        assert!(store.encode(b).is_err());
    }

    #[test]
    fn shared_bytes_are_encoded_without_a_copy() {
        let data = crate::SharedBytes::from(vec![3u8; 100_000]);
        // A bound smaller than the value: only the copied prefix counts against it.
        let store = Store::with_cache_limit(1, 16);
        let id = store.insert(Stored::new(data.clone())).id;
        let e = store.encode(id).unwrap();
        assert_eq!(
            &e.to_bytes()[..],
            &postcard::to_allocvec(&data).unwrap()[..]
        );
        assert_eq!(e.parts().len(), 2);
        assert_eq!(e.parts()[1].as_ptr(), data.as_ptr());
        assert_eq!(store.cached_bytes(), e.len() - data.len());
        assert_eq!(store.encoded(id), Some(e));
        // Small values and the value itself are as before.
        assert!(store.small_encoding(id).is_none());
        let v = store.get(id, &Codec::of::<crate::SharedBytes>()).unwrap();
        assert_eq!(v.downcast_ref::<crate::SharedBytes>(), Some(&data));
        assert!(store.free(id));
        assert_eq!(store.cached_bytes(), 0);
    }

    #[test]
    fn values_that_arrived_encoded_keep_their_bytes_once_decoded() {
        let store = Store::new(1);
        let bytes = bytes::Bytes::from(postcard::to_allocvec(&vec![1u32, 2, 3]).unwrap());
        let id = store.insert_bytes(bytes.clone()).id;
        let v = store.get(id, &Codec::of::<Vec<u32>>()).unwrap();
        assert_eq!(v.downcast_ref::<Vec<u32>>(), Some(&vec![1, 2, 3]));
        assert_eq!(
            store.encode(id).unwrap().to_bytes().as_ptr(),
            bytes.as_ptr()
        );
        assert_eq!(store.cached_bytes(), bytes.len());
        assert!(store.free(id));
        assert_eq!(store.cached_bytes(), 0);
    }
}
