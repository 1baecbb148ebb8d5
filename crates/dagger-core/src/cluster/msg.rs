//! The messages processes of a cluster exchange (postcard-encoded, one per transport message).

use crate::remote::wire::{Location, ValueBytes, WireArg, WireCall};
use serde::{Deserialize, Serialize};

/// How a remote task failed (mirrors [`ErrorKind`](crate::ErrorKind)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FailKind {
    Failed,
    Panicked,
    DependencyFailed,
    Cancelled,
    Scheduling,
    Runtime,
    /// An input held by this process could not be fetched (the call may be retried once the
    /// input is made again).
    InputLost(u32),
    /// The call was sent ahead of an input that was not made on the worker after all (it
    /// failed there, or was taken back to run elsewhere): place the call again once the input
    /// is made.
    InputMissing,
}

impl FailKind {
    pub(crate) fn from_kind(k: crate::ErrorKind) -> FailKind {
        use crate::ErrorKind as K;
        match k {
            K::Failed => FailKind::Failed,
            K::Panicked => FailKind::Panicked,
            K::DependencyFailed => FailKind::DependencyFailed,
            K::Cancelled => FailKind::Cancelled,
            K::Scheduling => FailKind::Scheduling,
            _ => FailKind::Runtime,
        }
    }

    pub(crate) fn kind(self) -> crate::ErrorKind {
        use crate::ErrorKind as K;
        match self {
            FailKind::Failed => K::Failed,
            FailKind::Panicked => K::Panicked,
            FailKind::DependencyFailed => K::DependencyFailed,
            FailKind::Cancelled => K::Cancelled,
            FailKind::Scheduling => K::Scheduling,
            FailKind::Runtime | FailKind::InputLost(_) | FailKind::InputMissing => K::Runtime,
        }
    }
}

/// Another process of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PeerInfo {
    pub(crate) id: u32,
    /// Where it accepts connections from other processes.
    pub(crate) addr: String,
    /// Its TLS certificate fingerprint, when TLS is on.
    pub(crate) fingerprint: Option<String>,
}

/// A task to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    /// The task's id on the head.
    pub(crate) task: u64,
    pub(crate) call: WireCall,
    /// Calls may be sent ahead of this one (with [`WireArg::After`]
    /// arguments naming it): the worker keeps track of it until its result is freed.
    pub(crate) feeds: bool,
}

/// A task that ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) task: u64,
    pub(crate) result: Result<Location, (FailKind, String)>,
    /// Run time of the body in nanoseconds.
    pub(crate) run_ns: u64,
    /// The result's encoding, when it is small (see
    /// [`SMALL_VALUE`](crate::remote::functions::SMALL_VALUE)).
    pub(crate) small: Option<ValueBytes>,
}

/// What a worker reports about itself on request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Values held for other processes.
    pub live_values: u64,
    /// Task results held in the process (its own tasks included).
    pub live_results: u64,
    /// Resident memory in bytes (0 where unknown).
    pub rss_bytes: u64,
    /// Tasks it is running for the head.
    pub running: u64,
    /// Tasks the head sent it ahead of their inputs (started once the worker made them
    /// itself, without a round trip to the head), since it started.
    pub sent_ahead: u64,
    /// Calls sent ahead of an input that was not made here after all (it failed, was taken
    /// back to run elsewhere, or its worker left), given back for the head to place again
    /// once the input is made, since it started.
    pub placed_again: u64,
    /// Notes that a task awaited here was made on another worker that came through this
    /// worker's inbox, rings of memory shared with workers of the same host (rather than on
    /// a connection), since it started.
    pub inbox_notes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Msg {
    // worker -> head, first message
    Join {
        threads: u32,
        addr: String,
        fingerprint: Option<String>,
        hostname: String,
        pid: u32,
    },
    // head -> worker
    Welcome {
        id: u32,
        node: u32,
        peers: Vec<PeerInfo>,
    },
    PeerJoined(PeerInfo),
    PeerLeft(u32),
    Run(Vec<Run>),
    Free(Vec<u64>),
    Cancel(Vec<u64>),
    StatsRequest(u64),
    Shutdown,
    // worker -> head
    Done(Vec<Done>),
    Stats(u64, WorkerStats),
    // both ways
    Ping(u64),
    Pong(u64),
    Fetch {
        req: u64,
        id: u64,
    },
    /// The answer to a fetch: the next transport message holds the encoded value, `len`
    /// bytes long (the receiver reads it into one buffer of that size).
    Data {
        req: u64,
        len: u64,
    },
    DataError {
        req: u64,
        message: String,
    },
    /// Keep a value: the next transport message holds its encoded bytes. Answered by
    /// `Stored` (or `DataError`).
    Put {
        req: u64,
    },
    /// Fetch the value at `from` from the process holding it and keep a copy. Answered by
    /// `Stored` (or `DataError`).
    Pull {
        req: u64,
        from: Location,
    },
    /// The answer to `Put` or `Pull`: where the value is kept now.
    Stored {
        req: u64,
        loc: Location,
    },
    // head -> worker: give back these tasks if they have not started (work stealing)
    Steal(Vec<u64>),
    // worker -> head: the tasks of a `Steal` it gave back (it will not run them)
    Stolen(Vec<u64>),
    /// Run a task of a data-dependency region: the arguments marked in `writes` are values
    /// this process holds that the function changes in place. Answered by `Ran` or
    /// `RanError`, or, with `keep`, by `RanKept` (the result stays in this process).
    RunInPlace {
        req: u64,
        call: WireCall,
        writes: Vec<bool>,
        keep: bool,
    },
    /// The answer to `RunInPlace`: the next transport message holds the encoded result.
    Ran {
        req: u64,
        run_ns: u64,
    },
    RanError {
        req: u64,
        kind: FailKind,
        message: String,
    },
    /// The answer to `RunInPlace` with `keep`: the result is kept at `loc`; the next
    /// transport message holds its encoding too when it is `small`, else nothing.
    RanKept {
        req: u64,
        run_ns: u64,
        loc: Location,
        small: bool,
    },
    // worker -> worker
    /// Tell me when these head tasks, sent to you, end (calls sent ahead of them here wait
    /// for them): each with its place among the calls the head sent you
    /// ([`WireArg::AfterOn`]). Answered by `Made`, at once for those already ended, or
    /// gone (unknown, while more calls than that came from the head).
    Await(Vec<(u64, u64)>),
    /// Head tasks awaited with `Await` ended (or will not be made here).
    Made(Vec<Made>),
    /// Write your `Made` notes to me into the shared ring at `ring`, which starts with
    /// `token`, and wake me with `token` as a datagram to the abstract Unix socket `name`
    /// when the ring asks for it (see `cluster::inbox`). Precedes the `Await`s it applies
    /// to.
    Inbox {
        name: Vec<u8>,
        token: [u8; 16],
        ring: super::ring::RingAddress,
    },
}

