//! Handles to region data: whole values, slices and their views, column-major matrix blocks,
//! and parts a type declares.
//!
//! A handle is a small `Copy` value that names one piece of data of one region (its *key*)
//! and the part of it an access touches (its *span*). Handles are only dereferenced by the
//! region, inside a task, after every conflicting task finished, so the same handle may be
//! passed to many tasks.

use super::access::{Declarations, Declared, Sealed};
use super::tracker::Span;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Bound, Range, RangeBounds};
use std::ptr::NonNull;

/// A handle to region data that tasks can borrow: implemented by [`Data`], [`Slice`],
/// [`Block`] and [`Part`]. Wrap it in [`In`](super::In), [`Out`](super::Out) or
/// [`InOut`](super::InOut) to say how a task uses it.
pub trait Target: Sealed + Send {
    /// What a reading task receives.
    type Ref<'a>;
    /// What a writing task receives.
    type Mut<'a>;

    #[doc(hidden)]
    fn declare(&self, write: bool, out: &mut Declarations);

    /// Borrows the data for reading.
    ///
    /// # Safety
    /// Only the region calls this, while no task writes overlapping data.
    #[doc(hidden)]
    unsafe fn get_ref<'a>(self) -> Self::Ref<'a>;

    /// Borrows the data for writing.
    ///
    /// # Safety
    /// Only the region calls this, while no other task accesses overlapping data.
    #[doc(hidden)]
    unsafe fn get_mut<'a>(self) -> Self::Mut<'a>;
}

/// Which region and piece of data a handle names, and whether tasks may write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyRef {
    pub(crate) region: u64,
    pub(crate) key: u32,
    pub(crate) writable: bool,
}

impl KeyRef {
    fn declare(self, span: Span, write: bool, out: &mut Declarations) {
        out.0.push(Declared::Data {
            region: self.region,
            key: self.key,
            span,
            write,
            writable: self.writable,
            overwrite: false,
        });
    }
}

/// A whole value registered with a region ([`Region::data`](super::Region::data),
/// [`read`](super::Region::read), [`own`](super::Region::own), ...). Reading tasks get `&T`,
/// writing tasks `&mut T`.
pub struct Data<'scope, T> {
    pub(crate) key: KeyRef,
    pub(crate) ptr: NonNull<T>,
    pub(crate) _scope: PhantomData<&'scope mut T>,
}

impl<T> Clone for Data<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Data<'_, T> {}

// SAFETY: a handle only names data; the region hands out `&T` (needs `T: Sync`) or `&mut T`
// (needs `T: Send`) to tasks on other threads, one writer at a time.
unsafe impl<T: Send + Sync + 'static> Send for Data<'_, T> {}
unsafe impl<T: Send + Sync + 'static> Sync for Data<'_, T> {}

impl<T> fmt::Debug for Data<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Data")
            .field("key", &self.key.key)
            .field("writable", &self.key.writable)
            .finish()
    }
}

impl<'scope, T: Parts> Data<'scope, T> {
    /// The part `part` of the value, as the type declares it (see [`Parts`]).
    pub fn part(self, part: T::Part) -> Part<'scope, T> {
        Part { data: self, part }
    }
}

impl<T: Send + Sync + 'static> Sealed for Data<'_, T> {}
impl<T: Send + Sync + 'static> Target for Data<'_, T> {
    type Ref<'a> = &'a T;
    type Mut<'a> = &'a mut T;

    fn declare(&self, write: bool, out: &mut Declarations) {
        self.key.declare(Span::All, write, out);
    }

    unsafe fn get_ref<'a>(self) -> &'a T {
        // SAFETY: the pointer is valid for the region; the caller rules out writers.
        unsafe { self.ptr.as_ref() }
    }

    unsafe fn get_mut<'a>(mut self) -> &'a mut T {
        // SAFETY: the pointer is valid for the region; the caller rules out other accesses.
        unsafe { self.ptr.as_mut() }
    }
}

