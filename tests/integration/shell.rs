//! The native Shell driver with the unchanged 0.9.0 client: a method's output, arguments,
//! environment and exit code; stdout and stderr chunks in the order written and as written;
//! the timeout with a child that ignores SIGTERM; every forbidden environment name refused;
//! `j`; and a client killed mid-script taking the script's process group with it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::exporter::Exporter;
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: shell}\nendpoint: ''\ntoken: ''\n";

const EXPORT: &str = r#"export:
  sh:
    type: jumpstarter_driver_shell.driver.Shell
    config:
      methods:
        greet:
          command: 'echo "$0 $1 $2 $GREETING"; echo warn >&2; exit 3'
          description: says hello
        interleave: 'echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; sleep 0.3'
        stubborn: {command: 'trap "" TERM; sleep 60', timeout: 1}
        hang: 'sleep 300 & echo $! > "$1"; wait'
"#;

fn start(dir: &Path) -> Exporter {
    let config = dir.join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{EXPORT}")).unwrap();
    Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[])
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/shell_client.py")
}

fn client(exporter: &Exporter, args: &[&str]) -> std::process::Command {
    let mut cmd = python::command("python");
    cmd.arg(script())
        .args(args)
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    cmd
}

#[test]
fn the_real_client_runs_shell_methods_natively() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(dir.path());
    let seen = python::scenario_result(
        "shell_client.py",
        "shell",
        python::output_with_timeout(client(&exporter, &["shell"]), 120),
    );
    assert_eq!(seen["class"], "ShellClient", "{seen}");
    assert_eq!(seen["code"], 3.0, "{seen}");
    assert_eq!(seen["stdout"], "greet a b c hi\n", "{seen}");
    assert_eq!(seen["stderr"], "warn\n", "{seen}");

    // Each write is its own chunk, in the order written, and arrives while the script runs
    // (the script sleeps 0.3 s between writes; polling at the script's end would bunch them).
    let chunks = seen["chunks"].as_array().unwrap();
    let texts: Vec<(&str, &str)> = chunks
        .iter()
        .map(|c| (c[0].as_str().unwrap(), c[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        texts,
        vec![("one\n", ""), ("", "two\n"), ("three\n", ""), ("", "")],
        "{seen}"
    );
    assert_eq!(chunks[3][2], 0.0, "{seen}");
    let at = |i: usize| chunks[i][3].as_f64().unwrap();
    assert!(
        at(1) - at(0) > 0.2 && at(2) - at(1) > 0.2,
        "chunks came as written: {seen}"
    );

    assert_eq!(
        seen["timeout"],
        json!(["", "\nTimeout expired while running stubborn: Command '['bash', '-c', 'trap \"\" TERM; sleep 60', 'stubborn']' timed out after 1 seconds\n", 199.0]),
        "{seen}"
    );
    for (name, error) in seen["refused"].as_object().unwrap() {
        let error = error
            .as_str()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(
            error.contains(name.as_str()) && error.contains("blocked"),
            "{name}: {error}"
        );
    }
    assert_eq!(seen["refused"].as_object().unwrap().len(), 9);
    assert!(
        seen["missing"]
            .as_str()
            .unwrap()
            .contains("method missing not found"),
        "{seen}"
    );

    // `j` builds its commands from get_methods and the descriptions.
    let mut j = python::command("j");
    j.args(["sh", "--help"])
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let out = python::output_with_timeout(j, 120);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("greet") && help.contains("says hello") && help.contains("interleave"),
        "{help}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut j = python::command("j");
    j.args(["sh", "greet", "-e", "GREETING=there", "x"])
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let out = python::output_with_timeout(j, 120);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "greet x  there\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warn"));
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_client_killed_mid_script_takes_the_scripts_process_group_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let exporter = start(dir.path());
    let pidfile = dir.path().join("child.pid");
    let mut cmd = client(&exporter, &["hang", pidfile.to_str().unwrap()]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut python = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < until, "the script never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!gone(pid));
    python.kill().unwrap();
    python.wait().unwrap();
    let killed = Instant::now();
    while !gone(pid) && killed.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone(pid),
        "the script's child outlived its client by a second\n{}",
        exporter.log()
    );
    assert!(
        exporter.wait_for_log("ending the script"),
        "{}",
        exporter.log()
    );
}
