//! Regions across worker processes: which tasks may run on a worker, and the copies that
//! keep every process's view of region data consistent.
//!
//! A closure cannot run in another process, so only calls of `#[dagger::task]` functions
//! spawned with [`Region::spawn_task`](super::Region::spawn_task) may be placed on a worker,
//! and only when every argument can be encoded: whole values ([`Data`]), views of slices
//! ([`Slice`]), blocks of matrices ([`Block`]) and parts of values ([`Part`]) of serde types,
//! and [`Val`]s; a `Vec` of handles read (for a `Vec<&T>` parameter); results of earlier
//! tasks of the region (those made here, or small, encoded when the task starts and sent with
//! it; those a worker made are kept there and passed by reference). Closures stay in this
//! process.
//!
//! The home copy of every piece of data is the one registered with the region (in this
//! process). The planner walks the tasks in a topological order and gives every write a new
//! *version* of the data it writes.
//!
//! *Whole values* are cached on workers: a task that needs a version its process does not hold
//! gets a copy first: from home (sent to the worker), from the worker that wrote it (pulled by
//! the worker directly from that worker), or back home from a worker. Copies of one version to
//! one process are made once, by whichever task needing it runs first (the others wait for
//! it). Workers change their copies in place. At the end, data whose latest version is not
//! home is written back; data no remote task wrote is never sent back.
//!
//! *Views* (slices, blocks, parts) are not cached: the elements of the view travel with the
//! task that uses them, encoded from the home copy when it starts and, when it writes them,
//! decoded back into the home copy as soon as it finished. For the version plan such a task
//! uses the data at home (a copy home comes first if a worker holds the latest whole value).
//! So only the view's elements move, never the rest of the buffer, and tasks writing disjoint
//! views on different workers at the same time each bring back only their own elements: the
//! home copy is where they meet, and nothing has to merge versions. The price is a round trip
//! per written view and no reuse of a view between tasks on one worker.

use super::access::{Access, In, InOut, Out, Val};
use super::data::{Block, BlockMut, BlockRef, Data, Part, Parts, Slice, Target};
use crate::error::BoxError;
use crate::remote::data::DataLink;
use crate::remote::wire::{Location, WireArg, WireCall, WireOptions};
use crate::remote::{Mover, Ran};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// How to encode a region's home copy of a value and decode a worker's version into it.
#[derive(Clone, Copy)]
pub(crate) struct Home {
    ptr: *mut (),
    encode: unsafe fn(*const ()) -> Result<Vec<u8>, BoxError>,
    decode_into: unsafe fn(*mut (), &[u8]) -> Result<(), BoxError>,
    pub(crate) type_id: TypeId,
    pub(crate) type_name: &'static str,
}

// SAFETY: the pointer is a region's data, which the region only reads or writes through a
// `Home` while no task accesses it in a conflicting way (the copy protocol in this module).
unsafe impl Send for Home {}
unsafe impl Sync for Home {}

/// # Safety
/// `p` points to a live `T` nobody writes meanwhile.
unsafe fn encode_home<T: Serialize>(p: *const ()) -> Result<Vec<u8>, BoxError> {
    // SAFETY: forwarded.
    let v = unsafe { &*(p as *const T) };
    postcard::to_allocvec(v)
        .map_err(|e| format!("cannot encode a {}: {e}", std::any::type_name::<T>()).into())
}

/// # Safety
/// `p` points to a live `T` nobody else accesses meanwhile.
unsafe fn decode_home<T: DeserializeOwned>(p: *mut (), bytes: &[u8]) -> Result<(), BoxError> {
    let v: T = postcard::from_bytes(bytes)
        .map_err(|e| format!("cannot decode a {}: {e}", std::any::type_name::<T>()))?;
    // SAFETY: forwarded.
    unsafe { *(p as *mut T) = v };
    Ok(())
}

/// One argument of a task that may run in another process (opaque).
#[doc(hidden)]
pub struct RemoteArg(pub(crate) Repr);

#[derive(Clone)]
pub(crate) enum Repr {
    Data {
        key: u32,
        write: bool,
        home: Home,
    },
    View {
        write: bool,
        view: Arc<View>,
    },
    Val {
        bytes: Result<Vec<u8>, String>,
        type_id: TypeId,
        type_name: &'static str,
    },
    /// Handles read as one `Vec<&T>` parameter (a `Vec` of handles): each whole value is
    /// copied to the worker like a [`Repr::Data`], each view's elements are sent with the
    /// task like a [`Repr::View`] read.
    Many {
        items: Vec<Item>,
        /// `T`'s type.
        type_id: TypeId,
        type_name: &'static str,
    },
    /// The result of an earlier task of the region (read): where it is when the task using
    /// it starts (after that task finished): here (encoded and sent with the task) or kept
    /// in the worker that made it (passed by reference).
    Result {
        encode: ResultEncoder,
        type_id: TypeId,
        type_name: &'static str,
    },
    /// An argument that cannot reach a task in a worker, and why: the task is refused.
    Refused(String),
}

/// One handle of a [`Repr::Many`].
#[derive(Clone)]
pub(crate) enum Item {
    Data(u32, Home),
    View(Arc<View>),
}

/// Where the result of a finished region task is, for a task in a worker reading it.
pub(crate) type ResultEncoder = Arc<dyn Fn() -> Result<ResultArg, String> + Send + Sync>;

/// The result of a finished region task, as a task in a worker receives it.
pub(crate) enum ResultArg {
    /// Encoded here (it is here, or small enough to travel with the task).
    Value(Vec<u8>),
    /// Kept in the worker process that made it.
    At(Location),
}

/// An argument that a task running in another process can receive: a data handle of a serde
/// type ([`Data`], [`Slice`], [`Block`], [`Part`]; bare or in [`In`], [`Out`], [`InOut`]) and
/// [`Val`] of a serde type.
pub trait RemoteAccess: Access {
    #[doc(hidden)]
    fn remote(&self) -> RemoteArg;
}

/// A data handle whose data a task in another process can receive (sealed: the module is
/// private).
pub trait RemoteTarget: Target {
    /// How the data crosses to a task reading (`write == false`) or writing it.
    #[doc(hidden)]
    fn remote_arg(&self, write: bool) -> RemoteArg;
}