/// A slice registered with a region ([`Region::slice`](super::Region::slice), ...) or a view of
/// one ([`Slice::view`]). Reading tasks get `&[T]`, writing tasks `&mut [T]`. Views of the same
/// slice are ordered only when their index ranges overlap.
pub struct Slice<'scope, T> {
    pub(crate) key: KeyRef,
    /// Element 0 of the registered slice.
    pub(crate) base: NonNull<T>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) _scope: PhantomData<&'scope mut [T]>,
}

impl<T> Clone for Slice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slice<'_, T> {}

// SAFETY: as for `Data`.
unsafe impl<T: Send + Sync + 'static> Send for Slice<'_, T> {}
unsafe impl<T: Send + Sync + 'static> Sync for Slice<'_, T> {}

impl<T> fmt::Debug for Slice<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slice")
            .field("key", &self.key.key)
            .field("range", &(self.start..self.end))
            .finish()
    }
}

fn resolve(range: impl RangeBounds<usize>, len: usize, what: &str) -> Range<usize> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(
        start <= end && end <= len,
        "{what} range {start}..{end} is out of bounds of a view of length {len}"
    );
    start..end
}

impl<'scope, T> Slice<'scope, T> {
    /// The number of elements in the view.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The indices of the view in the registered slice.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// A view of elements `range` of this view (indices relative to this view).
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn view(self, range: impl RangeBounds<usize>) -> Slice<'scope, T> {
        let r = resolve(range, self.len(), "view");
        Slice {
            start: self.start + r.start,
            end: self.start + r.end,
            ..self
        }
    }

    /// The views `..mid` and `mid..`.
    pub fn split_at(self, mid: usize) -> (Slice<'scope, T>, Slice<'scope, T>) {
        (self.view(..mid), self.view(mid..))
    }

    /// Consecutive views of `size` elements (the last one may be shorter).
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn chunks(self, size: usize) -> impl Iterator<Item = Slice<'scope, T>> {
        assert!(size > 0, "chunk size must be positive");
        (0..self.len())
            .step_by(size)
            .map(move |s| self.view(s..(s + size).min(self.len())))
    }
}

impl<T: Send + Sync + 'static> Sealed for Slice<'_, T> {}
impl<T: Send + Sync + 'static> Target for Slice<'_, T> {
    type Ref<'a> = &'a [T];
    type Mut<'a> = &'a mut [T];

    fn declare(&self, write: bool, out: &mut Declarations) {
        self.key
            .declare(Span::Range(self.start, self.end), write, out);
    }

    unsafe fn get_ref<'a>(self) -> &'a [T] {
        // SAFETY: `start..end` lies inside the registered slice, valid for the region; the
        // caller rules out writers of overlapping ranges.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(self.start), self.len()) }
    }

    unsafe fn get_mut<'a>(self) -> &'a mut [T] {
        // SAFETY: as above; the caller rules out every other access to overlapping ranges.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(self.start), self.len()) }
    }
}

/// A column-major matrix registered with a region ([`Region::matrix`](super::Region::matrix))
/// or a rectangular block of one ([`Block::block`]). Reading tasks get a [`BlockRef`], writing
/// tasks a [`BlockMut`]. Blocks of the same matrix are ordered only when they share elements.
pub struct Block<'scope, T> {
    pub(crate) key: KeyRef,
    /// Element (0, 0) of the registered matrix.
    pub(crate) base: NonNull<T>,
    /// Distance between the starts of two columns of the registered matrix.
    pub(crate) ld: usize,
    pub(crate) rows: (usize, usize),
    pub(crate) cols: (usize, usize),
    pub(crate) _scope: PhantomData<&'scope mut [T]>,
}

impl<T> Clone for Block<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Block<'_, T> {}

// SAFETY: as for `Data`.
unsafe impl<T: Send + Sync + 'static> Send for Block<'_, T> {}
unsafe impl<T: Send + Sync + 'static> Sync for Block<'_, T> {}

impl<T> fmt::Debug for Block<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("key", &self.key.key)
            .field("rows", &(self.rows.0..self.rows.1))
            .field("cols", &(self.cols.0..self.cols.1))
            .finish()
    }
}