/// A head task awaited by another worker ended on the worker it was sent to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Made {
    pub(crate) task: u64,
    /// Where its result is, or why it will not be made there.
    pub(crate) result: Result<Location, String>,
    /// The result's encoding, when it is small.
    pub(crate) small: Option<ValueBytes>,
}

/// The serialised form of one [`Run`], written without cloning the call. A `Run` batch on
/// the wire is the batch header ([`run_batch_header`]) followed by these, concatenated.
#[derive(Serialize)]
struct RunRef<'a> {
    task: u64,
    call: &'a WireCall,
    feeds: bool,
}

/// Index of `Msg::Run` in the enum (postcard writes it as a varint before the variant).
const RUN_TAG: u64 = 4;
/// Index of `Msg::Made` in the enum.
pub(crate) const MADE_TAG: u32 = 26;

/// Length of the header of a one-task `Msg::Run` (the tag and a count of 1).
pub(crate) const ONE_RUN_HEADER: usize = 2;

/// One task to run, encoded as a complete one-task `Msg::Run` (sent as it is, without a copy,
/// when it is large); its [`run_body`] can be batched with its neighbours.
pub(crate) fn encode_run(task: u64, call: &WireCall, feeds: bool) -> Vec<u8> {
    // Room for the fixed fields, the options and the inline values (the encoder would grow
    // the buffer several times otherwise).
    let mut inline = 0;
    WireArg::each(&call.args, &mut |a| {
        inline += match a {
            WireArg::Value(v) => v.len() + 10,
            _ => 24,
        }
    });
    let mut out = Vec::with_capacity(64 + inline);
    out.extend_from_slice(&[RUN_TAG as u8, 1]);
    crate::remote::functions::to_extend(&RunRef { task, call, feeds }, &mut out)
        .expect("calls always encode");
    out
}

/// The encoded [`Run`] inside a message made by [`encode_run`].
pub(crate) fn run_body(encoded: &[u8]) -> &[u8] {
    &encoded[ONE_RUN_HEADER..]
}

/// The encoded `Msg::Run` of `count` tasks whose [`run_body`] forms are `runs`,
/// concatenated.
#[cfg(test)]
pub(crate) fn run_batch(count: usize, runs: &[u8]) -> Vec<u8> {
    let mut out = run_batch_start(count, runs.len());
    out.extend_from_slice(runs);
    out
}

/// The start of a `Msg::Run` of `count` tasks, with room for the `len` bytes of their
/// [`run_body`] forms, to be appended.
pub(crate) fn run_batch_start(count: usize, len: usize) -> Vec<u8> {
    let (header, n) = run_batch_header(count);
    let mut out = Vec::with_capacity(n + len);
    out.extend_from_slice(&header[..n]);
    out
}