fn data_arg<T: Serialize + DeserializeOwned + 'static>(d: &Data<'_, T>, write: bool) -> RemoteArg {
    RemoteArg(Repr::Data {
        key: d.key.key,
        write,
        home: Home {
            ptr: d.ptr.as_ptr() as *mut (),
            encode: encode_home::<T>,
            decode_into: decode_home::<T>,
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        },
    })
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> RemoteTarget for Data<'_, T> {
    fn remote_arg(&self, write: bool) -> RemoteArg {
        data_arg(self, write)
    }
}

/// Encodes the elements of a view of home data.
type EncodeView = Box<dyn Fn() -> Result<Vec<u8>, BoxError> + Send + Sync>;
/// Decodes elements sent back by a worker into a view of home data.
type DecodeView = Box<dyn Fn(&[u8]) -> Result<(), BoxError> + Send + Sync>;

/// How a view of region data crosses to a task in another process: its elements, encoded from
/// the home copy, and decoded back into it once a task wrote them.
pub(crate) struct View {
    /// Encodes the view's elements (as the parameter type the function takes).
    encode: EncodeView,
    /// Decodes what a task made of them back into the view's elements.
    decode_into: DecodeView,
    type_id: TypeId,
    type_name: &'static str,
}

/// A pointer into a region's data, for the closures of a [`View`].
pub(crate) struct RawPtr<T>(pub(crate) *mut T);

impl<T> Clone for RawPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RawPtr<T> {}

// SAFETY: the closures of a `View` only read or write through it while the region gives the
// task using the view access to it (the copy protocol in this module), for `T: Send + Sync`.
unsafe impl<T: Send + Sync> Send for RawPtr<T> {}
unsafe impl<T: Send + Sync> Sync for RawPtr<T> {}

impl<T> RawPtr<T> {
    /// The pointer (a method: a closure using it captures the whole `RawPtr`, not the raw
    /// field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

fn encode_error<T>(e: postcard::Error) -> BoxError {
    format!("cannot encode a {}: {e}", std::any::type_name::<T>()).into()
}

fn decode_error<T>(e: postcard::Error) -> BoxError {
    format!(
        "cannot decode a {} sent back by a worker: {e}",
        std::any::type_name::<T>()
    )
    .into()
}

fn view_arg(write: bool, view: View) -> RemoteArg {
    RemoteArg(Repr::View {
        write,
        view: Arc::new(view),
    })
}

/// A `Vec` of handles read by the task reaches a worker as a `Vec<&T>` parameter: each whole
/// value copied there like a single [`Data`], each view's elements sent with the task (only
/// parts can be read this way: `Vec<&[T]>` and `Vec<BlockRef>` cannot be task parameters). A
/// `Vec` that the task writes (`Vec<&mut T>` cannot be a task parameter) is refused with an
/// error saying so.
impl<D: RemoteTarget> RemoteTarget for Vec<D> {
    fn remote_arg(&self, write: bool) -> RemoteArg {
        if write {
            return RemoteArg(Repr::Refused(
                "a `Vec` of handles declared Out/InOut cannot reach a task in a worker \
                 (`Vec<&mut T>` cannot be a task parameter); pass the handles as separate \
                 arguments"
                    .into(),
            ));
        }
        let mut items = Vec::with_capacity(self.len());
        let mut elem: Option<(TypeId, &'static str)> = None;
        for d in self {
            match d.remote_arg(false).0 {
                Repr::Data { key, home, .. } => {
                    elem = Some((home.type_id, home.type_name));
                    items.push(Item::Data(key, home));
                }
                Repr::View { view, .. } => {
                    elem = Some((view.type_id, view.type_name));
                    items.push(Item::View(view));
                }
                _ => {
                    return RemoteArg(Repr::Refused(
                        "a `Vec` of nested handles cannot reach a task in a worker; pass them \
                         as separate arguments"
                            .into(),
                    ))
                }
            }
        }
        let (type_id, type_name) = elem.unwrap_or((TypeId::of::<()>(), "nothing"));
        RemoteArg(Repr::Many {
            items,
            type_id,
            type_name,
        })
    }
}

/// A view of a slice reaches a worker as a `Vec<T>` of its elements, for a `&[T]` or
/// `&mut [T]` parameter.
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> RemoteTarget for Slice<'_, T> {
    fn remote_arg(&self, write: bool) -> RemoteArg {
        let p = RawPtr(self.base.as_ptr().wrapping_add(self.start));
        let len = self.len();
        view_arg(
            write,
            View {
                encode: Box::new(move || {
                    // SAFETY: elements `start..end` of the registered slice, which nobody
                    // writes while the task using the view reads them (see `View`).
                    let s = unsafe { std::slice::from_raw_parts(p.get(), len) };
                    postcard::to_allocvec(s).map_err(encode_error::<Vec<T>>)
                }),
                decode_into: Box::new(move |bytes| {
                    let v: Vec<T> = postcard::from_bytes(bytes).map_err(decode_error::<Vec<T>>)?;
                    if v.len() != len {
                        return Err(format!(
                            "a worker sent {} elements back for a view of {len}",
                            v.len()
                        )
                        .into());
                    }
                    // SAFETY: as above; the task writing the view is its only user meanwhile.
                    let s = unsafe { std::slice::from_raw_parts_mut(p.get(), len) };
                    for (d, x) in s.iter_mut().zip(v) {
                        *d = x;
                    }
                    Ok(())
                }),
                type_id: TypeId::of::<Vec<T>>(),
                type_name: std::any::type_name::<Vec<T>>(),
            },
        )
    }
}

/// The elements of a matrix block, column by column, as a task in a worker process receives
/// them for a [`BlockRef`] or [`BlockMut`] parameter (the `#[dagger::task]` macro converts).
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct BlockBuf<T> {
    nrows: usize,
    ncols: usize,
    data: Vec<T>,
}

impl<T> BlockBuf<T> {
    fn check(&self) -> Result<(), BoxError> {
        if self.nrows.checked_mul(self.ncols) != Some(self.data.len()) {
            return Err(format!(
                "a {}x{} block arrived with {} elements",
                self.nrows,
                self.ncols,
                self.data.len()
            )
            .into());
        }
        Ok(())
    }

    /// The block for reading; an error if its sizes do not match its elements.
    pub fn block_ref(&self) -> Result<BlockRef<'_, T>, BoxError> {
        self.check()?;
        // SAFETY: `nrows * ncols` contiguous elements, columns `nrows` apart, borrowed.
        Ok(unsafe { BlockRef::from_raw(self.data.as_ptr(), self.nrows, self.ncols, self.nrows) })
    }