impl<'scope, T> Block<'scope, T> {
    /// Rows of the block.
    pub fn nrows(&self) -> usize {
        self.rows.1 - self.rows.0
    }

    /// Columns of the block.
    pub fn ncols(&self) -> usize {
        self.cols.1 - self.cols.0
    }

    /// The block of rows `rows` and columns `cols` of this block (relative indices).
    ///
    /// # Panics
    /// If a range is out of bounds.
    pub fn block(
        self,
        rows: impl RangeBounds<usize>,
        cols: impl RangeBounds<usize>,
    ) -> Block<'scope, T> {
        let r = resolve(rows, self.nrows(), "row");
        let c = resolve(cols, self.ncols(), "column");
        Block {
            rows: (self.rows.0 + r.start, self.rows.0 + r.end),
            cols: (self.cols.0 + c.start, self.cols.0 + c.end),
            ..self
        }
    }

    /// Tile `(i, j)` of a tiling of this block into `tile_rows` x `tile_cols` tiles (the last
    /// ones may be smaller).
    pub fn tile(self, i: usize, j: usize, tile_rows: usize, tile_cols: usize) -> Block<'scope, T> {
        let r0 = i * tile_rows;
        let c0 = j * tile_cols;
        self.block(
            r0..(r0 + tile_rows).min(self.nrows()),
            c0..(c0 + tile_cols).min(self.ncols()),
        )
    }

    pub(crate) fn origin(&self) -> *mut T {
        // SAFETY (of the arithmetic): the block lies inside the registered matrix.
        self.base
            .as_ptr()
            .wrapping_add(self.cols.0 * self.ld + self.rows.0)
    }
}

impl<T: Send + Sync + 'static> Sealed for Block<'_, T> {}
impl<T: Send + Sync + 'static> Target for Block<'_, T> {
    type Ref<'a> = BlockRef<'a, T>;
    type Mut<'a> = BlockMut<'a, T>;

    fn declare(&self, write: bool, out: &mut Declarations) {
        let span = Span::Rect {
            r0: self.rows.0,
            r1: self.rows.1,
            c0: self.cols.0,
            c1: self.cols.1,
        };
        self.key.declare(span, write, out);
    }

    unsafe fn get_ref<'a>(self) -> BlockRef<'a, T> {
        BlockRef {
            ptr: self.origin(),
            nrows: self.nrows(),
            ncols: self.ncols(),
            ld: self.ld,
            _life: PhantomData,
        }
    }

    unsafe fn get_mut<'a>(self) -> BlockMut<'a, T> {
        BlockMut {
            ptr: self.origin(),
            nrows: self.nrows(),
            ncols: self.ncols(),
            ld: self.ld,
            _life: PhantomData,
        }
    }
}

/// Read access to a block of a column-major matrix: column `j` is the contiguous slice
/// [`col(j)`](BlockRef::col); element `(i, j)` is at `as_ptr() + i + j * col_stride()`.
pub struct BlockRef<'a, T> {
    ptr: *mut T,
    nrows: usize,
    ncols: usize,
    ld: usize,
    _life: PhantomData<&'a [T]>,
}

// SAFETY: it is a shared borrow of the block's elements.
unsafe impl<T: Sync> Send for BlockRef<'_, T> {}
unsafe impl<T: Sync> Sync for BlockRef<'_, T> {}

impl<'a, T> BlockRef<'a, T> {
    /// A block of `nrows` x `ncols` elements at `ptr`, columns `ld` apart.
    ///
    /// # Safety
    /// The elements are valid for reads for `'a`, and nobody writes them meanwhile.
    pub(crate) unsafe fn from_raw(ptr: *const T, nrows: usize, ncols: usize, ld: usize) -> Self {
        BlockRef {
            ptr: ptr as *mut T,
            nrows,
            ncols,
            ld,
            _life: PhantomData,
        }
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }
    /// Distance in elements between the starts of two columns.
    pub fn col_stride(&self) -> usize {
        self.ld
    }
    /// Pointer to element (0, 0), valid for reads of the block's elements for `'a`.
    pub fn as_ptr(&self) -> *const T {
        self.ptr
    }
    /// Column `j`.
    pub fn col(&self, j: usize) -> &'a [T] {
        assert!(j < self.ncols, "column {j} out of bounds ({})", self.ncols);
        // SAFETY: column j of the block is `nrows` contiguous elements inside the block.
        unsafe { std::slice::from_raw_parts(self.ptr.add(j * self.ld), self.nrows) }
    }
    /// Element `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> &'a T {
        &self.col(j)[i]
    }
}

