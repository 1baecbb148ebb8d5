//! Loopback performance measurements, not part of the test suite (ignored). Run with
//!
//! ```text
//! cargo test --release -p dagger-net --test transport_perf -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each side runs a current-thread runtime on its own thread, like the runtime's I/O thread.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dagger_net::{
    connect, Connection, Hello, Listener, NetConfig, Role, Secret, TlsConfig, TlsIdentity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(tls: bool) -> (NetConfig, NetConfig) {
    let plain = NetConfig::new(Secret::from_bytes(vec![1; 32]).unwrap());
    if !tls {
        return (plain.clone(), plain);
    }
    let server_id = TlsIdentity::generate().unwrap();
    let fp = server_id.fingerprint();
    let server = plain.clone().with_tls(TlsConfig::new(server_id));
    let client = plain
        .with_tls(TlsConfig::new(TlsIdentity::generate().unwrap()))
        .for_peer(&fp)
        .unwrap();
    (server, client)
}

/// Runs `server` on a thread of its own and `client` here, connected.
fn run_pair<S, C, R>(tls: bool, server: S, client: C) -> R
where
    S: FnOnce(Connection) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + 'static,
    C: FnOnce(Connection) -> std::pin::Pin<Box<dyn std::future::Future<Output = R>>>,
{
    let (server_config, client_config) = config(tls);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        block_on(async move {
            let mut l = Listener::bind("127.0.0.1:0", &server_config, Hello::new(Role::Head, 1))
                .await
                .unwrap();
            addr_tx.send(l.local_addr()).unwrap();
            let (conn, _) = l.accept().await.unwrap();
            server(conn).await;
        })
    });
    let addr = addr_rx.recv().unwrap();
    let r = block_on(async move {
        let (conn, _) = connect(addr, &client_config, Hello::new(Role::Worker, 1))
            .await
            .unwrap();
        client(conn).await
    });
    t.join().unwrap();
    r
}

fn echo(mut conn: Connection) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async move {
        while let Some(m) = conn.recv().await.unwrap() {
            conn.send(m).await.unwrap();
        }
    })
}

fn latency(tls: bool) {
    let n = 20_000;
    let per = run_pair(tls, echo, move |mut conn| {
        Box::pin(async move {
            let msg = Bytes::from_static(&[7u8; 32]);
            for _ in 0..1000 {
                conn.send(msg.clone()).await.unwrap();
                conn.recv().await.unwrap().unwrap();
            }
            let t = Instant::now();
            for _ in 0..n {
                conn.send(msg.clone()).await.unwrap();
                conn.recv().await.unwrap().unwrap();
            }
            t.elapsed() / n
        })
    });
    println!("round trip, 32-byte messages, two threads, tls={tls}: {per:?}");
}

#[test]
#[ignore = "a loopback timing measurement printed for docs/benchmarks.md, not a pass/fail test; run it with `--ignored --release` on a quiet machine"]
fn perf_latency_two_threads() {
    latency(false);
    latency(true);
}

#[test]
#[ignore = "a loopback timing measurement printed for docs/benchmarks.md, not a pass/fail test; run it with `--ignored --release` on a quiet machine"]
fn perf_latency_one_runtime() {
    block_on(async {
        let config = NetConfig::new(Secret::from_bytes(vec![1; 32]).unwrap());
        let mut l = Listener::bind("127.0.0.1:0", &config, Hello::new(Role::Head, 1))
            .await
            .unwrap();
        let addr = l.local_addr();
        let (c, s) = tokio::join!(
            connect(addr, &config, Hello::new(Role::Worker, 1)),
            l.accept()
        );
        let (mut c, s) = (c.unwrap().0, s.unwrap().0);
        tokio::spawn(echo(s));
        let msg = Bytes::from_static(&[7u8; 32]);
        let n = 20_000;
        for _ in 0..1000 {
            c.send(msg.clone()).await.unwrap();
            c.recv().await.unwrap().unwrap();
        }
        let t = Instant::now();
        for _ in 0..n {
            c.send(msg.clone()).await.unwrap();
            c.recv().await.unwrap().unwrap();
        }
        println!(
            "round trip, 32-byte messages, one current-thread runtime: {:?}",
            t.elapsed() / n
        );
    });
}

