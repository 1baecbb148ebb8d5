//! What a finished task holds: its value, its error, or a reference to a value that lives in
//! another process.

use crate::error::{BoxError, ErrorKind, TaskError};
use crate::remote::data::RemoteData;
use crate::remote::wire::Location;
use crate::shared_bytes::decode_from;
use std::sync::{Arc, OnceLock};

/// The result of a finished task.
pub(crate) enum Outcome<T> {
    /// The value, held in this process.
    Value(T),
    /// The task failed.
    Failed(TaskError),
    /// The value lives in another process.
    Remote(RemoteValue<T>),
}

/// Decodes the bytes of a remote value.
pub(crate) type Decode = fn(&[u8]) -> Result<crate::remote::functions::AnyValue, BoxError>;

/// A typed remote value, with a local copy made on first use.
pub(crate) struct RemoteValue<T> {
    pub(crate) data: Arc<RemoteData>,
    decode: Decode,
    local: OnceLock<T>,
}

impl<T: Send + Sync + 'static> RemoteValue<T> {
    pub(crate) fn new(data: Arc<RemoteData>, decode: Decode) -> Self {
        RemoteValue {
            data,
            decode,
            local: OnceLock::new(),
        }
    }

    /// Whether the value was brought here already.
    pub(crate) fn is_here(&self) -> bool {
        self.local.get().is_some()
    }

    /// The value, fetched and decoded on first use.
    pub(crate) fn get(&self) -> Result<&T, BoxError> {
        if let Some(v) = self.local.get() {
            return Ok(v);
        }
        let bytes = crate::sched::blocking(|| fetch(&self.data))?;
        let v = decode_from(&bytes, |b| decode_owned::<T>(self.decode, b))?;
        let _ = self.local.set(v);
        Ok(self.local.get().expect("just set"))
    }

    /// The value, moved out (fetched first if it is not here yet).
    pub(crate) fn into_value(self) -> Result<T, BoxError> {
        if let Some(v) = self.local.into_inner() {
            return Ok(v);
        }
        let bytes = crate::sched::blocking(|| fetch(&self.data))?;
        decode_from(&bytes, |b| decode_owned::<T>(self.decode, b))
    }
}

/// Fetches a remote value's bytes. When the fetch fails because the holder died, waits for
/// the value to be marked lost and recovered, then fetches it from its new place.
fn fetch(data: &Arc<RemoteData>) -> Result<bytes::Bytes, BoxError> {
    if let Some(small) = data.small() {
        return Ok(bytes::Bytes::copy_from_slice(small));
    }
    let mut last = None;
    for _ in 0..8 {
        let loc = data.location()?;
        let started = std::time::Instant::now();
        match data.link().fetch(loc) {
            Ok(b) => {
                crate::sched::remote::record_transfer(b.len() as u64, started.elapsed());
                return Ok(b);
            }
            Err(e) => {
                if !data.wait_moved(loc, std::time::Duration::from_secs(2)) {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| "the value kept being lost".into()))
}

fn decode_owned<T: Send + Sync + 'static>(decode: Decode, bytes: &[u8]) -> Result<T, BoxError> {
    let any = decode(bytes)?;
    let arc = any.downcast::<T>().map_err(|_| {
        format!(
            "a remote value decoded to another type than {}",
            std::any::type_name::<T>()
        )
    })?;
    Arc::try_unwrap(arc).map_err(|_| "a freshly decoded value is shared".into())
}

impl<T: Send + Sync + 'static> Outcome<T> {
    /// The value (fetching it from its process if needed), or the error.
    pub(crate) fn value(&self, task: &super::Header) -> Result<&T, TaskError> {
        match self {
            Outcome::Value(v) => Ok(v),
            Outcome::Failed(e) => Err(e.clone()),
            Outcome::Remote(r) => r.get().map_err(|e| lost(task, &r.data, e)),
        }
    }

    /// The value moved out, or the error.
    pub(crate) fn into_value(self, task: &super::Header) -> Result<T, TaskError> {
        match self {
            Outcome::Value(v) => Ok(v),
            Outcome::Failed(e) => Err(e),
            Outcome::Remote(r) => {
                let data = r.data.clone();
                r.into_value().map_err(|e| lost(task, &data, e))
            }
        }
    }

    pub(crate) fn error(&self) -> Option<&TaskError> {
        match self {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

fn lost(task: &super::Header, data: &RemoteData, e: BoxError) -> TaskError {
    let at = match data.try_location() {
        Ok(Location { worker, .. }) => format!(" on worker {worker}"),
        Err(_) => String::new(),
    };
    TaskError::with_message(
        task.id,
        task.name(),
        ErrorKind::Runtime,
        format!("its result{at} could not be fetched: {e}"),
    )
}
