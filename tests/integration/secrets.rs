//! Secrets stay secret: a whole controller-mode run and a standalone run with a passphrase,
//! logged at debug level for every crate, never show the exporter token, a router token or
//! the passphrase; `check` does not print the token; hooks do not inherit the passphrase.

use std::time::Duration;

use jmp_testkit::{Event, FakeController, Options};

use crate::support::exporter::{binary, config, Exporter};
use crate::support::python;

const TOKEN: &str = "tok-S3CRET-7d1f0a9e";
const PASSPHRASE: &str = "pw-S3CRET-41c2b";

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows a secret ({} chars)",
            secret.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_log_of_a_whole_lease_shows_no_token() {
    let c = FakeController::start(Options {
        exporter_token: TOKEN.into(),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exporter.yaml");
    std::fs::write(
        &file,
        c.exporter_config_yaml("  power:\n    type: jumpstarter_driver_power.driver.MockPower\n"),
    )
    .unwrap();

    let check = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(check.status.success());
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert_clean("`check`", &both, &[TOKEN.to_string()]);

    let path = file.clone();
    let mut exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&path, &[("JMP_EXPORTER_LOG", "debug")])
    })
    .await
    .unwrap();
    let lease = c.create_ready_lease().await;
    let mut client =
        jmp_testkit::client::connect(&c, &lease, tokio_util::sync::CancellationToken::new()).await;
    client
        .get_report(())
        .await
        .expect("a call through the router");
    c.end_lease(&lease).await;
    exporter.signal("TERM");
    let log = tokio::task::spawn_blocking(move || {
        exporter.wait_exit(Duration::from_secs(20));
        exporter.log()
    })
    .await
    .unwrap();
    assert!(
        log.contains("DEBUG"),
        "the run was not logged at debug level"
    );
    let mut secrets = vec![TOKEN.to_string()];
    secrets.extend(c.events().into_iter().filter_map(|e| match e {
        Event::RouterStream { token } => Some(token),
        _ => None,
    }));
    assert!(secrets.len() >= 2, "no router token was used");
    assert_clean("the exporter's debug log", &log, &secrets);
}

#[test]
fn a_standalone_passphrase_stays_out_of_logs_and_hook_environments() {
    let dir = tempfile::tempdir().unwrap();
    let env_dump = dir.path().join("hook-env.txt");
    let file = dir.path().join("standalone.yaml");
    let demo = std::fs::read_to_string(config("demo.yaml")).unwrap();
    std::fs::write(
        &file,
        format!(
            "{demo}hooks:\n  beforeLease:\n    script: env > {}\n",
            env_dump.display()
        ),
    )
    .unwrap();
    let exporter = Exporter::tcp_with_env(
        &file,
        &["--tls-grpc-insecure"],
        &[
            ("JMP_EXPORTER_PASSPHRASE", PASSPHRASE),
            ("JMP_EXPORTER_LOG", "debug"),
        ],
    );
    let host = exporter.host();
    assert!(
        exporter.wait_for_log("beforeLease hook succeeded"),
        "{}",
        exporter.log()
    );
    let ok = python::drive(
        &host,
        "power",
        &[
            ("JMP_GRPC_INSECURE", "1"),
            ("JMP_GRPC_PASSPHRASE", PASSPHRASE),
        ],
    );
    assert_eq!(ok["readings"][1][0], 5.0);
    let mut wrong = python::command("j");
    wrong
        .args(["power", "on"])
        .env("JUMPSTARTER_HOST", &host)
        .env("JMP_GRPC_INSECURE", "1")
        .env("JMP_GRPC_PASSPHRASE", "not-it-S3CRET");
    assert!(!python::output_with_timeout(wrong, 60).status.success());
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(env.contains("LEASE_NAME=standalone"), "{env}");
    assert_clean("the hook environment", &env, &[PASSPHRASE.to_string()]);
    assert!(exporter.log().contains("DEBUG"));
    assert_clean(
        "the exporter's debug log",
        &exporter.log(),
        &[PASSPHRASE.to_string(), "not-it-S3CRET".to_string()],
    );
}

#[test]
fn sockets_are_for_owner_and_group_only_and_hook_sockets_live_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let runtime = tempfile::tempdir().unwrap();
    let exporter = Exporter::unix_with_env(
        &config("demo.yaml"),
        &[("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())],
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let socket = exporter.socket.clone().unwrap();
    assert_eq!(mode(&socket), 0o660, "{}", socket.display());
    let private: Vec<_> = std::fs::read_dir(runtime.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(private.len(), 1, "{private:?}");
    assert_eq!(mode(&private[0]), 0o700, "{}", private[0].display());
    let hook_socket = private[0].join("hook.sock");
    assert_eq!(mode(&hook_socket), 0o660, "{}", hook_socket.display());
}
