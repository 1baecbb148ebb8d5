//! Support code for the `spawn!` and `delayed!` macros. Not a public API.
//!
//! The macros classify each argument at compile time with "autoref specialisation": the probe
//! `(&&Probe(&value)).__dagger_tag()` resolves to [`ViaDep`] when the value is a `DTask`,
//! `Chunk` or `Thunk`, a reference to one, or a `Vec`/slice of them, and to [`ViaValue`]
//! otherwise. The tag then wraps the value into an argument that knows its dependencies, its
//! scope and how to hand the function its input:
//!
//! | argument | the function gets |
//! |---|---|
//! | `DTask<T>`, `Chunk<T>`, `Thunk<T>` | `T` (moved out when this is the last handle, else cloned) |
//! | `&DTask<T>`, `&Chunk<T>`, `&Thunk<T>` | `&T` |
//! | `Vec<DTask<T>>` (or of chunks, thunks) | `Vec<T>` |
//! | `&Vec<DTask<T>>`, `&[DTask<T>]` (or of chunks, thunks) | `Vec<&T>` |
//! | `&Shard<T>` | `&T`: the piece where the task runs |
//! | anything else | the value |

use crate::chunk::Chunk;
use crate::error::BoxError;
use crate::options::Options;
use crate::processor::ArgType;
use crate::remote::data::{Input, NotReady, PendingInput};
use crate::remote::wire::{Location, WireArg, WireCall};
use crate::scope::Scope;
use crate::shard::Shard;
use crate::task::{spawn_raw, ArgDeps, DTask, Header, JobRef, Site, TaskBody, TaskCell};
use crate::thunk::Thunk;
use std::any::{Any, TypeId};
use std::sync::Arc;

pub use crate::datadeps::BlockBuf;
pub use crate::remote::functions::{Args, Codec, Param, Stored, TaskFn, TASK_FNS};
pub use crate::task::ArgInfo;
pub use linkme;

/// Runs the worker side of a cluster if this process was started as a worker (never returns
/// then); does nothing otherwise. Used by `#[dagger::main]` and `init_before_main!`.
pub fn worker_hook() {
    let worker = std::env::var("DAGGER_ROLE").ok().as_deref() == Some("worker")
        || dagger_net::launch::spmd_rank().is_some_and(|r| !r.is_head());
    if worker {
        if let Err(e) = crate::init() {
            eprintln!("dagger worker: {e}");
            std::process::exit(1);
        }
    }
}

/// `init()` for `#[dagger::main]`: reports a configuration error and exits.
pub fn init_or_exit() {
    if let Err(e) = crate::init() {
        eprintln!("dagger: {e}");
        std::process::exit(1);
    }
}

/// Stores the `Ok` value of a registered fallible function, or turns its `Err` into the
/// task's error.
pub fn store_fallible<T, E>(r: Result<T, E>) -> Result<Stored, BoxError>
where
    T: serde::Serialize + Send + Sync + 'static,
    E: Into<BoxError>,
{
    r.map(Stored::new).map_err(Into::into)
}

/// Checks that a registered function got as many arguments as it has parameters.
pub fn check_arity(args: &Args<'_>, n: usize) -> Result<(), BoxError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!(
            "task function {} takes {n} arguments but was called with {}",
            args.fn_name(),
            args.len()
        )
        .into())
    }
}
pub use crate::thunk::{ErasedTask, ThunkNode};

/// The identity of a function item or closure, for per-function default options.
pub fn fn_id<F: 'static>(_f: &F) -> TypeId {
    TypeId::of::<F>()
}

/// Spawns a macro-built call of a function on the arguments `args`.
pub fn spawn_call<T, A, F>(
    name: &'static str,
    function: TypeId,
    fallible: bool,
    opts: Option<Options>,
    args: A,
    f: F,
) -> DTask<T>
where
    T: Send + Sync + 'static,
    A: ArgList,
    F: FnOnce(A) -> Result<T, BoxError> + Send + 'static,
{
    args.with_infos(|infos, args| {
        let site = Site {
            name: Some(name),
            function,
            args: infos,
        };
        let call = Call {
            args,
            f,
            function,
            fallible,
            remote: None,
        };
        spawn_raw(&site, opts, call)
    })
}

