//! What a finished task holds: its value, its error, or a reference to a value that lives in
//! another process.

use crate::error::{BoxError, ErrorKind, TaskError};
use crate::remote::wire::Location;
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

/// Reaches the processes that hold this process's remote values.
pub trait DataLink: Send + Sync {
    /// The encoded bytes of the value at `loc` (blocks until they arrive).
    fn fetch(&self, loc: Location) -> Result<Vec<u8>, BoxError>;
    /// Releases the value at `loc` (nobody here needs it any more).
    fn free(&self, loc: Location);
}

/// A value in another process. Dropping the last reference frees it there.
pub struct RemoteData {
    pub(crate) loc: Location,
    pub(crate) link: Arc<dyn DataLink>,
}

impl Drop for RemoteData {
    fn drop(&mut self) {
        self.link.free(self.loc);
    }
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

    /// The value, fetched and decoded on first use.
    pub(crate) fn get(&self) -> Result<&T, BoxError> {
        if let Some(v) = self.local.get() {
            return Ok(v);
        }
        let bytes = crate::sched::blocking(|| self.data.link.fetch(self.data.loc))?;
        let v = decode_owned::<T>(self.decode, &bytes)?;
        let _ = self.local.set(v);
        Ok(self.local.get().expect("just set"))
    }

    /// The value, moved out (fetched first if it is not here yet).
    pub(crate) fn into_value(self) -> Result<T, BoxError> {
        if let Some(v) = self.local.into_inner() {
            return Ok(v);
        }
        let bytes = crate::sched::blocking(|| self.data.link.fetch(self.data.loc))?;
        decode_owned::<T>(self.decode, &bytes)
    }
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
            Outcome::Remote(r) => r.get().map_err(|e| lost(task, r.data.loc, e)),
        }
    }

    /// The value moved out, or the error.
    pub(crate) fn into_value(self, task: &super::Header) -> Result<T, TaskError> {
        match self {
            Outcome::Value(v) => Ok(v),
            Outcome::Failed(e) => Err(e),
            Outcome::Remote(r) => {
                let loc = r.data.loc;
                r.into_value().map_err(|e| lost(task, loc, e))
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

fn lost(task: &super::Header, loc: Location, e: BoxError) -> TaskError {
    TaskError::with_message(
        task.id,
        task.name(),
        ErrorKind::Runtime,
        format!(
            "its result on worker {} could not be fetched: {e}",
            loc.worker
        ),
    )
}
