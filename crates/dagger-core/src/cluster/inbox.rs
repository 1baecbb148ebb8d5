//! Notes between workers of one host that a task was made (`Made`), through shared memory.
//!
//! A call sent ahead of an input made on another worker waits for that worker's note. On a
//! connection, the note wakes the receiving process's I/O thread, which starts the call, and
//! then the compute thread that runs it: two wake-ups on the path from one task to the next,
//! while the compute thread sits idle waiting for exactly that note. Workers of one host
//! therefore write each other the notes that carry their value into rings of shared memory
//! ([`super::ring`]), one for each sender and receiver, with no system call on either side
//! (on a virtual machine each one costs about a microsecond). A worker gives a peer its
//! ring in the message ([`Msg::Inbox`]) that precedes its questions on their authenticated
//! connection.
//!
//! The receiving worker's compute threads read the rings themselves, between tasks and while
//! idle ([`Registry::set_outside_work`](crate::sched::Registry::set_outside_work)). While a
//! compute thread sleeps or blocks, its I/O thread watches ([`Inbox::watch`]): the rings then
//! ask their writers to wake it, with a datagram to a Unix socket the worker binds in the
//! abstract namespace. Anyone on the host may send datagrams to such a name, so a wake-up
//! carries the token the worker gave its sender with the ring; others are dropped. Records
//! are read whole by one reader, and the order of notes does not matter (each answers its
//! own question).
//!
//! A note that cannot go into a ring (the peer is on another host or its ring could not be
//! opened, the ring is full, the note is too large) goes on the connection, and so does one
//! without its value (the waiting call fetches the value, and the receiving I/O thread
//! starts that fetch at once). Clusters configured with TLS do not use rings.

use super::msg::{Made, Msg};
use super::ring::{Reader, RingAddress, Writer};
use crate::hash::IdMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Token = super::ring::Token;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a worker takes notes: a ring for each peer that writes to it, and a socket where
/// they wake it.
pub(crate) struct Inbox {
    socket: imp::Socket,
    /// The socket's abstract name.
    name: Vec<u8>,
    /// The token given to each peer, and the peer each token was given to.
    given: Mutex<(HashMap<u32, Token>, HashMap<Token, u32>)>,
    /// The ring each peer writes to.
    rings: Mutex<Vec<(u32, Reader)>>,
    /// The I/O thread watches the inbox (see [`Inbox::watch`]).
    watched: AtomicBool,
    /// Asks the I/O thread to watch the inbox.
    wake_watcher: Arc<tokio::sync::Notify>,
}