/// Write access to a block of a column-major matrix (see [`BlockRef`]).
pub struct BlockMut<'a, T> {
    ptr: *mut T,
    nrows: usize,
    ncols: usize,
    ld: usize,
    _life: PhantomData<&'a mut [T]>,
}

// SAFETY: it is a unique borrow of the block's elements.
unsafe impl<T: Send> Send for BlockMut<'_, T> {}
unsafe impl<T: Sync> Sync for BlockMut<'_, T> {}

impl<T> BlockMut<'_, T> {
    /// A block of `nrows` x `ncols` elements at `ptr`, columns `ld` apart.
    ///
    /// # Safety
    /// The elements are valid for reads and writes while the result lives, and nobody else
    /// accesses them meanwhile.
    pub(crate) unsafe fn from_raw(ptr: *mut T, nrows: usize, ncols: usize, ld: usize) -> Self {
        BlockMut {
            ptr,
            nrows,
            ncols,
            ld,
            _life: PhantomData,
        }
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Columns.
    pub fn ncols(&self) -> usize {
        self.ncols
    }
    /// Distance in elements between the starts of two columns.
    pub fn col_stride(&self) -> usize {
        self.ld
    }
    /// Pointer to element (0, 0), valid for reads and writes of the block's elements while
    /// this borrow lives.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr
    }
    /// A read-only view.
    pub fn rb(&self) -> BlockRef<'_, T> {
        BlockRef {
            ptr: self.ptr,
            nrows: self.nrows,
            ncols: self.ncols,
            ld: self.ld,
            _life: PhantomData,
        }
    }
    /// Column `j`.
    pub fn col_mut(&mut self, j: usize) -> &mut [T] {
        assert!(j < self.ncols, "column {j} out of bounds ({})", self.ncols);
        // SAFETY: column j of the block is `nrows` contiguous elements inside the block, and
        // this borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(j * self.ld), self.nrows) }
    }
    /// Element `(i, j)`.
    pub fn get_mut(&mut self, i: usize, j: usize) -> &mut T {
        &mut self.col_mut(j)[i]
    }
}

impl<D: Target> Sealed for Vec<D> {}
/// Several handles as one argument (e.g. a varying number of views): the task gets a `Vec` of
/// borrows, in order. The handles must not overlap where one of them is written.
impl<D: Target> Target for Vec<D> {
    type Ref<'a> = Vec<D::Ref<'a>>;
    type Mut<'a> = Vec<D::Mut<'a>>;

    fn declare(&self, write: bool, out: &mut Declarations) {
        for d in self {
            d.declare(write, out);
        }
    }

    unsafe fn get_ref<'a>(self) -> Vec<D::Ref<'a>> {
        // SAFETY: forwarded for each handle.
        self.into_iter().map(|d| unsafe { d.get_ref() }).collect()
    }

    unsafe fn get_mut<'a>(self) -> Vec<D::Mut<'a>> {
        // SAFETY: forwarded for each handle; the region checked they do not overlap.
        self.into_iter().map(|d| unsafe { d.get_mut() }).collect()
    }
}

