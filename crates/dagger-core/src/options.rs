//! Per-task options, `with_options`, and per-function defaults.
//!
//! Where an option comes from, strongest first: the options given at the spawn site, then the
//! innermost [`with_options`] block (which also covers tasks spawned from inside tasks spawned
//! in it, at any depth), then the defaults registered for the function with
//! [`set_default_options`].

use crate::error::BoxError;
use crate::id::TaskId;
use crate::scope::Scope;
use crate::tls::{peek, CTX};
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// What a checkpoint or restore hook learns about the task it serves.
#[derive(Clone, Copy, Debug)]
pub struct TaskInfo<'a> {
    /// The task's id (unique within this run only).
    pub id: TaskId,
    /// The task's name: use it as the stable key of a checkpoint.
    pub name: Option<&'a str>,
}

pub(crate) type CheckpointFn = Arc<
    dyn Fn(&TaskInfo<'_>, &(dyn Any + Send + Sync)) -> Option<Result<(), BoxError>> + Send + Sync,
>;
pub(crate) type RestoreFn =
    Arc<dyn Fn(&TaskInfo<'_>, TypeId) -> Option<Box<dyn Any + Send>> + Send + Sync>;

/// Options of a task, or of every task spawned inside a [`with_options`] block.
///
/// Unset fields fall back to the enclosing `with_options` block, then to the function's
/// defaults, then to the runtime's defaults.
///
/// ```
/// use dagger_core::{Options, Scope, spawn_with};
/// let opts = Options::new().name("load").priority(2).scope(Scope::worker(0));
/// let t = spawn_with(opts, || 40 + 2);
/// assert_eq!(t.fetch().unwrap(), 42);
/// assert_eq!(t.name().as_deref(), Some("load"));
/// ```
#[derive(Clone, Default)]
pub struct Options {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) scope: Option<Scope>,
    pub(crate) compute_scope: Option<Scope>,
    pub(crate) result_scope: Option<Scope>,
    pub(crate) priority: Option<i32>,
    pub(crate) time_util: Option<Duration>,
    pub(crate) alloc_util: Option<u64>,
    pub(crate) occupancy: Option<f64>,
    pub(crate) allow_errors: Option<bool>,
    pub(crate) checkpoint: Option<CheckpointFn>,
    pub(crate) restore: Option<RestoreFn>,
}

impl Options {
    /// No option set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A name for logs, errors and checkpoint keys.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the task may run (unless `compute_scope` is given).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Where the task may run; takes precedence over `scope`.
    pub fn compute_scope(mut self, scope: Scope) -> Self {
        self.compute_scope = Some(scope);
        self
    }

    /// Where the task's result may live; results stay where they are computed, so this also
    /// narrows where the task runs.
    pub fn result_scope(mut self, scope: Scope) -> Self {
        self.result_scope = Some(scope);
        self
    }

    /// Among ready tasks, higher priority runs first (default 0; negative runs after
    /// everything else).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Expected run time; used by placement instead of the learned estimate.
    pub fn time_util(mut self, expected: Duration) -> Self {
        self.time_util = Some(expected);
        self
    }

    /// Expected peak memory of the task in bytes (a hint for memory-aware placement).
    pub fn alloc_util(mut self, bytes: u64) -> Self {
        self.alloc_util = Some(bytes);
        self
    }

    /// Fraction of a processor the task keeps busy, in (0, 1]; placement counts a queued task
    /// as `occupancy × expected time` of work. Values are clamped into [0, 1].
    pub fn occupancy(mut self, fraction: f64) -> Self {
        self.occupancy = Some(if fraction.is_nan() {
            1.0
        } else {
            fraction.clamp(0.0, 1.0)
        });
        self
    }

    /// With `false`, a failure of this task aborts what encloses it: the other tasks of its
    /// [`sync`](fn@crate::sync) group, or the rest of its lazy graph, are cancelled and the
    /// enclosing call reports this failure. With `true` (the default) a failure only fails
    /// the tasks that depend on it.
    pub fn allow_errors(mut self, allow: bool) -> Self {
        self.allow_errors = Some(allow);
        self
    }

    /// Saves the result of tasks producing a `T` after they succeed (e.g. to disk). Errors the
    /// hook returns are logged; the task still succeeds. Tasks producing other types ignore it.
    pub fn checkpoint<T, F>(mut self, save: F) -> Self
    where
        T: 'static,
        F: Fn(&TaskInfo<'_>, &T) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        self.checkpoint = Some(Arc::new(move |info, value| {
            value.downcast_ref::<T>().map(|v| save(info, v))
        }));
        self
    }

    /// Before running a task producing a `T`, asks `load` for a saved result; when it returns
    /// `Some`, the body is skipped. A panic in the hook is logged and the body runs.
    pub fn restore<T, F>(mut self, load: F) -> Self
    where
        T: Send + 'static,
        F: Fn(&TaskInfo<'_>) -> Option<T> + Send + Sync + 'static,
    {
        self.restore = Some(Arc::new(move |info, wanted| {
            if wanted != TypeId::of::<T>() {
                return None;
            }
            load(info).map(|v| Box::new(v) as Box<dyn Any + Send>)
        }));
        self
    }

    /// The name, if set.
    pub fn get_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The scope, if set.
    pub fn get_scope(&self) -> Option<&Scope> {
        self.scope.as_ref()
    }
    /// The compute scope, if set.
    pub fn get_compute_scope(&self) -> Option<&Scope> {
        self.compute_scope.as_ref()
    }
    /// The result scope, if set.
    pub fn get_result_scope(&self) -> Option<&Scope> {
        self.result_scope.as_ref()
    }
    /// The priority, if set.
    pub fn get_priority(&self) -> Option<i32> {
        self.priority
    }
    /// The expected run time, if set.
    pub fn get_time_util(&self) -> Option<Duration> {
        self.time_util
    }
    /// The expected memory use, if set.
    pub fn get_alloc_util(&self) -> Option<u64> {
        self.alloc_util
    }
    /// The occupancy, if set.
    pub fn get_occupancy(&self) -> Option<f64> {
        self.occupancy
    }
    /// Whether errors are allowed, if set.
    pub fn get_allow_errors(&self) -> Option<bool> {
        self.allow_errors
    }
    /// Whether a checkpoint hook is set.
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint.is_some()
    }
    /// Whether a restore hook is set.
    pub fn has_restore(&self) -> bool {
        self.restore.is_some()
    }

    /// True when no option is set.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.scope.is_none()
            && self.compute_scope.is_none()
            && self.result_scope.is_none()
            && self.priority.is_none()
            && self.time_util.is_none()
            && self.alloc_util.is_none()
            && self.occupancy.is_none()
            && self.allow_errors.is_none()
            && self.checkpoint.is_none()
            && self.restore.is_none()
    }

    /// `self` with every unset field taken from `base`.
    pub fn or(mut self, base: &Options) -> Options {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = base.$f.clone(); } )* };
        }
        fill!(
            name,
            scope,
            compute_scope,
            result_scope,
            priority,
            time_util,
            alloc_util,
            occupancy,
            allow_errors,
            checkpoint,
            restore
        );
        self
    }

    /// The scope the task may run in: `compute_scope`, else `scope`, else the default scope;
    /// narrowed by `result_scope`.
    pub(crate) fn execution_scope(&self) -> Option<Scope> {
        let compute = self.compute_scope.as_ref().or(self.scope.as_ref());
        match (compute, &self.result_scope) {
            (None, None) => None,
            (Some(c), None) => Some(c.clone()),
            (None, Some(r)) => Some(Scope::default().constrain(r)),
            (Some(c), Some(r)) => Some(c.constrain(r)),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Options");
        if let Some(v) = &self.name {
            d.field("name", v);
        }
        if let Some(v) = &self.scope {
            d.field("scope", v);
        }
        if let Some(v) = &self.compute_scope {
            d.field("compute_scope", v);
        }
        if let Some(v) = &self.result_scope {
            d.field("result_scope", v);
        }
        if let Some(v) = &self.priority {
            d.field("priority", v);
        }
        if let Some(v) = &self.time_util {
            d.field("time_util", v);
        }
        if let Some(v) = &self.alloc_util {
            d.field("alloc_util", v);
        }
        if let Some(v) = &self.occupancy {
            d.field("occupancy", v);
        }
        if let Some(v) = &self.allow_errors {
            d.field("allow_errors", v);
        }
        if self.checkpoint.is_some() {
            d.field("checkpoint", &"<hook>");
        }
        if self.restore.is_some() {
            d.field("restore", &"<hook>");
        }
        d.finish()
    }
}