    /// The block for writing; an error if its sizes do not match its elements.
    pub fn block_mut(&mut self) -> Result<BlockMut<'_, T>, BoxError> {
        self.check()?;
        // SAFETY: as above, borrowed mutably.
        Ok(unsafe {
            BlockMut::from_raw(self.data.as_mut_ptr(), self.nrows, self.ncols, self.nrows)
        })
    }
}

/// Encodes a block of a home matrix exactly as its [`BlockBuf`] would be, without gathering
/// it first.
struct BlockOut<T> {
    origin: RawPtr<T>,
    nrows: usize,
    ncols: usize,
    ld: usize,
}

struct BlockElems<'a, T>(&'a BlockOut<T>);

impl<T: Serialize> Serialize for BlockElems<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let b = self.0;
        let mut seq = s.serialize_seq(Some(b.nrows * b.ncols))?;
        for j in 0..b.ncols {
            // SAFETY: column `j` of the block lies inside the registered matrix, which nobody
            // writes there while it is encoded (see `View`).
            let col = unsafe { std::slice::from_raw_parts(b.origin.get().add(j * b.ld), b.nrows) };
            for x in col {
                seq.serialize_element(x)?;
            }
        }
        seq.end()
    }
}

impl<T: Serialize> Serialize for BlockOut<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("BlockBuf", 3)?;
        st.serialize_field("nrows", &self.nrows)?;
        st.serialize_field("ncols", &self.ncols)?;
        st.serialize_field("data", &BlockElems(self))?;
        st.end()
    }
}

/// A block of a matrix reaches a worker as its elements, column by column, for a
/// [`BlockRef`] or [`BlockMut`] parameter.
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> RemoteTarget for Block<'_, T> {
    fn remote_arg(&self, write: bool) -> RemoteArg {
        let out = BlockOut {
            origin: RawPtr(self.origin()),
            nrows: self.nrows(),
            ncols: self.ncols(),
            ld: self.ld,
        };
        let (origin, nrows, ncols, ld) = (out.origin, out.nrows, out.ncols, out.ld);
        view_arg(
            write,
            View {
                encode: Box::new(move || {
                    postcard::to_allocvec(&out).map_err(encode_error::<BlockBuf<T>>)
                }),
                decode_into: Box::new(move |bytes| {
                    let b: BlockBuf<T> =
                        postcard::from_bytes(bytes).map_err(decode_error::<BlockBuf<T>>)?;
                    if (b.nrows, b.ncols) != (nrows, ncols) {
                        return Err(format!(
                            "a worker sent a {}x{} block back for a {nrows}x{ncols} one",
                            b.nrows, b.ncols
                        )
                        .into());
                    }
                    b.check()?;
                    let mut elems = b.data.into_iter();
                    for j in 0..ncols {
                        // SAFETY: column `j` of the block, inside the registered matrix; the
                        // task writing the block is its only user meanwhile.
                        let col = unsafe {
                            std::slice::from_raw_parts_mut(origin.get().add(j * ld), nrows)
                        };
                        for (d, x) in col.iter_mut().zip(elems.by_ref()) {
                            *d = x;
                        }
                    }
                    Ok(())
                }),
                type_id: TypeId::of::<BlockBuf<T>>(),
                type_name: std::any::type_name::<BlockBuf<T>>(),
            },
        )
    }
}

/// A part of a value reaches a worker as the value of the part, for a `&P` or `&mut P`
/// parameter; this needs parts borrowed as `&P` and `&mut P`.
impl<T, P> RemoteTarget for Part<'_, T>
where
    T: for<'a> Parts<Ref<'a> = &'a P, Mut<'a> = &'a mut P>,
    T::Part: 'static,
    P: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn remote_arg(&self, write: bool) -> RemoteArg {
        let (p, part) = (RawPtr(self.data.ptr.as_ptr()), self.part);
        view_arg(
            write,
            View {
                encode: Box::new(move || {
                    // SAFETY: the part of a live value, which nobody writes while the task
                    // using it reads it (see `View`).
                    let v: &P = unsafe { T::part_ref(p.get(), part) };
                    postcard::to_allocvec(v).map_err(encode_error::<P>)
                }),
                decode_into: Box::new(move |bytes| {
                    let v: P = postcard::from_bytes(bytes).map_err(decode_error::<P>)?;
                    // SAFETY: as above; the task writing the part is its only user meanwhile.
                    unsafe { *T::part_mut(p.get(), part) = v };
                    Ok(())
                }),
                type_id: TypeId::of::<P>(),
                type_name: std::any::type_name::<P>(),
            },
        )
    }
}

impl<D: RemoteTarget> RemoteAccess for D {
    fn remote(&self) -> RemoteArg {
        self.remote_arg(false)
    }
}

impl<D: RemoteTarget> RemoteAccess for In<D> {
    fn remote(&self) -> RemoteArg {
        self.0.remote_arg(false)
    }
}

impl<D: RemoteTarget> RemoteAccess for Out<D> {
    fn remote(&self) -> RemoteArg {
        self.0.remote_arg(true)
    }
}

impl<D: RemoteTarget> RemoteAccess for InOut<D> {
    fn remote(&self) -> RemoteArg {
        self.0.remote_arg(true)
    }
}

impl<X: Serialize + Send + 'static> RemoteAccess for Val<X> {
    fn remote(&self) -> RemoteArg {
        RemoteArg(Repr::Val {
            bytes: postcard::to_allocvec(&self.0)
                .map_err(|e| format!("cannot encode a {}: {e}", std::any::type_name::<X>())),
            type_id: TypeId::of::<X>(),
            type_name: std::any::type_name::<X>(),
        })
    }
}

/// The arguments of a task that may run in another process: a tuple of [`RemoteAccess`]
/// values.
pub trait RemoteArgs: Send {
    #[doc(hidden)]
    fn remote(&self, out: &mut Vec<RemoteArg>);
}

macro_rules! remote_args {
    ($( ($($a:ident $i:tt),*) )*) => {$(
        impl<$($a: RemoteAccess),*> RemoteArgs for ($($a,)*) {
            #[allow(unused_variables)]
            fn remote(&self, out: &mut Vec<RemoteArg>) {
                $(out.push(self.$i.remote());)*
            }
        }
    )*};
}

remote_args! {
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
}

/// A registered function call a region may send to a worker.
pub(crate) struct RemoteSpec {
    pub(crate) func: u32,
    pub(crate) fn_name: &'static str,
    pub(crate) args: Vec<Repr>,
}

