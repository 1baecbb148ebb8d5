//! Notes between workers of one host that a task was made (`Made`), sent as datagrams.
//!
//! A call sent ahead of an input made on another worker waits for that worker's note. On a
//! connection, the note wakes the receiving process's I/O thread, which starts the call, and
//! then the compute thread that runs it: two wake-ups on the path from one task to the next,
//! while the compute thread sits idle waiting for exactly that note. Workers of one host
//! therefore send each other the notes that carry their value as datagrams, to a Unix
//! socket each of them binds in the abstract namespace (its inbox). The receiving worker's
//! compute threads read the inbox themselves, between tasks and while idle
//! ([`Registry::set_outside_work`](crate::sched::Registry::set_outside_work)); its I/O thread
//! watches it only while a compute thread sleeps or blocks ([`Inbox::watch`]). A datagram
//! is read whole by one reader, and the order of notes does not matter (each answers its
//! own question).
//!
//! Anyone on the host may send datagrams to a name in the abstract namespace, so each note
//! carries a token: a random number the receiving worker gave its sender, in the message
//! ([`Msg::Inbox`]) that precedes its questions on their authenticated connection. Datagrams
//! without a known token are dropped. A note that cannot go as a datagram (the peer is on
//! another host, the inbox's queue is full, the note is too large) goes on the connection,
//! and so does one without its value (the waiting call fetches the value, and the receiving
//! I/O thread starts that fetch at once). Clusters configured with TLS do not use datagrams.

use super::msg::{Made, Msg};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Length of the token before each datagram.
const TOKEN_LEN: usize = 16;

/// Largest datagram sent (a note with a small value inside).
pub(crate) const MAX_DATAGRAM: usize = 16 << 10;

type Token = [u8; TOKEN_LEN];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a worker takes notes as datagrams, and the tokens it gave its peers.
pub(crate) struct Inbox {
    socket: imp::Socket,
    /// The socket's abstract name.
    name: Vec<u8>,
    /// The token given to each peer, and the peer each token was given to.
    given: Mutex<(HashMap<u32, Token>, HashMap<Token, u32>)>,
    /// The I/O thread watches the socket (see [`Inbox::watch`]).
    watched: AtomicBool,
    /// Asks the I/O thread to watch the socket.
    wake_watcher: Arc<tokio::sync::Notify>,
}

impl Inbox {
    /// A new inbox, or `None` where datagram sockets in the abstract namespace are not
    /// available (logged).
    pub(crate) fn open() -> Option<Inbox> {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).ok()?;
        let name = format!("dagger-net/inbox/{}", hex(&id)).into_bytes();
        match imp::Socket::bind(&name) {
            Ok(socket) => Some(Inbox {
                socket,
                name,
                given: Mutex::new(Default::default()),
                watched: AtomicBool::new(false),
                wake_watcher: Arc::new(tokio::sync::Notify::new()),
            }),
            Err(e) => {
                log::debug!("no datagram inbox; notes between workers use connections: {e}");
                None
            }
        }
    }

    /// The message that tells worker `peer` how to send notes here.
    pub(crate) fn address_for(&self, peer: u32) -> Option<Msg> {
        let mut given = lock(&self.given);
        let token = match given.0.get(&peer) {
            Some(t) => *t,
            None => {
                let mut t = [0u8; TOKEN_LEN];
                getrandom::getrandom(&mut t).ok()?;
                given.0.insert(peer, t);
                given.1.insert(t, peer);
                t
            }
        };
        Some(Msg::Inbox {
            name: self.name.clone(),
            token,
        })
    }

    /// Handles the notes waiting in the inbox with `handle` (sender, notes) until none is
    /// left; false if there were none. Never blocks.
    pub(crate) fn drain(&self, handle: &mut dyn FnMut(u32, Vec<Made>)) -> bool {
        let mut any = false;
        loop {
            let note = BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.is_empty() {
                    buf.resize(MAX_DATAGRAM, 0);
                }
                let n = self.socket.try_recv(&mut buf)?;
                Some(self.open_note(&buf[..n]))
            });
            match note {
                None => return any,
                Some(note) => {
                    any = true;
                    if let Some((peer, made)) = note {
                        handle(peer, made);
                    }
                }
            }
        }
    }

    /// The sender and the notes of a datagram; `None` (logged) if it has no known token or
    /// is not a note.
    fn open_note(&self, datagram: &[u8]) -> Option<(u32, Vec<Made>)> {
        let (token, body) = datagram.split_first_chunk::<TOKEN_LEN>()?;
        let Some(peer) = lock(&self.given).1.get(token).copied() else {
            log::warn!("dropping a datagram without a known token from a process of this host");
            return None;
        };
        match Msg::decode(body) {
            Ok(Msg::Made(made)) => Some((peer, made)),
            Ok(other) => {
                log::warn!("worker {peer} sent a datagram that is not a note: {other:?}");
                None
            }
            Err(why) => {
                log::warn!("worker {peer} sent a malformed datagram: {why}");
                None
            }
        }
    }

    /// Has the I/O thread handle the notes (with `handle`) while some compute thread sleeps
    /// or blocks inside a task (`away` says how many do), until the inbox or the runtime is
    /// dropped. Compute threads that are up take the notes themselves, between tasks and
    /// while idle: the socket is then not watched, so that a note wakes nobody (each wake-up
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
            loop {
                wake.notified().await;
                let Some(socket) = inbox.upgrade().and_then(|i| i.socket.try_clone().ok()) else {
                    return;
                };
                let Ok(ready) = socket.readiness() else {
                    return;
                };
                loop {
                    let Some(me) = inbox.upgrade() else {
                        return;
                    };
                    me.watched.store(true, Ordering::SeqCst);
                    // What arrived before the socket was registered, or since it was ready.
                    me.drain(&mut handle);
                    // Sequentially consistent with `unwatched`: either a thread going away
                    // sees the socket unwatched (and asks again), or this sees it away.
                    me.watched.store(false, Ordering::SeqCst);
                    if away() == 0 {
                        break;
                    }
                    me.watched.store(true, Ordering::SeqCst);
                    drop(me);
                    match ready.readable().await {
                        Ok(mut seen) => seen.clear_ready(),
                        Err(_) => return,
                    }
                }
                // Dropping `ready` takes the socket out of the I/O thread's watch.
            }
        });
    }

    /// A compute thread goes to sleep or blocks (it is counted as away, and looked at the
    /// inbox since): has the I/O thread watch the socket if it does not.
    pub(crate) fn unwatched(&self) {
        if !self.watched.load(Ordering::SeqCst) {
            self.wake_watcher.notify_one();
        }
    }
}

