//! The table of task functions: functions marked `#[dagger::task]` can run in any process of
//! a cluster, because every process (the same binary) registers the same table.
//!
//! Each entry knows how to encode and decode its parameters and its result (serde + postcard),
//! and how to call the function from type-erased arguments. The table is sorted by name into
//! dense ids, and a hash of the names and signatures (and of dagger's version) identifies the
//! binary in the handshake.

use crate::error::BoxError;
use crate::remote::wire::ValueBytes;
use crate::shared_bytes::encode_parts;
pub use crate::shared_bytes::Encoding;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::{Any, TypeId};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A value stored in some process: type-erased, shareable, and encodable for transfer.
#[derive(Clone)]
pub struct Stored {
    /// The value.
    pub value: Arc<dyn Any + Send + Sync>,
    /// Encodes `value` (which has the type this was made with).
    pub encode: fn(&dyn Any) -> Result<Vec<u8>, BoxError>,
    /// Encodes `value` as pieces: the bytes of large [`SharedBytes`](crate::SharedBytes)
    /// in it are not copied (the same bytes as `encode`).
    pub encode_parts: fn(&dyn Any) -> Result<Encoding, BoxError>,
    /// Encodes `value` if its encoding is at most [`SMALL_VALUE`] bytes (stops early
    /// otherwise).
    pub encode_small: fn(&dyn Any) -> Option<ValueBytes>,
    /// `std::any::type_name` of the value.
    pub type_name: &'static str,
}

/// The largest encoding of a task's result that a worker sends along with its report: the
/// head then has the value at hand (fetching it needs no round trip, and it travels inside
/// the calls of other workers' tasks instead of being fetched from the worker).
pub const SMALL_VALUE: usize = 512;

impl Stored {
    /// Stores `value`.
    pub fn new<T: Serialize + Send + Sync + 'static>(value: T) -> Stored {
        Stored {
            value: Arc::new(value),
            encode: encode_any::<T>,
            encode_parts: encode_parts_any::<T>,
            encode_small: encode_small_any::<T>,
            type_name: std::any::type_name::<T>(),
        }
    }

    /// The encoded bytes of the value.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BoxError> {
        (self.encode)(self.value.as_ref() as &dyn Any)
    }

    /// The encoded value as pieces, sharing the buffers of large
    /// [`SharedBytes`](crate::SharedBytes) in it.
    pub fn to_parts(&self) -> Result<Encoding, BoxError> {
        (self.encode_parts)(self.value.as_ref() as &dyn Any)
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stored<{}>", self.type_name)
    }
}

/// Encodes a `T` given as `&dyn Any`.
pub fn encode_any<T: Serialize + 'static>(v: &dyn Any) -> Result<Vec<u8>, BoxError> {
    to_vec(downcast_for_encoding::<T>(v)?).map_err(encoding_failed::<T>)
}

/// Encodes a `T` given as `&dyn Any` as a call's argument (short encodings in place).
pub fn encode_value_any<T: Serialize + 'static>(v: &dyn Any) -> Result<ValueBytes, BoxError> {
    with_encoded(downcast_for_encoding::<T>(v)?, |b| ValueBytes::from(b))
        .map_err(encoding_failed::<T>)
}

fn downcast_for_encoding<T: 'static>(v: &dyn Any) -> Result<&T, BoxError> {
    v.downcast_ref::<T>().ok_or_else(|| {
        format!(
            "cannot encode a value as {}: it has another type",
            std::any::type_name::<T>()
        )
        .into()
    })
}

fn encoding_failed<T>(e: postcard::Error) -> BoxError {
    format!("cannot encode a {}: {e}", std::any::type_name::<T>()).into()
}

/// `postcard::to_allocvec` in one allocation of the right size for values of up to 256
/// bytes (most arguments and messages: `to_allocvec` grows its buffer from empty, five or
/// six reallocations for them).
pub(crate) fn to_vec<T: Serialize + ?Sized>(v: &T) -> postcard::Result<Vec<u8>> {
    let mut buf = [0u8; STACK_ENCODING];
    match encode_on_stack(v, &mut buf)? {
        Some(len) => Ok(buf[..len].to_vec()),
        None => postcard::to_allocvec(v),
    }
}