/// Checks a call of registered function `entry` with `args`: the description of what does
/// not match, if anything.
pub(crate) fn check_call(
    entry: &crate::remote::functions::TaskFn,
    args: &[Repr],
) -> Result<(), String> {
    if entry.params.len() != args.len() {
        return Err(format!(
            "{} takes {} arguments, the task passes {}",
            entry.name,
            entry.params.len(),
            args.len()
        ));
    }
    if entry.fallible {
        return Err(format!(
            "{} returns a `Result` whose error fails a task, while a region task returns its \
             function's value as it is; wrap it in a function that returns the `Result` as a \
             value, or panics",
            entry.name
        ));
    }
    for (i, (p, a)) in entry.params.iter().zip(args).enumerate() {
        let (type_id, type_name, write) = match a {
            Repr::Data { home, write, .. } => (home.type_id, home.type_name, *write),
            Repr::View { view, write } => (view.type_id, view.type_name, *write),
            Repr::Val {
                type_id, type_name, ..
            } => (*type_id, *type_name, false),
            Repr::Result {
                type_id, type_name, ..
            } => (*type_id, *type_name, false),
            Repr::Refused(why) => return Err(format!("argument {}: {why}", i + 1)),
            Repr::Many {
                items,
                type_id,
                type_name,
            } => {
                let matches = p.elem.as_ref().is_some_and(|e| e.is(*type_id));
                if !items.is_empty() && !matches {
                    return Err(format!(
                        "argument {} is a `Vec` of {type_name} handles, but {} takes a {} \
                         there (a `Vec` of handles needs a `Vec<&T>` parameter)",
                        i + 1,
                        entry.name,
                        (p.codec.type_name)()
                    ));
                }
                if p.elem.is_none() || p.mutable {
                    return Err(format!(
                        "argument {} is a `Vec` of handles, but {} takes a {} there (a `Vec` \
                         of handles needs a `Vec<&T>` parameter)",
                        i + 1,
                        entry.name,
                        (p.codec.type_name)()
                    ));
                }
                continue;
            }
        };
        if !p.codec.is(type_id) {
            return Err(format!(
                "argument {} is a {type_name}, but {} takes a {} there",
                i + 1,
                entry.name,
                (p.codec.type_name)()
            ));
        }
        if p.mutable != write {
            return Err(format!(
                "argument {} is declared {} but parameter {} of {} is {}",
                i + 1,
                if write { "Out/InOut" } else { "In" },
                i + 1,
                entry.name,
                if p.mutable { "`&mut`" } else { "not `&mut`" }
            ));
        }
        if let Repr::Val { bytes: Err(e), .. } = a {
            return Err(format!("argument {}: {e}", i + 1));
        }
    }
    Ok(())
}

/// Counts of the values a region copied between processes. Pass one to
/// [`DatadepsOptions::transfers`](super::DatadepsOptions::transfers), read it after the region.
///
/// ```
/// use dagger_core::{spawn_datadeps_with, DatadepsOptions, Transfers};
/// let t = Transfers::new();
/// spawn_datadeps_with(DatadepsOptions::new().transfers(&t), |_dd| ()).unwrap();
/// assert_eq!(t.stats().sent, 0); // no worker processes here: nothing moved
/// ```
#[derive(Clone, Default)]
pub struct Transfers(Arc<Counters>);

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    moved: AtomicU64,
    moved_bytes: AtomicU64,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    written_back: AtomicU64,
    written_back_bytes: AtomicU64,
    remote_tasks: AtomicU64,
}

/// What [`Transfers`] counted (values and their encoded bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Values sent from their home (this process) to a worker, and views (slices, blocks,
    /// parts) sent with a task running in a worker.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Values copied from one worker to another (directly, worker to worker).
    pub moved: u64,
    /// Their bytes.
    pub moved_bytes: u64,
    /// Values copied back home during the region, for tasks running here.
    pub fetched: u64,
    /// Their bytes.
    pub fetched_bytes: u64,
    /// Values written back home at the end of the region (those whose latest version was on a
    /// worker), and views that a task in a worker wrote (brought home right after it).
    pub written_back: u64,
    /// Their bytes.
    pub written_back_bytes: u64,
    /// Tasks that ran on worker processes.
    pub remote_tasks: u64,
}

impl Transfers {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts so far.
    pub fn stats(&self) -> TransferStats {
        let c = &self.0;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransferStats {
            sent: l(&c.sent),
            sent_bytes: l(&c.sent_bytes),
            moved: l(&c.moved),
            moved_bytes: l(&c.moved_bytes),
            fetched: l(&c.fetched),
            fetched_bytes: l(&c.fetched_bytes),
            written_back: l(&c.written_back),
            written_back_bytes: l(&c.written_back_bytes),
            remote_tasks: l(&c.remote_tasks),
        }
    }

    fn add(count: &AtomicU64, bytes_counter: &AtomicU64, bytes: usize) {
        count.fetch_add(1, Ordering::Relaxed);
        bytes_counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl fmt::Debug for Transfers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.stats().fmt(f)
    }
}

/// The "process" a value owned from a chunk in a worker comes from before any task changed it
/// (see [`Lazy`]).
pub(crate) const LAZY: u32 = u32::MAX;

/// The "process" a value comes from when a worker makes it as `T::default()` for a task that
/// overwrites it ([`Region::out_default`](super::Region::out_default)).
pub(crate) const FRESH: u32 = u32::MAX - 1;

/// Encodes `T::default()`.
pub(crate) type MakeDefault = fn() -> Result<Vec<u8>, BoxError>;

/// Encodes `T::default()` (a [`MakeDefault`]).
pub(crate) fn encode_default<T: Default + Serialize>() -> Result<Vec<u8>, BoxError> {
    postcard::to_allocvec(&T::default()).map_err(encode_error::<T>)
}

/// A value taken into a region from a chunk that lives in a worker process
/// ([`Region::own_chunk`](super::Region::own_chunk)) without bringing it here: its version 0
/// is the chunk's value, which tasks in workers copy from where it lives (inside that worker,
/// or worker to worker); the home copy is filled from the chunk only when a task here, or the
/// region's end, needs it. The chunk itself never changes.
pub(crate) struct Lazy {
    /// Where the chunk's value lives.
    pub(crate) loc: Location,
    /// Fills the home copy from the chunk (once).
    fill: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
    filled: OnceLock<Result<(), String>>,
    /// Whether the home copy exists (its owner drops it only then).
    pub(crate) init: Arc<std::sync::atomic::AtomicBool>,
}