/// A call of a function on arguments, kept apart so it can also be encoded for another
/// process.
pub struct Call<A, F> {
    args: A,
    f: F,
    function: TypeId,
    fallible: bool,
    remote: Option<(u32, &'static TaskFn)>,
}

impl<T, A, F> TaskBody<T> for Call<A, F>
where
    A: ArgList,
    F: FnOnce(A) -> Result<T, BoxError> + Send + 'static,
{
    fn run(self) -> Result<T, BoxError> {
        (self.f)(self.args)
    }

    fn remote(&self) -> Option<(u32, &'static TaskFn)> {
        self.remote
    }

    fn bind_remote(&mut self) -> Option<(u32, &'static TaskFn)> {
        let fallible = self.fallible;
        self.remote = crate::remote::functions::table()
            .lookup(self.function)
            .filter(|(_, entry)| entry.fallible == fallible && self.args.compatible(entry.params));
        self.remote
    }

    fn encode(&self) -> Result<(WireCall, Vec<Input>), BoxError> {
        let (func, entry) = self
            .remote
            .ok_or("this task runs only in the process that spawned it")?;
        let mut inputs = Vec::new();
        let args = self.args.encode(entry.params, &mut inputs)?;
        let call = WireCall {
            func,
            args,
            thread: None,
            options: Default::default(),
        };
        Ok((call, inputs))
    }
}

/// The arguments of a call: a tuple of [`Arg`]s.
pub trait ArgList: Sized + Send + 'static {
    /// Hands the arguments' dependency information to `f`, then the arguments themselves.
    fn with_infos<R>(self, f: impl FnOnce(&[ArgInfo], Self) -> R) -> R;
    /// Whether every argument can be encoded as the matching parameter of a registered
    /// function.
    fn compatible(&self, params: &[Param]) -> bool;
    /// Encodes every argument.
    fn encode(&self, params: &[Param], inputs: &mut Vec<Input>) -> Result<Vec<WireArg>, BoxError>;
}

macro_rules! arg_lists {
    ($( ($($a:ident $i:tt),*) )*) => {$(
        impl<$($a: Arg),*> ArgList for ($($a,)*) {
            fn with_infos<R>(self, f: impl FnOnce(&[ArgInfo], Self) -> R) -> R {
                let infos = [$(self.$i.info()),*];
                f(&infos, self)
            }

            #[allow(unused_variables)]
            fn compatible(&self, params: &[Param]) -> bool {
                let n = 0usize $(+ { let _ = $i; 1 })*;
                params.len() == n $(&& self.$i.compatible(&params[$i]))*
            }

            #[allow(unused_variables)]
            fn encode(&self, params: &[Param], inputs: &mut Vec<Input>) -> Result<Vec<WireArg>, BoxError> {
                Ok(vec![$(self.$i.encode(&params[$i], inputs)?),*])
            }
        }
    )*};
}

arg_lists! {
    ()
    (A0 0)
    (A0 0, A1 1)
    (A0 0, A1 1, A2 2)
    (A0 0, A1 1, A2 2, A3 3)
    (A0 0, A1 1, A2 2, A3 3, A4 4)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13, A14 14)
    (A0 0, A1 1, A2 2, A3 3, A4 4, A5 5, A6 6, A7 7, A8 8, A9 9, A10 10, A11 11, A12 12, A13 13, A14 14, A15 15)
}

/// Builds a thunk from a macro-built call.
pub fn delayed<T, S>(name: &'static str, inputs: Vec<Vec<Arc<ThunkNode>>>, spawner: S) -> Thunk<T>
where
    T: Send + Sync + 'static,
    S: Fn(&[Vec<&ErasedTask>]) -> DTask<T> + Send + Sync + 'static,
{
    Thunk::from_parts(Some(name), inputs, spawner)
}

/// Result of a call spawned with `?`: its error fails the task.
pub fn fallible<T, E: Into<BoxError>>(r: Result<T, E>) -> Result<T, BoxError> {
    r.map_err(Into::into)
}

/// Result of a call spawned without `?`.
pub fn infallible<T>(v: T) -> Result<T, BoxError> {
    Ok(v)
}

/// One argument of a spawned call.
pub trait Arg: Send + 'static {
    /// What the function receives.
    type Out<'a>
    where
        Self: 'a;
    /// Dependencies, scope and type of the argument.
    fn info(&self) -> ArgInfo;
    /// Produces the function's input (once).
    fn get(&mut self) -> Result<Self::Out<'_>, BoxError>;
    /// Whether the argument can be sent as parameter `p` of a registered function.
    fn compatible(&self, p: &Param) -> bool;
    /// Encodes the argument as parameter `p` for another process; values living in other
    /// processes become references, whose inputs are added to `inputs`.
    fn encode(&self, p: &Param, inputs: &mut Vec<Input>) -> Result<WireArg, BoxError>;
}