/// Encodes `v` as postcard does and hands the bytes to `f`, without allocating for values of
/// up to 256 bytes.
pub(crate) fn with_encoded<T: Serialize + ?Sized, R>(
    v: &T,
    f: impl FnOnce(&[u8]) -> R,
) -> postcard::Result<R> {
    let mut buf = [0u8; STACK_ENCODING];
    match encode_on_stack(v, &mut buf)? {
        Some(len) => Ok(f(&buf[..len])),
        None => postcard::to_allocvec(v).map(|b| f(&b)),
    }
}

/// The largest encoding [`to_vec`] and [`with_encoded`] make on the stack.
const STACK_ENCODING: usize = 256;

/// Encodes `v` into `buf`: its length, or `None` if it does not fit.
fn encode_on_stack<T: Serialize + ?Sized>(
    v: &T,
    buf: &mut [u8],
) -> postcard::Result<Option<usize>> {
    match postcard::serialize_with_flavor(v, IntoSlice { buf, len: 0 }) {
        Ok(len) => Ok(Some(len)),
        Err(postcard::Error::SerializeBufferFull) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `postcard::to_extend` onto `out`.
pub(crate) fn to_extend<T: Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(v, Append(out))
}

/// A piece postcard writes, by how it is copied. Most fields are one byte (a small integer or
/// length, a variant) or eight (a float): those are moved rather than copied with a call to
/// `memcpy` (about 25 instructions each; a call sent to a worker writes dozens of them).
enum Piece<'a> {
    Byte(u8),
    Word(&'a [u8; 8]),
    Other(&'a [u8]),
}

#[inline(always)]
fn piece(data: &[u8]) -> Piece<'_> {
    match (<&[u8; 8]>::try_from(data), data) {
        (Ok(word), _) => Piece::Word(word),
        (_, &[byte]) => Piece::Byte(byte),
        _ => Piece::Other(data),
    }
}

/// A postcard output into a buffer (`postcard::ser_flavors::Slice`, with short pieces moved:
/// see [`Piece`]); yields the length written.
struct IntoSlice<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl postcard::ser_flavors::Flavor for IntoSlice<'_> {
    type Output = usize;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        let slot = self
            .buf
            .get_mut(self.len)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        *slot = byte;
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.len + data.len();
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(postcard::Error::SerializeBufferFull)?;
        match piece(data) {
            Piece::Byte(byte) => dst[0] = byte,
            Piece::Word(word) => dst.copy_from_slice(word),
            Piece::Other(bytes) => dst.copy_from_slice(bytes),
        }
        self.len = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// A postcard output appended to a `Vec` (`postcard::ser_flavors::ExtendFlavor`, with short
/// pieces moved: see [`Piece`]).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match piece(data) {
            Piece::Byte(byte) => self.0.push(byte),
            Piece::Word(word) => self.0.extend_from_slice(word),
            Piece::Other(bytes) => self.0.extend_from_slice(bytes),
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes a `T` given as `&dyn Any` as pieces (see
/// [`Encoding`]): the bytes of large [`SharedBytes`](crate::SharedBytes) in it are the
/// value's own buffers.
pub fn encode_parts_any<T: Serialize + 'static>(v: &dyn Any) -> Result<Encoding, BoxError> {
    let v = v.downcast_ref::<T>().ok_or_else(|| {
        format!(
            "cannot encode a value as {}: it has another type",
            std::any::type_name::<T>()
        )
    })?;
    encode_parts(v)
        .map_err(|e| format!("cannot encode a {}: {e}", std::any::type_name::<T>()).into())
}

/// Encodes a `T` given as `&dyn Any` if it takes at most [`SMALL_VALUE`] bytes (the encoder
/// stops at the first byte past that).
pub fn encode_small_any<T: Serialize + 'static>(v: &dyn Any) -> Option<ValueBytes> {
    let v = v.downcast_ref::<T>()?;
    let mut buf = [0u8; SMALL_VALUE];
    let len = encode_on_stack(v, &mut buf).ok().flatten()?;
    Some(ValueBytes::from(&buf[..len]))
}