struct Restore(Option<Arc<Options>>, Option<Arc<Options>>);

impl Drop for Restore {
    fn drop(&mut self) {
        CTX.with(|c| {
            c.options.set(self.0.take());
            c.view.set(self.1.take());
        });
    }
}

/// Runs `f` with `opts` applied to every task spawned inside it, including tasks spawned from
/// inside those tasks, at any depth. Blocks nest; inner settings win; options given at a spawn
/// site win over blocks.
///
/// Tasks sent to worker processes carry the block's name, priority, hints and
/// `allow_errors` there and pass them on to the tasks they spawn; scopes and checkpoint hooks
/// apply in the spawning process only.
///
/// ```
/// use dagger_core::{with_options, get_options, spawn, Options};
/// let t = with_options(Options::new().priority(5), || {
///     spawn(|| spawn(|| get_options().get_priority()).fetch().unwrap())
/// });
/// assert_eq!(t.fetch().unwrap(), Some(5));
/// ```
pub fn with_options<R>(opts: Options, f: impl FnOnce() -> R) -> R {
    let (prev_options, prev_view) = CTX.with(|c| {
        let options = peek(&c.options);
        let view = peek(&c.view).or_else(|| options.clone());
        let new_options = match &options {
            Some(outer) => opts.clone().or(outer),
            None => opts.clone(),
        };
        let new_view = match &view {
            Some(outer) => opts.or(outer),
            None => opts,
        };
        (
            c.options.replace(Some(Arc::new(new_options))),
            c.view.replace(Some(Arc::new(new_view))),
        )
    });
    let _restore = Restore(prev_options, prev_view);
    f()
}