impl Lazy {
    pub(crate) fn new(
        loc: Location,
        fill: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
        init: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        Lazy {
            loc,
            fill,
            filled: OnceLock::new(),
            init,
        }
    }

    /// Fills the home copy unless it was filled already.
    pub(crate) fn fill(&self) -> Result<(), String> {
        self.filled
            .get_or_init(|| {
                (self.fill)()?;
                self.init.store(true, Ordering::Release);
                Ok(())
            })
            .clone()
    }
}

/// A copy a task needs before it runs: version `version` of data `key`, from process `from`
/// (0: home) to process `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) key: u32,
    pub(crate) version: u32,
    pub(crate) from: u32,
    pub(crate) to: u32,
}

type Cell = Arc<OnceLock<Result<(), String>>>;

/// The copies of one region at run time.
pub(crate) struct Copies {
    mover: Arc<dyn Mover>,
    homes: Vec<Option<Home>>,
    /// Values taken from chunks in workers, by key.
    lazy: HashMap<u32, Arc<Lazy>>,
    /// Where each process keeps its copy of each key: (key, process) -> location.
    slots: Mutex<HashMap<(u32, u32), Location>>,
    /// How to make a fresh value of a key in a worker ([`FRESH`]), by key.
    defaults: HashMap<u32, MakeDefault>,
    made: Mutex<HashMap<(u32, u32, u32), Cell>>,
    transfers: Transfers,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Copies {
    pub(crate) fn new(
        mover: Arc<dyn Mover>,
        homes: Vec<Option<Home>>,
        lazy: HashMap<u32, Arc<Lazy>>,
        transfers: Transfers,
    ) -> Self {
        Copies {
            mover,
            homes,
            lazy,
            slots: Mutex::new(HashMap::new()),
            defaults: HashMap::new(),
            made: Mutex::new(HashMap::new()),
            transfers,
        }
    }

    /// Lets workers make fresh values of the keys in `defaults` ([`FRESH`]).
    pub(crate) fn with_defaults(mut self, defaults: HashMap<u32, MakeDefault>) -> Self {
        self.defaults = defaults;
        self
    }

    /// Makes every copy in `needs` (or waits for the task making it).
    pub(crate) fn ensure(&self, needs: &[Need]) -> Result<(), BoxError> {
        for n in needs {
            let cell = lock(&self.made)
                .entry((n.key, n.version, n.to))
                .or_default()
                .clone();
            crate::sched::blocking(|| cell.get_or_init(|| self.copy(n, false)).clone())?;
        }
        Ok(())
    }

    /// Writes the latest version of each of `needs` (all to home) back.
    pub(crate) fn write_back(&self, needs: &[Need]) -> Result<(), String> {
        for n in needs {
            self.copy(n, true)?;
        }
        Ok(())
    }

    fn home(&self, key: u32) -> Result<Home, String> {
        self.homes
            .get(key as usize)
            .copied()
            .flatten()
            .ok_or_else(|| format!("region data {key} has no encoding (internal error)"))
    }

    fn slot(&self, key: u32, process: u32) -> Result<Location, String> {
        lock(&self.slots)
            .get(&(key, process))
            .copied()
            .ok_or_else(|| format!("process {process} holds no copy of region data {key}"))
    }

    /// Takes the copy of `key` in worker `process` away from the region (it is no longer
    /// freed at the end).
    pub(crate) fn take_slot(&self, key: u32, process: u32) -> Option<Location> {
        lock(&self.slots).remove(&(key, process))
    }

    /// Drops the copy at `loc` (taken away with [`take_slot`](Self::take_slot)).
    pub(crate) fn free(&self, loc: Location) {
        self.mover.free(loc);
    }

    fn set_slot(&self, key: u32, process: u32, loc: Location) {
        if let Some(old) = lock(&self.slots).insert((key, process), loc) {
            self.mover.free(old);
        }
    }

    fn copy(&self, n: &Need, final_write: bool) -> Result<(), String> {
        let c = &self.transfers.0;
        let what = |e: String| {
            format!(
                "copying region data {} from process {} to process {} failed: {e}",
                n.key, n.from, n.to
            )
        };
        let lazy = self.lazy.get(&n.key);
        match (n.from, n.to) {
            (0, 0) => Ok(()),
            (FRESH, to) => {
                // `T::default()`, not the current contents: the task overwrites it
                let make = self.defaults.get(&n.key).ok_or_else(|| {
                    format!("region data {} has no default (internal error)", n.key)
                })?;
                let bytes = make().map_err(|e| what(e.to_string()))?;
                let len = bytes.len();
                let loc = self.mover.put(to, bytes.into()).map_err(what)?;
                Transfers::add(&c.sent, &c.sent_bytes, len);
                self.set_slot(n.key, to, loc);
                Ok(())
            }
            (LAZY, to) => {
                let lazy = lazy.ok_or_else(|| {
                    format!("region data {} has no chunk (internal error)", n.key)
                })?;
                if to == 0 {
                    lazy.fill().map_err(what)?;
                    Transfers::add(&c.fetched, &c.fetched_bytes, lazy.loc.bytes as usize);
                } else {
                    let loc = self.mover.pull(to, lazy.loc).map_err(what)?;
                    Transfers::add(&c.moved, &c.moved_bytes, loc.bytes as usize);
                    self.set_slot(n.key, to, loc);
                }
                Ok(())
            }
            (0, to) => {
                let home = self.home(n.key)?;
                // SAFETY: a copy from home runs while no task writes the data (see module
                // docs: the tasks needing this version run after its writer, before the next).
                let bytes = unsafe { (home.encode)(home.ptr) }.map_err(|e| what(e.to_string()))?;
                let len = bytes.len();
                let loc = self.mover.put(to, bytes.into()).map_err(what)?;
                Transfers::add(&c.sent, &c.sent_bytes, len);
                self.set_slot(n.key, to, loc);
                Ok(())
            }
            (from, 0) => {
                let home = self.home(n.key)?;
                let src = self.slot(n.key, from)?;
                if let Some(lazy) = lazy {
                    // the home copy must exist before it is overwritten
                    lazy.fill().map_err(what)?;
                }
                let bytes = self.mover.fetch(src).map_err(what)?;
                // SAFETY: as above, and no task of this process reads the data meanwhile:
                // those needing this version wait for this copy, older readers finished.
                unsafe { (home.decode_into)(home.ptr, &bytes) }.map_err(|e| what(e.to_string()))?;
                if final_write {
                    Transfers::add(&c.written_back, &c.written_back_bytes, bytes.len());
                } else {
                    Transfers::add(&c.fetched, &c.fetched_bytes, bytes.len());
                }
                Ok(())
            }
            (from, to) => {
                let src = self.slot(n.key, from)?;
                let loc = self.mover.pull(to, src).map_err(what)?;
                Transfers::add(&c.moved, &c.moved_bytes, loc.bytes as usize);
                self.set_slot(n.key, to, loc);
                Ok(())
            }
        }
    }

    /// Runs `spec` on thread `thread` of worker `worker` (after its copies were made): the
    /// encoded result, or with `keep`, where the worker keeps it. The views it reads travel
    /// with the call; those it writes are lent to the worker for the call and brought home
    /// right after it.
    pub(crate) fn run(
        &self,
        worker: u32,
        thread: u32,
        spec: &RemoteSpec,
        name: Option<&str>,
        keep: bool,
    ) -> Result<Ran, BoxError> {
        let mut lent: Vec<(Location, &View)> = Vec::new();
        let ran = self.run_lending(worker, thread, spec, name, keep, &mut lent);
        // the written views come home (unless the task failed: then the region fails, and
        // the data is left as it is)
        let mut back: Result<(), String> = Ok(());
        for (loc, view) in lent {
            if ran.is_ok() && back.is_ok() {
                back = self.view_home(loc, view).map_err(|e| {
                    format!(
                        "bringing a view that {} changed on worker {worker} home failed: {e}",
                        spec.fn_name
                    )
                });
            }
            self.mover.free(loc);
        }
        let bytes = ran?;
        back?;
        Ok(bytes)
    }

    fn view_home(&self, loc: Location, view: &View) -> Result<(), String> {
        let bytes = self.mover.fetch(loc)?;
        (view.decode_into)(&bytes).map_err(|e| e.to_string())?;
        let c = &self.transfers.0;
        Transfers::add(&c.written_back, &c.written_back_bytes, bytes.len());
        Ok(())
    }

    fn run_lending<'s>(
        &self,
        worker: u32,
        thread: u32,
        spec: &'s RemoteSpec,
        name: Option<&str>,
        keep: bool,
        lent: &mut Vec<(Location, &'s View)>,
    ) -> Result<Ran, BoxError> {
        let c = &self.transfers.0;
        let what = |e: String| {
            format!(
                "sending a view to worker {worker} for {} failed: {e}",
                spec.fn_name
            )
        };
        let mut args = Vec::with_capacity(spec.args.len());
        let mut writes = Vec::with_capacity(spec.args.len());
        for a in &spec.args {
            match a {
                Repr::Data { key, write, .. } => {
                    args.push(WireArg::Ref(self.slot(*key, worker)?));
                    writes.push(*write);
                }
                Repr::View { write, view } => {
                    let bytes = (view.encode)().map_err(|e| what(e.to_string()))?;
                    Transfers::add(&c.sent, &c.sent_bytes, bytes.len());
                    if *write {
                        // changed in place there, like a whole value, then fetched
                        let loc = self.mover.put(worker, bytes.into()).map_err(what)?;
                        lent.push((loc, view));
                        args.push(WireArg::Ref(loc));
                    } else {
                        args.push(WireArg::Value(bytes.into()));
                    }
                    writes.push(*write);
                }
                Repr::Val { bytes, .. } => {
                    args.push(WireArg::Value(bytes.clone()?.into()));
                    writes.push(false);
                }
                Repr::Many { items, .. } => {
                    let mut each = Vec::with_capacity(items.len());
                    for item in items {
                        each.push(match item {
                            Item::Data(key, _) => WireArg::Ref(self.slot(*key, worker)?),
                            Item::View(view) => {
                                let bytes = (view.encode)().map_err(|e| what(e.to_string()))?;
                                Transfers::add(&c.sent, &c.sent_bytes, bytes.len());
                                WireArg::Value(bytes.into())
                            }
                        });
                    }
                    args.push(WireArg::Many(each));
                    writes.push(false);
                }
                Repr::Result { encode, .. } => {
                    match encode().map_err(what)? {
                        ResultArg::Value(bytes) => {
                            Transfers::add(&c.sent, &c.sent_bytes, bytes.len());
                            args.push(WireArg::Value(bytes.into()));
                        }
                        ResultArg::At(loc) => {
                            // kept where it was made: another worker fetches it from there
                            // directly
                            if loc.worker != worker {
                                Transfers::add(&c.moved, &c.moved_bytes, loc.bytes as usize);
                            }
                            args.push(WireArg::Ref(loc));
                        }
                    }
                    writes.push(false);
                }
                Repr::Refused(why) => return Err(why.clone().into()),
            }
        }
        let call = WireCall {
            func: spec.func,
            args,
            thread: Some(thread),
            options: WireOptions {
                name: name.map(str::to_string),
                ..WireOptions::default()
            }
            .boxed(),
        };
        let ran = crate::sched::blocking(|| self.mover.run_in_place(worker, call, writes, keep))
            .map_err(|e| format!("{} could not run on worker {worker}: {e}", spec.fn_name))?;
        match ran {
            Ok((ran, _run_ns)) => {
                c.remote_tasks.fetch_add(1, Ordering::Relaxed);
                Ok(ran)
            }
            Err((kind, message)) => Err(format!(
                "{} failed on worker {worker} ({kind:?}): {message}",
                spec.fn_name
            )
            .into()),
        }
    }

    /// Reaches the values workers keep for this process.
    pub(crate) fn link(&self) -> Option<Arc<dyn DataLink>> {
        self.mover.link()
    }

    /// Counts a result of a region task kept in a worker that a task here needed.
    pub(crate) fn count_fetched(&self, bytes: usize) {
        let c = &self.transfers.0;
        Transfers::add(&c.fetched, &c.fetched_bytes, bytes);
    }

    /// Drops every copy the workers hold.
    pub(crate) fn free_all(&self) {
        for (_, loc) in lock(&self.slots).drain() {
            self.mover.free(loc);
        }
    }
}

/// Plans the copies of a region: given each task's process (0: home) in a topological order,
/// which copies each task needs, and which data must be written back at the end.
pub(crate) struct VersionPlan {
    version: Vec<u32>,
    source: Vec<u32>,
    held: HashMap<(u32, u32), u32>,
    /// The last copy of each key to each process.
    copied: HashMap<(u32, u32), Need>,
    /// Whether home starts without the key's value (taken from a chunk in a worker: its
    /// version 0 comes from [`LAZY`]).
    lazy: Vec<bool>,
    /// Whether a worker holding no copy of the key makes one from `T::default()` ([`FRESH`])
    /// for a task overwriting it.
    fresh: Vec<bool>,
}

impl VersionPlan {
    /// The plan for `keys` keys, of which those in `lazy` start in a chunk in a worker.
    pub(crate) fn new(keys: usize, lazy: impl IntoIterator<Item = u32>) -> Self {
        let mut p = VersionPlan {
            version: vec![0; keys],
            source: vec![0; keys],
            held: HashMap::new(),
            copied: HashMap::new(),
            lazy: vec![false; keys],
            fresh: vec![false; keys],
        };
        for k in lazy {
            if let Some(l) = p.lazy.get_mut(k as usize) {
                *l = true;
                p.source[k as usize] = LAZY;
            }
        }
        p
    }