/// Decodes bytes into a shareable `T`.
pub fn decode_any<T: DeserializeOwned + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<Arc<dyn Any + Send + Sync>, BoxError> {
    Ok(Arc::new(decode::<T>(bytes)?))
}

/// Decodes bytes into a `T`, or says which type they did not make.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
    postcard::from_bytes(bytes)
        .map_err(|e| format!("cannot decode a {}: {e}", std::any::type_name::<T>()).into())
}

fn type_id_of<T: 'static>() -> TypeId {
    TypeId::of::<T>()
}

/// A shared, type-erased value.
pub type AnyValue = Arc<dyn Any + Send + Sync>;

/// How values of one type cross process boundaries.
#[derive(Clone, Copy)]
pub struct Codec {
    /// `TypeId` of the type.
    pub type_id: fn() -> TypeId,
    /// `std::any::type_name` of the type.
    pub type_name: fn() -> &'static str,
    /// Encodes a value of the type.
    pub encode: fn(&dyn Any) -> Result<Vec<u8>, BoxError>,
    /// Encodes a value of the type as a call's argument.
    pub encode_value: fn(&dyn Any) -> Result<ValueBytes, BoxError>,
    /// Encodes a value of the type as pieces (see [`Stored::encode_parts`]).
    pub encode_parts: fn(&dyn Any) -> Result<Encoding, BoxError>,
    /// Encodes a value of the type if it takes at most [`SMALL_VALUE`] bytes.
    pub encode_small: fn(&dyn Any) -> Option<ValueBytes>,
    /// Decodes a value of the type.
    pub decode: fn(&[u8]) -> Result<AnyValue, BoxError>,
}

impl Codec {
    /// The codec of `T`.
    pub const fn of<T: Serialize + DeserializeOwned + Send + Sync + 'static>() -> Codec {
        Codec {
            type_id: type_id_of::<T>,
            type_name: std::any::type_name::<T>,
            encode: encode_any::<T>,
            encode_value: encode_value_any::<T>,
            encode_parts: encode_parts_any::<T>,
            encode_small: encode_small_any::<T>,
            decode: decode_any::<T>,
        }
    }

    /// Whether this codec is for `id`.
    pub fn is(&self, id: TypeId) -> bool {
        (self.type_id)() == id
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str((self.type_name)())
    }
}

/// One parameter of a task function.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    /// The owned type of the parameter (`T` for `T` and `&T`, `Vec<T>` for `&[T]`,
    /// `String` for `&str`, `Vec<T>` for `Vec<T>` and `Vec<&T>`).
    pub codec: Codec,
    /// For `Vec<T>` / `Vec<&T>` parameters: the element type, so the argument may also be a
    /// collection of tasks or chunks, one value each.
    pub elem: Option<Codec>,
    /// Whether the function takes the parameter as `&mut T`: only a task of a data-dependency
    /// region can pass it (declared `Out` or `InOut`), and the function changes the value in
    /// place where it lives.
    pub mutable: bool,
}

/// A function registered with `#[dagger::task]`.
pub struct TaskFn {
    /// Path of the function (`crate::module::name`, with generic arguments for instances).
    pub name: &'static str,
    /// Parameter and result types as written, for the registry hash.
    pub signature: &'static str,
    /// Identity of the function item, as `spawn!` sees it.
    pub fn_id: fn() -> TypeId,
    /// The parameters, in order.
    pub params: &'static [Param],
    /// The type of the stored result (`T` for functions returning `Result<T, E>`).
    pub result: Codec,
    /// Whether the function returns a `Result` whose `Err` fails the task (then it runs in
    /// another process only when spawned with `?`).
    pub fallible: bool,
    /// Calls the function with decoded arguments.
    pub invoke: fn(&Args<'_>) -> Result<Stored, BoxError>,
}

impl fmt::Debug for TaskFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskFn({} {})", self.name, self.signature)
    }
}