impl Inbox {
    /// A new inbox, or `None` where sockets in the abstract namespace are not available
    /// (logged).
    pub(crate) fn open() -> Option<Inbox> {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).ok()?;
        let name = format!("dagger-net/inbox/{}", hex(&id)).into_bytes();
        match imp::Socket::bind(&name) {
            Ok(socket) => Some(Inbox {
                socket,
                name,
                given: Mutex::new(Default::default()),
                rings: Mutex::new(Vec::new()),
                watched: AtomicBool::new(false),
                wake_watcher: Arc::new(tokio::sync::Notify::new()),
            }),
            Err(e) => {
                log::debug!("no inbox; notes between workers use connections: {e}");
                None
            }
        }
    }

    /// The message that tells worker `peer` how to send notes here (the same each time);
    /// `None` (logged) if its ring cannot be made: it then sends them on the connection.
    pub(crate) fn address_for(&self, peer: u32) -> Option<Msg> {
        let token = {
            let mut given = lock(&self.given);
            match given.0.get(&peer) {
                Some(t) => *t,
                None => {
                    let mut t = [0u8; 16];
                    getrandom::getrandom(&mut t).ok()?;
                    given.0.insert(peer, t);
                    given.1.insert(t, peer);
                    t
                }
            }
        };
        let mut rings = lock(&self.rings);
        let ring = match rings.iter().find(|(p, _)| *p == peer) {
            Some((_, r)) => r.address(),
            None => match Reader::create(token) {
                Ok(r) => {
                    r.set_wake(self.watched.load(Ordering::SeqCst));
                    let at = r.address();
                    rings.push((peer, r));
                    at
                }
                Err(e) => {
                    log::debug!("notes from worker {peer} come on the connection: {e}");
                    return None;
                }
            },
        };
        Some(Msg::Inbox {
            name: self.name.clone(),
            token,
            ring,
        })
    }

    /// Worker `peer` left: its ring goes.
    pub(crate) fn forget(&self, peer: u32) {
        lock(&self.rings).retain(|(p, _)| *p != peer);
        let mut given = lock(&self.given);
        if let Some(t) = given.0.remove(&peer) {
            given.1.remove(&t);
        }
    }

    /// Handles the notes written to the rings with `handle` (sender, notes); false if there
    /// were none. Never blocks on anything but other readers, and makes no system call.
    pub(crate) fn drain(&self, handle: &mut dyn FnMut(u32, Vec<Made>)) -> bool {
        let mut taken = Vec::new();
        lock(&self.rings).retain_mut(|(peer, ring)| {
            let peer = *peer;
            let read = ring.read(&mut |record| match Msg::decode(record) {
                Ok(Msg::Made(made)) => taken.push((peer, made)),
                Ok(other) => {
                    log::warn!("worker {peer} wrote a record that is not a note: {other:?}")
                }
                Err(why) => log::warn!("worker {peer} wrote a malformed note: {why}"),
            });
            match read {
                Ok(()) => true,
                Err(why) => {
                    log::error!(
                        "dropping the ring of notes from worker {peer}, which broke it: {why}"
                    );
                    false
                }
            }
        });
        let any = !taken.is_empty();
        for (peer, made) in taken {
            handle(peer, made);
        }
        any
    }

    /// Receives the wake-ups waiting on the socket; how many came from a peer given a
    /// token (the others are dropped).
    fn take_wakes(&self) -> usize {
        let mut known = 0;
        let mut buf = [0u8; 64];
        while let Some(n) = self.socket.try_recv(&mut buf) {
            let from = <Token>::try_from(&buf[..n])
                .ok()
                .and_then(|t| lock(&self.given).1.get(&t).copied());
            match from {
                Some(_) => known += 1,
                None => log::debug!("dropping a datagram that is no worker's wake-up"),
            }
        }
        known
    }

    /// Whether the I/O thread watches: the rings' writers wake it after each note while it
    /// does.
    fn set_watched(&self, on: bool) {
        let rings = lock(&self.rings);
        self.watched.store(on, Ordering::SeqCst);
        for (_, ring) in rings.iter() {
            ring.set_wake(on);
        }
    }

    /// Has the I/O thread handle the notes (with `handle`) while some compute thread sleeps
    /// or blocks inside a task (`away` says how many do), until the inbox or the runtime is
    /// dropped. Compute threads that are up take the notes themselves, between tasks and
    /// while idle: the inbox is then not watched, so that a note wakes nobody (each wake-up
    /// of the I/O thread costs a context switch, on a CPU that a compute thread may be
    /// using). A thread that goes to sleep or blocks calls [`Inbox::unwatched`] after its
    /// last look.
    pub(crate) fn watch(
        self: &Arc<Self>,
        io: &super::io::Io,
        away: impl Fn() -> usize + Send + 'static,
        handle: impl FnMut(u32, Vec<Made>) + Send + 'static,
    ) {
        let inbox = Arc::downgrade(self);
        let wake = self.wake_watcher.clone();
        io.spawn(async move {
            let mut handle = handle;
            // Registered once: each registration and removal costs system calls, and the I/O
            // thread starts and stops watching hundreds of times a second. Writers send
            // wake-ups only while it watches.
            let Some(socket) = inbox.upgrade().and_then(|i| i.socket.try_clone().ok()) else {
                return;
            };
            let Ok(ready) = socket.readiness() else {
                return;
            };
            loop {
                wake.notified().await;
                loop {
                    let Some(me) = inbox.upgrade() else {
                        return;
                    };
                    // Writers wake this from now on; what they wrote before, this reads.
                    me.set_watched(true);
                    me.take_wakes();
                    me.drain(&mut handle);
                    if away() == 0 {
                        // Sequentially consistent with `unwatched`: either a thread going
                        // away sees the inbox unwatched (and asks again), or this sees it
                        // away.
                        me.set_watched(false);
                        if away() == 0 {
                            break;
                        }
                        continue;
                    }
                    drop(me);
                    match ready.readable().await {
                        Ok(mut seen) => seen.clear_ready(),
                        Err(_) => return,
                    }
                }
            }
        });
    }

    /// A compute thread goes to sleep or blocks (it is counted as away, and looked at the
    /// inbox since): has the I/O thread watch the inbox if it does not.
    pub(crate) fn unwatched(&self) {
        if !self.watched.load(Ordering::SeqCst) {
            self.wake_watcher.notify_one();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // The watcher ends, and its copy of the socket (which keeps the name bound) closes.
        self.wake_watcher.notify_one();
    }
}

