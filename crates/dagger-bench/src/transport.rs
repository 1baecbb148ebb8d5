//! `transport`: loopback measurements of the transport alone (`dagger-net`), without tasks:
//! what a message costs on the wire, against raw TCP in the same run. Every side runs a
//! current-thread tokio runtime on its own thread, like a process's I/O thread.
//!
//! * `round_trip`: 32-byte messages echoed back, one at a time, between two threads (plain
//!   and TLS), on one runtime (both ends in one thread), and raw tokio TCP (36 bytes: the
//!   same bytes on the wire as a 32-byte message with its frame header);
//! * `message_rate`: one-way 32-byte messages, a flush every 128;
//! * `throughput`: 32 × 64 MiB one way: raw TCP into one reused buffer and into a fresh
//!   buffer per message, `dagger-net` plain and TLS.
//!
//! `--runs R` measured runs after one warm-up (default 7, alternating the systems compared);
//! `--n N` scales the message counts (default 20 000 round trips, 10^6 messages).

use crate::json::Line;
use crate::scenarios::{interleaved, median};
use crate::Config;
use bytes::Bytes;
use dagger_net::{
    connect, Connection, Hello, Listener, NetConfig, Role, Secret, TlsConfig, TlsIdentity,
};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pub fn run(cfg: &Config) -> Result<(), String> {
    round_trips(cfg)?;
    message_rate(cfg)?;
    throughput(cfg)
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

fn configs(tls: bool) -> Result<(NetConfig, NetConfig), String> {
    let e = |e: dagger_net::NetError| e.to_string();
    let plain = NetConfig::new(Secret::from_bytes(vec![1; 32]).map_err(e)?);
    if !tls {
        return Ok((plain.clone(), plain));
    }
    let server_id = TlsIdentity::generate().map_err(e)?;
    let fp = server_id.fingerprint();
    let server = plain.clone().with_tls(TlsConfig::new(server_id));
    let client = plain
        .with_tls(TlsConfig::new(TlsIdentity::generate().map_err(e)?))
        .for_peer(&fp)
        .map_err(e)?;
    Ok((server, client))
}

/// Runs `server` on a thread of its own and `client` on this one, connected; returns what
/// the client returns.
fn run_pair<R>(
    tls: bool,
    server: impl FnOnce(Connection) -> BoxFuture<()> + Send + 'static,
    client: impl FnOnce(Connection) -> BoxFuture<R>,
) -> Result<R, String> {
    let (server_config, client_config) = configs(tls)?;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        block_on(async move {
            let mut l = Listener::bind("127.0.0.1:0", &server_config, Hello::new(Role::Head, 1))
                .await
                .expect("a loopback listener");
            addr_tx.send(l.local_addr()).expect("the client waits");
            let (conn, _) = l.accept().await.expect("the client connects");
            server(conn).await;
        })
    });
    let addr = addr_rx
        .recv()
        .map_err(|_| "the server thread failed".to_string())?;
    let r = block_on(async move {
        let (conn, _) = connect(addr, &client_config, Hello::new(Role::Worker, 1))
            .await
            .expect("connecting over loopback");
        client(conn).await
    });
    t.join()
        .map_err(|_| "the server thread panicked".to_string())?;
    Ok(r)
}

fn echo(mut conn: Connection) -> BoxFuture<()> {
    Box::pin(async move {
        while let Ok(Some(m)) = conn.recv().await {
            if conn.send(m).await.is_err() {
                return;
            }
        }
    })
}

/// `n` round trips of a 32-byte message on `conn` (after 1000 not timed).
async fn ping_pong(conn: &mut Connection, n: u32) -> Duration {
    let msg = Bytes::from_static(&[7u8; 32]);
    for _ in 0..1000 {
        conn.send(msg.clone()).await.expect("send");
        conn.recv().await.expect("recv").expect("an echo");
    }
    let t = Instant::now();
    for _ in 0..n {
        conn.send(msg.clone()).await.expect("send");
        conn.recv().await.expect("recv").expect("an echo");
    }
    t.elapsed()
}

fn two_threads(tls: bool, n: u32) -> Duration {
    run_pair(tls, echo, move |mut conn| {
        Box::pin(async move { ping_pong(&mut conn, n).await })
    })
    .expect("a loopback connection")
}

fn one_runtime(n: u32) -> Duration {
    block_on(async move {
        let config = NetConfig::new(Secret::from_bytes(vec![1; 32]).expect("a secret"));
        let mut l = Listener::bind("127.0.0.1:0", &config, Hello::new(Role::Head, 1))
            .await
            .expect("a loopback listener");
        let addr = l.local_addr();
        let (c, s) = tokio::join!(
            connect(addr, &config, Hello::new(Role::Worker, 1)),
            l.accept()
        );
        let (mut c, s) = (c.expect("connect").0, s.expect("accept").0);
        tokio::spawn(echo(s));
        ping_pong(&mut c, n).await
    })
}

fn raw_round_trips(n: u32) -> Duration {
    block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let addr = l.local_addr().expect("its address");
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (mut c, mut s) = (c.expect("connect"), s.expect("accept").0);
        c.set_nodelay(true).expect("nodelay");
        s.set_nodelay(true).expect("nodelay");
        tokio::spawn(async move {
            let mut buf = [0u8; 36];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 36];
        for _ in 0..1000 {
            c.write_all(&buf).await.expect("write");
            c.read_exact(&mut buf).await.expect("read");
        }
        let t = Instant::now();
        for _ in 0..n {
            c.write_all(&buf).await.expect("write");
            c.read_exact(&mut buf).await.expect("read");
        }
        t.elapsed()
    })
}