/// A type whose parts tasks may access separately (the reference's `Deps(x, InOut(:field))`):
/// tasks writing parts that do not overlap run in parallel.
///
/// Each part has a bit mask; two accesses conflict when their masks share a bit (the whole
/// value conflicts with every part).
///
/// # Safety
/// Accesses through parts whose masks do not share a bit must touch disjoint memory, and
/// `part_ref`/`part_mut` must not create a reference to the whole value (project through raw
/// pointers, e.g. `&mut (*this).field` with `this: *mut Self`).
///
/// ```
/// use dagger_core::{spawn_datadeps, InOut, Parts};
///
/// struct Pair { left: Vec<u32>, right: Vec<u32> }
/// #[derive(Clone, Copy)]
/// enum Side { Left, Right }
///
/// // SAFETY: the two parts are different fields, reached through the raw pointer.
/// unsafe impl Parts for Pair {
///     type Part = Side;
///     type Ref<'a> = &'a Vec<u32>;
///     type Mut<'a> = &'a mut Vec<u32>;
///     fn mask(part: Side) -> u64 { match part { Side::Left => 1, Side::Right => 2 } }
///     unsafe fn part_ref<'a>(this: *const Self, part: Side) -> &'a Vec<u32> {
///         unsafe { match part { Side::Left => &(*this).left, Side::Right => &(*this).right } }
///     }
///     unsafe fn part_mut<'a>(this: *mut Self, part: Side) -> &'a mut Vec<u32> {
///         unsafe { match part { Side::Left => &mut (*this).left, Side::Right => &mut (*this).right } }
///     }
/// }
///
/// let mut p = Pair { left: vec![], right: vec![] };
/// spawn_datadeps(|dd| {
///     let p = dd.data(&mut p);
///     // these two run in parallel: their parts do not overlap
///     dd.spawn(|l: &mut Vec<u32>| l.push(1), (InOut(p.part(Side::Left)),));
///     dd.spawn(|r: &mut Vec<u32>| r.push(2), (InOut(p.part(Side::Right)),));
///     // this one waits for both
///     dd.spawn(|p: &mut Pair| p.left.push(3), (InOut(p),));
/// })
/// .unwrap();
/// assert_eq!((p.left, p.right), (vec![1, 3], vec![2]));
/// ```
pub unsafe trait Parts: Send + Sync + Sized + 'static {
    /// Names a part.
    type Part: Copy + Send + Sync;
    /// What a task reading a part receives.
    type Ref<'a>;
    /// What a task writing a part receives.
    type Mut<'a>;
    /// The part's bits; parts sharing a bit are ordered.
    fn mask(part: Self::Part) -> u64;
    /// Borrows a part for reading.
    ///
    /// # Safety
    /// `this` points to a live value; no one writes the part while the result lives.
    unsafe fn part_ref<'a>(this: *const Self, part: Self::Part) -> Self::Ref<'a>;
    /// Borrows a part for writing.
    ///
    /// # Safety
    /// `this` points to a live value; no one else accesses the part while the result lives.
    unsafe fn part_mut<'a>(this: *mut Self, part: Self::Part) -> Self::Mut<'a>;
}

/// A part of a value registered with a region ([`Data::part`]).
pub struct Part<'scope, T: Parts> {
    pub(crate) data: Data<'scope, T>,
    pub(crate) part: T::Part,
}

impl<T: Parts> Clone for Part<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Parts> Copy for Part<'_, T> {}

impl<T: Parts> fmt::Debug for Part<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Part")
            .field("key", &self.data.key.key)
            .field("mask", &T::mask(self.part))
            .finish()
    }
}

impl<T: Parts> Sealed for Part<'_, T> {}
impl<T: Parts> Target for Part<'_, T> {
    type Ref<'a> = T::Ref<'a>;
    type Mut<'a> = T::Mut<'a>;

    fn declare(&self, write: bool, out: &mut Declarations) {
        self.data
            .key
            .declare(Span::Mask(T::mask(self.part)), write, out);
    }

    unsafe fn get_ref<'a>(self) -> T::Ref<'a> {
        // SAFETY: forwarded; the pointer is valid for the region.
        unsafe { T::part_ref(self.data.ptr.as_ptr(), self.part) }
    }

    unsafe fn get_mut<'a>(self) -> T::Mut<'a> {
        // SAFETY: forwarded; the pointer is valid for the region.
        unsafe { T::part_mut(self.data.ptr.as_ptr(), self.part) }
    }
}