/// The options in force here: inside a task, the options it runs with; inside a
/// [`with_options`] block, the block's on top of those; elsewhere, no options.
pub fn get_options() -> Options {
    CTX.with(|c| peek(&c.view).or_else(|| peek(&c.options)))
        .map(|o| (*o).clone())
        .unwrap_or_default()
}

static HAS_DEFAULTS: AtomicBool = AtomicBool::new(false);

fn defaults() -> &'static RwLock<HashMap<TypeId, Arc<Options>>> {
    static DEFAULTS: OnceLock<RwLock<HashMap<TypeId, Arc<Options>>>> = OnceLock::new();
    DEFAULTS.get_or_init(Default::default)
}

/// Sets default options for every task that calls `function` (the reference's `@option`).
/// For a generic function, name the instance: `set_default_options(f::<i32>, ..)`.
/// Spawn-site options and [`with_options`] blocks override these defaults.
///
/// ```
/// use dagger_core::{set_default_options, Options};
/// fn important(x: u32) -> u32 { x }
/// set_default_options(important, Options::new().priority(10));
/// ```
pub fn set_default_options<F: 'static>(function: F, opts: Options) {
    let _ = function;
    defaults()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(TypeId::of::<F>(), Arc::new(opts));
    HAS_DEFAULTS.store(true, Ordering::Release);
}

/// Removes the defaults registered for `function`.
pub fn clear_default_options<F: 'static>(function: F) {
    let _ = function;
    defaults()
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&TypeId::of::<F>());
}

/// How many distinct option sets [`shared`] keeps per thread.
const SHARED_PER_THREAD: usize = 4;

thread_local! {
    /// The option sets this thread's spawns used last (see [`shared`]).
    static RECENT: std::cell::RefCell<([Option<Arc<Options>>; SHARED_PER_THREAD], usize)> =
        const { std::cell::RefCell::new(([const { None }; SHARED_PER_THREAD], 0)) };
}

/// `o` in an `Arc`, the same one as for an equal option set spawned from this thread lately.
///
/// A program that spawns with options mostly repeats a few (a scope per worker, a name per
/// function). A copy per task is allocated by the spawning thread and read and freed by
/// whichever thread finishes the task, long after: four cold cache lines per task, and its
/// scope's. One shared copy stays in cache. Sets with hooks are never shared (closures
/// cannot be compared).
pub(crate) fn shared(o: Options) -> Arc<Options> {
    if o.checkpoint.is_some() || o.restore.is_some() {
        return Arc::new(o);
    }
    // `try_with`: a spawn from a thread-local destructor finds the cache gone.
    let found = RECENT.try_with(|r| {
        let r = r.try_borrow().ok()?;
        r.0.iter().flatten().find(|s| same_values(s, &o)).cloned()
    });
    if let Ok(Some(found)) = found {
        return found;
    }
    let made = Arc::new(o);
    let _ = RECENT.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            let (sets, next) = &mut *r;
            sets[*next] = Some(made.clone());
            *next = (*next + 1) % SHARED_PER_THREAD;
        }
    });
    made
}