/// The bytes before the [`run_body`] forms in a `Msg::Run` of `count` tasks (the message's
/// tag and the number of calls, as postcard writes them: LEB128): the first `n` of the
/// array.
pub(crate) fn run_batch_header(count: usize) -> ([u8; 11], usize) {
    let mut header = [0u8; 11];
    let mut n = 0;
    for mut v in [RUN_TAG, count as u64] {
        while v >= 0x80 {
            header[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        header[n] = v as u8;
        n += 1;
    }
    (header, n)
}

impl Msg {
    pub(crate) fn encode(&self) -> Vec<u8> {
        crate::remote::functions::to_vec(self).expect("messages always encode")
    }

    /// Whether a raw payload (the next transport message) follows this message.
    pub(crate) fn has_payload(&self) -> bool {
        matches!(
            self,
            Msg::Data { .. } | Msg::Put { .. } | Msg::Ran { .. } | Msg::RanKept { .. }
        )
    }

    /// The announced size of the payload that follows, when the message gives it.
    pub(crate) fn payload_len(&self) -> Option<u64> {
        match self {
            Msg::Data { len, .. } => Some(*len),
            _ => None,
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Msg, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("undecodable message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let m = Msg::Done(vec![Done {
            task: 7,
            result: Err((FailKind::Panicked, "boom".into())),
            run_ns: 12,
            small: None,
        }]);
        assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        let made = Msg::Made(vec![
            Made {
                task: 9,
                result: Ok(Location {
                    worker: 2,
                    id: 40,
                    bytes: 3,
                }),
                small: Some(vec![1, 2, 3].into()),
            },
            Made {
                task: 10,
                result: Err("it is not made here".into()),
                small: None,
            },
        ]);
        for m in [
            made,
            Msg::Await(vec![(9, 1), (10, 2), (u64::MAX, u64::MAX)]),
            Msg::Inbox {
                name: b"dagger-net/inbox/00ff".to_vec(),
                token: [7; 16],
                ring: super::super::ring::RingAddress { pid: 77, fd: 12 },
            },
        ] {
            assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
        }
    }

    fn call(func: u32, arg: Vec<u8>) -> WireCall {
        WireCall {
            func,
            args: vec![crate::remote::wire::WireArg::Value(arg.into())],
            thread: Some(1),
            options: Default::default(),
        }
    }

    #[test]
    fn run_batches_encode_like_run() {
        for count in [0usize, 1, 2, 200] {
            let runs: Vec<Run> = (0..count)
                .map(|i| Run {
                    task: (i as u64) << 40 | 9,
                    call: call(i as u32, vec![i as u8; i % 7]),
                    feeds: i % 2 == 1,
                })
                .collect();
            let one: Vec<Vec<u8>> = runs
                .iter()
                .map(|r| encode_run(r.task, &r.call, r.feeds))
                .collect();
            for (e, r) in one.iter().zip(&runs) {
                assert_eq!(*e, Msg::Run(vec![r.clone()]).encode());
            }
            let parts: Vec<u8> = one.iter().flat_map(|e| run_body(e).to_vec()).collect();
            let batch = run_batch(count, &parts);
            assert_eq!(batch, Msg::Run(runs.clone()).encode());
            assert_eq!(Msg::decode(&batch).unwrap(), Msg::Run(runs));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Msg::decode(&bytes);
        }

        /// Batches (what the writer coalesces) survive the trip, and any damage to them is
        /// an error, never a panic.
        #[test]
        fn batches_round_trip_and_damage_never_panics(
            tasks in proptest::collection::vec(any::<u64>(), 0..64),
            cut in any::<usize>(),
            flip in any::<(usize, u8)>(),
        ) {
            let done: Vec<Done> = tasks
                .iter()
                .map(|&task| Done {
                    task,
                    result: if task % 3 == 0 {
                        Err((FailKind::InputLost(task as u32), "lost".into()))
                    } else {
                        Ok(Location { worker: 1, id: task, bytes: task / 2 })
                    },
                    run_ns: task / 7,
                    small: (task % 2 == 0).then(|| task.to_le_bytes()[..].into()),
                })
                .collect();
            let runs: Vec<u8> = tasks.iter().flat_map(|&t| run_body(&encode_run(t, &call(t as u32, vec![]), t % 2 == 0)).to_vec()).collect();
            for m in [Msg::Done(done), Msg::Free(tasks.clone())] {
                let bytes = m.encode();
                prop_assert_eq!(Msg::decode(&bytes).unwrap(), m);
                let _ = Msg::decode(&bytes[..cut % (bytes.len() + 1)]);
                let mut damaged = bytes.clone();
                let i = flip.0 % damaged.len();
                damaged[i] ^= flip.1;
                let _ = Msg::decode(&damaged);
            }
            let batch = run_batch(tasks.len(), &runs);
            prop_assert!(matches!(Msg::decode(&batch), Ok(Msg::Run(r)) if r.len() == tasks.len()));
            let _ = Msg::decode(&batch[..cut % (batch.len() + 1)]);
        }
    }
}
