//! The SSH launcher, through a throwaway sshd on 127.0.0.1.

mod support;

use std::process::Command;
use std::time::Instant;

use dagger_net::launch::{launch, LaunchError, LaunchSpec, LauncherKind, WorkerEnv};
use support::sshd::{current_user, keygen, missing_programs, Sshd};
use support::{process_gone, process_with_argument, random_hex, ready, sha256_hex, Head};
use support::{TempDir, PATIENCE, PROBE};

fn probe_env(head: &Head, secret: &str) -> WorkerEnv {
    let mut env = WorkerEnv::new(head.addr(), secret);
    env.exe = Some(PROBE.into());
    env.args = Some(vec![
        "--probe-arg".into(),
        "it's a \"quoted\" $HOME `x`".into(),
        "".into(),
    ]);
    env.tls_fingerprint = Some("abcd".into());
    env.extra = vec![("DAGGER_PROBE_TAG".into(), "ssh tag; $(false)".into())];
    env
}

#[test]
fn ssh_workers_get_the_secret_on_stdin_and_die_with_their_session() {
    if !ready("ssh launch", missing_programs()) {
        return;
    }
    let started = Instant::now();
    let sshd = Sshd::start().unwrap();
    let head = Head::start();
    let secret = random_hex(32);
    let env = probe_env(&head, &secret);
    let hosts = vec![
        "127.0.0.1".to_string(),
        format!("{}@127.0.0.1", current_user()),
    ];
    let mut launched = launch(&sshd.spec(hosts.clone(), 3), &env)
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()));
    assert_eq!(launched.ids(), [1, 2]);

    let mut conns = head.accept(2, PATIENCE).unwrap();
    let cwd = std::env::current_dir().unwrap().display().to_string();
    for (conn, id) in conns.iter().zip(1..) {
        let r = &conn.report;
        assert_eq!(r.id(), id, "{r:?}");
        assert_eq!(r.get("threads"), "3");
        assert_eq!(r.get("via"), "stdin");
        assert_eq!(r.get("secret"), sha256_hex(&secret));
        assert_eq!(r.get("fp"), "abcd");
        assert_eq!(r.get("tag"), "ssh tag; $(false)");
        assert_eq!(
            r.get("args"),
            "--probe-arg\u{1f}it's a \"quoted\" $HOME `x`\u{1f}"
        );
        assert_eq!(r.get("cwd"), cwd);
        let worker = launched.get(id).unwrap();
        assert_eq!(worker.kind(), LauncherKind::Ssh);
        assert_eq!(worker.host(), Some(hosts[id as usize - 1].as_str()));
        assert_eq!(worker.pid(), None);
    }
    assert_eq!(
        process_with_argument(&secret),
        None,
        "the secret is on a command line"
    );

    // Kill by id: the remote process ends, the other worker stays.
    assert_eq!(launched.kill(1).unwrap(), [1]);
    conns[0].wait_closed(PATIENCE).unwrap();
    assert!(
        process_gone(conns[0].report.pid(), PATIENCE),
        "remote worker 1 survived"
    );
    assert!(conns[1].is_open());

    // The ssh client dying abruptly (as when the head crashes) ends the remote worker too.
    let ssh_pid = launched.get(2).unwrap().launcher_pid().to_string();
    let status = Command::new("kill")
        .args(["-KILL", &ssh_pid])
        .status()
        .unwrap();
    assert!(status.success());
    conns[1].wait_closed(PATIENCE).unwrap();
    assert!(
        process_gone(conns[1].report.pid(), PATIENCE),
        "remote worker 2 survived"
    );
    // Its local ssh process has ended (polled: the kernel closes a dying process's sockets
    // a moment before the process can be waited for).
    let deadline = Instant::now() + PATIENCE;
    while launched.exited().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let exited = launched.exited();
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].0, 2);
    drop(launched);
    eprintln!("ssh launch test took {:?}", started.elapsed());
}

