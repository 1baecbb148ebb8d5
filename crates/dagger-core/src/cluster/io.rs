//! The I/O thread of a process (a current-thread tokio runtime) and connections to peers.

use super::msg::Msg;
use bytes::Bytes;
use dagger_net::{Connection, NetError, Receiver, Sender};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The runtime thread that owns every socket of this process.
pub(crate) struct Io {
    handle: tokio::runtime::Handle,
    stop: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Io {
    pub(crate) fn start(name: &str) -> std::io::Result<Io> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                    // Let the writers send what is queued (a shutdown, a close) first.
                    for _ in 0..64 {
                        tokio::task::yield_now().await;
                    }
                });
                rt.shutdown_background();
            })?;
        Ok(Io {
            handle,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            thread: Some(thread),
        })
    }

    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// Runs `fut` on the I/O thread and waits for its result (from a non-I/O thread); `None`
    /// once the I/O thread stopped.
    pub(crate) fn run<F, R>(&self, fut: F) -> Option<R>
    where
        F: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }

    /// Stops the I/O thread: every connection closes and every task on it is dropped.
    pub(crate) fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// What a link carries.
pub(crate) enum Out {
    Msg(Msg),
    /// An already encoded message.
    Encoded(Vec<u8>),
    /// A message followed by a raw payload (sent without copying).
    WithPayload(Msg, Bytes),
    Close,
}

/// The sending side of a connection to a peer: messages queue here and a writer task on the
/// I/O thread sends everything queued with one flush.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) peer: u32,
    tx: mpsc::UnboundedSender<Out>,
}

impl Link {
    pub(crate) fn send(&self, msg: Msg) -> bool {
        self.tx.send(Out::Msg(msg)).is_ok()
    }

    pub(crate) fn send_encoded(&self, bytes: Vec<u8>) -> bool {
        self.tx.send(Out::Encoded(bytes)).is_ok()
    }

    pub(crate) fn send_with_payload(&self, msg: Msg, payload: Bytes) -> bool {
        self.tx.send(Out::WithPayload(msg, payload)).is_ok()
    }

    pub(crate) fn close(&self) {
        let _ = self.tx.send(Out::Close);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Whether both are the same connection.
    pub(crate) fn same(&self, other: &Link) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

/// Handles what arrives on links.
pub(crate) trait Handler: Send + Sync + 'static {
    /// A message (and its payload, for `Data` and `Put`) from `link.peer`.
    fn on_message(self: Arc<Self>, link: &Link, msg: Msg, payload: Option<Bytes>);
    /// The connection `link` ended (`err`: why, if not a clean close).
    fn on_closed(self: Arc<Self>, link: &Link, err: Option<NetError>);
}

/// Starts the reader and writer tasks of a connection on the current runtime.
pub(crate) fn open_link<H: Handler>(conn: Connection, peer: u32, handler: Arc<H>) -> Link {
    let (sender, receiver) = conn.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Link { peer, tx };
    tokio::spawn(write_loop(sender, rx));
    tokio::spawn(read_loop(receiver, link.clone(), handler));
    link
}

async fn write_loop(mut sender: Sender, mut rx: mpsc::UnboundedReceiver<Out>) {
    let feed = |sender: &mut Sender, out: Out| -> Result<bool, NetError> {
        match out {
            Out::Msg(m) => sender.feed(m.encode())?,
            Out::Encoded(b) => sender.feed(b)?,
            Out::WithPayload(m, p) => {
                sender.feed(m.encode())?;
                sender.feed(p)?;
            }
            Out::Close => return Ok(false),
        }
        Ok(true)
    };
    while let Some(out) = rx.recv().await {
        let mut open = match feed(&mut sender, out) {
            Ok(open) => open,
            Err(_) => break,
        };
        while open {
            match rx.try_recv() {
                Ok(out) => match feed(&mut sender, out) {
                    Ok(o) => open = o,
                    Err(_) => return,
                },
                Err(_) => break,
            }
        }
        if sender.flush().await.is_err() {
            return;
        }
        if !open {
            let _ = sender.close().await;
            return;
        }
    }
    let _ = sender.close().await;
}

async fn read_loop<H: Handler>(mut receiver: Receiver, link: Link, handler: Arc<H>) {
    let err = loop {
        let bytes = match receiver.recv().await {
            Ok(Some(b)) => b,
            Ok(None) => break None,
            Err(e) => break Some(e),
        };
        let msg = match Msg::decode(&bytes) {
            Ok(m) => m,
            Err(why) => {
                log::warn!("closing the connection to process {}: {why}", link.peer);
                break Some(NetError::Config(why));
            }
        };
        let payload = if msg.has_payload() {
            match receiver.recv().await {
                Ok(Some(p)) => Some(p),
                Ok(None) => break Some(NetError::Closed),
                Err(e) => break Some(e),
            }
        } else {
            None
        };
        handler.clone().on_message(&link, msg, payload);
    };
    link.close();
    handler.on_closed(&link, err);
}