    /// Lets workers make the values of `keys` from `T::default()` for tasks overwriting them
    /// where they hold no copy.
    pub(crate) fn with_fresh(mut self, keys: impl IntoIterator<Item = u32>) -> Self {
        for k in keys {
            if let Some(f) = self.fresh.get_mut(k as usize) {
                *f = true;
            }
        }
        self
    }

    /// The version of `key` home starts with (none for a value still in a chunk).
    fn home_start(&self, key: u32) -> Option<u32> {
        (!self.lazy[key as usize]).then_some(0)
    }

    /// Where the latest version of `key` is: a process, or [`LAZY`] (still the chunk's).
    pub(crate) fn latest(&self, key: u32) -> u32 {
        self.source[key as usize]
    }

    /// A task on process `at` accessing `data` (key, write): the copies it needs go to `out`.
    ///
    /// Every task accessing data in a process that got it by a copy lists that copy (until a
    /// newer one replaces it): the first such task to run makes it, the others, which may run
    /// at the same time (readers, or writers of disjoint parts), wait for it rather than use
    /// what was there before.
    #[cfg(test)]
    pub(crate) fn task(
        &mut self,
        at: u32,
        data: impl Iterator<Item = (u32, bool)> + Clone,
        out: &mut Vec<Need>,
    ) {
        self.task_with(at, data.map(|(k, w)| (k, w, false)), out);
    }