#[test]
#[ignore = "a loopback timing measurement printed for docs/benchmarks.md, not a pass/fail test; run it with `--ignored --release` on a quiet machine"]
fn perf_latency_raw_tcp() {
    block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap().0);
        c.set_nodelay(true).unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 36];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.unwrap();
            }
        });
        let mut buf = [0u8; 36];
        let n = 20_000;
        for _ in 0..1000 {
            c.write_all(&buf).await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
        }
        let t = Instant::now();
        for _ in 0..n {
            c.write_all(&buf).await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
        }
        println!(
            "raw tokio TCP round trip, 36 bytes, one current-thread runtime: {:?}",
            t.elapsed() / n
        );
    });
}

#[test]
#[ignore = "a loopback timing measurement printed for docs/benchmarks.md, not a pass/fail test; run it with `--ignored --release` on a quiet machine"]
fn perf_small_message_rate() {
    let n = 1_000_000u32;
    let el = run_pair(
        false,
        move |mut conn| {
            Box::pin(async move {
                let mut k = 0;
                while let Some(_m) = conn.recv().await.unwrap() {
                    k += 1;
                }
                assert_eq!(k, n);
            })
        },
        move |mut conn| {
            Box::pin(async move {
                let t = Instant::now();
                for i in 0..n {
                    conn.feed_slice(&i.to_le_bytes().repeat(8)).unwrap();
                    if i % 128 == 127 {
                        conn.flush().await.unwrap();
                    }
                }
                conn.close().await.unwrap();
                t.elapsed()
            })
        },
    );
    println!(
        "one-way 32-byte messages, flush every 128: {:.2} M msg/s",
        n as f64 / el.as_secs_f64() / 1e6
    );
}

const MSG: usize = 64 << 20;
const COUNT: usize = 32;

fn throughput(tls: bool) -> Duration {
    run_pair(
        tls,
        |mut conn| {
            Box::pin(async move {
                let mut total = 0;
                while let Some(m) = conn.recv().await.unwrap() {
                    total += m.len();
                }
                assert_eq!(total, MSG * COUNT);
            })
        },
        |mut conn| {
            Box::pin(async move {
                let data = Bytes::from(vec![5u8; MSG]);
                let t = Instant::now();
                for _ in 0..COUNT {
                    conn.send(data.clone()).await.unwrap();
                }
                conn.close().await.unwrap();
                t.elapsed()
            })
        },
    )
}

fn raw_throughput(reuse: bool) -> Duration {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            // Either one buffer reused (best case), or a fresh one per message, like a
            // receiver that hands messages off.
            let mut reused = vec![0u8; MSG];
            for _ in 0..COUNT {
                if reuse {
                    s.read_exact(&mut reused).await.unwrap();
                } else {
                    let mut buf = Vec::with_capacity(MSG);
                    while buf.len() < MSG {
                        assert!(s.read_buf(&mut buf).await.unwrap() > 0);
                    }
                }
            }
        })
    });
    let addr = addr_rx.recv().unwrap();
    let el = block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let data = vec![5u8; MSG];
        let t = Instant::now();
        for _ in 0..COUNT {
            s.write_all(&data).await.unwrap();
        }
        s.shutdown().await.unwrap();
        t.elapsed()
    });
    t.join().unwrap();
    el
}

#[test]
#[ignore = "a loopback timing measurement printed for docs/benchmarks.md, not a pass/fail test; run it with `--ignored --release` on a quiet machine"]
fn perf_throughput() {
    let gib = (MSG * COUNT) as f64 / (1u64 << 30) as f64;
    for _ in 0..2 {
        let reused = raw_throughput(true);
        let fresh = raw_throughput(false);
        let framed = throughput(false);
        println!(
            "{COUNT} x 64 MiB one way: raw TCP {:.2} GiB/s (one reused buffer) / {:.2} GiB/s (fresh buffer per message), dagger-net {:.2} GiB/s",
            gib / reused.as_secs_f64(),
            gib / fresh.as_secs_f64(),
            gib / framed.as_secs_f64()
        );
    }
    let tls = throughput(true);
    println!("dagger-net with TLS: {:.2} GiB/s", gib / tls.as_secs_f64());
}
