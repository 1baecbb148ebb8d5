//! Transport over real sockets on 127.0.0.1: round trips, authentication failures,
//! misbehaving clients, TLS with pinned certificates.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use dagger_net::auth::PROTOCOL_VERSION;
use dagger_net::frame::{encode_header, FrameError, MAX_FRAME_PAYLOAD};
use dagger_net::{
    connect, Connection, Hello, Listener, NetConfig, NetError, PeerHello, Role, Secret, TlsConfig,
    TlsIdentity,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REGISTRY: u64 = 0x5eed_cafe_f00d_0001;

/// Bounds every await of the tests.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test step timed out")
}

fn secret(b: u8) -> Secret {
    Secret::from_bytes(vec![b; 32]).unwrap()
}

fn config(b: u8) -> NetConfig {
    NetConfig::new(secret(b)).with_handshake_timeout(Duration::from_secs(5))
}

fn head() -> Hello {
    Hello::new(Role::Head, REGISTRY)
}

fn worker(id: u64) -> Hello {
    Hello::new(Role::Worker, REGISTRY).with_peer_id(id)
}

async fn listen(config: &NetConfig) -> Listener {
    within(Listener::bind("127.0.0.1:0", config, head()))
        .await
        .unwrap()
}

/// Connects to `listener` with `config` and `hello` while it accepts: (the client's result,
/// the listener's).
async fn meet(
    listener: &mut Listener,
    config: &NetConfig,
    hello: Hello,
) -> (
    Result<(Connection, PeerHello), NetError>,
    Result<(Connection, PeerHello), NetError>,
) {
    let addr = listener.local_addr();
    within(async { tokio::join!(connect(addr, config, hello), listener.accept()) }).await
}

/// A connected pair: (client side, server side).
async fn pair(config: &NetConfig) -> (Connection, Connection) {
    let mut listener = listen(config).await;
    let (client, server) = meet(&mut listener, config, worker(1)).await;
    (client.unwrap().0, server.unwrap().0)
}

/// Runs `test` over a local socket, then over loopback TCP.
async fn over_both_transports<F: Future<Output = ()>>(test: impl Fn(NetConfig) -> F) {
    for local_sockets in [true, false] {
        test(config(1).with_local_sockets(local_sockets)).await;
    }
}

/// `n` bytes where every 4 KiB block differs (block index in front), cheap in debug builds.
fn pattern(n: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut v = Vec::with_capacity(n);
    let mut k = 0u64;
    while v.len() < n {
        let take = (n - v.len()).min(4096);
        let start = v.len();
        v.extend_from_slice(&block[..take]);
        let idx = k.to_le_bytes();
        let m = idx.len().min(take);
        v[start..start + m].copy_from_slice(&idx[..m]);
        k += 1;
    }
    v
}

#[tokio::test]
async fn small_messages_round_trip_in_order() {
    over_both_transports(small_messages_round_trip_over).await;
}

async fn small_messages_round_trip_over(config: NetConfig) {
    let (mut client, mut server) = pair(&config).await;
    assert_eq!(client.uses_local_socket(), config.local_sockets);
    assert_eq!(server.uses_local_socket(), config.local_sockets);
    assert_eq!(client.peer_addr(), server.local_addr());
    assert_eq!(server.peer_addr(), client.local_addr());
    within(client.send(&b"hello"[..])).await.unwrap();
    assert_eq!(within(server.recv()).await.unwrap().unwrap(), &b"hello"[..]);
    within(server.send(Vec::new())).await.unwrap();
    assert_eq!(within(client.recv()).await.unwrap().unwrap().len(), 0);

    // Many messages, batched with feed + flush, in order, while the other side echoes.
    let (mut stx, mut srx) = server.split();
    let echo = tokio::spawn(async move {
        while let Some(msg) = srx.recv().await.unwrap() {
            stx.feed(msg).unwrap();
            stx.flush().await.unwrap();
        }
        stx.close().await.unwrap();
    });
    let (mut ctx, mut crx) = client.split();
    let n = 5000u32;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            ctx.feed(i.to_le_bytes().repeat(1 + (i % 7) as usize))
                .unwrap();
            if i % 64 == 0 {
                ctx.flush().await.unwrap();
            }
        }
        ctx.close().await.unwrap();
    });
    within(async {
        for i in 0..n {
            let msg = crx.recv().await.unwrap().unwrap();
            assert_eq!(msg, i.to_le_bytes().repeat(1 + (i % 7) as usize));
        }
        assert!(crx.recv().await.unwrap().is_none(), "clean close");
    })
    .await;
    within(sender).await.unwrap();
    within(echo).await.unwrap();
}

