//! Encoding a call for the worker process it goes to.
//!
//! What a call carries depends on where it goes: an input being made on that worker is named
//! by `WireArg::After`, one being made on another worker by `WireArg::AfterOn` (the call is
//! sent ahead of them, see [`super::ahead`]); a small value
//! whose encoding is kept here travels inside the call, unless that worker holds it; other
//! values are named by where they are (`WireArg::Ref`) and fetched from there. A call encoded
//! for a lineage (to make a lost value again) names every input by where it is or was.

use crate::remote::data::{Input, RemoteData};
use crate::remote::wire::{ValueBytes, WireArg, WireCall};
use crate::task::{Header, JobRef};
use std::cell::Cell;
use std::sync::{Arc, Weak};

/// A call and the remote values behind its `Ref` arguments.
type Encoded = Result<(WireCall, Vec<Input>), crate::BoxError>;

thread_local! {
    /// The worker a call being encoded on this thread goes to (0: none known).
    static TARGET: Cell<u32> = const { Cell::new(0) };
    /// Whether the call being encoded on this thread is for a lineage.
    static LINEAGE: Cell<bool> = const { Cell::new(false) };
}

/// The call of a task sent ahead, encoded again once it ended, for its lineage: its inputs
/// are all made by then, but may have been lost since (they are then named by where they
/// were, and made again with the value if it is lost too).
pub(crate) fn lineage_call(job: &JobRef) -> Encoded {
    let _mode = Mode::set(0, true);
    job.encode_remote()
}

/// The lineage of a task sent ahead, once it ended, made from the arguments it was sent
/// with (`args`, with `inputs` behind its `Ref` arguments) rather than by encoding its call
/// again: each argument naming an input made on a worker (`After`, `AfterOn`) is made to
/// name that input's result instead, in place, by value when the head keeps its encoding
/// (as a lineage keeps small inputs), else by where it is. Returns the inputs behind the
/// `Ref` arguments then; `None` if an input has no result in another process ready (the
/// arguments are then part changed: encode the call again).
pub(crate) fn ahead_lineage(
    job: &JobRef,
    args: &mut [WireArg],
    inputs: &[Input],
) -> Option<Vec<Input>> {
    let crate::sched::Placement::Anywhere(a) = &job.header().placement else {
        return None;
    };
    let made = |task: u64| -> Option<Arc<RemoteData>> {
        a.inputs
            .iter()
            .filter_map(Weak::upgrade)
            .find(|i| i.header().id.get() == task)?
            .result_data()
    };
    let mut old = inputs.iter();
    let mut new = Vec::with_capacity(inputs.len());
    let mut complete = true;
    WireArg::each_mut(args, &mut |arg| match arg {
        WireArg::Ref(_) => new.extend(old.next().cloned()),
        WireArg::After(task) | WireArg::AfterOn { task, .. } => {
            let Some(data) = made(*task) else {
                complete = false;
                return;
            };
            if let Some(small) = data.small() {
                *arg = WireArg::Value(small.clone());
            } else if let Ok(loc) = data.try_location() {
                new.push(Input {
                    data: Arc::downgrade(&data),
                    lineage: data.lineage().cloned(),
                });
                *arg = WireArg::Ref(loc);
            } else {
                complete = false;
            }
        }
        _ => {}
    });
    (complete && old.next().is_none()).then_some(new)
}

/// How calls are encoded on this thread until it drops (then as before, also when a value's
/// `Serialize` panics).
struct Mode {
    target: u32,
    lineage: bool,
}

impl Mode {
    fn set(target: u32, lineage: bool) -> Mode {
        Mode {
            target: TARGET.with(|t| t.replace(target)),
            lineage: LINEAGE.with(|l| l.replace(lineage)),
        }
    }
}

impl Drop for Mode {
    fn drop(&mut self) {
        TARGET.with(|t| t.set(self.target));
        LINEAGE.with(|l| l.set(self.lineage));
    }
}

/// Whether the call being encoded on this thread is for a lineage.
pub(crate) fn for_lineage() -> bool {
    LINEAGE.with(Cell::get)
}

/// Encodes the call of `job` to send it to worker `target`: inputs being made there are
/// named by `After` (the call is sent ahead of them), and small values held elsewhere travel
/// inside the call (see [`small_value`]).
pub(crate) fn encode_for(target: u32, job: &JobRef) -> Encoded {
    let _mode = Mode::set(target, false);
    job.encode_remote()
}

/// While a call is encoded for a worker: the encoding of `data`, an input of the call, if it
/// is small, kept here, and held by another process (the call carries it instead of the
/// worker fetching it; an input held by that worker is read there, shared).
pub(crate) fn small_value(data: &RemoteData) -> Option<&ValueBytes> {
    let target = TARGET.with(Cell::get);
    if target == 0 {
        return None;
    }
    let small = data.small()?;
    match data.try_location() {
        Ok(loc) if loc.worker == target => None,
        _ => Some(small),
    }
}

/// While a call is encoded to be sent ahead to a worker: how it names the result of task
/// `h` if that is being made on a worker: `After` on the same worker, `AfterOn` on another.
pub(crate) fn after_arg(h: &Header) -> Option<WireArg> {
    let target = TARGET.with(Cell::get);
    if target == 0 || h.state.is_done() {
        return None;
    }
    let (worker, seq) = super::ahead::feeding_on(h)?;
    let task = h.id.get();
    Some(if worker == target {
        WireArg::After(task)
    } else {
        WireArg::AfterOn { task, worker, seq }
    })
}