/// Every registered task function of the binary.
#[linkme::distributed_slice]
pub static TASK_FNS: [TaskFn];

/// The dagger build a process runs: its version, and a fingerprint of dagger-core's sources
/// (made by its build script), which tells apart development builds of one version whose
/// messages may differ.
const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("DAGGER_SOURCE_HASH"));

/// FNV-1a over a "dagger BUILD" line, then "name signature" lines: stable across processes
/// and platforms. The build is in it because the messages between processes change between
/// versions of dagger: two builds of one program against different versions, or against
/// different sources of one version, are refused at the handshake rather than misreading
/// each other's messages.
fn registry_hash<'a>(build: &str, fns: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    add(b"dagger ");
    add(build.as_bytes());
    add(b"\n");
    for (name, signature) in fns {
        add(name.as_bytes());
        add(b" ");
        add(signature.as_bytes());
        add(b"\n");
    }
    hash
}

/// The registered functions, sorted by name, with lookups by id and by identity.
pub struct FnTable {
    by_id: Vec<&'static TaskFn>,
    by_type: crate::hash::IdMap<TypeId, u32>,
    hash: u64,
}

impl FnTable {
    fn build(fns: &'static [TaskFn]) -> FnTable {
        let mut by_id: Vec<&'static TaskFn> = fns.iter().collect();
        by_id.sort_by(|a, b| a.name.cmp(b.name).then(a.signature.cmp(b.signature)));
        by_id.dedup_by(|a, b| a.name == b.name && a.signature == b.signature);
        let by_type = by_id
            .iter()
            .enumerate()
            .map(|(i, f)| ((f.fn_id)(), i as u32))
            .collect();
        let hash = registry_hash(BUILD, by_id.iter().map(|f| (f.name, f.signature)));
        FnTable {
            by_id,
            by_type,
            hash,
        }
    }

    /// The function with dense id `id`.
    pub fn get(&self, id: u32) -> Option<&'static TaskFn> {
        self.by_id.get(id as usize).copied()
    }

    /// The dense id and entry of the function whose item has type id `fn_id`.
    pub fn lookup(&self, fn_id: TypeId) -> Option<(u32, &'static TaskFn)> {
        let id = *self.by_type.get(&fn_id)?;
        Some((id, self.by_id[id as usize]))
    }

    /// Number of registered functions.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no function is registered.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Hash of the dagger build (its version and a fingerprint of its sources) and of the
    /// names and signatures of every registered function: two processes can run each other's
    /// tasks only if their hashes are equal.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The registered functions, by id.
    pub fn iter(&self) -> impl Iterator<Item = &'static TaskFn> + '_ {
        self.by_id.iter().copied()
    }
}

/// The table of this binary.
pub fn table() -> &'static FnTable {
    static TABLE: OnceLock<FnTable> = OnceLock::new();
    TABLE.get_or_init(|| FnTable::build(&TASK_FNS))
}

/// One argument as a worker receives it: one value, or one value per task of a collection.
#[derive(Debug)]
pub enum ArgValue {
    /// A single value.
    One(Arc<dyn Any + Send + Sync>),
    /// A single value as the call carried it, decoded when the function asks for it.
    Encoded(EncodedArg),
    /// The values of a collection of tasks or chunks, in order.
    Many(Vec<Arc<dyn Any + Send + Sync>>),
    /// A value the function changes in place (a `&mut T` parameter).
    Mut(MutArg),
}

/// An argument's encoding, decoded on first use: straight into the parameter when the
/// function takes it by value (no shared copy is made, and none is cloned), or once into a
/// shared value when it borrows it.
pub struct EncodedArg {
    bytes: ValueBytes,
    codec: &'static Codec,
    shared: std::cell::OnceCell<AnyValue>,
}

