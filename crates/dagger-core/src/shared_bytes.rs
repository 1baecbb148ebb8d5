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
/// shares with the received bytes instead of copying them (see the [module
/// docs](self)).
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
        let src = s.as_ref()?;
        let start = src.as_ptr() as usize;
        let at = v.as_ptr() as usize;
        // Address comparisons only: `slice_ref` is called for a subslice of `src` alone.
        (at >= start && at + v.len() <= start + src.len()).then(|| src.slice_ref(v))
    })
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

    #[test]
    fn decoding_from_received_bytes_shares_them() {
        let tile = Tile {
            name: "t".into(),
            data: SharedBytes::from(vec![5u8; 10_000]),
            small: SharedBytes::from(vec![6u8; 10]),
        };
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
