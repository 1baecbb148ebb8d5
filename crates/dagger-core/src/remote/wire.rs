//! What crosses process boundaries: calls of registered functions, their arguments, where
//! values live.

use serde::{Deserialize, Serialize};

/// Where a value lives: a process and the value's id in that process's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// The worker process holding the value (0 is the head).
    pub worker: u32,
    /// The value's id in that process's store.
    pub id: u64,
    /// Encoded size in bytes, when known (0 otherwise).
    pub bytes: u64,
}

/// The encoding of an argument passed by value, kept in place when it is short.
///
/// Most arguments encode to a few bytes (an integer, a small struct): each took an
/// allocation of its own, made when the head encoded the call and kept with its lineage,
/// and made again when the worker decoded it. The wire form is postcard's for a byte string.
#[derive(Clone, PartialEq, Eq)]
pub struct ValueBytes(ValueRepr);

/// The longest encoding kept in place (a `WireArg` stays 32 bytes).
const INLINE_BYTES: usize = 22;

// Equality is derived: the bytes past an inline encoding's length are zero, and an encoding
// is inline exactly when it fits.
#[derive(Clone, PartialEq, Eq)]
enum ValueRepr {
    Inline(u8, [u8; INLINE_BYTES]),
    Heap(Box<[u8]>),
}

const _: () = assert!(std::mem::size_of::<WireArg>() <= 32);

impl std::ops::Deref for ValueBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            ValueRepr::Inline(len, bytes) => &bytes[..usize::from(*len)],
            ValueRepr::Heap(bytes) => bytes,
        }
    }
}

/// The empty encoding, kept in place.
impl Default for ValueBytes {
    fn default() -> ValueBytes {
        ValueBytes(ValueRepr::Inline(0, [0; INLINE_BYTES]))
    }
}

impl From<&[u8]> for ValueBytes {
    fn from(v: &[u8]) -> ValueBytes {
        if v.len() <= INLINE_BYTES {
            let mut bytes = [0u8; INLINE_BYTES];
            bytes[..v.len()].copy_from_slice(v);
            ValueBytes(ValueRepr::Inline(v.len() as u8, bytes))
        } else {
            ValueBytes(ValueRepr::Heap(v.into()))
        }
    }
}

impl From<Vec<u8>> for ValueBytes {
    fn from(v: Vec<u8>) -> ValueBytes {
        if v.len() <= INLINE_BYTES {
            ValueBytes::from(&v[..])
        } else {
            ValueBytes(ValueRepr::Heap(v.into_boxed_slice()))
        }
    }
}

impl std::fmt::Debug for ValueBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for ValueBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for ValueBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ValueBytes, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ValueBytes;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ValueBytes, E> {
                Ok(v.into())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ValueBytes, E> {
                Ok(v.into())
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ValueBytes, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(v.into())
            }
        }

        // Postcard writes `serialize_bytes` as it writes a sequence of `u8` (a length, then
        // the bytes), but reads it with one copy instead of a push per byte.
        d.deserialize_bytes(Visitor)
    }
}

/// One argument of a remote call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireArg {
    /// The encoded value itself.
    Value(ValueBytes),
    /// A value stored in some process.
    Ref(Location),
    /// A collection of values (from a collection of tasks or chunks), each `Value` or `Ref`.
    Many(Vec<WireArg>),
    /// The piece of a shard kept by the process (and, where given, the thread) that runs the
    /// call.
    Local(Vec<(Location, Option<u32>)>),
    /// The result of the head's task with this id, which was sent to the same worker before
    /// this call and has not ended yet: the call starts once that task ended there (a call
    /// sent ahead of its input).
    After(u64),
    /// The result of the head's task `task`, which was sent to worker `worker` (another one)
    /// and has not ended yet: the call asks that worker to say when it ended there, and
    /// starts once it has (a call sent ahead of an input made elsewhere).
    AfterOn {
        /// The head's id of the task.
        task: u64,
        /// The worker it was sent to.
        worker: u32,
        /// Its place among the calls the head sent that worker (1 for the first): the
        /// worker has not received it yet while it received fewer calls than that.
        seq: u64,
    },
}

impl WireArg {
    /// Whether this is an `AfterOn` naming head task `task` made on worker `worker`.
    pub(crate) fn is_after_on(&self, task: u64, worker: u32) -> bool {
        matches!(self, WireArg::AfterOn { task: t, worker: w, .. } if (*t, *w) == (task, worker))
    }

    /// Calls `f` on each argument of `args` that is not a collection, depth first.
    pub(crate) fn each(args: &[WireArg], f: &mut impl FnMut(&WireArg)) {
        for a in args {
            match a {
                WireArg::Many(items) => WireArg::each(items, f),
                other => f(other),
            }
        }
    }

    /// Like [`each`](WireArg::each), letting `f` change the arguments.
    pub(crate) fn each_mut(args: &mut [WireArg], f: &mut impl FnMut(&mut WireArg)) {
        for a in args {
            match a {
                WireArg::Many(items) => WireArg::each_mut(items, f),
                other => f(other),
            }
        }
    }
}

