//! Values that live in other processes, as the process that owns them sees them: where they
//! are now, and how to make them again if the process holding them dies (their lineage).

use super::wire::{Location, ValueBytes, WireCall};
use crate::error::BoxError;
use crate::scope::Scope;
use crate::task::JobRef;
use std::sync::{Arc, Condvar, Mutex, Weak};

/// Reaches the processes that hold this process's remote values.
pub trait DataLink: Send + Sync {
    /// The encoded bytes of the value at `loc` (blocks until they arrive).
    fn fetch(&self, loc: Location) -> Result<bytes::Bytes, BoxError>;
    /// Releases the value at `loc` (nobody here needs it any more).
    fn free(&self, loc: Location);
    /// Starts making `data` again (it was lost); the link later calls
    /// [`RemoteData::set_ready`] or [`RemoteData::set_failed`].
    fn recover(&self, data: Arc<RemoteData>) {
        data.set_failed("it cannot be recomputed here".into());
    }
}

/// How a remote value was made: the call, where it may run, and its inputs.
pub struct Lineage {
    /// The call as it was sent (its `Ref` arguments point where the inputs were then).
    pub call: WireCall,
    /// Where the call may run.
    pub scope: Scope,
    /// The inputs behind the call's `Ref` arguments, in the order they appear (depth first).
    pub inputs: Vec<Input>,
    /// What the value is, for messages.
    pub label: Label,
    /// The value made again from this lineage after the original was dropped, while
    /// someone holds it: values needed by several recomputations are made once.
    remade: Mutex<Weak<RemoteData>>,
    /// Generations of lineage behind it, itself included (at most [`MAX_LINEAGE_DEPTH`]).
    depth: u32,
    /// Whether its inputs' lineages were forgotten to keep within [`MAX_LINEAGE_DEPTH`].
    cut: bool,
}

/// Generations of lineage kept behind a value. A longer history is cut there: otherwise a
/// program iterating over large values (those not kept on the head, which lineages carry
/// by value) would keep every call it ever made on the head. A lost value whose remaking
/// needs an input from before the cut that nobody holds any more fails, saying so.
pub const MAX_LINEAGE_DEPTH: u32 = 4096;

impl Lineage {
    /// How a value made by `call`, in `scope`, from `inputs` can be made again.
    pub fn new(call: WireCall, scope: Scope, inputs: Vec<Input>, label: Label) -> Lineage {
        let mut lineage = Lineage::unbounded(call, scope, inputs, label);
        lineage.bound();
        lineage
    }

    /// Like [`Lineage::new`], with its history not bounded yet: for a caller that replaces
    /// its inputs at once ([`Lineage::set_inputs`], which bounds it).
    pub(crate) fn unbounded(
        call: WireCall,
        scope: Scope,
        inputs: Vec<Input>,
        label: Label,
    ) -> Lineage {
        Lineage {
            call,
            scope,
            inputs,
            label,
            remade: Mutex::new(Weak::new()),
            depth: 1,
            cut: false,
        }
    }

    /// Replaces the call's arguments and its inputs (one per `Ref` argument, in order).
    pub fn set_inputs(&mut self, args: Vec<super::wire::WireArg>, inputs: Vec<Input>) {
        self.call.args = args;
        self.inputs = inputs;
        self.bound();
    }

    /// Whether the lineages of its inputs were forgotten (see [`MAX_LINEAGE_DEPTH`]).
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Keeps the history behind it bounded: small inputs by value, at most
    /// [`MAX_LINEAGE_DEPTH`] generations.
    fn bound(&mut self) {
        self.keep_small_inputs();
        let deepest = self
            .inputs
            .iter()
            .filter_map(|i| i.lineage.as_ref().map(|l| l.depth))
            .max()
            .unwrap_or(0);
        self.cut = deepest >= MAX_LINEAGE_DEPTH;
        if self.cut {
            for input in &mut self.inputs {
                input.lineage = None;
            }
            self.depth = 1;
        } else {
            self.depth = deepest + 1;
        }
    }

    /// Puts the inputs whose encoding the head keeps (small ones) into the call itself, and
    /// forgets their lineages. Otherwise every value made in a chain of tasks would keep the
    /// lineage of the whole chain alive, and a long iterative program holding only its
    /// latest value would grow without bound.
    fn keep_small_inputs(&mut self) {
        use super::wire::WireArg;
        let mut refs = 0;
        WireArg::each(&self.call.args, &mut |a| {
            refs += usize::from(matches!(a, WireArg::Ref(_)))
        });
        if refs != self.inputs.len() {
            return;
        }
        let small: Vec<Option<ValueBytes>> = self
            .inputs
            .iter()
            .map(|i| i.data.upgrade().and_then(|d| d.small().cloned()))
            .collect();
        if small.iter().all(Option::is_none) {
            return;
        }
        let mut i = 0;
        WireArg::each_mut(&mut self.call.args, &mut |a| {
            if matches!(a, WireArg::Ref(_)) {
                if let Some(bytes) = &small[i] {
                    *a = WireArg::Value(bytes.clone());
                }
                i += 1;
            }
        });
        let mut kept = small.iter();
        self.inputs
            .retain(|_| kept.next().is_some_and(Option::is_none));
    }

