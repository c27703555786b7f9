//! Running the unchanged upstream Python client from the tests' virtualenv
//! (`jmp_testkit::python` creates it).

use std::path::Path;
use std::process::{Command, Output};

pub use jmp_testkit::python::venv_bin;

/// A command from the virtualenv (`python`, `j`, `jmp`), with a clean client environment.
pub fn command(program: &str) -> Command {
    let bin = venv_bin();
    let mut cmd = Command::new(bin.join(program));
    for var in [
        "JMP_LEASE",
        "JUMPSTARTER_HOST",
        "JMP_GRPC_INSECURE",
        "JMP_GRPC_PASSPHRASE",
        "JMP_DRIVERS_ALLOW",
    ] {
        cmd.env_remove(var);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()));
    cmd.env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*");
    cmd.env("PYTHONUNBUFFERED", "1");
    // Plain output: the client's logs are matched as text.
    cmd.env("NO_COLOR", "1");
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Runs a scenario of `tests/python/drive.py` against `host` and returns its JSON result.
pub fn drive(host: &str, scenario: &str, envs: &[(&str, &str)]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/drive.py");
    let mut cmd = command("python");
    cmd.arg(script).arg(scenario).env("JUMPSTARTER_HOST", host);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    scenario_result("drive.py", scenario, output_with_timeout(cmd, 120))
}

/// The result of a finished scenario of one of the `tests/python` scripts (`script` names it
/// in failures): the script succeeded and its last line is `{"scenario": ..., "result": ...}`.
pub fn scenario_result(script: &str, scenario: &str, out: Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The result's line: the last one that is a scenario's JSON (a client's progress bar may
    // redraw after it).
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"scenario\""))
        .unwrap_or_else(|| stdout.lines().last().unwrap_or_default());
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad output {line:?}: {e}"));
    assert_eq!(value["scenario"], scenario);
    value["result"].clone()
}

/// Runs a command, killing it if it takes longer than `secs`.
pub fn output_with_timeout(mut cmd: Command, secs: u64) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx
            .recv_timeout(std::time::Duration::from_secs(secs))
            .is_err()
        {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let out = child.wait_with_output().expect("wait for command");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    out
}

/// `jmp shell --client-config FILE -n exporter1 --retry-timeout 0 -- CMD...`, as a lab user
/// runs it against the fake controller; blocking, bounded to two minutes.
pub fn jmp_shell(client_config: &Path, cmd: &[&str]) -> Output {
    let mut shell = command("jmp");
    shell
        // Wide enough that the client's log lines are not wrapped.
        .env("COLUMNS", "400")
        .arg("shell")
        .arg("--client-config")
        .arg(client_config)
        .args(["-n", "exporter1", "--retry-timeout", "0", "--"])
        .args(cmd);
    output_with_timeout(shell, 180)
}
