//! Access modes (`In`, `Out`, `InOut`) and how a task's arguments become its inputs.
//!
//! Every argument of a region task implements [`Access`]: it declares which data it touches and
//! how (so the region can order the task after conflicting earlier ones), and, once the task
//! runs, produces what the function receives: `&T` for reading, `&mut T` for writing, or the
//! value itself for plain values ([`Val`]). Producing it is `unsafe` and only the region does
//! it, after every conflicting task finished.

use super::data::Target;
use super::tracker::Span;

/// Reads the data: the task gets a shared reference (`&T`, `&[T]`, ...). Readers of the same
/// data run in parallel. A data handle passed without a mode is read.
///
/// ```
/// let (a, mut b) = (vec![1, 2, 3], 0);
/// dagger_core::spawn_datadeps(|dd| {
///     let (a, b) = (dd.read(&a), dd.data(&mut b));
///     dd.spawn(|a: &Vec<i32>, b: &mut i32| *b = a.iter().sum(), (dagger_core::In(a), dagger_core::Out(b)));
/// })
/// .unwrap();
/// assert_eq!(b, 6);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct In<D>(pub D);

/// Writes the data: the task gets a mutable reference (`&mut T`, `&mut [T]`, ...) and runs after
/// every earlier reader and writer of overlapping data. Inside one process the reference shows
/// the current contents, exactly as for [`InOut`]; the difference is what a task promises: it
/// does not read what was there, so across processes the region does not copy a whole value
/// declared `Out` to the process running the task when that process holds an older copy of it
/// (the task gets that copy to overwrite; see `docs/cluster.md`). A process holding no copy yet
/// gets the current contents (a value cannot be made without one), as do views (their
/// elements travel with the task).
#[derive(Clone, Copy, Debug)]
pub struct Out<D>(pub D);

/// Reads and writes the data: like [`Out`], and the task may read the current contents.
#[derive(Clone, Copy, Debug)]
pub struct InOut<D>(pub D);

/// A plain value moved into the task (no dependency); closures can also capture values.
#[derive(Debug)]
pub struct Val<X>(pub X);

/// What one argument of a region task touches.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Declared {
    /// A piece of region data.
    Data {
        region: u64,
        key: u32,
        span: Span,
        write: bool,
        writable: bool,
        /// Declared [`Out`]: the task overwrites what it accesses without reading it.
        overwrite: bool,
    },
    /// The result of an earlier task of a region (read only).
    Result { region: u64, task: u32 },
}

/// The accesses a task's arguments declare (opaque).
#[derive(Default)]
pub struct Declarations(pub(crate) Vec<Declared>);

impl Declarations {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

mod sealed {
    pub trait Sealed {}
}
pub(crate) use sealed::Sealed;

/// One argument of a region task: declares what it accesses and produces the task's input.
///
/// Implemented by the data handles ([`Data`](super::Data), [`Slice`](super::Slice),
/// [`Block`](super::Block), [`Part`](super::Part); read), by [`In`], [`Out`] and [`InOut`] of a
/// handle, by `&RegionTask<T>` (the result of an earlier task, read), and by [`Val`].
/// The trait is sealed: the region relies on what the implementations declare.
pub trait Access: Sealed + Send {
    /// What the function receives for this argument.
    type Out<'a>;

    #[doc(hidden)]
    fn declare(&self, out: &mut Declarations);

    /// Produces the input.
    ///
    /// # Safety
    /// Only the region calls this, while no conflicting access to the same data exists, and
    /// the input is used only while that holds (for the lifetime `'a` the region chooses).
    #[doc(hidden)]
    unsafe fn get<'a>(self) -> Self::Out<'a>;
}

fn declare_target<D: Target>(d: &D, write: bool, out: &mut Declarations) {
    d.declare(write, out);
}

impl<D: Target> Sealed for In<D> {}
impl<D: Target> Access for In<D> {
    type Out<'a> = D::Ref<'a>;