type Cell<T> = Arc<dyn TaskCell<T>>;

fn scope_of(h: &Header) -> Option<Scope> {
    h.meta.as_ref().and_then(|m| m.result_scope.clone())
}

fn scope_of_all<T: Send + Sync + 'static>(cells: &[Cell<T>]) -> Option<Scope> {
    cells
        .iter()
        .filter_map(|c| scope_of(c.header()))
        .reduce(|a, b| a.constrain(&b))
}

fn converted<T: Send + Sync + 'static>(h: &Header, value: &T) -> Result<Option<T>, BoxError> {
    match crate::sched::convert_for_current(h, value)? {
        None => Ok(None),
        Some(b) => {
            let b: Box<dyn Any + Send + Sync> = b;
            match b.downcast::<T>() {
                Ok(v) => Ok(Some(*v)),
                Err(_) => Err(format!(
                    "a processor's move hook turned an input of type {} into another type",
                    std::any::type_name::<T>()
                )
                .into()),
            }
        }
    }
}

fn value_of<T: Send + Sync + 'static>(cell: &Cell<T>) -> Result<&T, BoxError> {
    match cell.value() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Box::new(e)),
        None => Err("an input task has not finished".into()),
    }
}

/// The value of `cell` for a consumer that takes it by value: moved out when `cell` is the
/// last handle, otherwise cloned (after the processors' move hooks, if any apply).
fn take_value<T: Clone + Send + Sync + 'static>(mut cell: Cell<T>) -> Result<T, BoxError> {
    let value = value_of(&cell)?;
    if let Some(v) = converted(cell.header(), value)? {
        return Ok(v);
    }
    if let Some(unique) = Arc::get_mut(&mut cell) {
        if let Some(Ok(v)) = unique.take_value() {
            return Ok(v);
        }
    }
    Ok(value_of(&cell)?.clone())
}

/// `DTask<T>` / `Chunk<T>` / `Thunk<T>` by value: the function gets a `T`.
pub struct Owned<T> {
    cell: Option<Cell<T>>,
}

impl<T: Clone + Send + Sync + 'static> Arg for Owned<T> {
    type Out<'a> = T;

    fn info(&self) -> ArgInfo {
        let cell = self.cell.as_ref().expect("info is read before get");
        ArgInfo {
            deps: ArgDeps::One(cell.clone() as JobRef),
            scope: scope_of(cell.header()),
            ty: ArgType::of::<T>(),
        }
    }

    fn get(&mut self) -> Result<T, BoxError> {
        take_value(self.cell.take().ok_or("argument already consumed")?)
    }

    fn compatible(&self, p: &Param) -> bool {
        p.codec.is(TypeId::of::<T>())
    }

    fn encode(&self, p: &Param, inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        encode_cell(
            self.cell.as_ref().ok_or("argument already consumed")?,
            &p.codec,
            inputs,
        )
    }
}

/// `&DTask<T>` / `&Chunk<T>` / `&Thunk<T>`: the function borrows the stored `T`.
pub struct Borrowed<T> {
    cell: Cell<T>,
    converted: Option<T>,
}

impl<T: Send + Sync + 'static> Arg for Borrowed<T> {
    type Out<'a> = &'a T;

    fn info(&self) -> ArgInfo {
        ArgInfo {
            deps: ArgDeps::One(self.cell.clone() as JobRef),
            scope: scope_of(self.cell.header()),
            ty: ArgType::of::<&T>(),
        }
    }

    fn get(&mut self) -> Result<&T, BoxError> {
        let value = value_of(&self.cell)?;
        if let Some(v) = converted(self.cell.header(), value)? {
            self.converted = Some(v);
        }
        match &self.converted {
            Some(v) => Ok(v),
            None => value_of(&self.cell),
        }
    }

    fn compatible(&self, p: &Param) -> bool {
        p.codec.is(TypeId::of::<T>())
    }

    fn encode(&self, p: &Param, inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        encode_cell(&self.cell, &p.codec, inputs)
    }
}

/// A `Vec` of tasks, chunks or thunks by value: the function gets a `Vec<T>`.
pub struct OwnedMany<T> {
    cells: Vec<Cell<T>>,
}

