//! The messages processes of a cluster exchange (postcard-encoded, one per transport message).

use crate::remote::wire::{Location, WireCall};
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
            FailKind::Runtime | FailKind::InputLost(_) => K::Runtime,
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
}

/// A task that ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) task: u64,
    pub(crate) result: Result<Location, (FailKind, String)>,
    /// Run time of the body in nanoseconds.
    pub(crate) run_ns: u64,
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
    /// The answer to a fetch: the next transport message holds the encoded value.
    Data {
        req: u64,
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
    /// Run a task of a data-dependency region: the arguments marked in `writes` are values
    /// this process holds that the function changes in place. Answered by `Ran` or
    /// `RanError`.
    RunInPlace {
        req: u64,
        call: WireCall,
        writes: Vec<bool>,
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
}

impl Msg {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    /// Whether a raw payload (the next transport message) follows this message.
    pub(crate) fn has_payload(&self) -> bool {
        matches!(self, Msg::Data { .. } | Msg::Put { .. } | Msg::Ran { .. })
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
        }]);
        assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Msg::decode(&bytes);
        }
    }
}