#[tokio::test]
async fn large_message_round_trip() {
    over_both_transports(large_message_round_trip_over).await;
}

async fn large_message_round_trip_over(config: NetConfig) {
    let (client, mut server) = pair(&config).await;
    assert_eq!(client.uses_local_socket(), config.local_sockets);
    let big = Bytes::from(pattern(64 << 20));
    let (mut tx, _rx) = client.split();
    let sent = big.clone();
    let send = tokio::spawn(async move {
        tx.feed(&b"before"[..]).unwrap();
        tx.feed(sent).unwrap();
        tx.feed(&b"after"[..]).unwrap();
        tx.flush().await.unwrap();
    });
    within(async {
        assert_eq!(server.recv().await.unwrap().unwrap(), &b"before"[..]);
        let got = server.recv().await.unwrap().unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big, "content differs");
        assert_eq!(server.recv().await.unwrap().unwrap(), &b"after"[..]);
    })
    .await;
    within(send).await.unwrap();
}

#[tokio::test]
async fn direct_writes_keep_their_place_among_queued_messages() {
    over_both_transports(direct_writes_over).await;
}

async fn direct_writes_over(config: NetConfig) {
    let (client, mut server) = pair(&config).await;
    let (mut tx, _rx) = client.split();
    let direct = tx
        .direct_writer()
        .expect("a plain connection writes directly");
    within(tx.send(&b"queued first"[..])).await.unwrap();
    // From another thread, as a compute thread would.
    let d = direct.clone();
    let rest = std::thread::spawn(move || d.write(b"direct"))
        .join()
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "a short message fits in the socket buffer");
    within(tx.send(&b"queued after"[..])).await.unwrap();
    for want in [&b"queued first"[..], b"direct", b"queued after"] {
        assert_eq!(within(server.recv()).await.unwrap().unwrap(), want);
    }

    // A message larger than the socket buffer, written while nobody reads: the socket takes
    // part of it, and the sender writes the rest before the next message.
    let big = pattern(8 << 20);
    let rest = direct.write(&big).unwrap();
    assert!(!rest.is_empty(), "8 MiB cannot fit in a socket buffer");
    tx.feed_framed(rest);
    tx.feed(&b"next"[..]).unwrap();
    let flush = tokio::spawn(async move {
        tx.flush().await.unwrap();
        tx
    });
    within(async {
        let got = server.recv().await.unwrap().unwrap();
        assert!(
            got == big,
            "the message split between the writers arrives whole"
        );
        assert_eq!(server.recv().await.unwrap().unwrap(), &b"next"[..]);
    })
    .await;
    let tx = within(flush).await.unwrap();

    // Over the size limit: refused, nothing written.
    let small_limit = tx.direct_writer().unwrap();
    drop(tx);
    assert!(matches!(
        within(server.recv()).await,
        Ok(None) | Err(NetError::Closed)
    ));
    assert!(
        matches!(small_limit.write(b"x"), Err(NetError::Io(_))),
        "writing on a closed connection fails"
    );
}

/// Messages of one frame written directly while nobody reads: the socket fills, takes part
/// of one (or none of it), and the sender writes the rest before the next message.
#[tokio::test]
async fn a_one_frame_direct_write_the_socket_takes_in_part_is_finished_by_the_sender() {
    over_both_transports(one_frame_direct_writes_over).await;
}