impl<T: Clone + Send + Sync + 'static> Arg for OwnedMany<T> {
    type Out<'a> = Vec<T>;

    fn info(&self) -> ArgInfo {
        ArgInfo {
            deps: ArgDeps::Many(self.cells.iter().map(|c| c.clone() as JobRef).collect()),
            scope: scope_of_all(&self.cells),
            ty: ArgType::of::<Vec<T>>(),
        }
    }

    fn get(&mut self) -> Result<Vec<T>, BoxError> {
        std::mem::take(&mut self.cells)
            .into_iter()
            .map(take_value)
            .collect()
    }

    fn compatible(&self, p: &Param) -> bool {
        p.elem.is_some_and(|e| e.is(TypeId::of::<T>()))
    }

    fn encode(&self, p: &Param, inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        encode_cells(&self.cells, p, inputs)
    }
}

/// A slice of tasks, chunks or thunks: the function gets a `Vec<&T>`.
pub struct BorrowedMany<T> {
    cells: Vec<Cell<T>>,
    converted: Vec<Option<T>>,
}

impl<T: Send + Sync + 'static> Arg for BorrowedMany<T> {
    type Out<'a> = Vec<&'a T>;

    fn info(&self) -> ArgInfo {
        ArgInfo {
            deps: ArgDeps::Many(self.cells.iter().map(|c| c.clone() as JobRef).collect()),
            scope: scope_of_all(&self.cells),
            ty: ArgType::of::<Vec<&T>>(),
        }
    }

    fn get(&mut self) -> Result<Vec<&T>, BoxError> {
        let mut converted = Vec::with_capacity(self.cells.len());
        for cell in &self.cells {
            converted.push(converted_value(cell)?);
        }
        self.converted = converted;
        self.cells
            .iter()
            .zip(&self.converted)
            .map(|(cell, conv)| match conv {
                Some(v) => Ok(v),
                None => value_of(cell),
            })
            .collect()
    }

    fn compatible(&self, p: &Param) -> bool {
        p.elem.is_some_and(|e| e.is(TypeId::of::<T>()))
    }

    fn encode(&self, p: &Param, inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        encode_cells(&self.cells, p, inputs)
    }
}

/// The wire form of a task's or chunk's value.
fn encode_cell<T: Send + Sync + 'static>(
    cell: &Cell<T>,
    codec: &Codec,
    inputs: &mut Vec<Input>,
) -> Result<WireArg, BoxError> {
    if let Some(after) = crate::sched::encode::after_arg(cell.header()) {
        // Being made on a worker: the call is sent ahead of it.
        return Ok(after);
    }
    if let Some(data) = cell.remote_data() {
        if let Some(small) = crate::sched::encode::small_value(data) {
            return Ok(WireArg::Value(small.clone()));
        }
        // It lives in a worker: the receiver fetches it from there (or has it already).
        return match data.try_location() {
            Ok(loc) => {
                inputs.push(Input {
                    data: Arc::downgrade(data),
                    lineage: data.lineage().cloned(),
                });
                Ok(WireArg::Ref(loc))
            }
            // Encoded for a lineage: the input is found again when the value is made again.
            Err(NotReady::Pending) if crate::sched::encode::for_lineage() => {
                inputs.push(Input {
                    data: Arc::downgrade(data),
                    lineage: data.lineage().cloned(),
                });
                Ok(WireArg::Ref(Location {
                    worker: data.lost_on().unwrap_or(0),
                    id: 0,
                    bytes: 0,
                }))
            }
            Err(NotReady::Pending) => Err(Box::new(PendingInput(data.clone()))),
            Err(NotReady::Failed(why)) => Err(why.into()),
        };
    }
    let v = value_of(cell)?;
    Ok(WireArg::Value((codec.encode_value)(v as &dyn Any)?))
}

fn encode_cells<T: Send + Sync + 'static>(
    cells: &[Cell<T>],
    p: &Param,
    inputs: &mut Vec<Input>,
) -> Result<WireArg, BoxError> {
    let elem = p
        .elem
        .as_ref()
        .ok_or("the parameter does not take a collection")?;
    cells
        .iter()
        .map(|c| encode_cell(c, elem, inputs))
        .collect::<Result<Vec<_>, _>>()
        .map(WireArg::Many)
}

fn converted_value<T: Send + Sync + 'static>(cell: &Cell<T>) -> Result<Option<T>, BoxError> {
    converted(cell.header(), value_of(cell)?)
}

/// A plain value: moved into the call.
pub struct Value<X>(Option<X>);

