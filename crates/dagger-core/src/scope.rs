//! Scopes: the set of processors a task may run on, or its data may live on.
//!
//! A scope is kept as a union of *filters*; each filter is a conjunction of constraints (a node,
//! a worker process, a processor kind, a processor index, "default-enabled processors only").
//! Every scope the reference system names maps onto that form:
//!
//! | reference | here |
//! |---|---|
//! | `AnyScope` | [`Scope::any`] |
//! | `DefaultScope` | [`Scope::default`] |
//! | `UnionScope` | [`Scope::union`], [`Scope::union_of`] |
//! | `NodeScope` | [`Scope::node`] |
//! | `ProcessScope` | [`Scope::worker`] |
//! | `ExactScope` | [`Scope::exact`], `Scope::worker(w).thread(t)` |
//! | `ProcessorTypeScope` | [`Scope::processor_type`] |
//! | `TaintScope` | a filter carrying several constraints, e.g. `Scope::worker(1).constrain(&Scope::processor_type::<P>())` |
//! | `InvalidScope` | the result of an empty [`constrain`](Scope::constrain); see [`Scope::is_invalid`] |
//!
//! Intersection ([`Scope::constrain`]) is exact on this form: two filters intersect by merging
//! their constraints, and a filter with two different values for one constraint is empty.
//!
//! ```
//! use dagger_core::{Scope, ProcessorId, WorkerId};
//! let w1 = Scope::worker(1);
//! let t = Scope::worker(1).thread(0);
//! assert_eq!(t, Scope::exact(ProcessorId::thread(WorkerId(1), 0)));
//! assert!(t.is_subset(&w1));
//! assert!(w1.constrain(&Scope::worker(2)).is_invalid());
//! assert_eq!(w1.constrain(&t), t);
//! ```

use crate::error::ScopeError;
use crate::id::{NodeId, ProcessorId, ProcessorKind, WorkerId};
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

/// One conjunction of constraints. `None` means unconstrained.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct Filter {
    default_only: bool,
    node: Option<NodeId>,
    worker: Option<WorkerId>,
    kind: Option<ProcessorKind>,
    index: Option<u32>,
}

fn meet<T: PartialEq + Copy>(a: Option<T>, b: Option<T>) -> Result<Option<T>, ()> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(()),
        (Some(x), _) | (_, Some(x)) => Ok(Some(x)),
        (None, None) => Ok(None),
    }
}

fn implies<T: PartialEq>(have: &Option<T>, need: &Option<T>) -> bool {
    need.is_none() || have == need
}

impl Filter {
    fn intersect(&self, other: &Filter) -> Option<Filter> {
        Some(Filter {
            default_only: self.default_only || other.default_only,
            node: meet(self.node, other.node).ok()?,
            worker: meet(self.worker, other.worker).ok()?,
            kind: meet(self.kind, other.kind).ok()?,
            index: meet(self.index, other.index).ok()?,
        })
    }

    fn is_subset(&self, other: &Filter) -> bool {
        (self.default_only || !other.default_only)
            && implies(&self.node, &other.node)
            && implies(&self.worker, &other.worker)
            && implies(&self.kind, &other.kind)
            && implies(&self.index, &other.index)
    }

    fn contains(&self, p: &ProcessorInfo) -> bool {
        (!self.default_only || p.default_enabled)
            && self.node.is_none_or(|n| n == p.node)
            && self.worker.is_none_or(|w| w == p.id.worker)
            && self.kind.is_none_or(|k| k == p.id.kind)
            && self.index.is_none_or(|i| i == p.id.index)
    }