async fn one_frame_direct_writes_over(config: NetConfig) {
    let (client, mut server) = pair(&config).await;
    let (mut tx, _rx) = client.split();
    let direct = tx.direct_writer().unwrap();
    // Under the 1 MiB frame payload, and of an odd length: the socket stops mid-message.
    let msg = pattern((1 << 20) - 3);
    let mut whole = 0;
    let rest = loop {
        let rest = direct.write(&msg).unwrap();
        if !rest.is_empty() {
            break rest;
        }
        whole += 1;
        assert!(whole < 256, "256 MiB went into a socket nobody reads");
    };
    assert!(
        rest.len() <= msg.len() + 4,
        "the rest is at most the framed message"
    );
    tx.feed_framed(rest);
    tx.feed(&b"next"[..]).unwrap();
    let flush = tokio::spawn(async move {
        tx.flush().await.unwrap();
        tx
    });
    within(async {
        for i in 0..=whole {
            let got = server.recv().await.unwrap().unwrap();
            assert!(got == msg, "message {i} of {} arrives whole", whole + 1);
        }
        assert_eq!(server.recv().await.unwrap().unwrap(), &b"next"[..]);
    })
    .await;
    within(flush).await.unwrap();
}

#[tokio::test]
async fn direct_writes_refuse_oversized_messages() {
    let (client, _server) = pair(&config(1).with_max_message(16)).await;
    let (tx, _rx) = client.split();
    let direct = tx.direct_writer().unwrap();
    let err = direct.write(&[0; 17]).unwrap_err();
    assert!(
        matches!(err, NetError::Oversized { size: 17, max: 16 }),
        "{err}"
    );
}

/// `recv` and `flush` cancelled over and over (by a branch that is always ready soon) still
/// deliver every message intact.
#[tokio::test]
async fn recv_and_flush_are_cancel_safe() {
    let (client, server) = pair(&config(1)).await;
    let (mut tx, _) = client.split();
    let (_, mut rx) = server.split();
    let msgs: Vec<Bytes> = (0..6u8)
        .map(|i| Bytes::from(vec![i; [10, 3 << 20, 1, 5 << 20, 0, 70_000][i as usize]]))
        .collect();
    let sent = msgs.clone();
    let send = tokio::spawn(async move {
        let mut cancelled = 0;
        for m in sent {
            tx.feed(m).unwrap();
            loop {
                tokio::select! {
                    biased;
                    r = tx.flush() => break r.unwrap(),
                    () = tokio::task::yield_now() => cancelled += 1,
                }
            }
        }
        cancelled
    });
    let mut cancelled = 0;
    within(async {
        for m in &msgs {
            let got = loop {
                tokio::select! {
                    biased;
                    r = rx.recv() => break r.unwrap().unwrap(),
                    () = tokio::task::yield_now() => cancelled += 1,
                }
            };
            assert!(got == *m, "message of {} bytes differs", m.len());
        }
    })
    .await;
    let send_cancelled = within(send).await.unwrap();
    assert!(cancelled + send_cancelled > 0, "nothing was cancelled");
}

#[tokio::test]
async fn peers_learn_each_other() {
    let config = config(1);
    let mut listener = listen(&config).await;
    let addr = listener.local_addr();
    let (client, server) = meet(&mut listener, &config, worker(7)).await;
    let (conn, head_hello): (Connection, PeerHello) = client.unwrap();
    let (_, worker_hello) = server.unwrap();
    assert_eq!(head_hello.role, Role::Head);
    assert_eq!(head_hello.peer_id, None);
    assert_eq!(head_hello.registry_hash, REGISTRY);
    assert_eq!(head_hello.version, PROTOCOL_VERSION);
    assert_eq!(head_hello.addr, addr);
    assert_eq!(worker_hello.role, Role::Worker);
    assert_eq!(worker_hello.peer_id, Some(7));
    assert_eq!(worker_hello.addr, conn.local_addr());
    assert_eq!(worker_hello.tls_fingerprint, None);

    // The hello of later connections can change.
    listener.set_hello(head().with_peer_id(0));
    let (client, server) = meet(&mut listener, &config, worker(8)).await;
    assert_eq!(client.unwrap().1.peer_id, Some(0));
    server.unwrap();
}

#[tokio::test]
async fn wrong_secret_refused_on_both_sides() {
    for local_sockets in [true, false] {
        let mut listener = listen(&config(1).with_local_sockets(local_sockets)).await;
        let wrong = config(2).with_local_sockets(local_sockets);
        let (client, server) = meet(&mut listener, &wrong, worker(1)).await;
        let client = client.expect_err("client must fail");
        let server = server.expect_err("server must fail");
        assert!(matches!(client, NetError::AuthFailed), "{client}");
        assert!(matches!(server, NetError::AuthFailed), "{server}");
        assert_eq!(
            client.to_string(),
            "authentication failed: the peer does not know the cluster secret"
        );
    }
}

