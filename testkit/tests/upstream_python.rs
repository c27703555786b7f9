//! The fake against the unchanged upstream 0.9.0 Python exporter (`jmp run`) and client
//! (`jmp shell --client-config`): proof that the fake is good enough for the real thing.
//!
//! Needs the virtualenv the main crate's interop tests create (`target/python-client-0.9.0`),
//! hence ignored by default: `cargo test -p jmp-testkit --test upstream_python -- --ignored`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jmp_exporter::proto::ExporterStatus;
use jmp_testkit::{Event, FakeController, Options};

fn venv_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("python-client-0.9.0/bin")
}

fn command(program: &str) -> tokio::process::Command {
    let bin = venv_bin();
    let mut cmd = tokio::process::Command::new(bin.join(program));
    for var in [
        "JMP_LEASE",
        "JUMPSTARTER_HOST",
        "JMP_GRPC_INSECURE",
        "JMP_DRIVERS_ALLOW",
    ] {
        cmd.env_remove(var);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn shell(client_config: &std::path::Path, target: &[&str]) -> std::process::Output {
    let mut cmd = command("jmp");
    cmd.arg("shell")
        .arg("--client-config")
        .arg(client_config)
        .args(target)
        .args(["--retry-timeout", "0", "--", "j", "power", "on"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("jmp shell finished in time")
        .expect("run jmp shell")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs target/python-client-0.9.0 (created by the main crate's Python interop tests)"]
async fn upstream_exporter_and_client_work_through_the_fake() {
    let ctl = FakeController::start(Options {
        exporter_labels: [("board".to_string(), "mock".to_string())].into(),
        ..Options::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("jmp-testkit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exporter_config = dir.join("exporter.yaml");
    let client_config = dir.join("client.yaml");
    std::fs::write(
        &exporter_config,
        ctl.exporter_config_yaml("power:\n  type: jumpstarter_driver_power.driver.MockPower\n"),
    )
    .unwrap();
    std::fs::write(&client_config, ctl.client_config_yaml()).unwrap();

    let log = std::fs::File::create(dir.join("exporter.log")).unwrap();
    let mut exporter = command("jmp")
        .arg("run")
        .arg("--exporter-config")
        .arg(&exporter_config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start jmp run");
    let registered = ctl
        .wait_for(
            |e| {
                matches!(e, Event::ReportStatus { status: ExporterStatus::Available, message: Some(m), .. }
                if m == "Exporter registered and available")
            },
            Duration::from_secs(60),
        )
        .await;
    assert!(registered.is_some(), "{:#?}", ctl.events());

    for target in [&["-n", "exporter1"][..], &["-l", "board=mock"][..]] {
        let mark = ctl.mark();
        let out = shell(&client_config, target).await;
        assert!(
            out.status.success(),
            "jmp shell {target:?} failed:\n{}\n{}\nevents: {:#?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            ctl.events()
        );
        let available_again = ctl
            .wait_for_after(
                mark,
                |e| {
                    matches!(e, Event::ReportStatus { status: ExporterStatus::Available, message: Some(m), .. }
                    if m == "Available for new lease")
                },
                Duration::from_secs(30),
            )
            .await;
        assert!(available_again.is_some(), "{:?}", &ctl.reports());
        let events = ctl.events()[mark..].to_vec();
        let position = |f: &dyn Fn(&Event) -> bool| events.iter().position(f);
        let created = position(&|e| matches!(e, Event::LeaseCreated { .. })).unwrap();
        let listen = position(&|e| matches!(e, Event::ListenOpened { .. })).unwrap();
        let ready = position(&|e| {
            matches!(
                e,
                Event::ReportStatus {
                    status: ExporterStatus::LeaseReady,
                    ..
                }
            )
        })
        .unwrap();
        let dial = position(&|e| matches!(e, Event::Dial { result: Ok(()), .. })).unwrap();
        let ended = position(&|e| matches!(e, Event::LeaseEnded { .. })).unwrap();
        assert!(created < listen && created < ready && ready < dial && dial < ended);
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::RouterStream { .. })));
    }

    // SIGTERM: OFFLINE, then Unregister.
    let pid = exporter.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), exporter.wait()).await;
    let unregistered = ctl
        .wait_for(
            |e| matches!(e, Event::Unregister { .. }),
            Duration::from_secs(5),
        )
        .await;
    assert!(unregistered.is_some(), "{:?}", &ctl.reports());
    let _ = std::fs::remove_dir_all(&dir);
}