    fn exact(&self) -> Option<ProcessorId> {
        Some(ProcessorId {
            worker: self.worker?,
            kind: self.kind?,
            index: self.index?,
        })
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = self.exact() {
            parts.push(p.to_string());
        } else {
            match (self.kind, self.index) {
                (Some(ProcessorKind::THREAD), Some(i)) => parts.push(format!("thread {i}")),
                (Some(k), Some(i)) => parts.push(format!("{k} {i}")),
                (Some(k), None) => parts.push(format!("processor type {k}")),
                (None, Some(i)) => parts.push(format!("processor index {i}")),
                (None, None) => {}
            }
            if let Some(w) = self.worker {
                parts.push(w.to_string());
            }
        }
        if let Some(n) = self.node {
            parts.push(n.to_string());
        }
        if self.default_only {
            parts.push("default".to_string());
        }
        if parts.is_empty() {
            f.write_str("any")
        } else {
            f.write_str(&parts.join(" ∩ "))
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// A non-empty union of filters.
    Union(Arc<[Filter]>),
    /// An empty intersection; remembers the two scopes for error messages.
    Invalid(Arc<(Scope, Scope)>),
}

/// The set of processors a task may run on, or data may live on.
///
/// Scopes combine with [`constrain`](Scope::constrain) (intersection) and
/// [`union`](Scope::union); a task runs within its compute scope ∩ result scope ∩ the scope of
/// every [`Chunk`](crate::Chunk) it receives.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    repr: Repr,
}

/// What the scheduler knows about a processor when matching it against a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessorInfo {
    pub(crate) id: ProcessorId,
    pub(crate) node: NodeId,
    pub(crate) default_enabled: bool,
}

impl Scope {
    fn from_filters(mut filters: Vec<Filter>) -> Option<Scope> {
        // Drop filters contained in another one, keeping the first of equal ones.
        let mut i = 0;
        while i < filters.len() {
            let redundant = filters.iter().enumerate().any(|(j, g)| {
                j != i && filters[i].is_subset(g) && (!g.is_subset(&filters[i]) || j < i)
            });
            if redundant {
                filters.remove(i);
            } else {
                i += 1;
            }
        }
        (!filters.is_empty()).then(|| Scope {
            repr: Repr::Union(filters.into()),
        })
    }

    fn single(f: Filter) -> Scope {
        Scope {
            repr: Repr::Union(Arc::new([f])),
        }
    }

    /// Every processor, including ones that are not enabled by default.
    pub fn any() -> Scope {
        Scope::single(Filter::default())
    }

    /// The processors that are enabled by default (all compute threads, and custom processors
    /// that opt in). This is the scope of a task that names none.
    #[allow(clippy::should_implement_trait)]
    pub fn default() -> Scope {
        Scope::single(Filter {
            default_only: true,
            ..Filter::default()
        })
    }

    /// Every processor on machine `node`.
    pub fn node(node: NodeId) -> Scope {
        Scope::single(Filter {
            node: Some(node),
            ..Filter::default()
        })
    }

    /// Every processor of worker process `worker` (0 is the head process).
    pub fn worker(worker: impl Into<WorkerId>) -> Scope {
        Scope::single(Filter {
            worker: Some(worker.into()),
            ..Filter::default()
        })
    }

    /// Exactly one processor.
    pub fn exact(proc: ProcessorId) -> Scope {
        Scope::single(Filter {
            worker: Some(proc.worker),
            kind: Some(proc.kind),
            index: Some(proc.index),
            ..Filter::default()
        })
    }