/// A client wanting a local socket reaches a listener without one by TCP, and the listener
/// still serves TCP clients when it has one.
#[tokio::test]
async fn local_sockets_fall_back_to_tcp() {
    for (listener_local, client_local) in [(false, true), (true, false)] {
        let mut listener = listen(&config(1).with_local_sockets(listener_local)).await;
        let client_config = config(1).with_local_sockets(client_local);
        let (client, server) = meet(&mut listener, &client_config, worker(1)).await;
        let (mut client, mut server) = (client.unwrap().0, server.unwrap().0);
        assert!(!client.uses_local_socket() && !server.uses_local_socket());
        within(client.send(&b"over tcp"[..])).await.unwrap();
        assert_eq!(
            within(server.recv()).await.unwrap().unwrap(),
            &b"over tcp"[..]
        );
    }
}

#[tokio::test]
async fn registry_mismatch_refused_on_both_sides() {
    let config = config(1);
    let mut listener = listen(&config).await;
    let other = Hello::new(Role::Worker, 0xabc);
    let (client, server) = meet(&mut listener, &config, other).await;
    let client = client.expect_err("client must fail");
    let server = server.expect_err("server must fail");
    assert!(
        matches!(
            client,
            NetError::RegistryMismatch {
                ours: 0xabc,
                theirs: REGISTRY
            }
        ),
        "{client}"
    );
    assert!(
        matches!(
            server,
            NetError::RegistryMismatch {
                ours: REGISTRY,
                theirs: 0xabc
            }
        ),
        "{server}"
    );
    assert!(server.to_string().starts_with(
        "the peer runs a different binary: its registered tasks or its dagger build (version and sources) differ (hash 0000000000000abc vs"
    ));
}

/// A hello frame as specified in the `auth` module documentation.
fn raw_hello(version: u16, role: u8, registry: u64, nonce: [u8; 32]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(b"DGNT");
    payload.extend_from_slice(&version.to_be_bytes());
    payload.push(role);
    payload.push(0);
    payload.extend_from_slice(&0u64.to_be_bytes());
    payload.extend_from_slice(&registry.to_be_bytes());
    payload.extend_from_slice(&nonce);
    let mut frame = encode_header(payload.len(), false).to_vec();
    frame.extend_from_slice(&payload);
    frame
}

async fn read_raw_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut payload).await.unwrap();
    payload
}

/// The client side of the handshake, written from the documented wire format.
async fn raw_handshake(s: &mut TcpStream, secret: &Secret) {
    let hello = raw_hello(PROTOCOL_VERSION, 1, REGISTRY, [42; 32]);
    s.write_all(&hello).await.unwrap();
    let theirs = read_raw_frame(s).await;
    let mac = |side: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"dagger-net proof v1");
        mac.update(side);
        mac.update(&hello[4..]);
        mac.update(&theirs);
        mac.update(&[0]);
        mac.finalize().into_bytes()
    };
    let proof = mac(b"client");
    let mut frame = encode_header(32, false).to_vec();
    frame.extend_from_slice(&proof);
    s.write_all(&frame).await.unwrap();
    assert_eq!(read_raw_frame(s).await, mac(b"server").to_vec());
}

/// True once the peer has closed the connection (EOF or reset), after whatever it sent.
async fn disconnected(s: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    match s.read_to_end(&mut sink).await {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[tokio::test]
async fn version_mismatch_refused() {
    // A client of another version.
    let mut listener = listen(&config(1)).await;
    let mut raw = within(TcpStream::connect(listener.local_addr()))
        .await
        .unwrap();
    within(raw.write_all(&raw_hello(PROTOCOL_VERSION + 1, 1, REGISTRY, [1; 32])))
        .await
        .unwrap();
    let err = within(listener.accept()).await.expect_err("must fail");
    assert!(
        matches!(err, NetError::VersionMismatch { ours: PROTOCOL_VERSION, theirs } if theirs == PROTOCOL_VERSION + 1),
        "{err}"
    );
    assert!(within(disconnected(&mut raw)).await);

    // A server of another version.
    let raw_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw_server.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = raw_server.accept().await.unwrap();
        s.write_all(&raw_hello(7, 0, REGISTRY, [2; 32]))
            .await
            .unwrap();
        disconnected(&mut s).await
    });
    let err = within(connect(addr, &config(1), worker(1)))
        .await
        .expect_err("must fail");
    assert!(
        matches!(err, NetError::VersionMismatch { theirs: 7, .. }),
        "{err}"
    );
    assert!(within(server).await.unwrap());
}

