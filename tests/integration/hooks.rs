//! Lease hooks end to end: the fake controller, the real exporter process and the unchanged
//! Python client (`j` inside hooks, `jmp shell` showing hook output), each `onFailure` policy,
//! a hook past its timeout, and standalone mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options};

use crate::support::exporter::{config, Exporter};
use crate::support::python;

const EXPORT: &str = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n";

/// PATH with the Python client's `j` first, for hooks that call it.
fn path_with_j() -> String {
    format!(
        "{}:{}",
        python::venv_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn with_hooks(controller: &FakeController, hooks: &str) -> String {
    format!("{}hooks:\n{hooks}", controller.exporter_config_yaml(EXPORT))
}

async fn start(controller: &FakeController, hooks: &str, dir: &Path) -> Exporter {
    let file = dir.join("exporter.yaml");
    std::fs::write(&file, with_hooks(controller, hooks)).unwrap();
    let path = path_with_j();
    tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&file, &[("PATH", path.as_str())])
    })
    .await
    .unwrap()
}

/// Waits until the controller has seen exactly this sequence of reports after the
/// registration, or fails showing what it saw.
async fn expect_reports(c: &FakeController, want: &[(ExporterStatus, &str)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<(ExporterStatus, String)> = c.reports().into_iter().skip(1).collect();
        let seen_ref: Vec<(ExporterStatus, &str)> =
            seen.iter().map(|(s, m)| (*s, m.as_str())).collect();
        if seen_ref == want {
            return;
        }
        if seen_ref.len() > want.len() || tokio::time::Instant::now() > deadline {
            panic!("reports after registration:\n  saw  {seen_ref:?}\n  want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use ExporterStatus::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_lease_runs_j_through_the_hook_socket_before_the_client_gets_in() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = "  beforeLease:\n    script: |\n      j power on\n      echo \"before-hook-for-$CLIENT_NAME\"\n    timeout: 60\n  afterLease:\n    script: |\n      j power off\n      echo after done\n    timeout: 60\n";
    let exporter = start(&c, hooks, dir.path()).await;
    let client_config = dir.path().join("client.yaml");
    std::fs::write(&client_config, c.client_config_yaml()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        python::jmp_shell(&client_config, &["j", "power", "read"])
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "jmp shell failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("voltage=5.0"), "{stdout}");
    // jmp shell prints hook output it gets through LogStream.
    let both = format!("{stdout}{stderr}");
    assert!(
        both.contains("[exporter:beforeLease] before-hook-for-client1"),
        "hook output not shown to the client:\n{both}"
    );
    assert!(both.contains("[exporter:afterLease] after done"), "{both}");

    let log = exporter.log();
    let hook_power_on = log
        .find("power on")
        .expect("j power on in the hook reached the driver");
    let first_client = log
        .find("client connected through the router")
        .expect("a client connected");
    assert!(
        hook_power_on < first_client,
        "a client got in before beforeLease finished:\n{log}"
    );

    let lease = c
        .events()
        .iter()
        .find_map(|e| match e {
            Event::LeaseCreated { lease } => Some(lease.clone()),
            _ => None,
        })
        .unwrap();
    expect_reports(
        &c,
        &[
            (BeforeLeaseHook, "Running beforeLease hook"),
            (LeaseReady, "Ready for commands"),
            (AfterLeaseHook, "Running afterLease hooks"),
            (Available, "Available for new lease"),
            (Available, "Exporter available after lease release"),
        ],
    )
    .await;
    assert!(
        exporter.log().contains("power off"),
        "the afterLease hook's j power off did not run"
    );
    let released = c
        .events()
        .iter()
        .any(|e| matches!(e, Event::ReleaseLease { name } if *name == lease));
    assert!(released, "{:#?}", c.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_lease_runs_when_the_controller_ends_the_lease_and_nothing_is_released() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("after.txt");
    let hooks = format!(
        "  afterLease:\n    script: echo \"$LEASE_NAME\" >> {}\n",
        marker.display()
    );
    let _exporter = start(&c, &hooks, dir.path()).await;
    let lease = c.create_lease().await;
    expect_reports(&c, &[(LeaseReady, "Ready for commands")]).await;
    c.end_lease(&lease).await;
    expect_reports(
        &c,
        &[
            (LeaseReady, "Ready for commands"),
            (AfterLeaseHook, "Running afterLease hooks"),
            (Available, "Available for new lease"),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("{lease}\n"),
        "ran once, with the lease name"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !c.events()
            .iter()
            .any(|e| matches!(e, Event::ReleaseLease { .. })),
        "a lease the controller ended is not released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_policies_of_a_failing_before_lease_hook() {
    // warn: the lease goes on with a warning the client shows.
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let _warn = start(
        &c,
        "  beforeLease:\n    script: exit 3\n    onFailure: warn\n",
        dir.path(),
    )
    .await;
    c.create_lease().await;
    expect_reports(
        &c,
        &[
            (BeforeLeaseHook, "Running beforeLease hook"),
            (
                LeaseReady,
                "[HOOK_WARNING] beforeLease hook warning: Hook failed with exit code 3",
            ),
        ],
    )
    .await;

    // endLease: failed status, then the exporter releases the lease itself.
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let _end = start(&c, "  beforeLease:\n    script: exit 3\n    onFailure: endLease\n  afterLease:\n    script: touch /nonexistent-dir/should-not-run\n", dir.path()).await;
    let lease = c.create_lease().await;
    expect_reports(
        &c,
        &[
            (BeforeLeaseHook, "Running beforeLease hook"),
            (
                BeforeLeaseHookFailed,
                "beforeLease hook failed (on_failure=endLease): Hook failed with exit code 3",
            ),
            (Available, "Exporter available after lease release"),
            (Available, "Available for new lease"),
        ],
    )
    .await;
    assert!(c
        .events()
        .iter()
        .any(|e| matches!(e, Event::ReleaseLease { name } if *name == lease)));

    // exit: failed, OFFLINE, no release; the exporter leaves with exit code 1 once the lease ends.
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut exit = start(
        &c,
        "  beforeLease:\n    script: exit 3\n    onFailure: exit\n",
        dir.path(),
    )
    .await;
    let lease = c.create_lease().await;
    expect_reports(
        &c,
        &[
            (BeforeLeaseHook, "Running beforeLease hook"),
            (BeforeLeaseHookFailed, "beforeLease hook failed (on_failure=exit, shutting down): Hook failed with exit code 3"),
            (Offline, "Exporter shutting down due to beforeLease hook failure"),
        ],
    )
    .await;
    c.end_lease(&lease).await;
    let code = tokio::task::spawn_blocking(move || {
        exit.wait_exit(Duration::from_secs(20)).map(|s| s.code())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(Some(1)));
    let events = c.events();
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::ReleaseLease { .. })));
    assert!(events.iter().any(|e| matches!(e, Event::Unregister { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_policies_of_a_failing_after_lease_hook() {
    for (policy, status, message) in [
        (
            "warn",
            Available,
            "[HOOK_WARNING] afterLease hook warning: Hook failed with exit code 4",
        ),
        (
            "endLease",
            AfterLeaseHookFailed,
            "afterLease hook failed (on_failure=endLease): Hook failed with exit code 4",
        ),
    ] {
        let c = FakeController::start(Options::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let hooks = format!("  afterLease:\n    script: exit 4\n    onFailure: {policy}\n");
        let exporter = start(&c, &hooks, dir.path()).await;
        let lease = c.create_lease().await;
        expect_reports(&c, &[(LeaseReady, "Ready for commands")]).await;
        // EndSession from a client: the hook runs, then the exporter releases the lease.
        end_session_through_router(&c, &exporter, &lease).await;
        expect_reports(
            &c,
            &[
                (LeaseReady, "Ready for commands"),
                (AfterLeaseHook, "Running afterLease hooks"),
                (status, message),
                (Available, "Exporter available after lease release"),
            ],
        )
        .await;
        assert!(
            c.events()
                .iter()
                .any(|e| matches!(e, Event::ReleaseLease { name } if *name == lease)),
            "{policy}"
        );
    }
}

/// Calls EndSession through the router on one connection, as `jmp shell` does at its end.
///
/// There is no second attempt: a connection through the router that stalls is a bug (the fake
/// router once lost a pairing when the exporter and the client reached it together, and a
/// retry on a fresh connection hid it), so it fails the test with what the controller and the
/// exporter saw.
async fn end_session_through_router(c: &FakeController, exporter: &Exporter, lease: &str) {
    let mark = c.mark();
    let stop = tokio_util::sync::CancellationToken::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut client = jmp_testkit::client::connect(c, lease, stop.clone()).await;
        client
            .end_session(jmp_exporter::proto::EndSessionRequest {})
            .await
    })
    .await;
    stop.cancel();
    match ended {
        Ok(Ok(response)) => assert!(response.into_inner().success),
        other => panic!(
            "EndSession through the router: {other:?}\nevents: {:#?}\nexporter log tail:\n{}",
            &c.events()[mark..],
            exporter.log_tail(40)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_past_its_timeout_is_killed_with_its_children() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let hooks = format!(
        "  beforeLease:\n    script: |\n      sleep 60 &\n      echo $! > {}\n      sleep 60\n    timeout: 1\n",
        pidfile.display()
    );
    let _exporter = start(&c, &hooks, dir.path()).await;
    c.create_lease().await;
    expect_reports(
        &c,
        &[
            (BeforeLeaseHook, "Running beforeLease hook"),
            (
                LeaseReady,
                "[HOOK_WARNING] beforeLease hook warning: Hook timed out after 1 seconds",
            ),
        ],
    )
    .await;
    let child = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "the hook's background child {child} survived: {stat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_runs_before_lease_at_start_and_after_lease_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let file: PathBuf = dir.path().join("standalone.yaml");
    let demo = std::fs::read_to_string(config("demo.yaml")).unwrap();
    std::fs::write(
        &file,
        format!(
            "{demo}hooks:\n  beforeLease:\n    script: echo \"before $LEASE_NAME [$CLIENT_NAME]\" >> {0}\n  afterLease:\n    script: |\n      j power off\n      echo \"after $LEASE_NAME\" >> {0}\n",
            log.display()
        ),
    )
    .unwrap();
    let path = path_with_j();
    let mut exporter = Exporter::unix_with_env(&file, &[("PATH", path.as_str())]);
    let host = exporter.host();
    assert!(
        exporter.wait_for_log("beforeLease hook succeeded"),
        "{}",
        exporter.log()
    );
    // EndSession runs the afterLease hook (0.9.0 skips it there, then never runs it).
    let result = python::drive(&host, "end_session", &[]);
    assert_eq!(result["success"], true);
    assert_eq!(
        result["statuses"].as_array().unwrap().last().unwrap(),
        &serde_json::json!([
            "EXPORTER_STATUS_AVAILABLE",
            "Exporter available after lease release"
        ]),
        "{result}"
    );
    assert!(
        exporter.wait_for_log("power off"),
        "afterLease's j power off did not run:\n{}",
        exporter.log()
    );
    let status = exporter.stop();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text, "before standalone []\nafter standalone\n",
        "after runs once, not again at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_lease_runs_after_lease_then_offline_and_unregister() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("after.txt");
    let hooks = format!(
        "  afterLease:\n    script: echo \"$LEASE_NAME\" > {}\n",
        marker.display()
    );
    let mut exporter = start(&c, &hooks, dir.path()).await;
    let lease = c.create_lease().await;
    expect_reports(&c, &[(LeaseReady, "Ready for commands")]).await;
    exporter.signal("TERM");
    let status = tokio::task::spawn_blocking(move || exporter.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        format!("{lease}\n")
    );
    let events = c.events();
    let position = |pred: &dyn Fn(&Event) -> bool| events.iter().position(pred);
    let hook = position(&|e| {
        matches!(
            e,
            Event::ReportStatus {
                status: AfterLeaseHook,
                ..
            }
        )
    })
    .expect("AFTER_LEASE_HOOK");
    let released = position(&|e| matches!(e, Event::ReleaseLease { .. })).expect("ReleaseLease");
    let offline = position(&|e| {
        matches!(
            e,
            Event::ReportStatus {
                status: Offline,
                ..
            }
        )
    })
    .expect("OFFLINE");
    let unregister = position(&|e| matches!(e, Event::Unregister { .. })).expect("Unregister");
    assert!(
        hook < released && released < offline && offline < unregister,
        "{events:#?}"
    );
}

/// GetReport over the session's Unix socket, with our own client.
async fn report_over(socket: &str) -> jmp_exporter::proto::GetReportResponse {
    let io = tokio::net::UnixStream::connect(socket).await.unwrap();
    let channel = jmp_testkit::client::channel_over(io).await;
    jmp_exporter::proto::exporter_service_client::ExporterServiceClient::new(channel)
        .get_report(())
        .await
        .expect("GetReport")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motd_is_in_get_report_with_what_the_before_lease_hook_added() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(crate::support::exporter::config("demo.yaml")).unwrap();
    let with_hook = |script: &str| {
        demo.replacen(
            "export:",
            &format!("motd: 'Board 7, ask #lab before flashing'\nhooks:\n  beforeLease:\n    script: '{script}'\nexport:"),
            1,
        )
    };
    let file = dir.path().join("exporter.yaml");
    std::fs::write(
        &file,
        with_hook(r#"echo "serial on /dev/ttyUSB3" >> "$JMP_MOTD_FILE""#),
    )
    .unwrap();
    let exporter = tokio::task::spawn_blocking(move || Exporter::unix(&file))
        .await
        .unwrap();
    assert!(
        tokio::task::block_in_place(|| exporter.wait_for_log("beforeLease hook")),
        "{}",
        exporter.log()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let motd = loop {
        let motd = report_over(&exporter.host()).await.motd;
        if motd.contains("ttyUSB3") || std::time::Instant::now() > deadline {
            break motd;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        motd,
        "Board 7, ask #lab before flashing\nserial on /dev/ttyUSB3\n"
    );
    // The 0.9.0 client does not know the field and works as before.
    let host = exporter.host();
    let seen = tokio::task::spawn_blocking(move || python::drive(&host, "tree", &[]))
        .await
        .unwrap();
    assert!(!seen.is_null());
    drop(exporter);

    // A hook that writes more than 64 KiB adds nothing, and the log says why.
    let file = dir.path().join("big.yaml");
    std::fs::write(
        &file,
        with_hook(r#"head -c 70000 /dev/zero | tr "\0" x > "$JMP_MOTD_FILE""#),
    )
    .unwrap();
    let exporter = tokio::task::spawn_blocking(move || Exporter::unix(&file))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let motd = report_over(&exporter.host()).await.motd;
        assert_eq!(motd, "Board 7, ask #lab before flashing");
        if exporter.log().contains("left out") || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exporter.log().contains("more than 65536"),
        "{}",
        exporter.log()
    );
}