    /// The value this lineage makes, to be made again: the one already being made if any.
    pub fn remake(self: &Arc<Self>, link: &Arc<dyn DataLink>) -> Arc<RemoteData> {
        let mut slot = self.remade.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = slot.upgrade() {
            return d;
        }
        let d = RemoteData::unmade(link.clone(), self.clone(), self.label.clone());
        *slot = Arc::downgrade(&d);
        d
    }
}

impl Drop for Lineage {
    /// Unlinks the lineages only this one holds one at a time: a chain of tasks has a
    /// lineage as long as itself, and dropping it recursively would overflow the stack.
    fn drop(&mut self) {
        let mut unlinked: Vec<Arc<Lineage>> = self
            .inputs
            .iter_mut()
            .filter_map(|i| i.lineage.take())
            .collect();
        while let Some(l) = unlinked.pop() {
            if let Some(mut last) = Arc::into_inner(l) {
                unlinked.extend(last.inputs.iter_mut().filter_map(|i| i.lineage.take()));
            }
        }
    }
}

/// An input of a call: its value if still alive, and how to make it again otherwise.
#[derive(Clone)]
pub struct Input {
    /// The value, while someone holds it.
    pub data: Weak<RemoteData>,
    /// Its lineage (`None`: it cannot be made again).
    pub lineage: Option<Arc<Lineage>>,
}

enum State {
    Ready(Location),
    /// The process holding it died; `worker` was that process.
    Lost {
        worker: u32,
        waiting: Vec<JobRef>,
    },
    /// Being made again.
    Recovering {
        worker: u32,
        waiting: Vec<JobRef>,
    },
    /// It cannot be made again (`worker`: the lost worker it lived on, if it was lost).
    Failed {
        why: String,
        worker: Option<u32>,
    },
}

/// A value in another process. Dropping the last reference frees it there.
pub struct RemoteData {
    link: Arc<dyn DataLink>,
    state: Mutex<State>,
    changed: Condvar,
    notify: tokio::sync::Notify,
    lineage: Option<Arc<Lineage>>,
    label: Label,
    /// Its encoding, kept here too when it is small: reading it needs no round trip, and a
    /// call sent to another worker carries it.
    small: std::sync::OnceLock<ValueBytes>,
}

/// What a remote value is, for messages (made into text only when a message needs it).
#[derive(Clone, Debug)]
pub enum Label {
    /// The result of a task: its id and name.
    Task(u64, Option<Arc<str>>),
    /// The result of a task whose name is fixed at compile time.
    NamedTask(u64, &'static str),
    /// Anything else.
    Text(String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Task(id, None) => write!(f, "the result of task {id}"),
            Label::Task(id, Some(n)) => write!(f, "the result of task {id} `{n}`"),
            Label::NamedTask(id, n) => write!(f, "the result of task {id} `{n}`"),
            Label::Text(t) => f.write_str(t),
        }
    }
}

/// Why a remote value cannot be used right now.
#[derive(Clone, Debug)]
pub enum NotReady {
    /// It is being made again; try later.
    Pending,
    /// It is gone for good.
    Failed(String),
}

/// An input of a call is being recovered: the call has to wait (carried as an error).
#[derive(Clone)]
pub struct PendingInput(pub Arc<RemoteData>);

impl std::fmt::Debug for PendingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingInput({})", self.0.label)
    }
}

impl std::fmt::Display for PendingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is being recovered", self.0.label)
    }
}

impl std::error::Error for PendingInput {}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RemoteData {
    /// A value at `loc`, reached (and freed when dropped) through `link`; `label` names it in
    /// errors (e.g. "the result of task 42 `load`").
    pub fn new(
        loc: Location,
        link: Arc<dyn DataLink>,
        lineage: Option<Arc<Lineage>>,
        label: Label,
    ) -> Arc<RemoteData> {
        Arc::new(RemoteData {
            link,
            state: Mutex::new(State::Ready(loc)),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            lineage,
            label,
            small: std::sync::OnceLock::new(),
        })
    }