#[tokio::test]
async fn misbehaving_clients_do_not_block_the_listener() {
    let config = config(1).with_handshake_timeout(Duration::from_secs(1));
    let mut listener = listen(&config).await;
    let addr = listener.local_addr();

    // Connected before the good client, each in its own way wrong.
    let mut silent = within(TcpStream::connect(addr)).await.unwrap();
    let mut garbage = within(TcpStream::connect(addr)).await.unwrap();
    within(garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut truncated = within(TcpStream::connect(addr)).await.unwrap();
    let mut partial = raw_hello(PROTOCOL_VERSION, 1, REGISTRY, [3; 32]);
    partial.truncate(20);
    within(truncated.write_all(&partial)).await.unwrap();
    within(truncated.shutdown()).await.unwrap();
    let mut oversized = within(TcpStream::connect(addr)).await.unwrap();
    within(oversized.write_all(&[0x00, 0xff, 0xff, 0xff, 1, 2, 3]))
        .await
        .unwrap();
    let mut bad_flags = within(TcpStream::connect(addr)).await.unwrap();
    within(bad_flags.write_all(&u32::MAX.to_be_bytes()))
        .await
        .unwrap();

    // A well-behaved client is served while the silent one is still pending.
    let good = tokio::spawn({
        let config = config.clone();
        async move {
            let (mut conn, _) = connect(addr, &config, worker(1)).await?;
            conn.send(&b"ok"[..]).await?;
            conn.recv().await
        }
    });

    let mut errors = Vec::new();
    let mut served = false;
    within(async {
        while errors.len() < 5 || !served {
            match listener.accept().await {
                Ok((mut conn, hello)) => {
                    assert_eq!(hello.peer_id, Some(1));
                    assert!(errors
                        .iter()
                        .all(|e| !matches!(e, NetError::Timeout { .. })));
                    assert_eq!(conn.recv().await.unwrap().unwrap(), &b"ok"[..]);
                    conn.send(&b"bye"[..]).await.unwrap();
                    served = true;
                }
                Err(e) => errors.push(e),
            }
        }
    })
    .await;
    assert_eq!(within(good).await.unwrap().unwrap().unwrap(), &b"bye"[..]);

    let count = |f: &dyn Fn(&NetError) -> bool| errors.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(&|e| matches!(
            e,
            NetError::Timeout {
                during: "handshake",
                ..
            }
        )),
        1,
        "{errors:?}"
    );
    assert_eq!(
        count(&|e| matches!(e, NetError::Malformed(FrameError::Truncated))),
        1,
        "{errors:?}"
    );
    assert_eq!(
        count(&|e| matches!(
            e,
            NetError::Malformed(FrameError::FrameTooLarge {
                len: 0xff_ffff,
                max: MAX_FRAME_PAYLOAD
            })
        )),
        1,
        "{errors:?}"
    );
    assert_eq!(
        count(&|e| matches!(e, NetError::Malformed(FrameError::ReservedBits { .. }))),
        2,
        "{errors:?}"
    );
    for s in [
        &mut silent,
        &mut garbage,
        &mut truncated,
        &mut oversized,
        &mut bad_flags,
    ] {
        assert!(within(disconnected(s)).await);
    }
}

