//! Byte buffers that arrive from other processes without being copied.
//!
//! A value that a task reads in another process travels encoded, and is decoded there from
//! the bytes that arrived. Decoding a `Vec<u8>` (or a type holding one) copies those bytes
//! into a new allocation: one more pass over the data, and for large buffers new memory that
//! the kernel faults in page by page. A [`SharedBytes`] instead decodes into a view of the
//! received bytes themselves: no copy, no new memory. It is immutable and cheap to clone
//! (a reference count), like [`bytes::Bytes`], which it wraps.
//!
//! On the wire it is a byte string, encoded exactly like a `Vec<u8>` serialised with
//! `serialize_bytes` (e.g. `serde_bytes`), so either can be read as the other.
//!
//! The view keeps the whole received message alive as long as the value lives: a value
//! with a small `SharedBytes` inside a large message would pin the message, so byte
//! strings under [`SHARE_MIN`] bytes are copied instead.

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

/// Byte strings shorter than this are copied when decoded rather than shared.
pub const SHARE_MIN: usize = 4096;

/// An immutable, cheaply cloned byte buffer that a value received from another process
/// shares with the received bytes instead of copying them.
///
/// ```
/// use dagger_core::SharedBytes;
///
/// let b = SharedBytes::from(vec![1u8, 2, 3]);
/// assert_eq!(&b[..], &[1, 2, 3]);
/// assert_eq!(b.clone(), b);
/// assert_eq!(b.len(), 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedBytes(Bytes);

impl SharedBytes {
    /// An empty buffer.
    pub const fn new() -> Self {
        SharedBytes(Bytes::new())
    }

    /// A buffer holding a copy of `data`.
    pub fn copy_from_slice(data: &[u8]) -> Self {
        SharedBytes(Bytes::copy_from_slice(data))
    }

    /// The bytes as a [`bytes::Bytes`] (no copy).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The bytes as a [`bytes::Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SharedBytes {
    /// Takes the vector's memory (no copy).
    fn from(v: Vec<u8>) -> Self {
        SharedBytes(Bytes::from(v))
    }
}

impl From<Bytes> for SharedBytes {
    fn from(b: Bytes) -> Self {
        SharedBytes(b)
    }
}

impl From<&'static [u8]> for SharedBytes {
    fn from(b: &'static [u8]) -> Self {
        SharedBytes(Bytes::from_static(b))
    }
}

impl From<SharedBytes> for Bytes {
    fn from(b: SharedBytes) -> Bytes {
        b.0
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= 64 {
            write!(f, "SharedBytes({:?})", self.0)
        } else {
            write!(f, "SharedBytes({} bytes)", self.0.len())
        }
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Inside `encode_parts`, the encoder may send these bytes as they are.
        let _lent = Lend::new(&self.0);
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedBytes, D::Error> {
        d.deserialize_bytes(SharedVisitor)
    }
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = SharedBytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes(
            share(v).unwrap_or_else(|| Bytes::copy_from_slice(v)),
        ))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<SharedBytes, E> {
        Ok(SharedBytes::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SharedBytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(SharedBytes::from(v))
    }
}

thread_local! {
    /// The received bytes being decoded on this thread, if the decoder may share them.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Restores the previous source when a decode ends (also when it panics).
struct Restore(Option<Bytes>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        SOURCE.with(|s| *s.borrow_mut() = prev);
    }
}

/// Runs `decode` over `src`, letting the [`SharedBytes`] it decodes share `src`'s memory.
pub(crate) fn decode_from<R>(src: &Bytes, decode: impl FnOnce(&[u8]) -> R) -> R {
    let prev = SOURCE.with(|s| s.replace(Some(src.clone())));
    let _restore = Restore(prev);
    decode(&src[..])
}

/// A view of `v` in the current source, if `v` lies inside it and is worth sharing.
fn share(v: &[u8]) -> Option<Bytes> {
    if v.len() < SHARE_MIN {
        return None;
    }
    SOURCE.with(|s| {
        let s = s.borrow();
        slice_within(s.as_ref()?, v)
    })
}

/// An encoded value as pieces that are sent one after the other: the bytes of a large
/// [`SharedBytes`] inside the value are a piece of their own, the very buffer the value
/// holds (not a copy), and the rest of the encoding lies in the pieces between.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoding {
    parts: Vec<Bytes>,
    len: usize,
    /// Bytes of the pieces that are the value's own buffers.
    lent: usize,
}

impl Encoding {
    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Length of the whole encoding.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the pieces that were written for the encoding (not buffers of the value):
    /// the memory that keeping the encoding costs.
    pub fn copied(&self) -> usize {
        self.len - self.lent
    }