#[test]
fn dropping_the_handles_ends_remote_workers() {
    if !ready("ssh launch", missing_programs()) {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let head = Head::start();
    let env = probe_env(&head, &random_hex(16));
    let launched = launch(&sshd.spec(vec!["127.0.0.1".into(); 2], 1), &env)
        .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()));
    let mut conns = head.accept(2, PATIENCE).unwrap();
    drop(launched);
    for conn in &mut conns {
        conn.wait_closed(PATIENCE).unwrap();
        assert!(process_gone(conn.report.pid(), PATIENCE));
    }
}

#[test]
fn ssh_failures_are_reported_with_ssh_messages() {
    if !ready("ssh failures", missing_programs()) {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let head = Head::start();
    let env = probe_env(&head, &random_hex(16));

    // A key the server does not accept.
    let keys = TempDir::new("dagger-ssh-key");
    let stranger = keys.path().join("stranger");
    keygen(&stranger).unwrap();
    let LaunchSpec::Ssh {
        hosts,
        threads,
        port,
        ssh_options,
        exe,
        ..
    } = sshd.spec(vec!["127.0.0.1".into()], 1)
    else {
        unreachable!()
    };
    let spec = LaunchSpec::Ssh {
        hosts: hosts.clone(),
        threads,
        port,
        identity: Some(stranger),
        ssh_options: ssh_options.clone(),
        exe: exe.clone(),
    };
    match launch(&spec, &env) {
        Err(LaunchError::SshAuth { host, stderr }) => {
            assert_eq!(host, "127.0.0.1");
            assert!(stderr.contains("Permission denied"), "{stderr}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }

    // A port nobody listens on.
    let spec = LaunchSpec::Ssh {
        hosts: vec!["127.0.0.1".into()],
        threads,
        port: Some(support::free_port()),
        identity: None,
        ssh_options: ssh_options.clone(),
        exe: None,
    };
    let err = launch(&spec, &env).unwrap_err();
    assert!(
        matches!(err, LaunchError::HostUnreachable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Connection refused"), "{err}");

    // A program that is not on the host: the second host's failure also ends the first.
    let spec = LaunchSpec::Ssh {
        hosts: vec!["127.0.0.1".into(); 2],
        threads,
        port,
        identity: Some(sshd.user_key.clone()),
        ssh_options,
        exe: Some("/nonexistent/dagger-probe".into()),
    };
    let err = launch(&spec, &env).unwrap_err();
    assert!(matches!(err, LaunchError::StartFailed { .. }), "{err:?}");
    assert!(err.to_string().contains("not an executable file"), "{err}");
}

#[test]
fn ssh_workers_configured_by_environment_die_with_a_killed_head() {
    if !ready("ssh launch", missing_programs()) {
        return;
    }
    let sshd = Sshd::start().unwrap();
    let head = Head::start();
    let secret = random_hex(32);
    // `DAGGER_HOSTS=127.0.0.1,127.0.0.1 prog head`, through the throwaway sshd.
    let mut program = support::HeadProgram::start(
        Command::new(PROBE)
            .arg("head")
            .env("DAGGER_HOSTS", "127.0.0.1, 127.0.0.1")
            .env("DAGGER_SSH_PORT", sshd.port.to_string())
            .env("DAGGER_SSH_IDENTITY", &sshd.user_key)
            .env("DAGGER_SSH_OPTS", Sshd::ssh_options().join(" "))
            .env("DAGGER_SECRET", &secret)
            .env("DAGGER_PROBE_HEAD", head.addr()),
    )
    .unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()));
    assert_eq!(program.ids, "1,2");
    let mut conns = head.accept_workers(2, &secret);
    for conn in &conns {
        let r = &conn.report;
        assert_eq!((r.get("via"), r.get("args")), ("stdin", "head"), "{r:?}");
    }
    // The head crashes: its ssh clients die with it, and sshd ends the remote workers.
    program.kill_and_expect_workers_gone(&mut conns);
}
