//! Controller mode against the fake controller and router from `jmp-testkit`, driven by the
//! unchanged upstream Python client: registration, leases through the router, statuses the
//! controller sees, recovery from controller restarts, and leaving with OFFLINE + Unregister.

use std::path::PathBuf;
use std::time::Duration;

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::controller::{Event, FakeController, Options};

use crate::support::exporter::Exporter;
use crate::support::process::{holdings, settles_back};
use crate::support::{python, soak};

const EXPORT: &str = "  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config: {url: 'loop://'}\n  console:\n    ref: serial\n";

struct Lab {
    controller: FakeController,
    exporter: Exporter,
    client_config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn lab(options: Options) -> Lab {
    let controller = FakeController::start(options).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter_config = dir.path().join("exporter.yaml");
    std::fs::write(&exporter_config, controller.exporter_config_yaml(EXPORT)).unwrap();
    let client_config = dir.path().join("client.yaml");
    std::fs::write(&client_config, controller.client_config_yaml()).unwrap();
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&exporter_config))
        .await
        .unwrap();
    Lab {
        controller,
        exporter,
        client_config,
        _dir: dir,
    }
}

async fn wait_for_report(controller: &FakeController, status: ExporterStatus, message: &str) {
    let found = controller
        .wait_for(
            |e| matches!(e, Event::ReportStatus { status: s, message: Some(m), .. } if *s == status && m == message),
            Duration::from_secs(20),
        )
        .await;
    assert!(
        found.is_some(),
        "no ReportStatus({status:?}, {message:?}); saw {:?}",
        controller.reports()
    );
}

