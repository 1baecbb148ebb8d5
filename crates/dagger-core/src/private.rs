//! Support code for the `spawn!` and `delayed!` macros. Not a public API.
//!
//! The macros classify each argument at compile time with "autoref specialisation": the probe
//! `(&&Probe(&value)).__dagger_tag()` resolves to [`ViaDep`] when the value is a `DTask`,
//! `Chunk` or `Thunk` (or a reference to one), and to [`ViaValue`] otherwise. The tag then
//! wraps the value into an argument that knows its dependency, its scope and how to hand the
//! function its input: `DTask<T>`/`Chunk<T>` by value give the function a `T` (moved when this
//! is the last handle, cloned otherwise); `&DTask<T>`/`&Chunk<T>` give it a `&T`.

use crate::chunk::Chunk;
use crate::error::BoxError;
use crate::options::Options;
use crate::processor::ArgType;
use crate::task::{spawn_raw, DTask, Header, Site, TaskCell};
use crate::thunk::Thunk;
pub use crate::thunk::{ErasedTask, ThunkNode};
use std::any::{Any, TypeId};
use std::marker::PhantomData;
use std::sync::Arc;

pub use crate::task::ArgInfo;

/// The identity of a function item or closure, for per-function default options.
pub fn fn_id<F: 'static>(_f: &F) -> TypeId {
    TypeId::of::<F>()
}

/// Spawns a macro-built call.
pub fn spawn_call<T, F>(
    name: &'static str,
    function: TypeId,
    opts: Option<Options>,
    args: &[ArgInfo],
    body: F,
) -> DTask<T>
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Result<T, BoxError> + Send + 'static,
{
    let site = Site {
        name: Some(name),
        function,
        args,
    };
    spawn_raw(&site, opts, body)
}

/// Builds a thunk from a macro-built call.
pub fn delayed<T, S>(
    name: &'static str,
    inputs: Vec<Option<Arc<ThunkNode>>>,
    spawner: S,
) -> Thunk<T>
where
    T: Send + Sync + 'static,
    S: Fn(&[Option<&ErasedTask>]) -> DTask<T> + Send + Sync + 'static,
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
    /// Dependency, scope and type of the argument.
    fn info(&self) -> ArgInfo;
    /// Produces the function's input (once).
    fn get(&mut self) -> Result<Self::Out<'_>, BoxError>;
}

fn scope_of(h: &Header) -> Option<crate::scope::Scope> {
    h.meta.as_ref().and_then(|m| m.result_scope.clone())
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

fn value_of<T: Send + Sync + 'static>(cell: &Arc<dyn TaskCell<T>>) -> Result<&T, BoxError> {
    match cell.result() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Box::new(e.clone())),
        None => Err("an input task has not finished".into()),
    }
}

/// `DTask<T>` or `Chunk<T>` passed by value: the function gets a `T`.
pub struct Owned<T> {
    cell: Option<Arc<dyn TaskCell<T>>>,
}

impl<T: Clone + Send + Sync + 'static> Arg for Owned<T> {
    type Out<'a> = T;

    fn info(&self) -> ArgInfo {
        let cell = self.cell.as_ref().expect("info is read before get");
        ArgInfo {
            dep: Some(cell.clone() as crate::task::JobRef),
            scope: scope_of(cell.header()),
            ty: ArgType::of::<T>(),
        }
    }

    fn get(&mut self) -> Result<T, BoxError> {
        let mut cell = self.cell.take().ok_or("argument already consumed")?;
        let value = value_of(&cell)?;
        if let Some(v) = converted(cell.header(), value)? {
            return Ok(v);
        }
        if let Some(unique) = Arc::get_mut(&mut cell) {
            if let Some(Ok(v)) = unique.take_result() {
                return Ok(v);
            }
        }
        Ok(value_of(&cell)?.clone())
    }
}

/// `&DTask<T>` or `&Chunk<T>`: the function borrows the stored `T`.
pub struct Borrowed<T> {
    cell: Arc<dyn TaskCell<T>>,
    converted: Option<T>,
}

impl<T: Send + Sync + 'static> Arg for Borrowed<T> {
    type Out<'a> = &'a T;

    fn info(&self) -> ArgInfo {
        ArgInfo {
            dep: Some(self.cell.clone() as crate::task::JobRef),
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
}

/// Wraps an argument probe; see the module docs.
pub struct Probe<'a, X>(pub &'a X);

/// Argument classes that are dependencies (tasks, chunks, thunks).
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

macro_rules! dep_tags {
    ($($ty:ident, $tag:ident;)*) => {$(
        /// Argument class tag.
        pub struct $tag;
        impl<T> ViaDep for &Probe<'_, $ty<T>> {
            type Tag = $tag;
            fn __dagger_tag(&self) -> $tag { $tag }
        }
    )*};
}
macro_rules! ref_tags {
    ($($ty:ident, $tag:ident;)*) => {$(
        /// Argument class tag.
        pub struct $tag;
        impl<T> ViaDep for &Probe<'_, &$ty<T>> {
            type Tag = $tag;
            fn __dagger_tag(&self) -> $tag { $tag }
        }
    )*};
}
dep_tags! {
    DTask, OwnedTaskTag;
    Chunk, OwnedChunkTag;
    Thunk, OwnedThunkTag;
}
ref_tags! {
    DTask, BorrowedTaskTag;
    Chunk, BorrowedChunkTag;
    Thunk, BorrowedThunkTag;
}