/// A peer's inbox: the ring it gave this worker, and where and with what token to wake it.
struct PeerInbox {
    ring: Writer,
    name: Arc<[u8]>,
    token: Token,
}

/// How a worker sends notes to the inboxes of its peers.
pub(crate) struct Outbox {
    /// Sends wake-ups.
    socket: imp::Socket,
    peers: Mutex<IdMap<u32, PeerInbox>>,
}

impl Outbox {
    pub(crate) fn open() -> Option<Outbox> {
        imp::Socket::unbound().ok().map(|socket| Outbox {
            socket,
            peers: Mutex::new(IdMap::default()),
        })
    }

    /// Worker `peer` takes notes in the ring at `ring`, and wake-ups at `name`, with
    /// `token`. Where its ring cannot be opened (it is on another host), notes to it go on
    /// the connection.
    pub(crate) fn learn(&self, peer: u32, name: Vec<u8>, token: Token, ring: RingAddress) {
        match Writer::open(ring, token) {
            Ok(ring) => {
                let name = name.into();
                lock(&self.peers).insert(peer, PeerInbox { ring, name, token });
            }
            Err(e) => {
                log::debug!("notes to worker {peer} go on the connection: no ring ({e})");
                lock(&self.peers).remove(&peer);
            }
        }
    }

    /// Worker `peer` left.
    pub(crate) fn forget(&self, peer: u32) {
        lock(&self.peers).remove(&peer);
    }

    /// Writes `made` to worker `peer`'s ring; false if it must go on the connection.
    pub(crate) fn send(&self, peer: u32, made: &[Made]) -> bool {
        let written = crate::remote::functions::with_encoded(&MadeRef(made), |record| {
            let mut peers = lock(&self.peers);
            let p = peers.get_mut(&peer)?;
            p.ring
                .write(record)
                .then(|| p.ring.wants_wake().then(|| (p.name.clone(), p.token)))
        });
        let Ok(Some(wake)) = written else {
            return false;
        };
        if let Some((name, token)) = wake {
            // A full socket holds wake-ups already; a missing one means the peer is gone
            // (and the head places its calls again).
            if let Err(e) = self.socket.send_to(&token, &name) {
                log::debug!("cannot wake worker {peer}: {e}");
            }
        }
        true
    }
}

/// Encodes as `Msg::Made` without copying the notes.
struct MadeRef<'a>(&'a [Made]);