    /// Like `task` (its form for tests), for accesses `(key, write, overwrite)`: a task overwriting
    /// a whole value ([`Out`]) needs no copy of its latest version where some older copy is
    /// held (home always holds one, unless it is still in a chunk): it overwrites that copy.
    pub(crate) fn task_with(
        &mut self,
        at: u32,
        data: impl Iterator<Item = (u32, bool, bool)> + Clone,
        out: &mut Vec<Need>,
    ) {
        let start = out.len();
        for (key, _, overwrite) in data.clone() {
            if out[start..].iter().any(|n| n.key == key) {
                continue;
            }
            let k = key as usize;
            let v = self.version[k];
            let has = self.held.get(&(key, at)).copied().or(if at == 0 {
                self.home_start(key)
            } else {
                None
            });
            if has != Some(v) && overwrite && has.is_some() {
                // an older copy is there to be overwritten: no copy (the write below makes
                // this process hold the latest version)
                continue;
            }
            if has != Some(v) {
                // a worker with no copy makes a fresh one where it may
                let fresh = overwrite && at != 0 && self.fresh[k];
                let need = Need {
                    key,
                    version: v,
                    from: if fresh { FRESH } else { self.source[k] },
                    to: at,
                };
                out.push(need);
                self.held.insert((key, at), v);
                self.copied.insert((key, at), need);
            } else if let Some(&need) = self.copied.get(&(key, at)) {
                out.push(need);
            }
        }
        for (key, write, _) in data {
            if write {
                let k = key as usize;
                self.version[k] += 1;
                self.source[k] = at;
                self.held.insert((key, at), self.version[k]);
            }
        }
    }

