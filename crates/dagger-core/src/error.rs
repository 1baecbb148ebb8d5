//! Errors: what a failed task reports, and the crate-wide error type.

use crate::id::TaskId;
use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A boxed error as produced by a task body that returned `Err`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a task did not produce a value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task body returned `Err`.
    Failed,
    /// The task body panicked.
    Panicked,
    /// The task did not run because a task it depends on failed; see [`TaskError::root`].
    DependencyFailed,
    /// The task was cancelled before it finished.
    Cancelled,
    /// No processor can run the task (its scope is empty or matches nothing).
    Scheduling,
    /// The runtime could not run the task (e.g. its context was shut down).
    Runtime,
}

enum Detail {
    Error(BoxError),
    Panic {
        message: String,
        payload: Mutex<Option<Box<dyn Any + Send>>>,
    },
    Upstream(TaskError),
    Message(String),
}

struct Inner {
    task: TaskId,
    name: Option<Arc<str>>,
    kind: ErrorKind,
    detail: Detail,
}

/// The error a task reports instead of a value.
///
/// It names the task, says why it failed, keeps the user's original error (downcastable to its
/// type) and, for tasks that did not run because an input failed, the root failure.
/// Cloning is cheap: every dependent of a failed task shares the same root error.
///
/// ```
/// use dagger_core::{try_spawn, spawn_with, ErrorKind, Options};
///
/// let parse = spawn_with(Options::new().name("parse"), || "12x".parse::<i32>());
/// let err = parse.fetch().unwrap().unwrap_err();
/// assert_eq!(err.to_string(), "invalid digit found in string");
///
/// let bad = try_spawn(|| "12x".parse::<i32>());
/// let err = bad.fetch().unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Failed);
/// assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
/// assert!(err.to_string().ends_with("failed: invalid digit found in string"));
/// ```
#[derive(Clone)]
pub struct TaskError {
    inner: Arc<Inner>,
}

impl TaskError {
    fn new(task: TaskId, name: Option<Arc<str>>, kind: ErrorKind, detail: Detail) -> Self {
        TaskError {
            inner: Arc::new(Inner {
                task,
                name,
                kind,
                detail,
            }),
        }
    }

    pub(crate) fn failed(task: TaskId, name: Option<Arc<str>>, err: BoxError) -> Self {
        Self::new(task, name, ErrorKind::Failed, Detail::Error(err))
    }

    pub(crate) fn panicked(
        task: TaskId,
        name: Option<Arc<str>>,
        payload: Box<dyn Any + Send>,
    ) -> Self {
        let message = panic_message(payload.as_ref());
        Self::new(
            task,
            name,
            ErrorKind::Panicked,
            Detail::Panic {
                message,
                payload: Mutex::new(Some(payload)),
            },
        )
    }

    pub(crate) fn upstream(task: TaskId, name: Option<Arc<str>>, cause: &TaskError) -> Self {
        Self::new(
            task,
            name,
            ErrorKind::DependencyFailed,
            Detail::Upstream(cause.root().clone()),
        )
    }

    pub(crate) fn cancelled(task: TaskId, name: Option<Arc<str>>) -> Self {
        Self::new(
            task,
            name,
            ErrorKind::Cancelled,
            Detail::Message(String::new()),
        )
    }

    pub(crate) fn with_message(
        task: TaskId,
        name: Option<Arc<str>>,
        kind: ErrorKind,
        msg: String,
    ) -> Self {
        Self::new(task, name, kind, Detail::Message(msg))
    }

    /// The task this error belongs to.
    pub fn task_id(&self) -> TaskId {
        self.inner.task
    }

    /// The name of the task this error belongs to, if it has one.
    pub fn task_name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Why the task did not produce a value.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// True when this task itself was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.kind == ErrorKind::Cancelled
    }

    /// The failure that started it all: `self` unless this task did not run because an input
    /// failed, in which case the error of the first task in the chain that failed by itself.
    pub fn root(&self) -> &TaskError {
        match &self.inner.detail {
            Detail::Upstream(root) => root,
            _ => self,
        }
    }

    /// The root failure's message, without the task prefix.
    pub fn message(&self) -> String {
        match &self.root().inner.detail {
            Detail::Error(e) => e.to_string(),
            Detail::Panic { message, .. } => message.clone(),
            Detail::Message(_) if self.root().is_cancelled() => "cancelled".to_string(),
            Detail::Message(m) => m.clone(),
            Detail::Upstream(u) => u.message(),
        }
    }

    /// The user's original error, if the root failure was an `Err` of type `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        match &self.root().inner.detail {
            Detail::Error(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// The user's original error, if the root failure was an `Err`.
    pub fn user_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.root().inner.detail {
            Detail::Error(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The panic message, if the root failure was a panic.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.root().inner.detail {
            Detail::Panic { message, .. } => Some(message),
            _ => None,
        }
    }

    /// A copy of the panic payload, if the root failure was a panic whose payload is a `P`
    /// (as with `std::panic::panic_any(p)`).
    pub fn panic_payload<P: Any + Clone>(&self) -> Option<P> {
        match &self.root().inner.detail {
            Detail::Panic { payload, .. } => payload
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|p| p.downcast_ref::<P>().cloned()),
            _ => None,
        }
    }

    fn fmt_task(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.name {
            Some(name) => write!(f, "{} `{}`", self.inner.task, name),
            None => write!(f, "{}", self.inner.task),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_task(f)?;
        match &self.inner.detail {
            Detail::Error(e) => write!(f, " failed: {e}"),
            Detail::Panic { message, .. } => write!(f, " panicked: {message}"),
            Detail::Upstream(root) => write!(f, " did not run: its input {root}"),
            Detail::Message(_) if self.inner.kind == ErrorKind::Cancelled => {
                write!(f, " was cancelled")
            }
            Detail::Message(m) if self.inner.kind == ErrorKind::Scheduling => {
                write!(f, " cannot be scheduled: {m}")
            }
            Detail::Message(m) => write!(f, " failed: {m}"),
        }
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({:?}: ", self.inner.kind)?;
        fmt::Display::fmt(self, f)?;
        f.write_str(")")
    }
}

impl StdError for TaskError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.detail {
            Detail::Error(e) => Some(e.as_ref()),
            Detail::Upstream(root) => Some(root),
            _ => None,
        }
    }
}