impl serde::Serialize for MadeRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_variant("Msg", super::msg::MADE_TAG, "Made", self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    /// A non-blocking Unix datagram socket.
    pub(super) struct Socket(UnixDatagram);

    impl Socket {
        pub(super) fn bind(name: &[u8]) -> io::Result<Socket> {
            let s = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name)?)?;
            s.set_nonblocking(true)?;
            Ok(Socket(s))
        }

        pub(super) fn unbound() -> io::Result<Socket> {
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            Ok(Socket(s))
        }

        pub(super) fn try_clone(&self) -> io::Result<Socket> {
            self.0.try_clone().map(Socket)
        }

        pub(super) fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
            loop {
                match self.0.recv(buf) {
                    Ok(n) => return Some(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return None,
                }
            }
        }

        pub(super) fn send_to(&self, datagram: &[u8], name: &[u8]) -> io::Result<()> {
            let to = SocketAddr::from_abstract_name(name)?;
            loop {
                match self.0.send_to_addr(datagram, &to) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }

        /// The socket registered with the I/O thread's runtime (call there) to wait for
        /// datagrams.
        pub(super) fn readiness(self) -> io::Result<tokio::io::unix::AsyncFd<UnixDatagram>> {
            // SAFETY: the socket owns its descriptor, which stays open (and the same) until
            // the `AsyncFd` that owns the socket is dropped.
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    self.0,
                    tokio::io::Interest::READABLE,
                )
            };
            Ok(fd?)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "abstract Unix sockets are Linux-only",
        )
    }

    /// No datagram inbox outside Linux.
    pub(super) struct Socket;

    impl Socket {
        pub(super) fn bind(_: &[u8]) -> io::Result<Socket> {
            Err(unsupported())
        }

        pub(super) fn unbound() -> io::Result<Socket> {
            Err(unsupported())
        }

        pub(super) fn try_clone(&self) -> io::Result<Socket> {
            Err(unsupported())
        }

        pub(super) fn try_recv(&self, _: &mut [u8]) -> Option<usize> {
            None
        }

        pub(super) fn send_to(&self, _: &[u8], _: &[u8]) -> io::Result<()> {
            Err(unsupported())
        }

        pub(super) fn readiness(self) -> io::Result<Readiness> {
            Err(unsupported())
        }
    }

    pub(super) struct Readiness;

    impl Readiness {
        pub(super) async fn readable(&self) -> io::Result<Ready> {
            Err(unsupported())
        }
    }

    pub(super) struct Ready;

    impl Ready {
        pub(super) fn clear_ready(&mut self) {}
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::super::ring::MAX_RECORD;
    use super::*;
    use crate::remote::wire::Location;

    fn note(task: u64, small: Option<Vec<u8>>) -> Made {
        Made {
            task,
            result: Ok(Location {
                worker: 2,
                id: task * 10,
                bytes: 8,
            }),
            small: small.map(Into::into),
        }
    }

    /// The notes waiting in `inbox`, with their senders.
    fn received(inbox: &Inbox) -> Vec<(u32, Vec<Made>)> {
        let mut got = Vec::new();
        inbox.drain(&mut |peer, made| got.push((peer, made)));
        got
    }

    /// An outbox of worker `from` that knows `inbox`, of worker `me`.
    fn outbox_to(inbox: &Inbox, me: u32, from: u32) -> Outbox {
        let out = Outbox::open().unwrap();
        match inbox.address_for(from).unwrap() {
            Msg::Inbox { name, token, ring } => out.learn(me, name, token, ring),
            other => panic!("unexpected {other:?}"),
        }
        out
    }

    #[test]
    fn notes_encode_as_the_message() {
        let made = vec![note(9, Some(vec![1, 2, 3])), note(10, None)];
        let by_ref = postcard::to_allocvec(&MadeRef(&made)).unwrap();
        assert_eq!(by_ref, Msg::Made(made).encode());
    }

    #[test]
    fn notes_reach_the_inbox_from_each_worker_given_a_ring() {
        let inbox = Inbox::open().unwrap();
        assert!(received(&inbox).is_empty());
        let from_2 = outbox_to(&inbox, 1, 2);
        let from_3 = outbox_to(&inbox, 1, 3);
        assert!(from_2.send(1, &[note(5, Some(vec![7; 16]))]));
        assert!(from_3.send(1, &[note(6, None), note(7, None)]));
        assert_eq!(
            received(&inbox),
            vec![
                (2, vec![note(5, Some(vec![7; 16]))]),
                (3, vec![note(6, None), note(7, None)])
            ]
        );
        // The same address each time it is asked for, another for each worker.
        assert_eq!(inbox.address_for(2), inbox.address_for(2));
        assert_ne!(inbox.address_for(2), inbox.address_for(3));
        // Not to a worker whose inbox is not known, nor too large for a ring.
        assert!(!from_2.send(4, &[note(5, None)]));
        assert!(!from_2.send(1, &[note(5, Some(vec![0; MAX_RECORD]))]));
        assert!(received(&inbox).is_empty());
        // Nor to a worker that left.
        from_3.forget(1);
        assert!(!from_3.send(1, &[note(8, None)]));
    }

    #[test]
    fn a_full_ring_sends_notes_on_the_connection_until_it_is_read() {
        let inbox = Inbox::open().unwrap();
        let out = outbox_to(&inbox, 1, 2);
        let big = [note(1, Some(vec![1; MAX_RECORD - 64]))];
        let mut sent = 0;
        while out.send(1, &big) {
            sent += 1;
        }
        assert!(sent > 0);
        assert_eq!(received(&inbox).len(), sent);
        assert!(out.send(1, &big));
    }

    #[test]
    fn writers_wake_the_inbox_only_while_it_is_watched() {
        let inbox = Inbox::open().unwrap();
        let out = outbox_to(&inbox, 1, 2);
        assert!(out.send(1, &[note(1, None)]));
        assert_eq!(inbox.take_wakes(), 0);
        inbox.set_watched(true);
        // A ring made while watched asks for wake-ups too.
        let late = outbox_to(&inbox, 1, 3);
        assert!(out.send(1, &[note(2, None)]));
        assert!(late.send(1, &[note(3, None)]));
        assert_eq!(inbox.take_wakes(), 2);
        inbox.set_watched(false);
        assert!(out.send(1, &[note(4, None)]));
        assert_eq!(inbox.take_wakes(), 0);
        assert_eq!(received(&inbox).len(), 4);
    }

    #[test]
    fn datagrams_without_a_known_token_and_malformed_notes_are_dropped() {
        let inbox = Inbox::open().unwrap();
        let out = outbox_to(&inbox, 1, 2);
        let Some(Msg::Inbox { name, .. }) = inbox.address_for(2) else {
            unreachable!()
        };
        let stranger = imp::Socket::unbound().unwrap();
        stranger.send_to(&[0u8; 16], &name).unwrap();
        stranger.send_to(b"short", &name).unwrap();
        assert_eq!(inbox.take_wakes(), 0);
        // Records that are not notes are dropped; the ring keeps working.
        {
            let mut peers = lock(&out.peers);
            let ring = &mut peers.get_mut(&1).unwrap().ring;
            assert!(ring.write(&[0xff; 40]));
            assert!(ring.write(&Msg::Free(vec![1, 2]).encode()));
        }
        assert!(out.send(1, &[note(8, None)]));
        assert_eq!(received(&inbox), vec![(2, vec![note(8, None)])]);
    }

    #[test]
    fn a_worker_that_left_loses_its_ring_and_token() {
        let inbox = Inbox::open().unwrap();
        let out = outbox_to(&inbox, 1, 2);
        inbox.forget(2);
        // What it writes now reaches nobody, and its wake-ups are strangers'.
        inbox.set_watched(true);
        assert!(out.send(1, &[note(1, None)]));
        assert_eq!(inbox.take_wakes(), 0);
        assert!(received(&inbox).is_empty());
    }
}