    /// A value that has to be made (again) from `lineage` before it can be used: an input of
    /// a recomputation that nobody held any more.
    pub fn unmade(link: Arc<dyn DataLink>, lineage: Arc<Lineage>, label: Label) -> Arc<RemoteData> {
        Arc::new(RemoteData {
            link,
            state: Mutex::new(State::Lost {
                worker: u32::MAX,
                waiting: Vec::new(),
            }),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            lineage: Some(lineage),
            label,
            small: std::sync::OnceLock::new(),
        })
    }

    /// What the value is, for messages.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// How it was made.
    pub fn lineage(&self) -> Option<&Arc<Lineage>> {
        self.lineage.as_ref()
    }

    /// Where it is, if it is usable now.
    pub fn try_location(&self) -> Result<Location, NotReady> {
        match &*lock(&self.state) {
            State::Ready(loc) => Ok(*loc),
            State::Failed { why, .. } => Err(NotReady::Failed(why.clone())),
            _ => Err(NotReady::Pending),
        }
    }

    /// Where it is, waiting (and starting its recovery) if it was lost. Blocks: not for the
    /// I/O thread.
    pub fn location(self: &Arc<Self>) -> Result<Location, String> {
        self.start_recovery();
        let mut state = lock(&self.state);
        loop {
            match &*state {
                State::Ready(loc) => return Ok(*loc),
                State::Failed { why, .. } => return Err(why.clone()),
                _ => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Waits until the value is no longer known to be at `loc` (lost, being recovered, moved)
    /// or `timeout` passes; true if it changed.
    pub fn wait_moved(&self, loc: Location, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = lock(&self.state);
        loop {
            if !matches!(&*state, State::Ready(l) if *l == loc) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the value is no longer known to be at `loc`.
    pub async fn moved(&self, loc: Location) {
        loop {
            let notified = self.notify.notified();
            if !matches!(&*lock(&self.state), State::Ready(l) if *l == loc) {
                return;
            }
            notified.await;
        }
    }

    /// Like [`location`](Self::location), for async code.
    pub async fn location_async(self: &Arc<Self>) -> Result<Location, String> {
        self.start_recovery();
        loop {
            let notified = self.notify.notified();
            match &*lock(&self.state) {
                State::Ready(loc) => return Ok(*loc),
                State::Failed { why, .. } => return Err(why.clone()),
                _ => {}
            }
            notified.await;
        }
    }

    /// The process holding it died. Returns false if it was not there (or already lost).
    pub fn mark_lost(&self, worker: u32) -> bool {
        let mut state = lock(&self.state);
        match &*state {
            State::Ready(loc) if loc.worker == worker => {
                *state = State::Lost {
                    worker,
                    waiting: Vec::new(),
                };
                true
            }
            _ => false,
        }
    }

    /// The worker it lived on when it was lost (for messages; also once it could not be
    /// made again).
    pub fn lost_on(&self) -> Option<u32> {
        match &*lock(&self.state) {
            State::Lost { worker, .. } | State::Recovering { worker, .. }
                if *worker != u32::MAX =>
            {
                Some(*worker)
            }
            State::Failed { worker, .. } => *worker,
            _ => None,
        }
    }

    /// Starts recovering it if it is lost and nobody started yet.
    pub fn start_recovery(self: &Arc<Self>) {
        let start = {
            let mut state = lock(&self.state);
            match &mut *state {
                State::Lost { worker, waiting } => {
                    let waiting = std::mem::take(waiting);
                    *state = State::Recovering {
                        worker: *worker,
                        waiting,
                    };
                    true
                }
                _ => false,
            }
        };
        if start {
            self.link.recover(self.clone());
        }
    }

    /// Runs `job` again once the value is usable (true), or at once if it already is or is
    /// gone for good (false: the caller goes on).
    pub(crate) fn defer(self: &Arc<Self>, job: JobRef) -> bool {
        {
            let mut state = lock(&self.state);
            match &mut *state {
                State::Lost { waiting, .. } | State::Recovering { waiting, .. } => {
                    waiting.push(job)
                }
                _ => return false,
            }
        }
        self.start_recovery();
        true
    }

    fn settle(&self, new: State) {
        let waiting = {
            let mut state = lock(&self.state);
            let old = std::mem::replace(&mut *state, new);
            match old {
                State::Lost { waiting, .. } | State::Recovering { waiting, .. } => waiting,
                _ => Vec::new(),
            }
        };
        self.changed.notify_all();
        self.notify.notify_waiters();
        for job in waiting {
            crate::sched::schedule(job);
        }
    }

    /// It was made again (or moved) and is at `loc` now.
    pub fn set_ready(&self, loc: Location) {
        self.settle(State::Ready(loc));
    }

    /// A copy of it was made at `to`: use that from now on, if it is still at `from`.
    /// Returns false (and changes nothing) otherwise.
    pub fn relocate(&self, from: Location, to: Location) -> bool {
        if !matches!(&*lock(&self.state), State::Ready(l) if *l == from) {
            return false;
        }
        self.settle(State::Ready(to));
        true
    }

    /// Keeps `bytes`, its (small) encoding, here too.
    pub fn keep_small(&self, bytes: ValueBytes) {
        let _ = self.small.set(bytes);
    }

    /// Its encoding, if it is small and kept here.
    pub fn small(&self) -> Option<&ValueBytes> {
        self.small.get()
    }

    /// It cannot be made again.
    pub fn set_failed(&self, why: String) {
        let worker = self.lost_on();
        self.settle(State::Failed { why, worker });
    }

    pub(crate) fn link(&self) -> &Arc<dyn DataLink> {
        &self.link
    }
}

impl Drop for RemoteData {
    fn drop(&mut self) {
        if let State::Ready(loc) = &*lock(&self.state) {
            self.link.free(*loc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::wire::WireArg;

    struct NoLink;
    impl DataLink for NoLink {
        fn fetch(&self, _: Location) -> Result<bytes::Bytes, BoxError> {
            Err("no link".into())
        }
        fn free(&self, _: Location) {}
    }

    fn value(id: u64, small: Option<&[u8]>, lineage: Option<Arc<Lineage>>) -> Arc<RemoteData> {
        let loc = Location {
            worker: 1,
            id,
            bytes: 8,
        };
        let d = RemoteData::new(
            loc,
            Arc::new(NoLink),
            lineage,
            Label::Text(format!("v{id}")),
        );
        if let Some(b) = small {
            d.keep_small(ValueBytes::from(b));
        }
        d
    }

    fn lineage_of(inputs: &[&Arc<RemoteData>]) -> Lineage {
        let args = vec![WireArg::Many(
            inputs
                .iter()
                .map(|d| WireArg::Ref(d.try_location().unwrap()))
                .collect(),
        )];
        let call = WireCall {
            func: 0,
            args,
            thread: None,
            options: Default::default(),
        };
        let inputs = inputs
            .iter()
            .map(|d| Input {
                data: Arc::downgrade(d),
                lineage: d.lineage().cloned(),
            })
            .collect();
        Lineage::new(call, Scope::default(), inputs, Label::Text("made".into()))
    }

    #[test]
    fn a_lineage_carries_small_inputs_and_forgets_their_lineages() {
        let root = Arc::new(lineage_of(&[]));
        let small = value(1, Some(b"tiny"), Some(root.clone()));
        let large = value(2, None, Some(root.clone()));
        let l = lineage_of(&[&small, &large]);
        let WireArg::Many(args) = &l.call.args[0] else {
            panic!("{:?}", l.call.args)
        };
        assert_eq!(args[0], WireArg::Value(b"tiny"[..].into()));
        assert!(matches!(args[1], WireArg::Ref(loc) if loc.id == 2));
        assert_eq!(
            l.inputs.len(),
            1,
            "only the large input is named by its lineage"
        );
        assert!(l.inputs[0]
            .data
            .upgrade()
            .is_some_and(|d| Arc::ptr_eq(&d, &large)));
        // Only `large` (and this test) still hold the root lineage.
        assert_eq!(Arc::strong_count(&root), 4);
    }

    #[test]
    fn the_history_behind_a_value_is_cut_after_max_lineage_depth_generations() {
        let first = Arc::new(lineage_of(&[]));
        let mut last = value(0, None, Some(first.clone()));
        let mut cut_at = Vec::new();
        for id in 1..=2 * MAX_LINEAGE_DEPTH as u64 + 1 {
            let l = Arc::new(lineage_of(&[&last]));
            if l.is_cut() {
                cut_at.push(id);
            }
            last = value(id, None, Some(l));
        }
        assert_eq!(
            cut_at,
            [MAX_LINEAGE_DEPTH as u64, 2 * MAX_LINEAGE_DEPTH as u64],
            "a chain is cut every MAX_LINEAGE_DEPTH generations"
        );
        // Only the test holds the first lineage now: the history before the cuts is gone.
        assert_eq!(Arc::strong_count(&first), 1);
    }

    #[test]
    fn a_long_chain_of_lineages_drops_without_recursing() {
        let mut last = value(0, None, None);
        for id in 1..200_000 {
            let l = Arc::new(lineage_of(&[&last]));
            last = value(id, None, Some(l));
        }
        drop(last);
    }
}