    /// Every processor of type `P`.
    pub fn processor_type<P: 'static>() -> Scope {
        Scope::kind(ProcessorKind::of::<P>())
    }

    /// Every processor of kind `kind`.
    pub fn kind(kind: ProcessorKind) -> Scope {
        Scope::single(Filter {
            kind: Some(kind),
            ..Filter::default()
        })
    }

    /// Narrows this scope to compute thread `thread` (of whatever worker the scope names).
    ///
    /// ```
    /// use dagger_core::Scope;
    /// assert_eq!(Scope::worker(2).thread(1).to_string(), "ThreadProc(worker 2, 1)");
    /// ```
    pub fn thread(&self, thread: u32) -> Scope {
        self.constrain(&Scope::single(Filter {
            kind: Some(ProcessorKind::THREAD),
            index: Some(thread),
            ..Filter::default()
        }))
    }

    /// Narrows this scope to the given compute threads; an empty list is an error.
    pub fn threads(&self, threads: impl IntoIterator<Item = u32>) -> Result<Scope, ScopeError> {
        let parts: Vec<Scope> = threads.into_iter().map(|t| self.thread(t)).collect();
        Scope::union_of(parts).map_err(|_| ScopeError::EmptyUnion {
            key: "threads".into(),
        })
    }

    /// The union of `self` and `other`.
    pub fn union(&self, other: &Scope) -> Scope {
        match (&self.repr, &other.repr) {
            (Repr::Invalid(_), _) => other.clone(),
            (_, Repr::Invalid(_)) => self.clone(),
            (Repr::Union(a), Repr::Union(b)) => {
                Scope::from_filters(a.iter().chain(b.iter()).copied().collect())
                    .expect("a union of non-empty scopes is non-empty")
            }
        }
    }

    /// The union of many scopes; an empty list is an error, since it would hold no processor.
    pub fn union_of(scopes: impl IntoIterator<Item = Scope>) -> Result<Scope, ScopeError> {
        let mut iter = scopes.into_iter();
        let first = iter.next().ok_or(ScopeError::EmptyUnion {
            key: "union".into(),
        })?;
        Ok(iter.fold(first, |acc, s| acc.union(&s)))
    }

    /// The intersection of `self` and `other` (the reference's `constraint`). When no processor
    /// can be in both, the result is an invalid scope that remembers both sides.
    pub fn constrain(&self, other: &Scope) -> Scope {
        let (a, b) = match (&self.repr, &other.repr) {
            (Repr::Union(a), Repr::Union(b)) => (a, b),
            _ => {
                return Scope {
                    repr: Repr::Invalid(Arc::new((self.clone(), other.clone()))),
                }
            }
        };
        let mut out = Vec::new();
        for f in a.iter() {
            for g in b.iter() {
                if let Some(h) = f.intersect(g) {
                    out.push(h);
                }
            }
        }
        Scope::from_filters(out).unwrap_or_else(|| Scope {
            repr: Repr::Invalid(Arc::new((self.clone(), other.clone()))),
        })
    }

    /// True for the result of an empty intersection: no processor can be in this scope.
    pub fn is_invalid(&self) -> bool {
        matches!(self.repr, Repr::Invalid(_))
    }

    /// True when every processor in `self` is also in `other` (decided from the structure of
    /// the two scopes; an invalid scope is a subset of everything).
    pub fn is_subset(&self, other: &Scope) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::Invalid(_), _) => true,
            (_, Repr::Invalid(_)) => false,
            (Repr::Union(a), Repr::Union(b)) => a.iter().all(|f| b.iter().any(|g| f.is_subset(g))),
        }
    }

    /// True when this is [`Scope::any`].
    pub fn is_any(&self) -> bool {
        matches!(&self.repr, Repr::Union(f) if f.len() == 1 && f[0] == Filter::default())
    }

    /// True when this is [`Scope::default`].
    pub fn is_default(&self) -> bool {
        *self == Scope::default()
    }

    /// The single processor of an exact scope.
    pub fn as_exact(&self) -> Option<ProcessorId> {
        match &self.repr {
            Repr::Union(f) if f.len() == 1 => f[0].exact(),
            _ => None,
        }
    }

    pub(crate) fn contains(&self, p: &ProcessorInfo) -> bool {
        match &self.repr {
            Repr::Union(filters) => filters.iter().any(|f| f.contains(p)),
            Repr::Invalid(_) => false,
        }
    }

    /// Starts a key/value scope specification (the reference's `scope(worker=.., threads=..)`).
    pub fn spec() -> ScopeSpec {
        ScopeSpec::default()
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope::default()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Union(filters) => {
                for (i, filter) in filters.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ∪ ")?;
                    }
                    if filters.len() > 1
                        && (filter.default_only as u8
                            + filter.node.is_some() as u8
                            + filter.worker.is_some() as u8
                            + filter.kind.is_some() as u8)
                            > 1
                        && filter.exact().is_none()
                    {
                        write!(f, "({filter})")?;
                    } else {
                        write!(f, "{filter}")?;
                    }
                }
                Ok(())
            }
            Repr::Invalid(pair) => write!(
                f,
                "invalid scope (no processor is in both `{}` and `{}`)",
                pair.0, pair.1
            ),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({self})")
    }
}