    fn declare(&self, out: &mut Declarations) {
        declare_target(&self.0, false, out);
    }

    unsafe fn get<'a>(self) -> D::Ref<'a> {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.get_ref() }
    }
}

impl<D: Target> Sealed for Out<D> {}
impl<D: Target> Access for Out<D> {
    type Out<'a> = D::Mut<'a>;

    fn declare(&self, out: &mut Declarations) {
        let start = out.0.len();
        declare_target(&self.0, true, out);
        for d in &mut out.0[start..] {
            if let Declared::Data { overwrite, .. } = d {
                *overwrite = true;
            }
        }
    }

    unsafe fn get<'a>(self) -> D::Mut<'a> {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.get_mut() }
    }
}

impl<D: Target> Sealed for InOut<D> {}
impl<D: Target> Access for InOut<D> {
    type Out<'a> = D::Mut<'a>;

    fn declare(&self, out: &mut Declarations) {
        declare_target(&self.0, true, out);
    }

    unsafe fn get<'a>(self) -> D::Mut<'a> {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.get_mut() }
    }
}

impl<X: Send> Sealed for Val<X> {}
impl<X: Send> Access for Val<X> {
    type Out<'a> = X;

    fn declare(&self, _out: &mut Declarations) {}

    unsafe fn get<'a>(self) -> Self::Out<'a> {
        self.0
    }
}

/// A function of a region task applied to its arguments (a tuple of [`Access`] values).
///
/// Implemented for functions and closures taking each argument's input: for
/// `(In(a), InOut(b), Val(3))` with `a: Data<'_, A>` and `b: Slice<'_, B>`, any
/// `FnOnce(&A, &mut [B], i32) -> R`.
pub trait Call<Args>: Send {
    /// The function's result.
    type Output;

    #[doc(hidden)]
    fn declare(args: &Args, out: &mut Declarations);

    /// Calls the function.
    ///
    /// # Safety
    /// Only the region calls this, when no conflicting access to the arguments' data exists.
    #[doc(hidden)]
    unsafe fn call(self, args: Args) -> Self::Output;
}

macro_rules! calls {
    ($( ($($a:ident $x:ident $i:tt),*) )*) => {$(
        impl<Func, R, $($a: Access),*> Call<($($a,)*)> for Func
        where
            Func: for<'a> FnOnce($($a::Out<'a>),*) -> R + Send,
        {
            type Output = R;

            #[allow(unused_variables)]
            fn declare(args: &($($a,)*), out: &mut Declarations) {
                $(args.$i.declare(out);)*
            }

            #[allow(unused_variables, clippy::unused_unit)]
            unsafe fn call(self, args: ($($a,)*)) -> R {
                $(
                    // SAFETY: forwarded from the caller.
                    let $x = unsafe { args.$i.get() };
                )*
                self($($x),*)
            }
        }
    )*};
}

calls! {
    ()
    (A0 x0 0)
    (A0 x0 0, A1 x1 1)
    (A0 x0 0, A1 x1 1, A2 x2 2)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6, A7 x7 7)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6, A7 x7 7, A8 x8 8)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6, A7 x7 7, A8 x8 8, A9 x9 9)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6, A7 x7 7, A8 x8 8, A9 x9 9, A10 x10 10)
    (A0 x0 0, A1 x1 1, A2 x2 2, A3 x3 3, A4 x4 4, A5 x5 5, A6 x6 6, A7 x7 7, A8 x8 8, A9 x9 9, A10 x10 10, A11 x11 11)
}

/// A data handle passed without a mode is read, as with [`In`].
impl<D: Target> Access for D {
    type Out<'a> = D::Ref<'a>;

    fn declare(&self, out: &mut Declarations) {
        declare_target(self, false, out);
    }

    unsafe fn get<'a>(self) -> D::Ref<'a> {
        // SAFETY: forwarded from the caller.
        unsafe { self.get_ref() }
    }
}