    /// Whether the encoding is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoding in one buffer (a copy if it has several pieces).
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut v = Vec::with_capacity(self.len);
                for p in parts {
                    v.extend_from_slice(p);
                }
                Bytes::from(v)
            }
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push(b);
        }
    }
}

impl From<Bytes> for Encoding {
    fn from(b: Bytes) -> Encoding {
        let mut e = Encoding::default();
        e.push(b);
        e
    }
}

impl From<Vec<u8>> for Encoding {
    fn from(v: Vec<u8>) -> Encoding {
        Encoding::from(Bytes::from(v))
    }
}

thread_local! {
    /// Whether an `encode_parts` runs on this thread.
    static ENCODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The bytes of the [`SharedBytes`] being serialised now, within `encode_parts`.
    static LENT: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Lends a [`SharedBytes`]'s buffer to the encoder while it is serialised (only within
/// `encode_parts`, and only buffers worth sending by reference).
struct Lend(bool);

impl Lend {
    fn new(b: &Bytes) -> Lend {
        let lend = b.len() >= SHARE_MIN && ENCODING.with(|e| e.get());
        if lend {
            LENT.with(|l| *l.borrow_mut() = Some(b.clone()));
        }
        Lend(lend)
    }
}

impl Drop for Lend {
    fn drop(&mut self) {
        if self.0 {
            LENT.with(|l| l.borrow_mut().take());
        }
    }
}

/// Ends an `encode_parts` scope (also when serialising panics).
struct EndEncoding(bool);

impl Drop for EndEncoding {
    fn drop(&mut self) {
        ENCODING.with(|e| e.set(self.0));
        LENT.with(|l| l.borrow_mut().take());
    }
}

/// A postcard output that keeps lent buffers as pieces instead of copying them.
#[derive(Default)]
struct Parts {
    done: Encoding,
    cur: Vec<u8>,
}

impl Parts {
    fn close_piece(&mut self) {
        if !self.cur.is_empty() {
            self.done.push(Bytes::from(std::mem::take(&mut self.cur)));
        }
    }
}

impl postcard::ser_flavors::Flavor for Parts {
    type Output = Encoding;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let lent = (data.len() >= SHARE_MIN)
            .then(|| LENT.with(|l| l.borrow().as_ref().and_then(|b| slice_within(b, data))))
            .flatten();
        match lent {
            Some(piece) => {
                self.close_piece();
                self.done.lent += piece.len();
                self.done.push(piece);
            }
            None => self.cur.extend_from_slice(data),
        }
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.cur.push(data);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Encoding> {
        self.close_piece();
        Ok(self.done)
    }
}

/// `v` as a view of `src`, if it lies inside it.
fn slice_within(src: &Bytes, v: &[u8]) -> Option<Bytes> {
    let start = src.as_ptr() as usize;
    let at = v.as_ptr() as usize;
    // Address comparisons only: `slice_ref` is called for a subslice of `src` alone.
    (at >= start && at + v.len() <= start + src.len()).then(|| src.slice_ref(v))
}

/// Encodes `v` with postcard, the bytes of the large [`SharedBytes`] in it as pieces of their
/// own (not copied): the same bytes as `postcard::to_allocvec`, in pieces.
pub(crate) fn encode_parts<T: Serialize + ?Sized>(v: &T) -> postcard::Result<Encoding> {
    let _end = EndEncoding(ENCODING.with(|e| e.replace(true)));
    postcard::serialize_with_flavor(v, Parts::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Tile {
        name: String,
        data: SharedBytes,
        small: SharedBytes,
    }

    /// A tile with one large byte string (shared on decoding) and one small (copied).
    fn tile() -> Tile {
        Tile {
            name: "t".into(),
            data: SharedBytes::from(vec![5u8; 10_000]),
            small: SharedBytes::from(vec![6u8; 10]),
        }
    }

    #[test]
    fn decoding_from_received_bytes_shares_them() {
        let tile = tile();
        let wire = Bytes::from(postcard::to_allocvec(&tile).unwrap());
        let back: Tile = decode_from(&wire, |b| postcard::from_bytes(b)).unwrap();
        assert_eq!(back, tile);
        // The large byte string points into the received bytes; the small one is a copy.
        let inside = |p: *const u8| {
            let (s, p) = (wire.as_ptr() as usize, p as usize);
            p >= s && p < s + wire.len()
        };
        assert!(inside(back.data.as_ptr()));
        assert!(!inside(back.small.as_ptr()));
        // Outside `decode_from` (or from other memory), always a copy.
        let copied: Tile = postcard::from_bytes(&wire).unwrap();
        assert_eq!(copied, tile);
        assert!(!inside(copied.data.as_ptr()));
        let other = wire.to_vec();
        let from_other: Tile = decode_from(&wire, |_| postcard::from_bytes(&other)).unwrap();
        assert!(!inside(from_other.data.as_ptr()));
        assert_eq!(from_other, tile);
    }

    #[test]
    fn same_wire_form_as_a_byte_vector() {
        #[derive(Serialize)]
        struct AsBytes<'a>(#[serde(with = "serde_bytes_shim")] &'a [u8]);
        mod serde_bytes_shim {
            pub fn serialize<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let v = vec![9u8; 5000];
        let a = postcard::to_allocvec(&AsBytes(&v)).unwrap();
        let b = postcard::to_allocvec(&SharedBytes::from(v.clone())).unwrap();
        assert_eq!(a, b);
        // A sequence of numbers (how other formats may write bytes) decodes too.
        let json_like: SharedBytes =
            serde::de::value::SeqDeserializer::<_, de::value::Error>::new([1u8, 2, 3].into_iter())
                .deserialize_seq(SharedVisitor)
                .unwrap();
        assert_eq!(&json_like[..], &[1, 2, 3]);
    }

    #[test]
    fn large_shared_bytes_are_encoded_by_reference() {
        let tile = tile();
        let whole = postcard::to_allocvec(&tile).unwrap();
        let enc = encode_parts(&tile).unwrap();
        // The same bytes; the large byte string is the value's own buffer.
        assert_eq!(enc.len(), whole.len());
        assert_eq!(&enc.to_bytes()[..], &whole[..]);
        assert_eq!(enc.parts().len(), 3);
        assert_eq!(enc.parts()[1].as_ptr(), tile.data.as_ptr());
        assert_eq!(enc.parts()[1].len(), 10_000);
        assert_eq!(enc.copied(), whole.len() - 10_000);
        // A `Vec<u8>` of the same size, and a lone large value, outside `Tile`.
        let v = vec![7u8; 10_000];
        let e = encode_parts(&(serde_bytes_like(&v), tile.data.clone())).unwrap();
        assert_eq!(e.parts().len(), 2);
        assert_ne!(e.parts()[0].as_ptr(), v.as_ptr());
        assert_eq!(e.parts()[1].as_ptr(), tile.data.as_ptr());
        assert_eq!(
            &e.to_bytes()[..],
            &postcard::to_allocvec(&(serde_bytes_like(&v), tile.data.clone())).unwrap()[..]
        );
        let lone = encode_parts(&tile.data).unwrap();
        assert_eq!(lone.parts().len(), 2);
        assert_eq!(
            &lone.to_bytes()[..],
            &postcard::to_allocvec(&tile.data).unwrap()[..]
        );
        // Outside `encode_parts` nothing is lent.
        assert!(!ENCODING.with(|e| e.get()));
        assert!(LENT.with(|l| l.borrow().is_none()));
        let _ = postcard::to_allocvec(&tile).unwrap();
        assert!(LENT.with(|l| l.borrow().is_none()));
        // Empty and single-piece encodings.
        assert!(encode_parts(&()).unwrap().is_empty());
        assert_eq!(encode_parts(&5u8).unwrap().parts().len(), 1);
    }

    /// Serialises a slice as a byte string (like `serde_bytes`).
    fn serde_bytes_like(v: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(v)
    }

    #[test]
    fn a_panicking_encode_ends_its_scope() {
        struct Boom;
        impl Serialize for Boom {
            fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                panic!("boom")
            }
        }
        let data = SharedBytes::from(vec![1u8; 8192]);
        let r = std::panic::catch_unwind(|| encode_parts(&(data.clone(), Boom)));
        assert!(r.is_err());
        assert!(!ENCODING.with(|e| e.get()));
        assert!(LENT.with(|l| l.borrow().is_none()));
    }

    #[test]
    fn nested_and_panicking_decodes_restore_the_source() {
        let outer =
            Bytes::from(postcard::to_allocvec(&SharedBytes::from(vec![1u8; 8192])).unwrap());
        let inner =
            Bytes::from(postcard::to_allocvec(&SharedBytes::from(vec![2u8; 8192])).unwrap());
        let (a, b): (SharedBytes, SharedBytes) = decode_from(&outer, |o| {
            let b: SharedBytes = decode_from(&inner, |i| postcard::from_bytes(i)).unwrap();
            (postcard::from_bytes(o).unwrap(), b)
        });
        assert_eq!(
            a.as_ptr() as usize - outer.as_ptr() as usize,
            outer.len() - 8192
        );
        assert_eq!(
            b.as_ptr() as usize - inner.as_ptr() as usize,
            inner.len() - 8192
        );
        let _ = std::panic::catch_unwind(|| decode_from(&outer, |_| panic!("boom")));
        assert!(SOURCE.with(|s| s.borrow().is_none()));
    }
}