/// A value given to a scope key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ScopeValue {
    /// One number.
    Int(u64),
    /// A list of numbers.
    Ints(Vec<u64>),
    /// Free text, for custom keys.
    Text(String),
}

impl From<u64> for ScopeValue {
    fn from(v: u64) -> Self {
        ScopeValue::Int(v)
    }
}
impl From<u32> for ScopeValue {
    fn from(v: u32) -> Self {
        ScopeValue::Int(v.into())
    }
}
impl From<usize> for ScopeValue {
    fn from(v: usize) -> Self {
        ScopeValue::Int(v as u64)
    }
}
impl From<i32> for ScopeValue {
    fn from(v: i32) -> Self {
        ScopeValue::Int(v.max(0) as u64)
    }
}
impl From<Vec<u64>> for ScopeValue {
    fn from(v: Vec<u64>) -> Self {
        ScopeValue::Ints(v)
    }
}
impl From<Vec<u32>> for ScopeValue {
    fn from(v: Vec<u32>) -> Self {
        ScopeValue::Ints(v.into_iter().map(u64::from).collect())
    }
}
impl From<&str> for ScopeValue {
    fn from(v: &str) -> Self {
        ScopeValue::Text(v.to_string())
    }
}
impl From<String> for ScopeValue {
    fn from(v: String) -> Self {
        ScopeValue::Text(v)
    }
}

impl ScopeValue {
    /// The numbers of this value (one for `Int`, all for `Ints`); `None` for text.
    pub fn ints(&self) -> Option<Vec<u64>> {
        match self {
            ScopeValue::Int(v) => Some(vec![*v]),
            ScopeValue::Ints(v) => Some(v.clone()),
            ScopeValue::Text(_) => None,
        }
    }
}

/// A scope written as keys and values, like the reference's `scope(worker=1, threads=[1, 2])`.
///
/// The built-in keys are `worker`/`workers` and `thread`/`threads`. Custom processors add keys
/// with [`register_scope_key`]; when several keys are given, the one with the highest
/// precedence builds the scope and may read the others.
///
/// ```
/// use dagger_core::{Scope, ScopeError};
/// let s = Scope::spec().worker(0).threads([0, 1]).build().unwrap();
/// assert_eq!(s, Scope::worker(0).thread(0).union(&Scope::worker(0).thread(1)));
///
/// let err = Scope::spec().key("gpu", 3u32).build().unwrap_err();
/// assert!(matches!(err, ScopeError::UnknownKey { .. }));
/// let err = Scope::spec().threads(Vec::<u32>::new()).build().unwrap_err();
/// assert!(matches!(err, ScopeError::EmptyUnion { .. }));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSpec {
    entries: Vec<(String, ScopeValue)>,
}

impl ScopeSpec {
    /// Sets `key` to `value` (replacing an earlier value of the same key).
    pub fn key(mut self, key: &str, value: impl Into<ScopeValue>) -> Self {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
        self
    }

    /// `worker = w`
    pub fn worker(self, worker: u32) -> Self {
        self.key("worker", worker)
    }

    /// `workers = [..]`
    pub fn workers(self, workers: impl IntoIterator<Item = u32>) -> Self {
        self.key("workers", workers.into_iter().collect::<Vec<u32>>())
    }