/// Whether two option sets set the same values, hooks aside ([`shared`] keeps none with
/// hooks).
fn same_values(a: &Options, b: &Options) -> bool {
    a.name == b.name
        && a.scope == b.scope
        && a.compute_scope == b.compute_scope
        && a.result_scope == b.result_scope
        && a.priority == b.priority
        && a.time_util == b.time_util
        && a.alloc_util == b.alloc_util
        && a.occupancy.map(f64::to_bits) == b.occupancy.map(f64::to_bits)
        && a.allow_errors == b.allow_errors
}

pub(crate) fn defaults_for(func: TypeId) -> Option<Arc<Options>> {
    if !HAS_DEFAULTS.load(Ordering::Acquire) {
        return None;
    }
    defaults()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&func)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_option_sets_share_one_copy_and_others_do_not() {
        let a = shared(Options::new().scope(Scope::worker(1)));
        let b = shared(Options::new().scope(Scope::worker(1)));
        assert!(Arc::ptr_eq(&a, &b), "equal sets share");
        let c = shared(Options::new().scope(Scope::worker(2)));
        assert!(!Arc::ptr_eq(&a, &c), "another scope");
        let d = shared(Options::new().scope(Scope::worker(1)).priority(3));
        assert!(!Arc::ptr_eq(&a, &d), "another field");
        assert_eq!(d.get_priority(), Some(3));
        let e = shared(Options::new().occupancy(0.5));
        assert!(Arc::ptr_eq(&e, &shared(Options::new().occupancy(0.5))));
        // Hooks cannot be compared: never shared.
        let hooked = || {
            Options::new()
                .scope(Scope::worker(1))
                .checkpoint(|_, _: &u8| Ok(()))
        };
        assert!(!Arc::ptr_eq(&shared(hooked()), &shared(hooked())));
        // More sets than a thread keeps: still correct, just not shared.
        let many: Vec<_> = (1..=2 * SHARED_PER_THREAD as u32)
            .map(|w| shared(Options::new().scope(Scope::worker(w))))
            .collect();
        for (w, o) in (1..).zip(&many) {
            assert_eq!(o.scope, Some(Scope::worker(w)));
        }
    }

    #[test]
    fn or_fills_only_unset_fields() {
        let a = Options::new().priority(1).name("a");
        let b = Options::new()
            .priority(2)
            .scope(Scope::worker(1))
            .allow_errors(false);
        let m = a.or(&b);
        assert_eq!(m.get_priority(), Some(1));
        assert_eq!(m.get_name(), Some("a"));
        assert_eq!(m.get_scope(), Some(&Scope::worker(1)));
        assert_eq!(m.get_allow_errors(), Some(false));
        assert!(Options::new().is_empty());
        assert!(!m.is_empty());
    }

    #[test]
    fn execution_scope_combines_compute_and_result() {
        assert_eq!(Options::new().execution_scope(), None);
        let o = Options::new()
            .scope(Scope::worker(0))
            .compute_scope(Scope::worker(1));
        assert_eq!(o.execution_scope(), Some(Scope::worker(1)));
        let o = Options::new().result_scope(Scope::worker(2));
        assert_eq!(
            o.execution_scope(),
            Some(Scope::default().constrain(&Scope::worker(2)))
        );
        let o = Options::new()
            .scope(Scope::worker(1))
            .result_scope(Scope::worker(2));
        assert!(o.execution_scope().unwrap().is_invalid());
    }

    #[test]
    fn occupancy_is_clamped() {
        assert_eq!(Options::new().occupancy(-1.0).get_occupancy(), Some(0.0));
        assert_eq!(
            Options::new().occupancy(f64::NAN).get_occupancy(),
            Some(1.0)
        );
        assert_eq!(Options::new().occupancy(0.25).get_occupancy(), Some(0.25));
    }

    #[test]
    fn debug_lists_set_fields_only() {
        let o = Options::new().priority(3).checkpoint(|_, _: &u8| Ok(()));
        assert_eq!(
            format!("{o:?}"),
            "Options { priority: 3, checkpoint: \"<hook>\" }"
        );
    }
}