    /// The data wanted home (`wanted(key)`) whose latest version is not home, as copies to
    /// home.
    pub(crate) fn write_backs(&self, wanted: impl Fn(u32) -> bool) -> Vec<Need> {
        (0..self.version.len())
            .filter(|&k| {
                let key = k as u32;
                let home = self.held.get(&(key, 0)).copied().or(self.home_start(key));
                wanted(key) && self.source[k] != 0 && home != Some(self.version[k])
            })
            .map(|k| Need {
                key: k as u32,
                version: self.version[k],
                from: self.source[k],
                to: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_copy_only_what_is_missing() {
        let mut p = VersionPlan::new(2, []);
        let mut n = Vec::new();
        // a reader on worker 1 gets key 0 from home; a second reader there waits for the
        // same copy (made once at run time)
        p.task(1, [(0, false)].into_iter(), &mut n);
        p.task(1, [(0, false)].into_iter(), &mut n);
        let copy = Need {
            key: 0,
            version: 0,
            from: 0,
            to: 1,
        };
        assert_eq!(n, vec![copy, copy]);
        // a writer on worker 2 pulls it from... home (the version's source)
        n.clear();
        p.task(2, [(0, true)].into_iter(), &mut n);
        assert_eq!(n[0].from, 0);
        // a reader on worker 1 now needs version 1 from worker 2; a home task too
        n.clear();
        p.task(1, [(0, false), (1, false)].into_iter(), &mut n);
        assert_eq!(
            n,
            vec![
                Need {
                    key: 0,
                    version: 1,
                    from: 2,
                    to: 1
                },
                Need {
                    key: 1,
                    version: 0,
                    from: 0,
                    to: 1
                }
            ]
        );
        // key 1 was only read remotely: only key 0 goes back
        assert_eq!(
            p.write_backs(|_| true),
            vec![Need {
                key: 0,
                version: 1,
                from: 2,
                to: 0
            }]
        );
        // a home reader fetches key 0: then nothing is left to write back
        n.clear();
        p.task(0, [(0, false)].into_iter(), &mut n);
        assert_eq!(n.len(), 1);
        assert!(p.write_backs(|_| true).is_empty());
        // a worker writes it again, then a home write (fetching it first: it may read it)
        // makes home the latest again
        p.task(1, [(0, true)].into_iter(), &mut n);
        assert_eq!(p.write_backs(|_| true).len(), 1);
        n.clear();
        p.task(0, [(0, true)].into_iter(), &mut n);
        let fetch = Need {
            key: 0,
            version: 2,
            from: 1,
            to: 0,
        };
        assert_eq!(n, vec![fetch]);
        assert!(p.write_backs(|_| true).is_empty());
        // a second writer here (of another part, maybe at the same time as the first) waits
        // for the same fetch: it must not write the copy that the fetch replaces
        n.clear();
        p.task(0, [(0, true)].into_iter(), &mut n);
        assert_eq!(n, vec![fetch]);
    }

    #[test]
    fn values_from_chunks_start_in_their_worker() {
        let mut p = VersionPlan::new(1, [0]);
        let mut n = Vec::new();
        let from_chunk = |to| Need {
            key: 0,
            version: 0,
            from: LAZY,
            to,
        };
        // a reader in worker 2 copies the chunk's value there
        p.task(2, [(0, false)].into_iter(), &mut n);
        assert_eq!(n, [from_chunk(2)]);
        assert_eq!(p.latest(0), LAZY);
        // wanted home unchanged: it comes from the chunk
        assert_eq!(p.write_backs(|_| true), [from_chunk(0)]);
        assert!(p.write_backs(|_| false).is_empty());
        // a writer here fills home from the chunk first; then home holds the latest
        n.clear();
        p.task(0, [(0, true)].into_iter(), &mut n);
        assert_eq!(n, [from_chunk(0)]);
        assert_eq!(p.latest(0), 0);
        assert!(p.write_backs(|_| true).is_empty());
    }

    #[test]
    fn overwriting_a_whole_value_needs_only_an_older_copy() {
        let mut p = VersionPlan::new(2, [1]);
        let mut n = Vec::new();
        // worker 1 gets version 0; home writes version 1
        p.task(1, [(0, false)].into_iter(), &mut n);
        p.task(0, [(0, true)].into_iter(), &mut n);
        n.clear();
        // overwriting it in worker 1: its older copy will do; in worker 2 (no copy): sent
        p.task_with(1, [(0, true, true)].into_iter(), &mut n);
        assert!(n.is_empty(), "{n:?}");
        p.task_with(2, [(0, true, true)].into_iter(), &mut n);
        assert_eq!(
            n,
            [Need {
                key: 0,
                version: 2,
                from: 1,
                to: 2
            }]
        );
        // overwritten here: home's older copy will do, and home holds the latest
        n.clear();
        p.task_with(0, [(0, true, true)].into_iter(), &mut n);
        assert!(n.is_empty(), "{n:?}");
        assert!(p.write_backs(|k| k == 0).is_empty());
        // a value still in its chunk has no home copy to overwrite: it is filled first
        p.task_with(0, [(1, true, true)].into_iter(), &mut n);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].from, LAZY);
    }

    #[test]
    fn fresh_values_are_made_in_workers_without_a_copy() {
        let mut p = VersionPlan::new(2, []).with_fresh([0]);
        let mut n = Vec::new();
        // overwritten in worker 1 (no copy): made there; key 1 (not fresh) is sent
        p.task_with(1, [(0, true, true), (1, true, true)].into_iter(), &mut n);
        assert_eq!(
            n,
            [
                Need {
                    key: 0,
                    version: 0,
                    from: FRESH,
                    to: 1
                },
                Need {
                    key: 1,
                    version: 0,
                    from: 0,
                    to: 1
                }
            ]
        );
        // read in worker 2: pulled from worker 1; only overwriting makes a fresh value
        n.clear();
        p.task_with(2, [(0, false, false)].into_iter(), &mut n);
        assert_eq!(n[0].from, 1);
        // home always holds a copy to overwrite; worker 1's is written back at the end
        n.clear();
        p.task_with(0, [(0, true, true)].into_iter(), &mut n);
        assert!(n.is_empty(), "{n:?}");
    }

    fn view_of(arg: RemoteArg) -> Arc<View> {
        match arg.0 {
            Repr::View { view, .. } => view,
            _ => panic!("not a view"),
        }
    }

    #[test]
    fn views_encode_their_elements_and_refuse_malformed_answers() {
        let mut v = vec![1u32, 2, 3, 4, 5];
        let mut m: Vec<u8> = (0..12).collect(); // 3 x 4, column-major
        crate::spawn_datadeps(|dd| {
            let s = view_of(dd.slice(&mut v).view(1..3).remote_arg(true));
            assert_eq!(
                (s.encode)().unwrap(),
                postcard::to_allocvec(&vec![2u32, 3]).unwrap()
            );
            (s.decode_into)(&postcard::to_allocvec(&vec![20u32, 30]).unwrap()).unwrap();
            let e = (s.decode_into)(&postcard::to_allocvec(&vec![7u32]).unwrap()).unwrap_err();
            assert!(
                e.to_string().contains("1 elements back for a view of 2"),
                "{e}"
            );
            assert!((s.decode_into)(&[0xff]).is_err());

            // rows 1..3 of columns 2..4: [7, 8], [10, 11]
            let b = view_of(dd.matrix(&mut m, 3, 4).block(1..3, 2..4).remote_arg(true));
            let bytes = (b.encode)().unwrap();
            let buf: BlockBuf<u8> = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(buf.data, vec![7, 8, 10, 11]);
            assert_eq!(*buf.block_ref().unwrap().get(1, 1), 11);
            let back = BlockBuf::<u8> {
                nrows: 2,
                ncols: 2,
                data: vec![70, 80, 100, 110],
            };
            (b.decode_into)(&postcard::to_allocvec(&back).unwrap()).unwrap();
            let wrong = BlockBuf::<u8> {
                nrows: 1,
                ncols: 4,
                data: vec![0; 4],
            };
            let e = (b.decode_into)(&postcard::to_allocvec(&wrong).unwrap()).unwrap_err();
            assert!(e.to_string().contains("1x4 block back for a 2x2"), "{e}");
        })
        .unwrap();
        assert_eq!(v, [1, 20, 30, 4, 5]);
        assert_eq!(m, [0, 1, 2, 3, 4, 5, 6, 70, 80, 9, 100, 110]);
        // a block whose sizes do not match its elements (a malformed message) is an error
        let mut bad = BlockBuf {
            nrows: 3,
            ncols: usize::MAX,
            data: vec![1.0f64; 3],
        };
        assert!(bad.block_ref().is_err() && bad.block_mut().is_err());
        bad.ncols = 1;
        assert_eq!(bad.block_mut().unwrap().ncols(), 1);
    }
}