    /// `thread = t`
    pub fn thread(self, thread: u32) -> Self {
        self.key("thread", thread)
    }

    /// `threads = [..]`
    pub fn threads(self, threads: impl IntoIterator<Item = u32>) -> Self {
        self.key("threads", threads.into_iter().collect::<Vec<u32>>())
    }

    /// The value given for `key`.
    pub fn get(&self, key: &str) -> Option<&ScopeValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The numbers given for `key`: an error when the key holds text or an empty list.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<u64>>, ScopeError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let ints = v.ints().ok_or_else(|| ScopeError::InvalidValue {
                    key: key.to_string(),
                    expected: "a number or a list of numbers".into(),
                })?;
                if ints.is_empty() {
                    return Err(ScopeError::EmptyUnion {
                        key: key.to_string(),
                    });
                }
                Ok(Some(ints))
            }
        }
    }

    /// Builds the scope.
    pub fn build(&self) -> Result<Scope, ScopeError> {
        if self.entries.is_empty() {
            return Err(ScopeError::Empty);
        }
        let keys = scope_keys().read().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<&ScopeKey> = None;
        for (k, _) in &self.entries {
            let Some(entry) = keys.iter().find(|e| e.name == *k) else {
                let mut known: Vec<String> = keys.iter().map(|e| e.name.clone()).collect();
                known.sort();
                return Err(ScopeError::UnknownKey {
                    key: k.clone(),
                    known,
                });
            };
            if best.is_none_or(|b| entry.precedence > b.precedence) {
                best = Some(entry);
            }
        }
        let convert = best.expect("at least one key").convert;
        drop(keys);
        convert(self)
    }
}

fn u32_of(key: &str, v: u64) -> Result<u32, ScopeError> {
    u32::try_from(v).map_err(|_| ScopeError::InvalidValue {
        key: key.into(),
        expected: "a number below 2^32".into(),
    })
}

fn builtin_scope(spec: &ScopeSpec) -> Result<Scope, ScopeError> {
    let mut workers: Option<Vec<u32>> = None;
    for key in ["worker", "workers"] {
        if let Some(ws) = spec.ints(key)? {
            let ws: Result<Vec<u32>, _> = ws.into_iter().map(|w| u32_of(key, w)).collect();
            workers.get_or_insert_with(Vec::new).extend(ws?);
        }
    }
    let mut threads: Option<Vec<u32>> = None;
    for key in ["thread", "threads"] {
        if let Some(ts) = spec.ints(key)? {
            let ts: Result<Vec<u32>, _> = ts.into_iter().map(|t| u32_of(key, t)).collect();
            threads.get_or_insert_with(Vec::new).extend(ts?);
        }
    }
    let bases: Vec<Scope> = match &workers {
        Some(ws) => ws.iter().map(|&w| Scope::worker(w)).collect(),
        None => vec![Scope::any()],
    };
    let mut parts = Vec::new();
    for base in &bases {
        match &threads {
            Some(ts) => parts.extend(ts.iter().map(|&t| base.thread(t))),
            None => parts.push(base.clone()),
        }
    }
    Scope::union_of(parts)
}

/// Turns a scope specification into a scope; used by [`register_scope_key`].
pub type ScopeKeyFn = fn(&ScopeSpec) -> Result<Scope, ScopeError>;

struct ScopeKey {
    name: String,
    precedence: i32,
    convert: ScopeKeyFn,
}

fn scope_keys() -> &'static RwLock<Vec<ScopeKey>> {
    static KEYS: OnceLock<RwLock<Vec<ScopeKey>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        RwLock::new(
            ["worker", "workers", "thread", "threads"]
                .into_iter()
                .map(|name| ScopeKey {
                    name: name.to_string(),
                    precedence: 0,
                    convert: builtin_scope,
                })
                .collect(),
        )
    })
}