thread_local! {
    /// Where a thread receives datagrams.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A peer's inbox name (shared, not copied, by each send) and the token it gave.
type PeerInbox = (Arc<[u8]>, Token);

/// How a worker sends notes to the inboxes of its peers.
pub(crate) struct Outbox {
    socket: imp::Socket,
    /// Each peer's inbox and the token it gave this worker.
    peers: Mutex<HashMap<u32, PeerInbox>>,
}

impl Outbox {
    pub(crate) fn open() -> Option<Outbox> {
        imp::Socket::unbound().ok().map(|socket| Outbox {
            socket,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// Worker `peer` takes notes at `name` with `token`.
    pub(crate) fn learn(&self, peer: u32, name: Vec<u8>, token: Token) {
        lock(&self.peers).insert(peer, (name.into(), token));
    }

    /// Worker `peer` left.
    pub(crate) fn forget(&self, peer: u32) {
        lock(&self.peers).remove(&peer);
    }

    /// Sends `made` to worker `peer` as a datagram; false if it must go on the connection.
    pub(crate) fn send(&self, peer: u32, made: &[Made]) -> bool {
        let Some((name, token)) = lock(&self.peers).get(&peer).cloned() else {
            return false;
        };
        let mut datagram = Vec::with_capacity(TOKEN_LEN + 64);
        datagram.extend_from_slice(&token);
        let Ok(datagram) = postcard::to_extend(&MadeRef(made), datagram) else {
            return false;
        };
        if datagram.len() > MAX_DATAGRAM {
            return false;
        }
        match self.socket.send_to(&datagram, &name) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                // Another host, or gone: use the connection from now on.
                log::debug!("notes to worker {peer} go on the connection: {e}");
                self.forget(peer);
                false
            }
        }
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
            small,
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
            Msg::Inbox { name, token } => out.learn(me, name, token),
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
    fn notes_reach_the_inbox_from_the_worker_given_the_token() {
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
        // The same token each time it is asked for.
        assert_eq!(inbox.address_for(2), inbox.address_for(2));
        assert_ne!(inbox.address_for(2), inbox.address_for(3));
        // Not to a worker whose inbox is not known, nor too large for a datagram.
        assert!(!from_2.send(4, &[note(5, None)]));
        assert!(!from_2.send(1, &[note(5, Some(vec![0; MAX_DATAGRAM]))]));
        assert!(received(&inbox).is_empty());
    }

    #[test]
    fn datagrams_without_a_known_token_or_malformed_are_dropped() {
        let inbox = Inbox::open().unwrap();
        let from_2 = outbox_to(&inbox, 1, 2);
        let Some(Msg::Inbox { name, token }) = inbox.address_for(2) else {
            unreachable!()
        };
        let stranger = imp::Socket::unbound().unwrap();
        let mut forged = [0u8; TOKEN_LEN].to_vec();
        forged.extend(Msg::Made(vec![note(1, None)]).encode());
        stranger.send_to(&forged, &name).unwrap();
        stranger.send_to(b"short", &name).unwrap();
        let mut garbage = token.to_vec();
        garbage.extend([0xff; 40]);
        stranger.send_to(&garbage, &name).unwrap();
        let mut not_a_note = token.to_vec();
        not_a_note.extend(Msg::Free(vec![1, 2]).encode());
        stranger.send_to(&not_a_note, &name).unwrap();
        assert!(from_2.send(1, &[note(8, None)]));
        assert_eq!(received(&inbox), vec![(2, vec![note(8, None)])]);
    }

    #[test]
    fn an_inbox_that_is_gone_sends_notes_to_the_connection() {
        let inbox = Inbox::open().unwrap();
        let out = outbox_to(&inbox, 1, 2);
        drop(inbox);
        assert!(!out.send(1, &[note(1, None)]));
        // Forgotten: the connection from now on.
        assert!(lock(&out.peers).is_empty());
    }
}