/// Runs the Python lease scenario; blocking, so on its own thread.
async fn python_lease(client_config: &std::path::Path) -> serde_json::Value {
    let path = client_config.to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        python::drive(
            "",
            "lease",
            &[
                ("CLIENT_CONFIG", path.as_str()),
                ("EXPORTER_NAME", "exporter1"),
            ],
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_client_leases_the_exporter_through_controller_and_router() {
    let lab = lab(Options::default()).await;
    let c = &lab.controller;
    let register = c
        .wait_for(
            |e| matches!(e, Event::Register { .. }),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let Event::Register {
        labels,
        reports,
        metadata,
    } = register
    else {
        unreachable!()
    };
    assert!(labels.is_empty(), "0.9.0 registers with empty labels");
    assert_eq!(reports, 5, "root, power, echo, serial, console");
    assert_eq!(metadata["jumpstarter-kind"], "Exporter");
    assert_eq!(metadata["jumpstarter-namespace"], "default");
    assert_eq!(metadata["jumpstarter-name"], "exporter1");
    assert_eq!(metadata["authorization"], "Bearer exporter-token");
    wait_for_report(
        c,
        ExporterStatus::Available,
        "Exporter registered and available",
    )
    .await;

    let result = python_lease(&lab.client_config).await;
    assert_eq!(result["power"]["readings"][1][2], 10.0);
    assert_eq!(result["serial"]["echoed"], "hello serial");
    assert_eq!(result["echo"]["bytes"], 1 << 20);
    wait_for_report(c, ExporterStatus::LeaseReady, "Ready for commands").await;
    wait_for_report(c, ExporterStatus::Available, "Available for new lease").await;
    assert!(lab.exporter.log().contains("power on"));

    // The same exporter serves a second lease, this time for `jmp shell` and `j`.
    let client_config = lab.client_config.clone();
    let out = tokio::task::spawn_blocking(move || {
        python::jmp_shell(&client_config, &["j", "power", "off"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "jmp shell failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lab.exporter.wait_for_log("power off"),
        "{}",
        lab.exporter.log()
    );

    // Order of what the controller saw: LEASE_READY only after Listen was asked for, and the
    // Dials that passed came after LEASE_READY.
    let events = c.events();
    let first_ready = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::ReportStatus {
                    status: ExporterStatus::LeaseReady,
                    ..
                }
            )
        })
        .unwrap();
    let first_dial_ok = events
        .iter()
        .position(|e| matches!(e, Event::Dial { result: Ok(()), .. }))
        .unwrap();
    assert!(first_ready < first_dial_ok, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restarts_never_need_an_exporter_restart() {
    let mut lab = lab(Options::default()).await;
    let c = &lab.controller;
    let registers = |c: &FakeController| {
        c.events()
            .iter()
            .filter(|e| matches!(e, Event::Register { .. }))
            .count()
    };

    // CI: 2 idle + 3 mid-lease restarts; soak: 8 + 12, the last idle one after 3 minutes of
    // an unreachable controller.
    let (idle, mid_lease) = if soak() { (8, 12) } else { (2, 3) };
    let pid = lab.exporter.pid();
    // A first lease with a client, so that the router channel (kept for reuse) is in the
    // baseline.
    c.warm_up().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = holdings(pid);
    let registered_before = registers(c);

    for round in 1..=idle {
        c.stop().await;
        let down = if soak() && round == idle {
            Duration::from_secs(180)
        } else {
            Duration::from_millis(300)
        };
        tokio::time::sleep(down).await;
        c.restart().await;
        let want = registered_before + round;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while registers(c) < want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no re-Register after restart {round}: {:#?}",
                c.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Mid-lease: the lease survives restarts and the exporter never reports AVAILABLE meanwhile.
    let lease = c.create_ready_lease().await;
    let before = c.events().len();
    for _ in 0..mid_lease {
        let mark = c.mark();
        c.stop().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.restart().await;
        let again = c
            .wait_for_after(
                mark,
                |e| matches!(e, Event::ListenOpened { lease: l } if *l == lease),
                Duration::from_secs(40),
            )
            .await;
        assert!(
            again.is_some(),
            "Listen was not reopened after a restart: {:#?}",
            &c.events()[mark..]
        );
    }
    let during: Vec<_> = jmp_testkit::controller::reports_in(&c.events()[before..]);
    assert!(
        during.iter().all(|(s, _)| *s == ExporterStatus::LeaseReady),
        "statuses during the lease: {during:?}"
    );
    let mut client =
        jmp_testkit::client::connect(c, &lease, tokio_util::sync::CancellationToken::new()).await;
    client
        .get_report(())
        .await
        .expect("a client still reaches the exporter after the restarts");
    drop(client);
    c.end_lease_and_wait_available(&lease).await;
    // Nothing held beyond what an idle exporter holds (the restarts came and went).
    let after = settles_back(pid, baseline, 0).await;
    assert!(
        after.fds <= baseline.fds && after.children == 0,
        "after {} restarts: {baseline:?} -> {after:?}",
        idle + mid_lease
    );
    if soak() {
        eprintln!(
            "soak: {} controller restarts survived; VmRSS {} -> {} KiB, fds {} -> {}",
            idle + mid_lease,
            baseline.rss_kib,
            after.rss_kib,
            baseline.fds,
            after.fds
        );
    }

    // Leaving: OFFLINE, then Unregister, then exit 0.
    let status = lab.exporter.stop();
    assert!(status.success(), "{status:?}\n{}", lab.exporter.log());
    let events = c.events();
    let offline = events
        .iter()
        .position(|e| matches!(e, Event::ReportStatus { status: ExporterStatus::Offline, message: Some(m), .. } if m == "Exporter shutting down"))
        .expect("OFFLINE reported");
    let unregister = events
        .iter()
        .position(|e| matches!(e, Event::Unregister { reason } if reason == "Exporter shutdown"))
        .expect("Unregister sent");
    assert!(offline < unregister);
    assert!(
        !lab.exporter.log().contains("exporter-token"),
        "the token was logged"
    );
}

/// A datagram socket standing in for systemd's notify socket.
struct Notify {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        Notify {
            socket,
            path,
            _dir: dir,
        }
    }

    fn received(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_lease_reports_offline_unregisters_and_exits_0() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, c.exporter_config_yaml(EXPORT)).unwrap();
    let notify = Notify::new();
    let notify_path = notify.path.to_str().unwrap().to_string();
    let mut exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&config, &[("NOTIFY_SOCKET", notify_path.as_str())])
    })
    .await
    .unwrap();
    let lease = c.create_lease().await;
    wait_for_report(&c, ExporterStatus::LeaseReady, "Ready for commands").await;
    assert!(exporter.wait_for_log("lease started"));

    exporter.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = exporter.wait_exit(Duration::from_secs(15));
        (s, exporter)
    })
    .await
    .unwrap();
    let (status, exporter) = status;
    let status =
        status.unwrap_or_else(|| panic!("no exit within 15 s of SIGTERM:\n{}", exporter.log()));
    assert_eq!(status.code(), Some(0), "{}", exporter.log());
    let events = c.events();
    let offline = events.iter().position(|e| {
        matches!(e, Event::ReportStatus { status: ExporterStatus::Offline, message: Some(m), .. } if m == "Exporter shutting down")
    });
    let unregister = events
        .iter()
        .position(|e| matches!(e, Event::Unregister { .. }));
    assert!(offline.is_some() && unregister > offline, "{events:#?}");
    assert!(
        exporter
            .log()
            .contains(&format!("lease ended lease={lease}"))
            || exporter.log().contains("lease ended")
    );

    let told = notify.received();
    assert_eq!(
        told.first().map(String::as_str),
        Some(format!("READY=1\nSTATUS=registered with {}", c.endpoint()).as_str()),
        "{told:?}"
    );
    assert!(
        told.contains(&format!("STATUS=leased: {lease}")),
        "{told:?}"
    );
    assert_eq!(
        told.last().map(String::as_str),
        Some("STOPPING=1\nSTATUS=stopping"),
        "{told:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_lets_the_current_lease_finish_before_stopping() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    let config_path = config.clone();
    std::fs::write(&config, c.exporter_config_yaml(EXPORT)).unwrap();
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    let lease = c.create_lease().await;
    wait_for_report(&c, ExporterStatus::LeaseReady, "Ready for commands").await;

    // A file with an error first: refused, logged, the lease goes on.
    let good = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, good.replace("endpoint:", "endpoint: [")).unwrap();
    exporter.signal("HUP");
    let refused = tokio::task::block_in_place(|| exporter.wait_for_log("SIGHUP refused"));
    assert!(refused, "{}", exporter.log());
    std::fs::write(&config_path, good).unwrap();
    exporter.signal("HUP");
    let (still_running, mut exporter) = tokio::task::spawn_blocking(move || {
        let mut exporter = exporter;
        (
            exporter.wait_exit(Duration::from_secs(2)).is_none(),
            exporter,
        )
    })
    .await
    .unwrap();
    assert!(
        still_running,
        "SIGHUP stopped the exporter in the middle of a lease"
    );
    let (_, token) = c
        .dial(&lease)
        .await
        .expect("the lease is still served after SIGHUP");
    assert!(!token.is_empty());
    assert!(!c
        .events()
        .iter()
        .any(|e| matches!(e, Event::Unregister { .. })));

    c.end_lease(&lease).await;
    let status = tokio::task::spawn_blocking(move || exporter.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("the exporter stops once the lease has ended");
    assert_eq!(status.code(), Some(75), "the code the unit restarts on");
    let events = c.events();
    let ended = events
        .iter()
        .position(|e| matches!(e, Event::LeaseEnded { .. }))
        .unwrap();
    let unregister = events
        .iter()
        .position(|e| matches!(e, Event::Unregister { .. }))
        .expect("Unregister");
    assert!(ended < unregister);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_certificate_is_verified_unless_insecure_which_warns_once() {
    use base64::Engine as _;
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // A CA that did not sign the controller's certificate.
    let stranger = jmp_testkit::tls::TestCert::generate();
    let wrong_ca = base64::engine::general_purpose::STANDARD.encode(stranger.pem());
    let yaml = c
        .exporter_config_yaml(EXPORT)
        .replace(&c.ca_base64(), &wrong_ca);
    let verified = dir.path().join("verified.yaml");
    std::fs::write(&verified, &yaml).unwrap();
    let insecure = dir.path().join("insecure.yaml");
    std::fs::write(&insecure, yaml.replace("insecure: false", "insecure: true")).unwrap();

    let refused =
        tokio::task::spawn_blocking(move || Exporter::controller_unwaited(&verified, &[]))
            .await
            .unwrap();
    assert!(
        refused.wait_for_log("cannot register"),
        "no registration error:\n{}",
        refused.log()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !c.events()
            .iter()
            .any(|e| matches!(e, Event::Register { .. })),
        "registered through an unverified certificate: {:#?}",
        c.events()
    );
    assert!(
        refused.log().to_lowercase().contains("certificate"),
        "{}",
        refused.log()
    );
    drop(refused);

    let trusting = tokio::task::spawn_blocking(move || Exporter::controller(&insecure))
        .await
        .unwrap();
    // Once per process, not once per connection: a controller restart does not repeat it.
    let mark = c.mark();
    c.stop().await;
    c.restart().await;
    let again = c
        .wait_for_after(
            mark,
            |e| matches!(e, Event::Register { .. }),
            Duration::from_secs(40),
        )
        .await;
    assert!(again.is_some(), "{:#?}", c.events());
    let warnings = trusting
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("tls.insecure"))
        .count();
    assert_eq!(warnings, 1, "{}", trusting.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_on_lease_end_exits_after_the_first_lease_with_its_hook_offline_and_unregister() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("after-lease-ran");
    let config = dir.path().join("exporter.yaml");
    let yaml = c.exporter_config_yaml(EXPORT).replace(
        "export:",
        &format!(
            "exitOnLeaseEnd: true\nhooks:\n  afterLease:\n    script: touch {}\nexport:",
            marker.display()
        ),
    );
    std::fs::write(&config, yaml).unwrap();
    let exporter = tokio::task::spawn_blocking(move || Exporter::controller(&config))
        .await
        .unwrap();
    let lease = c.create_lease().await;
    wait_for_report(&c, ExporterStatus::LeaseReady, "Ready for commands").await;
    c.end_lease(&lease).await;
    let status = tokio::task::spawn_blocking(move || {
        let mut exporter = exporter;
        let status = exporter.wait_exit(Duration::from_secs(20));
        (status, exporter.log())
    })
    .await
    .unwrap();
    let (status, log) = status;
    let status = status.unwrap_or_else(|| panic!("still running after its lease:\n{log}"));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(marker.exists(), "the afterLease hook ran: {log}");
    let events = c.events();
    let ended = events
        .iter()
        .position(|e| matches!(e, Event::LeaseEnded { .. }))
        .expect("LeaseEnded");
    let offline = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::ReportStatus {
                    status: ExporterStatus::Offline,
                    ..
                }
            )
        })
        .expect("OFFLINE reported");
    let unregister = events
        .iter()
        .position(|e| matches!(e, Event::Unregister { .. }))
        .expect("Unregister");
    assert!(ended < offline && offline < unregister, "{events:#?}");
}