/// Registers a custom scope key (the reference's `scope_key_precedence` + `to_scope`).
///
/// When a specification names several keys, the key with the highest precedence converts the
/// whole specification (built-in keys have precedence 0). Registering a name again replaces it.
///
/// ```
/// use dagger_core::{register_scope_key, Scope, ScopeError, ScopeSpec, ProcessorKind};
///
/// struct Gpu;
/// fn gpu_scope(spec: &ScopeSpec) -> Result<Scope, ScopeError> {
///     let gpus = spec.ints("gpu")?.unwrap_or_default();
///     let base = match spec.ints("worker")? {
///         Some(w) => Scope::worker(w[0] as u32),
///         None => Scope::any(),
///     };
///     Scope::union_of(gpus.into_iter().map(|g| {
///         base.constrain(&Scope::processor_type::<Gpu>()).constrain(&Scope::index(g as u32))
///     }))
/// }
/// register_scope_key("gpu", 1, gpu_scope);
/// let s = Scope::spec().key("gpu", 3u32).worker(2).build().unwrap();
/// assert_eq!(s.as_exact().map(|p| (p.worker.0, p.index)), Some((2, 3)));
/// ```
pub fn register_scope_key(name: &str, precedence: i32, convert: ScopeKeyFn) {
    let mut keys = scope_keys().write().unwrap_or_else(|e| e.into_inner());
    keys.retain(|k| k.name != name);
    keys.push(ScopeKey {
        name: name.to_string(),
        precedence,
        convert,
    });
}

impl Scope {
    /// Every processor whose index (among processors of its kind in its process) is `index`;
    /// combine it with a kind and a worker to address one custom processor.
    pub fn index(index: u32) -> Scope {
        Scope::single(Filter {
            index: Some(index),
            ..Filter::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(worker: u32, thread: u32, default_enabled: bool) -> ProcessorInfo {
        ProcessorInfo {
            id: ProcessorId::thread(WorkerId(worker), thread),
            node: NodeId(0),
            default_enabled,
        }
    }

    #[test]
    fn membership() {
        let p = info(1, 2, true);
        let hidden = info(1, 3, false);
        assert!(Scope::any().contains(&p) && Scope::any().contains(&hidden));
        assert!(Scope::default().contains(&p) && !Scope::default().contains(&hidden));
        assert!(Scope::worker(1).contains(&p) && !Scope::worker(0).contains(&p));
        assert!(Scope::worker(1).thread(2).contains(&p));
        assert!(!Scope::worker(1).thread(3).contains(&p));
        assert!(Scope::node(NodeId(0)).contains(&p) && !Scope::node(NodeId(1)).contains(&p));
        assert!(!Scope::any().constrain(&Scope::worker(9)).contains(&p));
    }

    #[test]
    fn unions_drop_redundant_members() {
        let u = Scope::worker(1).union(&Scope::worker(1).thread(0));
        assert_eq!(u, Scope::worker(1));
        let u = Scope::any().union(&Scope::worker(3));
        assert!(u.is_any());
        let two = Scope::worker(1).union(&Scope::worker(2));
        assert_eq!(two.to_string(), "worker 1 ∪ worker 2");
    }

    #[test]
    fn intersection_is_exact_on_filters() {
        let a = Scope::worker(1).union(&Scope::worker(2));
        let b = Scope::worker(2).union(&Scope::worker(3));
        assert_eq!(a.constrain(&b), Scope::worker(2));
        assert!(a.constrain(&Scope::worker(4)).is_invalid());
        // default ∩ exact keeps both constraints
        let d = Scope::default().constrain(&Scope::worker(1).thread(0));
        assert!(d.contains(&info(1, 0, true)) && !d.contains(&info(1, 0, false)));
        assert!(d.is_subset(&Scope::default()));
        // invalid scopes stay invalid
        let bad = Scope::worker(1).constrain(&Scope::worker(2));
        assert!(bad.constrain(&Scope::any()).is_invalid());
        assert_eq!(bad.union(&Scope::worker(5)), Scope::worker(5));
    }
}