impl<X: Send + 'static> Arg for Value<X> {
    type Out<'a> = X;

    fn info(&self) -> ArgInfo {
        ArgInfo::value(ArgType::of::<X>())
    }

    fn get(&mut self) -> Result<X, BoxError> {
        self.0
            .take()
            .ok_or_else(|| "argument already consumed".into())
    }

    fn compatible(&self, p: &Param) -> bool {
        p.codec.is(TypeId::of::<X>()) || str_for_string::<X>(p)
    }

    fn encode(&self, p: &Param, _inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        let v = self.0.as_ref().ok_or("argument already consumed")?;
        if str_for_string::<X>(p) {
            // A `&str` argument for a `&str` parameter travels as the `String` it decodes to
            // (serde encodes both the same way).
            let s: &&'static str = (v as &dyn Any)
                .downcast_ref()
                .ok_or("argument is not a string")?;
            return crate::remote::functions::with_encoded(*s, |b| WireArg::Value(b.into()))
                .map_err(|e| e.to_string().into());
        }
        Ok(WireArg::Value((p.codec.encode_value)(v as &dyn Any)?))
    }
}

/// Whether `X` is `&'static str` and `p` takes a `String` (a `&str` parameter).
fn str_for_string<X: 'static>(p: &Param) -> bool {
    TypeId::of::<X>() == TypeId::of::<&'static str>() && p.codec.is(TypeId::of::<String>())
}

/// Wraps an argument probe; see the module docs.
pub struct Probe<'a, X>(pub &'a X);

/// Argument classes that are dependencies (tasks, chunks, thunks and collections of them).
pub trait ViaDep {
    /// The class of the argument.
    type Tag;
    /// Classifies the argument.
    fn __dagger_tag(&self) -> Self::Tag;
}

/// Everything else: plain values.
pub trait ViaValue {
    /// Classifies the argument.
    fn __dagger_tag(&self) -> ValueTag;
}

impl<X> ViaValue for Probe<'_, X> {
    fn __dagger_tag(&self) -> ValueTag {
        ValueTag
    }
}

/// Argument class: one handle by value.
pub struct OwnedTag;
/// Argument class: one handle by reference.
pub struct BorrowedTag;
/// Argument class: a `Vec` of handles by value.
pub struct OwnedManyTag;
/// Argument class: a `Vec` or slice of handles by reference.
pub struct BorrowedManyTag;
/// Argument class: a plain value.
pub struct ValueTag;
/// Argument class: a shard by reference.
pub struct ShardTag;

impl<T> ViaDep for &Probe<'_, &Shard<T>> {
    type Tag = ShardTag;
    fn __dagger_tag(&self) -> ShardTag {
        ShardTag
    }
}

/// `&Shard<T>`: the function borrows the piece of the process or thread it runs on.
pub struct ShardArg<T>(Shard<T>);

impl<T: Send + Sync + 'static> Arg for ShardArg<T> {
    type Out<'a> = &'a T;

    fn info(&self) -> ArgInfo {
        ArgInfo {
            deps: ArgDeps::None,
            scope: Some(self.0.scope()),
            ty: ArgType::of::<&T>(),
        }
    }

    fn get(&mut self) -> Result<&T, BoxError> {
        self.0.local_piece().map_err(Into::into)
    }

    fn compatible(&self, p: &Param) -> bool {
        p.codec.is(TypeId::of::<T>())
    }

    fn encode(&self, _p: &Param, _inputs: &mut Vec<Input>) -> Result<WireArg, BoxError> {
        Ok(WireArg::Local(self.0.remote_pieces()))
    }
}

impl ShardTag {
    /// For `spawn!`.
    pub fn wrap<T: Send + Sync + 'static>(self, s: &Shard<T>) -> ShardArg<T> {
        ShardArg(s.clone())
    }
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        s: &Shard<T>,
    ) -> (Vec<Arc<ThunkNode>>, ShardCapture<T>) {
        (Vec::new(), ShardCapture(s.clone()))
    }
}

/// A shard of a `delayed!` call.
pub struct ShardCapture<T>(Shard<T>);

impl<T: Send + Sync + 'static> Capture for ShardCapture<T> {
    type Arg = ShardArg<T>;
    fn instantiate(&self, _inputs: &[&ErasedTask]) -> ShardArg<T> {
        ShardArg(self.0.clone())
    }
}