fn round_trips(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.unwrap_or(20_000) as u32;
    let mut plain = || two_threads(false, n);
    let mut tls = || two_threads(true, n);
    let mut one = || one_runtime(n);
    let mut raw = || raw_round_trips(n);
    let runs = interleaved(cfg.runs, &mut [&mut plain, &mut tls, &mut one, &mut raw]);
    let systems = [
        ("dagger-net", "two threads"),
        ("dagger-net-tls", "two threads"),
        ("dagger-net", "one runtime"),
        ("tokio-tcp", "one runtime"),
    ];
    for ((system, placement), runs) in systems.iter().zip(&runs) {
        let secs = median(runs.clone());
        Line::new("transport_round_trip", system)
            .int("tasks", u64::from(n))
            .num("seconds", secs)
            .num("us_per_task", secs * 1e6 / f64::from(n))
            .num("us_per_round_trip", secs * 1e6 / f64::from(n))
            .str("placement", placement)
            .int("message_bytes", 32)
            .int("workers", 0)
            .nums("runs", runs)
            .print();
    }
    Ok(())
}

fn one_way_messages(n: u32) -> Duration {
    run_pair(
        false,
        move |mut conn| {
            Box::pin(async move {
                let mut k = 0;
                while let Ok(Some(_)) = conn.recv().await {
                    k += 1;
                }
                assert_eq!(k, n, "every message arrived");
            })
        },
        move |mut conn| {
            Box::pin(async move {
                let t = Instant::now();
                for i in 0..n {
                    conn.feed_slice(&i.to_le_bytes().repeat(8)).expect("feed");
                    if i % 128 == 127 {
                        conn.flush().await.expect("flush");
                    }
                }
                conn.close().await.expect("close");
                t.elapsed()
            })
        },
    )
    .expect("a loopback connection")
}

fn message_rate(cfg: &Config) -> Result<(), String> {
    let n = cfg.n.map_or(1_000_000, |n| n * 50) as u32;
    let mut one_way = || one_way_messages(n);
    let runs = interleaved(cfg.runs, &mut [&mut one_way]);
    let secs = median(runs[0].clone());
    Line::new("transport_message_rate", "dagger-net")
        .int("tasks", u64::from(n))
        .num("seconds", secs)
        .num("us_per_task", secs * 1e6 / f64::from(n))
        .num("messages_per_s", f64::from(n) / secs)
        .int("message_bytes", 32)
        .int("flush_every", 128)
        .int("workers", 0)
        .nums("runs", &runs[0])
        .print();
    Ok(())
}

const MSG: usize = 64 << 20;
const COUNT: usize = 32;

fn framed_throughput(tls: bool) -> Duration {
    run_pair(
        tls,
        |mut conn| {
            Box::pin(async move {
                let mut total = 0;
                while let Ok(Some(m)) = conn.recv().await {
                    total += m.len();
                }
                assert_eq!(total, MSG * COUNT, "every byte arrived");
            })
        },
        |mut conn| {
            Box::pin(async move {
                let data = Bytes::from(vec![5u8; MSG]);
                let t = Instant::now();
                for _ in 0..COUNT {
                    conn.send(data.clone()).await.expect("send");
                }
                conn.close().await.expect("close");
                t.elapsed()
            })
        },
    )
    .expect("a loopback connection")
}

/// Raw TCP, the reader reading each message into one reused buffer (`reuse`, the best
/// case) or into a fresh one per message (like a receiver that hands messages off).
fn raw_throughput(reuse: bool) -> Duration {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback listener");
            addr_tx
                .send(l.local_addr().expect("its address"))
                .expect("the writer waits");
            let (mut s, _) = l.accept().await.expect("accept");
            let mut reused = vec![0u8; MSG];
            for _ in 0..COUNT {
                if reuse {
                    s.read_exact(&mut reused).await.expect("read");
                } else {
                    let mut buf = Vec::with_capacity(MSG);
                    while buf.len() < MSG {
                        assert!(s.read_buf(&mut buf).await.expect("read") > 0);
                    }
                }
            }
        })
    });
    let addr = addr_rx.recv().expect("the reader's address");
    let el = block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let data = vec![5u8; MSG];
        let t = Instant::now();
        for _ in 0..COUNT {
            s.write_all(&data).await.expect("write");
        }
        s.shutdown().await.expect("shutdown");
        t.elapsed()
    });
    t.join().expect("the reader thread");
    el
}

fn throughput(cfg: &Config) -> Result<(), String> {
    let bytes = (MSG * COUNT) as f64;
    let mut reused = || raw_throughput(true);
    let mut fresh = || raw_throughput(false);
    let mut plain = || framed_throughput(false);
    let mut tls = || framed_throughput(true);
    let runs = interleaved(
        cfg.runs,
        &mut [&mut reused, &mut fresh, &mut plain, &mut tls],
    );
    let raw_gbs = bytes / median(runs[0].clone()) / 1e9;
    let systems = [
        ("tcp-loopback", "one reused buffer"),
        ("tcp-loopback", "fresh buffer per message"),
        ("dagger-net", "messages"),
        ("dagger-net-tls", "messages"),
    ];
    for ((system, reader), runs) in systems.iter().zip(&runs) {
        let secs = median(runs.clone());
        let gbs = bytes / secs / 1e9;
        Line::new("transport_throughput", system)
            .int("tasks", COUNT as u64)
            .num("seconds", secs)
            .num("us_per_task", secs * 1e6 / COUNT as f64)
            .str("reader", reader)
            .int("message_bytes", MSG as u64)
            .int("bytes", bytes as u64)
            .num("gb_per_s", gbs)
            .num("ratio_to_tcp", gbs / raw_gbs)
            .int("workers", 0)
            .nums("runs", runs)
            .print();
    }
    Ok(())
}
