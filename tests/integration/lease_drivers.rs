//! Issue 18's native drivers through the fake controller and the router, with a lease, as a
//! lab uses them: `j ssh` to a real sshd and a Shell method inside `jmp shell`, and the
//! network drivers' boundaries, half-close and D-Bus from the client's own code, and an
//! HttpPower switch with `j`.

use std::path::{Path, PathBuf};

use jmp_testkit::controller::{FakeController, Options};

use crate::network::{half_close_peer, udp_echo, ws_echo, DbusDaemon};
use crate::ssh::Sshd;
use crate::support::exporter::Exporter;
use crate::support::python;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_shell_and_network_drivers_work_through_the_router_with_a_lease() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let (udp, ws, half) = (udp_echo(), ws_echo(), half_close_peer());
    let (_daemon, bus) = DbusDaemon::start(dir.path());
    let (web, web_seen) = crate::http_power::server(crate::http_power::plug);
    let export = format!(
        "  ssh:\n    type: jumpstarter_driver_ssh.driver.SSHWrapper\n    config: {{default_username: {user}, ssh_identity_file: {key}}}\n    children:\n      tcp:\n        type: jumpstarter_driver_network.driver.TcpNetwork\n        config: {{host: 127.0.0.1, port: {port}}}\n  sh:\n    type: jumpstarter_driver_shell.driver.Shell\n    config:\n      methods:\n        greet: 'echo \"hello $1 from $0\"'\n  udp:\n    type: jumpstarter_driver_network.driver.UdpNetwork\n    config: {{host: 127.0.0.1, port: {udp}}}\n  ws:\n    type: jumpstarter_driver_network.driver.WebsocketNetwork\n    config: {{url: 'ws://127.0.0.1:{ws}/echo'}}\n  halfclose:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {half}}}\n  bus:\n    type: jumpstarter_driver_network.driver.DbusNetwork\n    config: {{kind: session}}\n  plug:\n    type: jumpstarter_driver_http_power.driver.HttpPower\n    config:\n      power_on: {{url: 'http://127.0.0.1:{web}/on', method: POST, data: 'turn=on'}}\n      power_off: {{url: 'http://127.0.0.1:{web}/off'}}\n      auth: {{basic: {{user: admin, password: plug-pass}}}}\n",
        user = sshd.user,
        key = sshd.key.display(),
        port = sshd.port,
    );
    let exporter_config = write(
        dir.path(),
        "exporter.yaml",
        &c.exporter_config_yaml(&export),
    );
    let client_config = write(dir.path(), "client.yaml", &c.client_config_yaml());
    let bus_env = bus.clone();
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(
            &exporter_config,
            &[("DBUS_SESSION_BUS_ADDRESS", bus_env.as_str())],
        )
    })
    .await
    .unwrap();

    let config = client_config.clone();
    let out = tokio::task::spawn_blocking(move || {
        python::jmp_shell(&config, &["j", "ssh", "echo", "through-the-router"])
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("through-the-router"),
        "j ssh in jmp shell: {out:?}\n{}",
        exporter.log_tail(40)
    );
    let config = client_config.clone();
    let out = tokio::task::spawn_blocking(move || {
        python::jmp_shell(&config, &["j", "sh", "greet", "lab"])
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello lab from greet"),
        "j sh in jmp shell: {out:?}"
    );

    let config = client_config.clone();
    let out = tokio::task::spawn_blocking(move || python::jmp_shell(&config, &["j", "plug", "on"]))
        .await
        .unwrap();
    assert!(out.status.success(), "j plug on in jmp shell: {out:?}");
    let paths: Vec<(String, String)> = web_seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(paths, vec![("POST".to_string(), "/on".to_string())]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/network_client.py");
    let seen = tokio::task::spawn_blocking(move || {
        let mut cmd = python::command("python");
        cmd.arg(script)
            .arg("lease:boundaries")
            .env("CLIENT_CONFIG", &client_config)
            .env("EXPORTER_NAME", "exporter1");
        python::scenario_result(
            "network_client.py",
            "lease:boundaries",
            python::output_with_timeout(cmd, 180),
        )
    })
    .await
    .unwrap();
    let whole = serde_json::json!([
        [1, true],
        [100, true],
        [1400, true],
        [9000, true],
        [30000, true]
    ]);
    assert_eq!(seen["udp"], whole, "{seen}");
    assert_eq!(seen["ws"], whole, "{seen}");
    assert_eq!(seen["halfclose"], "got 1000 bytes", "{seen}");
    assert!(
        seen["bus"].as_str().unwrap_or_default().starts_with("OK "),
        "{seen}"
    );
}