/// Argument class tag of plain values.
pub struct ValueTag;

impl ValueTag {
    /// For `spawn!`.
    pub fn wrap<X>(self, x: X) -> Value<X> {
        Value(Some(x))
    }
    /// For `delayed!`: the value is cloned for every run of the graph.
    pub fn capture<X>(self, x: X) -> (Option<Arc<ThunkNode>>, ValueCapture<X>) {
        (None, ValueCapture(x))
    }
}

impl OwnedTaskTag {
    /// For `spawn!`.
    pub fn wrap<T: Send + Sync + 'static>(self, t: DTask<T>) -> Owned<T> {
        Owned { cell: Some(t.cell) }
    }
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        t: DTask<T>,
    ) -> (Option<Arc<ThunkNode>>, CellCapture<T, true>) {
        (None, CellCapture(t.cell))
    }
}

impl BorrowedTaskTag {
    /// For `spawn!`.
    pub fn wrap<T: Send + Sync + 'static>(self, t: &DTask<T>) -> Borrowed<T> {
        Borrowed {
            cell: t.cell.clone(),
            converted: None,
        }
    }
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        t: &DTask<T>,
    ) -> (Option<Arc<ThunkNode>>, CellCapture<T, false>) {
        (None, CellCapture(t.cell.clone()))
    }
}

impl OwnedChunkTag {
    /// For `spawn!`.
    pub fn wrap<T: Send + Sync + 'static>(self, c: Chunk<T>) -> Owned<T> {
        Owned { cell: Some(c.cell) }
    }
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        c: Chunk<T>,
    ) -> (Option<Arc<ThunkNode>>, CellCapture<T, true>) {
        (None, CellCapture(c.cell))
    }
}

impl BorrowedChunkTag {
    /// For `spawn!`.
    pub fn wrap<T: Send + Sync + 'static>(self, c: &Chunk<T>) -> Borrowed<T> {
        Borrowed {
            cell: c.cell.clone(),
            converted: None,
        }
    }
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        c: &Chunk<T>,
    ) -> (Option<Arc<ThunkNode>>, CellCapture<T, false>) {
        (None, CellCapture(c.cell.clone()))
    }
}

impl OwnedThunkTag {
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        t: Thunk<T>,
    ) -> (Option<Arc<ThunkNode>>, ThunkCapture<T, true>) {
        (Some(t.node), ThunkCapture(PhantomData))
    }
}

impl BorrowedThunkTag {
    /// For `delayed!`.
    pub fn capture<T: Send + Sync + 'static>(
        self,
        t: &Thunk<T>,
    ) -> (Option<Arc<ThunkNode>>, ThunkCapture<T, false>) {
        (Some(t.node.clone()), ThunkCapture(PhantomData))
    }
}

/// An argument of a `delayed!` call, turned into a spawn argument each time the graph runs.
pub trait Capture: Send + Sync + 'static {
    /// The spawn argument.
    type Arg: Arg;
    /// Builds the argument; `input` is the task of this argument's thunk, if it is one.
    fn instantiate(&self, input: Option<&ErasedTask>) -> Self::Arg;
}

/// A plain value of a `delayed!` call.
pub struct ValueCapture<X>(X);

impl<X: Clone + Send + Sync + 'static> Capture for ValueCapture<X> {
    type Arg = Value<X>;
    fn instantiate(&self, _input: Option<&ErasedTask>) -> Value<X> {
        Value(Some(self.0.clone()))
    }
}

/// A task or chunk of a `delayed!` call (`OWNED`: passed by value).
pub struct CellCapture<T, const OWNED: bool>(Arc<dyn TaskCell<T>>);

impl<T: Clone + Send + Sync + 'static> Capture for CellCapture<T, true> {
    type Arg = Owned<T>;
    fn instantiate(&self, _input: Option<&ErasedTask>) -> Owned<T> {
        Owned {
            cell: Some(self.0.clone()),
        }
    }
}

impl<T: Send + Sync + 'static> Capture for CellCapture<T, false> {
    type Arg = Borrowed<T>;
    fn instantiate(&self, _input: Option<&ErasedTask>) -> Borrowed<T> {
        Borrowed {
            cell: self.0.clone(),
            converted: None,
        }
    }
}

/// A thunk argument of a `delayed!` call (`OWNED`: passed by value).
pub struct ThunkCapture<T, const OWNED: bool>(PhantomData<fn() -> T>);

impl<T: Clone + Send + Sync + 'static> Capture for ThunkCapture<T, true> {
    type Arg = Owned<T>;
    fn instantiate(&self, input: Option<&ErasedTask>) -> Owned<T> {
        let t: DTask<T> = input.expect("a thunk argument has an input task").task();
        Owned { cell: Some(t.cell) }
    }
}

impl<T: Send + Sync + 'static> Capture for ThunkCapture<T, false> {
    type Arg = Borrowed<T>;
    fn instantiate(&self, input: Option<&ErasedTask>) -> Borrowed<T> {
        let t: DTask<T> = input.expect("a thunk argument has an input task").task();
        Borrowed {
            cell: t.cell,
            converted: None,
        }
    }
}