impl EncodedArg {
    /// The encoding `bytes` of a value of `codec`'s type.
    pub fn new(bytes: ValueBytes, codec: &'static Codec) -> Self {
        EncodedArg {
            bytes,
            codec,
            shared: std::cell::OnceCell::new(),
        }
    }

    /// The value, decoded into a shared one the first time.
    fn shared(&self) -> Result<&AnyValue, BoxError> {
        if let Some(v) = self.shared.get() {
            return Ok(v);
        }
        let v = (self.codec.decode)(&self.bytes)?;
        Ok(self.shared.get_or_init(|| v))
    }

    /// The value decoded as a `P`, without a shared copy; `None` when it is not a `P` or was
    /// decoded into a shared value already.
    fn decode_owned<P: DeserializeOwned + 'static>(&self) -> Option<Result<P, BoxError>> {
        if self.shared.get().is_some() || !self.codec.is(TypeId::of::<P>()) {
            return None;
        }
        Some(decode(&self.bytes))
    }
}

impl fmt::Debug for EncodedArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EncodedArg({} bytes of {:?})",
            self.bytes.len(),
            self.codec
        )
    }
}

/// A value lent to one call for changing (a `&mut T` parameter): borrowed mutably at most
/// once, then taken back with [`MutArg::into_inner`]. The value must not be shared (its `Arc`
/// has no other handle), else borrowing it fails.
pub struct MutArg {
    value: std::cell::UnsafeCell<AnyValue>,
    lent: std::cell::Cell<bool>,
}

impl MutArg {
    /// Lends `value`.
    pub fn new(value: AnyValue) -> Self {
        MutArg {
            value: std::cell::UnsafeCell::new(value),
            lent: std::cell::Cell::new(false),
        }
    }

    /// The value back, with the changes the call made.
    pub fn into_inner(self) -> AnyValue {
        self.value.into_inner()
    }

    /// The value borrowed mutably; `None` when it was lent already or is shared.
    #[allow(clippy::mut_from_ref)] // handed out once, guarded by `lent`
    fn lend(&self) -> Option<&mut (dyn Any + Send + Sync)> {
        if self.lent.replace(true) {
            return None;
        }
        // SAFETY: the flag above hands out this borrow once, and `into_inner` (which consumes
        // `self`) cannot run while it lives.
        Arc::get_mut(unsafe { &mut *self.value.get() })
    }
}

impl fmt::Debug for MutArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutArg").finish_non_exhaustive()
    }
}

/// The decoded arguments of a call, handed to [`TaskFn::invoke`].
pub struct Args<'a> {
    fn_name: &'static str,
    values: &'a [ArgValue],
}

fn type_error<P>(fn_name: &str, i: usize) -> BoxError {
    format!(
        "argument {} of task function {fn_name} is not a {}",
        i + 1,
        std::any::type_name::<P>()
    )
    .into()
}

impl<'a> Args<'a> {
    /// Arguments for a call of `fn_name`.
    pub fn new(fn_name: &'static str, values: &'a [ArgValue]) -> Self {
        Args { fn_name, values }
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The function being called.
    pub fn fn_name(&self) -> &'static str {
        self.fn_name
    }