macro_rules! classify {
    ($($probe:ty => $tag:ident;)*) => {$(
        impl<T> ViaDep for &Probe<'_, $probe> {
            type Tag = $tag;
            fn __dagger_tag(&self) -> $tag {
                $tag
            }
        }
    )*};
}

classify! {
    DTask<T> => OwnedTag;
    Chunk<T> => OwnedTag;
    Thunk<T> => OwnedTag;
    &DTask<T> => BorrowedTag;
    &Chunk<T> => BorrowedTag;
    &Thunk<T> => BorrowedTag;
    Vec<DTask<T>> => OwnedManyTag;
    Vec<Chunk<T>> => OwnedManyTag;
    Vec<Thunk<T>> => OwnedManyTag;
    &Vec<DTask<T>> => BorrowedManyTag;
    &Vec<Chunk<T>> => BorrowedManyTag;
    &Vec<Thunk<T>> => BorrowedManyTag;
    &[DTask<T>] => BorrowedManyTag;
    &[Chunk<T>] => BorrowedManyTag;
    &[Thunk<T>] => BorrowedManyTag;
}

/// The storage behind a task or chunk handle (opaque).
pub struct CellRef<T>(Cell<T>);

/// Where a captured handle's value comes from (opaque).
pub struct SourceRef<T>(Option<Arc<ThunkNode>>, Source<T>);

/// A handle `delayed!` can depend on: a task, a chunk, or a thunk (which stands for the task
/// it becomes when the graph runs).
pub trait Handle: Send + Sync + 'static {
    /// The value type.
    type Value: Send + Sync + 'static;
    /// Where the value comes from.
    fn source(&self) -> SourceRef<Self::Value>;
}

/// A handle `spawn!` can depend on: a task or a chunk. (A thunk must be computed first.)
pub trait SpawnHandle: Handle {
    /// The task cell.
    fn cell(&self) -> CellRef<Self::Value>;
}

impl<T: Send + Sync + 'static> Handle for DTask<T> {
    type Value = T;
    fn source(&self) -> SourceRef<T> {
        SourceRef(None, Source::Cell(self.cell.clone()))
    }
}

impl<T: Send + Sync + 'static> SpawnHandle for DTask<T> {
    fn cell(&self) -> CellRef<T> {
        CellRef(self.cell.clone())
    }
}

impl<T: Send + Sync + 'static> Handle for Chunk<T> {
    type Value = T;
    fn source(&self) -> SourceRef<T> {
        SourceRef(None, Source::Cell(self.cell.clone()))
    }
}

impl<T: Send + Sync + 'static> SpawnHandle for Chunk<T> {
    fn cell(&self) -> CellRef<T> {
        CellRef(self.cell.clone())
    }
}

impl<T: Send + Sync + 'static> Handle for Thunk<T> {
    type Value = T;
    fn source(&self) -> SourceRef<T> {
        SourceRef(Some(self.node.clone()), Source::Input)
    }
}

fn spawn_cell<H: SpawnHandle>(h: &H) -> Cell<H::Value> {
    h.cell().0
}

impl OwnedTag {
    /// For `spawn!`.
    pub fn wrap<H: SpawnHandle>(self, h: H) -> Owned<H::Value> {
        Owned {
            cell: Some(spawn_cell(&h)),
        }
    }
    /// For `delayed!`.
    pub fn capture<H: Handle>(self, h: H) -> (Vec<Arc<ThunkNode>>, HandleCapture<H::Value, true>) {
        capture_one(&h)
    }
}

impl BorrowedTag {
    /// For `spawn!`.
    pub fn wrap<H: SpawnHandle>(self, h: &H) -> Borrowed<H::Value> {
        Borrowed {
            cell: spawn_cell(h),
            converted: None,
        }
    }
    /// For `delayed!`.
    pub fn capture<H: Handle>(
        self,
        h: &H,
    ) -> (Vec<Arc<ThunkNode>>, HandleCapture<H::Value, false>) {
        capture_one(h)
    }
}

impl OwnedManyTag {
    /// For `spawn!`.
    pub fn wrap<H: SpawnHandle>(self, hs: Vec<H>) -> OwnedMany<H::Value> {
        OwnedMany {
            cells: hs.iter().map(spawn_cell).collect(),
        }
    }
    /// For `delayed!`.
    pub fn capture<H: Handle>(
        self,
        hs: Vec<H>,
    ) -> (Vec<Arc<ThunkNode>>, HandlesCapture<H::Value, true>) {
        capture_many(&hs)
    }
}