/// Options a remote task runs with (the serialisable ones: hooks stay home).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WireOptions {
    /// Task name.
    pub name: Option<String>,
    /// Priority.
    pub priority: Option<i32>,
    /// Expected run time in nanoseconds.
    pub time_util_ns: Option<u64>,
    /// Expected memory use.
    pub alloc_util: Option<u64>,
    /// Occupancy.
    pub occupancy: Option<f64>,
    /// Whether errors are allowed.
    pub allow_errors: Option<bool>,
    /// The `with_options` options the task inherited (passed on to tasks it spawns).
    pub inherited: Option<Box<WireOptions>>,
}

impl WireOptions {
    /// These options as a call carries them: `None` when every one has its default.
    ///
    /// ```
    /// use dagger_core::remote::wire::WireOptions;
    ///
    /// assert!(WireOptions::default().boxed().is_none());
    /// let named = WireOptions { name: Some("load".into()), ..WireOptions::default() };
    /// assert_eq!(named.boxed().unwrap().name.as_deref(), Some("load"));
    /// ```
    pub fn boxed(self) -> Option<Box<WireOptions>> {
        (self != WireOptions::default()).then(|| Box::new(self))
    }
}

/// A call of a registered function, as sent to the process that runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireCall {
    /// Dense id of the function in the (shared) function table.
    pub func: u32,
    /// The arguments.
    pub args: Vec<WireArg>,
    /// Thread the call must run on, for exactly-scoped tasks.
    pub thread: Option<u32>,
    /// Options; `None` when every one has its default (most calls: boxed, they would make
    /// every call and the lineage kept of it several cache lines larger).
    pub options: Option<Box<WireOptions>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_keep_their_options_and_default_ones_take_one_byte() {
        let call = |options| WireCall {
            func: 7,
            args: vec![WireArg::Value(vec![1, 2, 3].into())],
            thread: Some(1),
            options,
        };
        let plain = postcard::to_allocvec(&call(None)).unwrap();
        let defaults = WireOptions::default();
        let spelled = postcard::to_allocvec(&call(Some(Box::new(defaults.clone())))).unwrap();
        assert_eq!(spelled.len(), plain.len() + 7);
        assert!(defaults.boxed().is_none());
        let named = call(
            WireOptions {
                name: Some("load".into()),
                priority: Some(-2),
                inherited: Some(Box::new(WireOptions {
                    allow_errors: Some(true),
                    ..WireOptions::default()
                })),
                ..WireOptions::default()
            }
            .boxed(),
        );
        let bytes = postcard::to_allocvec(&named).unwrap();
        assert_eq!(postcard::from_bytes::<WireCall>(&bytes).unwrap(), named);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes(ValueBytes, Option<ValueBytes>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSeq(Vec<u8>, Option<Vec<u8>>);

    #[test]
    fn byte_strings_encode_as_sequences_of_bytes_do() {
        for (v, o) in [
            (vec![], None),
            (vec![1, 2, 3], Some(vec![])),
            ((0..=255).collect(), Some(vec![7; 300])),
        ] {
            let seq = postcard::to_allocvec(&AsSeq(v.clone(), o.clone())).unwrap();
            let as_bytes = AsBytes(v.into(), o.map(ValueBytes::from));
            let bytes = postcard::to_allocvec(&as_bytes).unwrap();
            assert_eq!(seq, bytes);
            assert_eq!(postcard::from_bytes::<AsBytes>(&seq).unwrap(), as_bytes);
        }
        // A length beyond the input is an error, not an allocation.
        assert!(postcard::from_bytes::<AsBytes>(&[0xff, 0xff, 0xff, 0x7f, 1]).is_err());
    }

    #[test]
    fn value_bytes_travel_as_byte_strings_whether_kept_in_place_or_not() {
        for len in [0, 1, INLINE_BYTES - 1, INLINE_BYTES, INLINE_BYTES + 1, 300] {
            let v: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let from_vec = ValueBytes::from(v.clone());
            let from_slice = ValueBytes::from(&v[..]);
            assert_eq!(&*from_vec, &v[..], "length {len}");
            assert_eq!(from_vec, from_slice, "length {len}");
            assert_eq!(
                matches!(from_vec.0, ValueRepr::Inline(..)),
                len <= INLINE_BYTES,
                "length {len}"
            );
            assert_eq!(format!("{from_vec:?}"), format!("{v:?}"));
            let arg = WireArg::Value(from_vec);
            let wire = postcard::to_allocvec(&arg).unwrap();
            let seq = postcard::to_allocvec(&AsSeq(v.clone(), None)).unwrap();
            // The variant's tag, then the bytes as a sequence of bytes would be.
            assert_eq!(wire[1..], seq[..seq.len() - 1], "length {len}");
            assert_eq!(postcard::from_bytes::<WireArg>(&wire).unwrap(), arg);
        }
        assert_ne!(
            ValueBytes::from(&[1u8][..]),
            ValueBytes::from(&[1u8, 0][..])
        );
        assert!(postcard::from_bytes::<WireArg>(&[0, 0xff, 0xff, 0xff, 0x7f, 1]).is_err());
    }
}