    fn one(&self, i: usize) -> Result<&'a Arc<dyn Any + Send + Sync>, BoxError> {
        match self.values.get(i) {
            Some(ArgValue::One(v)) => Ok(v),
            Some(ArgValue::Encoded(e)) => e.shared(),
            Some(ArgValue::Mut(_)) => Err(format!(
                "argument {} of task function {} is lent for changing (`&mut`), not for reading",
                i + 1,
                self.fn_name
            )
            .into()),
            Some(ArgValue::Many(_)) => Err(format!(
                "argument {} of task function {} is a collection, not one value",
                i + 1,
                self.fn_name
            )
            .into()),
            None => Err(format!(
                "task function {} got {} arguments, not enough",
                self.fn_name,
                self.values.len()
            )
            .into()),
        }
    }

    /// Borrows argument `i` as a `P`.
    pub fn borrow<P: 'static>(&self, i: usize) -> Result<&'a P, BoxError> {
        self.one(i)?
            .downcast_ref::<P>()
            .ok_or_else(|| type_error::<P>(self.fn_name, i))
    }

    /// Borrows argument `i` (lent for changing) as a `&mut P`; once per call.
    pub fn borrow_mut<P: 'static>(&self, i: usize) -> Result<&'a mut P, BoxError> {
        match self.values.get(i) {
            Some(ArgValue::Mut(m)) => m
                .lend()
                .ok_or_else(|| {
                    format!(
                        "argument {} of task function {} was borrowed mutably twice, or is \
                         shared",
                        i + 1,
                        self.fn_name
                    )
                })?
                .downcast_mut::<P>()
                .ok_or_else(|| type_error::<P>(self.fn_name, i)),
            _ => Err(format!(
                "argument {} of task function {} is a `&mut` parameter: only a task of a \
                 data-dependency region declaring it `Out` or `InOut` can pass it",
                i + 1,
                self.fn_name
            )
            .into()),
        }
    }

    /// Argument `i` as an owned `P`: decoded into it when the call carried its encoding,
    /// else a copy of the shared value.
    pub fn take<P: DeserializeOwned + Clone + 'static>(&self, i: usize) -> Result<P, BoxError> {
        if let Some(ArgValue::Encoded(e)) = self.values.get(i) {
            if let Some(v) = e.decode_owned::<P>() {
                return v;
            }
        }
        self.borrow::<P>(i).cloned()
    }

    /// Argument `i`, a collection, as references.
    pub fn borrow_many<P: 'static>(&self, i: usize) -> Result<Vec<&'a P>, BoxError> {
        match self.values.get(i) {
            Some(ArgValue::Many(vs)) => vs
                .iter()
                .map(|v| {
                    v.downcast_ref::<P>()
                        .ok_or_else(|| type_error::<P>(self.fn_name, i))
                })
                .collect(),
            Some(ArgValue::Mut(_)) => Err(type_error::<Vec<P>>(self.fn_name, i)),
            Some(ArgValue::One(_) | ArgValue::Encoded(_)) => {
                let all = self
                    .one(i)?
                    .downcast_ref::<Vec<P>>()
                    .ok_or_else(|| type_error::<Vec<P>>(self.fn_name, i))?;
                Ok(all.iter().collect())
            }
            None => Err(type_error::<Vec<P>>(self.fn_name, i)),
        }
    }

    /// Argument `i` as an owned `Vec<P>`, from one `Vec<P>` value (decoded into it when the
    /// call carried its encoding) or from a collection.
    pub fn take_vec<P: DeserializeOwned + Clone + 'static>(
        &self,
        i: usize,
    ) -> Result<Vec<P>, BoxError> {
        if let Some(ArgValue::Encoded(e)) = self.values.get(i) {
            if let Some(v) = e.decode_owned::<Vec<P>>() {
                return v;
            }
        }
        Ok(self.borrow_many::<P>(i)?.into_iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoders with short pieces copied in place write exactly what postcard's own do,
    /// for pieces of every length a varint takes, floats, byte strings, and values too large
    /// for the stack buffer.
    #[test]
    fn fast_encoders_write_what_postcard_writes() {
        #[derive(Serialize)]
        struct Mixed {
            small: u8,
            ints: Vec<u64>,
            signed: Vec<i64>,
            float: f64,
            floats: Vec<f32>,
            text: String,
            #[serde(with = "serde_bytes_like")]
            bytes: Vec<u8>,
            nested: Option<Box<Mixed>>,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let ints: Vec<u64> = (0..64).map(|b| (1u64 << b) - 1).chain([u64::MAX]).collect();
        let signed: Vec<i64> = ints.iter().map(|&i| -(i as i64)).collect();
        let value = |len: usize| Mixed {
            small: 7,
            ints: ints.clone(),
            signed: signed.clone(),
            float: -1.5e300,
            floats: vec![0.25, f32::MAX],
            text: "x".repeat(len),
            bytes: (0..len as u32).map(|b| b as u8).collect(),
            nested: Some(Box::new(Mixed {
                small: 0,
                ints: vec![300],
                signed: vec![-300],
                float: 2.0,
                floats: Vec::new(),
                text: String::new(),
                bytes: vec![1],
                nested: None,
            })),
        };
        for len in [0, 1, 7, 8, 9, 100, 300, 5000] {
            let v = value(len);
            let expected = postcard::to_allocvec(&v).unwrap();
            assert_eq!(to_vec(&v).unwrap(), expected, "to_vec, text of {len}");
            let mut out = vec![9, 9];
            to_extend(&v, &mut out).unwrap();
            assert_eq!(out[..2], [9, 9]);
            assert_eq!(out[2..], expected[..], "to_extend, text of {len}");
        }
        for i in ints {
            assert_eq!(to_vec(&i).unwrap(), postcard::to_allocvec(&i).unwrap());
            assert_eq!(
                with_encoded(&i, <[u8]>::to_vec).unwrap(),
                postcard::to_allocvec(&i).unwrap()
            );
        }
    }

    #[test]
    fn the_registry_hash_covers_builds_names_and_signatures() {
        let fns = [
            ("load", "fn(u64) -> Vec<u8>"),
            ("sum", "fn(Vec<u8>) -> u64"),
        ];
        let base = registry_hash("0.1.0", fns.iter().copied());
        assert_eq!(base, registry_hash("0.1.0", fns.iter().copied()));
        assert_ne!(base, registry_hash("0.2.0", fns.iter().copied()));
        assert_ne!(base, registry_hash("0.1.0", fns[..1].iter().copied()));
        let renamed = [
            ("load", "fn(u64) -> Vec<u8>"),
            ("total", "fn(Vec<u8>) -> u64"),
        ];
        assert_ne!(base, registry_hash("0.1.0", renamed.iter().copied()));
        let retyped = [
            ("load", "fn(u32) -> Vec<u8>"),
            ("sum", "fn(Vec<u8>) -> u64"),
        ];
        assert_ne!(base, registry_hash("0.1.0", retyped.iter().copied()));
    }

    #[test]
    fn the_build_names_the_version_and_a_source_fingerprint() {
        let (version, fingerprint) = BUILD.split_once('+').expect("version+fingerprint");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert_eq!(fingerprint.len(), 16, "{BUILD}");
        assert!(
            fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
            "{BUILD}"
        );
        let fns = [("sum", "fn(Vec<u8>) -> u64")];
        let other_sources = format!(
            "{version}+{:016x}",
            !u64::from_str_radix(fingerprint, 16).unwrap()
        );
        assert_ne!(
            registry_hash(BUILD, fns.iter().copied()),
            registry_hash(&other_sources, fns.iter().copied())
        );
    }

    #[test]
    fn codecs_round_trip_and_check_types() {
        let c = Codec::of::<Vec<u32>>();
        let bytes = (c.encode)(&vec![1u32, 2, 3]).unwrap();
        let back = (c.decode)(&bytes).unwrap();
        assert_eq!(back.downcast_ref::<Vec<u32>>(), Some(&vec![1, 2, 3]));
        assert!((c.encode)(&5u8)
            .unwrap_err()
            .to_string()
            .contains("another type"));
        assert!((c.decode)(&[0xff]).is_err());
        assert!(c.is(TypeId::of::<Vec<u32>>()));
        let s = Stored::new(String::from("x"));
        assert_eq!(s.to_bytes().unwrap(), postcard::to_allocvec("x").unwrap());
        // Small encodings: postcard's bytes up to SMALL_VALUE, none past it.
        let fits = vec![7u8; SMALL_VALUE - 2]; // a two-byte length, then the bytes
        assert_eq!(
            (c.encode_small)(&vec![1u32, 2, 3]),
            Some(postcard::to_allocvec(&vec![1u32, 2, 3]).unwrap().into())
        );
        let small = encode_small_any::<Vec<u8>>(&fits).unwrap();
        assert_eq!(small[..], postcard::to_allocvec(&fits).unwrap()[..]);
        assert_eq!(small.len(), SMALL_VALUE);
        assert_eq!(
            encode_small_any::<Vec<u8>>(&vec![7u8; SMALL_VALUE - 1]),
            None
        );
        assert_eq!(encode_small_any::<Vec<u8>>(&5u8), None);
    }

    #[test]
    fn args_give_typed_views() {
        let values = vec![
            ArgValue::One(Arc::new(7u32)),
            ArgValue::Many(vec![Arc::new(1u8), Arc::new(2u8)]),
            ArgValue::One(Arc::new(vec![3u8, 4])),
        ];
        let args = Args::new("f", &values);
        assert_eq!(*args.borrow::<u32>(0).unwrap(), 7);
        assert_eq!(args.take_vec::<u8>(1).unwrap(), vec![1, 2]);
        assert_eq!(args.take_vec::<u8>(2).unwrap(), vec![3, 4]);
        assert!(args
            .borrow::<u8>(0)
            .unwrap_err()
            .to_string()
            .contains("argument 1"));
        assert!(args.borrow::<u32>(1).is_err());
        assert!(args.borrow::<u32>(5).is_err());
    }

    /// An argument that came encoded is decoded straight into a by-value parameter, once
    /// into a shared value when borrowed (later takes copy that one), and never as another
    /// type.
    #[test]
    fn encoded_args_decode_on_first_use() {
        static STRING: Codec = Codec::of::<String>();
        static BYTES: Codec = Codec::of::<Vec<u8>>();
        let encoded = |v: &dyn Any, codec: &'static Codec| {
            ArgValue::Encoded(EncodedArg::new((codec.encode_value)(v).unwrap(), codec))
        };
        let values = vec![
            encoded(&"hello".to_string(), &STRING),
            encoded(
                &"a long text, past what is kept in place".to_string(),
                &STRING,
            ),
            encoded(&vec![1u8, 2, 3], &BYTES),
            ArgValue::Encoded(EncodedArg::new(ValueBytes::from(&[200u8][..]), &STRING)),
        ];
        let args = Args::new("f", &values);
        let EncodedArg { shared, .. } = match &values[0] {
            ArgValue::Encoded(e) => e,
            _ => unreachable!(),
        };
        assert_eq!(args.take::<String>(0).unwrap(), "hello");
        assert!(shared.get().is_none(), "taken by value: no shared copy");
        assert_eq!(args.borrow::<String>(0).unwrap(), "hello");
        assert!(shared.get().is_some(), "borrowed: decoded once, shared");
        assert_eq!(args.take::<String>(0).unwrap(), "hello");
        assert!(std::ptr::eq(
            args.borrow::<String>(0).unwrap(),
            args.borrow::<String>(0).unwrap()
        ));

        assert_eq!(
            args.take::<String>(1).unwrap(),
            "a long text, past what is kept in place"
        );
        assert_eq!(args.take_vec::<u8>(2).unwrap(), vec![1, 2, 3]);
        assert_eq!(args.borrow_many::<u8>(2).unwrap(), vec![&1, &2, &3]);

        let wrong = args.take::<u64>(0).unwrap_err().to_string();
        assert!(
            wrong.contains("argument 1") && wrong.contains("u64"),
            "{wrong}"
        );
        assert!(args.take::<u64>(1).is_err());
        assert!(args.borrow_many::<u32>(2).is_err());
        let garbled = args.take::<String>(3).unwrap_err().to_string();
        assert!(garbled.contains("cannot decode"), "{garbled}");
        assert!(args.borrow::<String>(3).is_err());
    }
}