#[tokio::test]
async fn bad_frames_after_the_handshake_close_that_connection_only() {
    let config = config(1);
    let mut listener = listen(&config).await;
    let addr = listener.local_addr();

    let mut raw = within(TcpStream::connect(addr)).await.unwrap();
    within(raw_handshake(&mut raw, &config.secret)).await;
    let (mut bad, _) = within(listener.accept()).await.unwrap();
    // A valid message, then a frame with reserved bits.
    let mut bytes = encode_header(2, false).to_vec();
    bytes.extend_from_slice(b"hi");
    bytes.extend_from_slice(&[0x40, 0, 0, 1, 0]);
    within(raw.write_all(&bytes)).await.unwrap();
    assert_eq!(within(bad.recv()).await.unwrap().unwrap(), &b"hi"[..]);
    let err = within(bad.recv()).await.expect_err("must fail");
    assert!(
        matches!(
            err,
            NetError::Malformed(FrameError::ReservedBits {
                header: 0x4000_0001
            })
        ),
        "{err}"
    );
    assert!(matches!(within(bad.recv()).await, Err(NetError::Closed)));
    drop(bad);
    assert!(within(disconnected(&mut raw)).await);

    // A message cut in the middle.
    let mut raw = within(TcpStream::connect(addr)).await.unwrap();
    within(raw_handshake(&mut raw, &config.secret)).await;
    let (mut cut, _) = within(listener.accept()).await.unwrap();
    let mut bytes = encode_header(MAX_FRAME_PAYLOAD, true).to_vec();
    bytes.extend_from_slice(&vec![1; MAX_FRAME_PAYLOAD]);
    bytes.extend_from_slice(&encode_header(100, false));
    bytes.extend_from_slice(&[2; 50]);
    within(raw.write_all(&bytes)).await.unwrap();
    within(raw.shutdown()).await.unwrap();
    let err = within(cut.recv()).await.expect_err("must fail");
    assert!(
        matches!(err, NetError::Malformed(FrameError::Truncated)),
        "{err}"
    );

    // Other connections are unaffected.
    let (client, server) = meet(&mut listener, &config, worker(2)).await;
    let (mut client, mut server) = (client.unwrap().0, server.unwrap().0);
    within(client.send(&b"still fine"[..])).await.unwrap();
    assert_eq!(
        within(server.recv()).await.unwrap().unwrap(),
        &b"still fine"[..]
    );
}

#[tokio::test]
async fn oversized_messages_refused() {
    let small = config(1).with_max_message(1 << 20);
    let large = config(1).with_max_message(16 << 20);
    let mut listener = listen(&small).await;
    let (client, server) = meet(&mut listener, &large, worker(1)).await;
    let (mut client, mut server) = (client.unwrap().0, server.unwrap().0);

    // The sender refuses what exceeds its own limit, without sending anything.
    let err = client
        .feed(vec![0u8; (16 << 20) + 1])
        .expect_err("must fail");
    assert!(
        matches!(err, NetError::Oversized { max, .. } if max == 16 << 20),
        "{err}"
    );
    // The receiver refuses what exceeds its limit, before it all arrived.
    let send = tokio::spawn(async move {
        let _ = client.send(vec![7u8; 4 << 20]).await;
        client
    });
    let err = within(server.recv()).await.expect_err("must fail");
    assert!(
        matches!(err, NetError::Oversized { max, .. } if max == 1 << 20),
        "{err}"
    );
    drop(server);
    within(send).await.unwrap();
}

#[tokio::test]
async fn silent_and_closing_peers() {
    // A server that accepts and says nothing: connect times out.
    let raw_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw_server.local_addr().unwrap();
    let config = config(1).with_handshake_timeout(Duration::from_millis(200));
    let (accepted, err) =
        within(async { tokio::join!(raw_server.accept(), connect(addr, &config, worker(1))) })
            .await;
    let err = err.expect_err("must fail");
    assert!(
        matches!(
            err,
            NetError::Timeout {
                during: "handshake",
                ..
            }
        ),
        "{err}"
    );
    drop(accepted);

    // A server that accepts and closes.
    let (accepted, err) = within(async {
        tokio::join!(
            async {
                let (s, _) = raw_server.accept().await.unwrap();
                drop(s);
            },
            connect(addr, &config, worker(1))
        )
    })
    .await;
    let () = accepted;
    let err = err.expect_err("must fail");
    assert!(matches!(err, NetError::Closed | NetError::Io(_)), "{err}");

    // Nobody listening.
    drop(raw_server);
    let err = within(connect(addr, &config, worker(1)))
        .await
        .expect_err("must fail");
    assert!(matches!(err, NetError::Io(_)), "{err}");
}

fn tls_config(b: u8, identity: TlsIdentity) -> NetConfig {
    config(b).with_tls(TlsConfig::new(identity))
}

