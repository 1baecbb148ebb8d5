//! The local launcher, with real probe processes connecting to a stand-in head.

mod support;

use dagger_net::launch::{launch, LaunchError, LaunchSpec, LauncherKind, WorkerEnv};
use support::{process_gone, process_with_argument, random_hex, sha256_hex, Head, PATIENCE, PROBE};

fn probe_env(head: &Head, secret: &str) -> WorkerEnv {
    let mut env = WorkerEnv::new(head.addr(), secret);
    env.exe = Some(PROBE.into());
    env.args = Some(vec!["--probe-arg".into(), "two words".into()]);
    env.tls_fingerprint = Some("abcd".into());
    env.extra = vec![("DAGGER_PROBE_TAG".into(), "local tag".into())];
    env
}

#[test]
fn local_workers_get_the_protocol_and_die_with_their_handles() {
    let head = Head::start();
    let secret = random_hex(32);
    let env = probe_env(&head, &secret);
    let mut launched = launch(
        &LaunchSpec::Local {
            workers: 3,
            threads: 2,
        },
        &env,
    )
    .unwrap();
    assert_eq!(launched.ids(), [1, 2, 3]);
    assert_eq!(launched.next_id(), 4);

    let mut conns = head.accept(3, PATIENCE).unwrap();
    for (conn, id) in conns.iter().zip(1..) {
        let r = &conn.report;
        assert_eq!(r.id(), id, "{r:?}");
        assert_eq!(r.get("threads"), "2");
        assert_eq!(r.get("secret"), sha256_hex(&secret));
        assert_eq!(r.get("via"), "env");
        assert_eq!(r.get("fp"), "abcd");
        assert_eq!(r.get("tag"), "local tag");
        assert_eq!(r.get("args"), "--probe-arg\u{1f}two words");
        let worker = launched.get(id).unwrap();
        assert_eq!(worker.kind(), LauncherKind::Local);
        assert_eq!(worker.host(), Some("localhost"));
        assert_eq!(worker.pid(), Some(r.pid()));
    }
    assert_eq!(
        process_with_argument(&secret),
        None,
        "the secret is on a command line"
    );

    // Kill by id: that worker's connection closes, the others stay.
    assert_eq!(launched.kill(2).unwrap(), [2]);
    conns[1].wait_closed(PATIENCE).unwrap();
    assert!(process_gone(conns[1].report.pid(), PATIENCE));
    assert!(conns[0].is_open() && conns[2].is_open());
    assert_eq!(launched.ids(), [1, 3]);

    // Add a worker later: it gets the next id.
    let more = launched
        .launch_more(
            &LaunchSpec::Local {
                workers: 1,
                threads: 1,
            },
            &env,
        )
        .unwrap();
    assert_eq!(more, [4]);
    let mut late = head.accept(1, PATIENCE).unwrap();
    assert_eq!(
        (late[0].report.id(), late[0].report.get("threads")),
        (4, "1")
    );

    // A handle taken out of the set ends its worker when it drops.
    let third = launched.remove(3).unwrap();
    assert!(conns[2].is_open());
    drop(third);
    conns[2].wait_closed(PATIENCE).unwrap();

    // Dropping the set ends the rest.
    let pids: Vec<u32> = launched.workers().iter().filter_map(|w| w.pid()).collect();
    assert_eq!(pids.len(), 2);
    drop(launched);
    conns[0].wait_closed(PATIENCE).unwrap();
    late[0].wait_closed(PATIENCE).unwrap();
    for pid in pids {
        assert!(process_gone(pid, PATIENCE), "worker process {pid} survived");
    }
}

/// A dropped local worker may finish exiting before it is killed (the runtime asks its
/// workers to exit before it drops them): what it does on the way out, here 200 ms of work
/// and a file written, is not cut short.
#[test]
fn dropped_local_workers_may_finish_exiting_before_they_are_killed() {
    let head = Head::start();
    let mut env = probe_env(&head, &random_hex(32));
    let marker = std::env::temp_dir().join(format!("dagger-probe-exit-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    env.extra.push((
        "DAGGER_PROBE_EXIT_FILE".into(),
        marker.display().to_string(),
    ));
    env.extra
        .push(("DAGGER_PROBE_EXIT_MS".into(), "200".into()));
    let launched = launch(
        &LaunchSpec::Local {
            workers: 1,
            threads: 1,
        },
        &env,
    )
    .unwrap();
    let conns = head.accept(1, PATIENCE).unwrap();
    let pid = conns[0].report.pid();
    // Closing its connection asks the probe to exit; its handle is dropped right after.
    drop(conns);
    drop(launched);
    assert!(process_gone(pid, PATIENCE), "worker process {pid} survived");
    let written = std::fs::read(&marker).ok();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(
        written.as_deref(),
        Some(&b"exited"[..]),
        "the worker was killed before it finished exiting"
    );
}

#[test]
fn a_worker_that_exits_is_reported_with_its_status() {
    // Nothing listens on this port: the probe fails to connect and exits with status 2.
    let closed = format!("127.0.0.1:{}", support::free_port());
    let mut env = WorkerEnv::new(closed, random_hex(16));
    env.exe = Some(PROBE.into());
    env.args = Some(Vec::new());
    let launched = launch(
        &LaunchSpec::Local {
            workers: 1,
            threads: 1,
        },
        &env,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let exited = loop {
        let exited = launched.exited();
        if !exited.is_empty() || std::time::Instant::now() >= deadline {
            break exited;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(exited.len(), 1, "the worker did not exit");
    assert_eq!((exited[0].0, exited[0].1.code()), (1, Some(2)));
    // Killing an exited worker is fine.
    launched.workers()[0].kill().unwrap();
}

#[test]
fn errors_name_the_problem() {
    let head = Head::start();
    let mut env = probe_env(&head, &random_hex(16));
    env.exe = Some("/nonexistent/dagger-probe".into());
    let err = launch(
        &LaunchSpec::Local {
            workers: 2,
            threads: 1,
        },
        &env,
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/dagger-probe"),
        "{err}"
    );

    let env = WorkerEnv::new(head.addr(), "not hex");
    let err = launch(
        &LaunchSpec::Local {
            workers: 1,
            threads: 1,
        },
        &env,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not valid hex"), "{err}");
}

#[test]
fn workers_configured_by_environment_die_with_a_killed_head() {
    // `DAGGER_WORKERS=2 prog head`: the program launches itself twice, as workers.
    let head = Head::start();
    let secret = random_hex(32);
    let mut program = support::HeadProgram::start(
        std::process::Command::new(PROBE)
            .arg("head")
            .env("DAGGER_WORKERS", "2")
            .env("DAGGER_WORKER_THREADS", "3")
            .env("DAGGER_SECRET", &secret)
            .env("DAGGER_PROBE_HEAD", head.addr()),
    )
    .unwrap();
    assert_eq!(program.ids, "1,2");
    let mut conns = head.accept_workers(2, &secret);
    for conn in &conns {
        let r = &conn.report;
        assert_eq!((r.get("threads"), r.get("args")), ("3", "head"), "{r:?}");
    }
    // The head crashes: no destructor runs, yet its workers go (Linux: parent-death signal).
    program.kill_and_expect_workers_gone(&mut conns);
}