impl BorrowedManyTag {
    /// For `spawn!`.
    pub fn wrap<H: SpawnHandle>(self, hs: &[H]) -> BorrowedMany<H::Value> {
        BorrowedMany {
            cells: hs.iter().map(spawn_cell).collect(),
            converted: Vec::new(),
        }
    }
    /// For `delayed!`.
    pub fn capture<H: Handle>(
        self,
        hs: &[H],
    ) -> (Vec<Arc<ThunkNode>>, HandlesCapture<H::Value, false>) {
        capture_many(hs)
    }
}

impl ValueTag {
    /// For `spawn!`.
    pub fn wrap<X>(self, x: X) -> Value<X> {
        Value(Some(x))
    }
    /// For `delayed!`: the value is cloned each time the graph runs.
    pub fn capture<X>(self, x: X) -> (Vec<Arc<ThunkNode>>, ValueCapture<X>) {
        (Vec::new(), ValueCapture(x))
    }
}

/// Where the value of a captured handle comes from when the graph runs.
enum Source<T> {
    /// A task or chunk that exists already.
    Cell(Cell<T>),
    /// The task of a graph input (the next one in the argument's input list).
    Input,
}

fn source_of<H: Handle>(h: &H) -> (Option<Arc<ThunkNode>>, Source<H::Value>) {
    let SourceRef(node, source) = h.source();
    (node, source)
}

fn capture_one<H: Handle, const OWNED: bool>(
    h: &H,
) -> (Vec<Arc<ThunkNode>>, HandleCapture<H::Value, OWNED>) {
    let (node, source) = source_of(h);
    (node.into_iter().collect(), HandleCapture(source))
}

fn capture_many<H: Handle, const OWNED: bool>(
    hs: &[H],
) -> (Vec<Arc<ThunkNode>>, HandlesCapture<H::Value, OWNED>) {
    let mut nodes = Vec::new();
    let mut sources = Vec::with_capacity(hs.len());
    for h in hs {
        let (node, source) = source_of(h);
        nodes.extend(node);
        sources.push(source);
    }
    (nodes, HandlesCapture(sources))
}

fn resolve<T: Send + Sync + 'static>(
    sources: &[Source<T>],
    inputs: &[&ErasedTask],
) -> Vec<Cell<T>> {
    let mut inputs = inputs.iter();
    sources
        .iter()
        .map(|s| match s {
            Source::Cell(c) => c.clone(),
            Source::Input => {
                let t: DTask<T> = inputs
                    .next()
                    .expect("every thunk argument has an input task")
                    .task();
                t.cell
            }
        })
        .collect()
}

/// An argument of a `delayed!` call, turned into a spawn argument each time the graph runs.
pub trait Capture: Send + Sync + 'static {
    /// The spawn argument.
    type Arg: Arg;
    /// Builds the argument from the tasks of this argument's graph inputs.
    fn instantiate(&self, inputs: &[&ErasedTask]) -> Self::Arg;
}

/// A plain value of a `delayed!` call.
pub struct ValueCapture<X>(X);

impl<X: Clone + Send + Sync + 'static> Capture for ValueCapture<X> {
    type Arg = Value<X>;
    fn instantiate(&self, _inputs: &[&ErasedTask]) -> Value<X> {
        Value(Some(self.0.clone()))
    }
}

/// One handle of a `delayed!` call (`OWNED`: passed by value).
pub struct HandleCapture<T, const OWNED: bool>(Source<T>);

impl<T: Clone + Send + Sync + 'static> Capture for HandleCapture<T, true> {
    type Arg = Owned<T>;
    fn instantiate(&self, inputs: &[&ErasedTask]) -> Owned<T> {
        Owned {
            cell: resolve(std::slice::from_ref(&self.0), inputs).pop(),
        }
    }
}

impl<T: Send + Sync + 'static> Capture for HandleCapture<T, false> {
    type Arg = Borrowed<T>;
    fn instantiate(&self, inputs: &[&ErasedTask]) -> Borrowed<T> {
        Borrowed {
            cell: resolve(std::slice::from_ref(&self.0), inputs)
                .pop()
                .expect("one handle"),
            converted: None,
        }
    }
}

/// Several handles of a `delayed!` call (`OWNED`: passed by value).
pub struct HandlesCapture<T, const OWNED: bool>(Vec<Source<T>>);