#[tokio::test]
async fn tls_round_trip_with_pinning() {
    let server_id = TlsIdentity::generate().unwrap();
    let client_id = TlsIdentity::generate().unwrap();
    let server_fp = server_id.fingerprint();
    let client_fp = client_id.fingerprint();
    let server_config = tls_config(1, server_id);
    let client_config = tls_config(1, client_id).for_peer(&server_fp).unwrap();

    let mut listener = listen(&server_config).await;
    let (client, server) = meet(&mut listener, &client_config, worker(1)).await;
    let (mut client, head_hello) = client.unwrap();
    let (mut server, worker_hello) = server.unwrap();
    assert_eq!(head_hello.tls_fingerprint.as_deref(), Some(&*server_fp));
    assert_eq!(worker_hello.tls_fingerprint.as_deref(), Some(&*client_fp));

    let big = Bytes::from(pattern(6 << 20));
    let sent = big.clone();
    let echo = tokio::spawn(async move {
        while let Some(msg) = server.recv().await.unwrap() {
            server.send(msg).await.unwrap();
        }
    });
    within(async {
        client.send(&b"small"[..]).await.unwrap();
        assert_eq!(client.recv().await.unwrap().unwrap(), &b"small"[..]);
        client.send(sent).await.unwrap();
        assert!(client.recv().await.unwrap().unwrap() == big);
        client.close().await.unwrap();
    })
    .await;
    within(echo).await.unwrap();
}

#[tokio::test]
async fn tls_connections_write_only_through_their_sender() {
    let server_id = TlsIdentity::generate().unwrap();
    let server_fp = server_id.fingerprint();
    let server_config = tls_config(1, server_id);
    let client_config = tls_config(1, TlsIdentity::generate().unwrap())
        .for_peer(&server_fp)
        .unwrap();
    let mut listener = listen(&server_config).await;
    let (client, _server) = meet(&mut listener, &client_config, worker(1)).await;
    let (tx, _rx) = client.unwrap().0.split();
    assert!(tx.direct_writer().is_none());
}

#[tokio::test]
async fn tls_wrong_fingerprint_refused() {
    let server_config = tls_config(1, TlsIdentity::generate().unwrap());
    let impostor = TlsIdentity::generate().unwrap().fingerprint();
    let client_config = tls_config(1, TlsIdentity::generate().unwrap())
        .for_peer(&impostor)
        .unwrap();
    let mut listener = listen(&server_config).await;
    let (client, server) = meet(&mut listener, &client_config, worker(1)).await;
    let client = client.expect_err("client must fail");
    assert!(
        matches!(&client, NetError::FingerprintMismatch { expected, .. } if *expected == impostor),
        "{client}"
    );
    let server = server.expect_err("server must fail");
    assert!(matches!(server, NetError::Tls(_)), "{server}");
}

#[tokio::test]
async fn tls_client_allow_list_and_secret_still_checked() {
    let server_id = TlsIdentity::generate().unwrap();
    let server_fp = server_id.fingerprint();
    let allowed = TlsIdentity::generate().unwrap();
    let allowed_fp = allowed.fingerprint();
    let server_tls = TlsConfig::new(server_id).allow_client(&allowed_fp).unwrap();
    let server_config = config(1).with_tls(server_tls);
    let mut listener = listen(&server_config).await;

    // An unknown client certificate is refused.
    let stranger = tls_config(1, TlsIdentity::generate().unwrap())
        .for_peer(&server_fp)
        .unwrap();
    let (client, server) = meet(&mut listener, &stranger, worker(1)).await;
    assert!(client.is_err());
    assert!(
        matches!(server, Err(NetError::Tls(_))),
        "{:?}",
        server.err()
    );

    // The allowed certificate with the wrong secret is refused by authentication.
    let wrong_secret = tls_config(2, allowed).for_peer(&server_fp).unwrap();
    let (client, server) = meet(&mut listener, &wrong_secret, worker(1)).await;
    assert!(
        matches!(client, Err(NetError::AuthFailed)),
        "{:?}",
        client.err()
    );
    assert!(
        matches!(server, Err(NetError::AuthFailed)),
        "{:?}",
        server.err()
    );

    // Plain TCP against TLS fails clearly.
    let plain = config(1);
    let (client, server) = meet(&mut listener, &plain, worker(1)).await;
    assert!(
        matches!(client, Err(NetError::Tls(_))),
        "{:?}",
        client.err()
    );
    assert!(
        matches!(server, Err(NetError::Tls(_))),
        "{:?}",
        server.err()
    );
}