/// A scope specification that cannot be turned into a scope.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ScopeError {
    /// A key no one registered.
    UnknownKey {
        /// The key that was given.
        key: String,
        /// The keys that are registered.
        known: Vec<String>,
    },
    /// A list-valued key was given an empty list, which would make an empty union.
    EmptyUnion {
        /// The key that was given no values.
        key: String,
    },
    /// A key was given a value of the wrong sort.
    InvalidValue {
        /// The key.
        key: String,
        /// What the key accepts.
        expected: String,
    },
    /// The specification names no key at all.
    Empty,
    /// A custom key's converter rejected the specification.
    Custom(String),
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::UnknownKey { key, known } => write!(
                f,
                "unknown scope key `{key}`; known keys are: {}",
                known.join(", ")
            ),
            ScopeError::EmptyUnion { key } => write!(
                f,
                "scope key `{key}` was given an empty list, which would be a scope with no processors"
            ),
            ScopeError::InvalidValue { key, expected } => {
                write!(f, "scope key `{key}` expects {expected}")
            }
            ScopeError::Empty => write!(f, "a scope specification needs at least one key"),
            ScopeError::Custom(m) => f.write_str(m),
        }
    }
}

impl StdError for ScopeError {}

/// The crate-wide error type: anything that can go wrong outside a single task.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A task failed.
    Task(TaskError),
    /// A scope specification was invalid.
    Scope(ScopeError),
    /// The runtime was configured wrongly (e.g. zero threads).
    Config(String),
    /// Worker processes could not do what was asked (none in scope, one did not answer).
    Cluster(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Task(e) => e.fmt(f),
            Error::Scope(e) => e.fmt(f),
            Error::Config(m) => write!(f, "invalid configuration: {m}"),
            Error::Cluster(m) => f.write_str(m),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Task(e) => Some(e),
            Error::Scope(e) => Some(e),
            Error::Config(_) | Error::Cluster(_) => None,
        }
    }
}

impl From<TaskError> for Error {
    fn from(e: TaskError) -> Self {
        Error::Task(e)
    }
}

impl From<ScopeError> for Error {
    fn from(e: ScopeError) -> Self {
        Error::Scope(e)
    }
}

/// `Result` with the crate-wide [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TaskId {
        TaskId::next()
    }

    #[test]
    fn messages_name_the_task_and_the_root() {
        let root_id = id();
        let root = TaskError::failed(root_id, Some("load".into()), "disk gone".into());
        assert_eq!(
            root.to_string(),
            format!("{root_id} `load` failed: disk gone")
        );
        let dep_id = id();
        let dep = TaskError::upstream(dep_id, None, &root);
        let dep2 = TaskError::upstream(id(), Some("sum".into()), &dep);
        assert_eq!(
            dep2.root().task_id(),
            root_id,
            "the root is the first failure"
        );
        assert_eq!(dep2.message(), "disk gone");
        assert_eq!(
            dep.to_string(),
            format!("{dep_id} did not run: its input {root_id} `load` failed: disk gone")
        );
        let c = TaskError::cancelled(id(), None);
        assert!(c.is_cancelled());
        assert!(c.to_string().ends_with("was cancelled"));
        assert_eq!(TaskError::upstream(id(), None, &c).message(), "cancelled");
        let s = TaskError::with_message(id(), None, ErrorKind::Scheduling, "no".into());
        assert!(s.to_string().ends_with("cannot be scheduled: no"));
        let p = TaskError::panicked(id(), None, Box::new("boom"));
        assert_eq!(p.panic_message(), Some("boom"));
        let p = TaskError::panicked(id(), None, Box::new(3u8));
        assert_eq!(p.panic_message(), Some("panic with a non-string payload"));
        assert_eq!(p.panic_payload::<u8>(), Some(3));
    }

    #[test]
    fn scope_errors_explain_themselves() {
        let e = ScopeError::UnknownKey {
            key: "gpu".into(),
            known: vec!["thread".into(), "worker".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown scope key `gpu`; known keys are: thread, worker"
        );
        let e = ScopeError::EmptyUnion {
            key: "threads".into(),
        };
        assert!(e.to_string().contains("empty list"));
        let e: Error = e.into();
        assert!(matches!(e, Error::Scope(_)));
    }
}