impl<T: Clone + Send + Sync + 'static> Capture for HandlesCapture<T, true> {
    type Arg = OwnedMany<T>;
    fn instantiate(&self, inputs: &[&ErasedTask]) -> OwnedMany<T> {
        OwnedMany {
            cells: resolve(&self.0, inputs),
        }
    }
}

impl<T: Send + Sync + 'static> Capture for HandlesCapture<T, false> {
    type Arg = BorrowedMany<T>;
    fn instantiate(&self, inputs: &[&ErasedTask]) -> BorrowedMany<T> {
        BorrowedMany {
            cells: resolve(&self.0, inputs),
            converted: Vec::new(),
        }
    }
}

// ---- `spawn!(dd, f(args..))`: tasks of data-dependency regions ----
//
// Each argument is classified like the arguments of ordinary calls: a value that is already a
// region argument ([`Access`](crate::Access): a data handle, `In`/`Out`/`InOut` of one, `Val`,
// a region task) is passed as it is (a bare handle is read), anything else is wrapped in
// `Val`. Then the call itself: a `'static` function whose arguments can all cross processes
// goes through [`Region::spawn_task`](crate::Region::spawn_task) when it is registered with
// `#[dagger::task]`, everything else through [`Region::spawn`](crate::Region::spawn).

use crate::datadeps::{Access, Call as RegionCall, Region, RegionTask, RemoteArgs, Val};

/// Probe for one argument of a region call.
pub struct DdProbe<'a, T>(pub &'a T);

/// The argument is a region argument already.
pub struct AsAccess;
/// The argument is a plain value.
pub struct AsVal;

/// Chosen when the argument implements `Access`.
pub trait DdViaAccess {
    /// The tag.
    fn __dagger_dd_tag(&self) -> AsAccess {
        AsAccess
    }
}
impl<T: Access> DdViaAccess for &DdProbe<'_, T> {}

/// Chosen otherwise.
pub trait DdViaVal {
    /// The tag.
    fn __dagger_dd_tag(&self) -> AsVal {
        AsVal
    }
}
impl<T> DdViaVal for DdProbe<'_, T> {}

impl AsAccess {
    /// The argument itself.
    pub fn wrap<T: Access>(self, v: T) -> T {
        v
    }
}

impl AsVal {
    /// The value, moved into the task.
    pub fn wrap<T: Send>(self, v: T) -> Val<T> {
        Val(v)
    }
}

/// Probe for a region call.
pub struct DdCallProbe<'a, F, A>(pub &'a F, pub &'a A);

/// The call may run in a worker process (if its function is registered).
pub struct AsTask;
/// The call runs in this process.
pub struct AsLocal;

/// Chosen when the call could cross processes.
pub trait DdViaTask {
    /// The tag.
    fn __dagger_dd_how(&self) -> AsTask {
        AsTask
    }
}
impl<F, A, R> DdViaTask for &DdCallProbe<'_, F, A>
where
    F: RegionCall<A, Output = R> + Copy + 'static,
    A: RemoteArgs,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
}

/// Chosen otherwise.
pub trait DdViaLocal {
    /// The tag.
    fn __dagger_dd_how(&self) -> AsLocal {
        AsLocal
    }
}
impl<F, A> DdViaLocal for DdCallProbe<'_, F, A> {}

impl AsTask {
    /// Spawns through `spawn_task` if `f` is registered, else through `spawn`.
    pub fn spawn<'scope, 'env, F, A, R>(
        self,
        dd: &'scope Region<'scope, 'env>,
        options: Option<Options>,
        f: F,
        args: A,
    ) -> RegionTask<R>
    where
        F: RegionCall<A, Output = R> + Copy + 'static,
        A: RemoteArgs + 'scope,
        R: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        if crate::remote::functions::table()
            .lookup(TypeId::of::<F>())
            .is_some()
        {
            match options {
                Some(o) => dd.spawn_task_with(o, f, args),
                None => dd.spawn_task(f, args),
            }
        } else {
            AsLocal.spawn(dd, options, f, args)
        }
    }
}

impl AsLocal {
    /// Spawns through `spawn`.
    pub fn spawn<'scope, 'env, F, A, R>(
        self,
        dd: &'scope Region<'scope, 'env>,
        options: Option<Options>,
        f: F,
        args: A,
    ) -> RegionTask<R>
    where
        F: RegionCall<A, Output = R> + 'scope,
        A: Send + 'scope,
        R: Send + Sync + 'static,
    {
        match options {
            Some(o) => dd.spawn_with(o, f, args),
            None => dd.spawn(f, args),
        }
    }
}
