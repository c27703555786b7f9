//! The unchanged upstream Python client (and exporter) 0.9.0, installed from PyPI into a
//! virtualenv under the workspace's `target/` the first time a test or benchmark needs it
//! (pinned in `tests/python-requirements.txt`), with the tests' own lab driver package
//! (`tests/python/acme_lab`). Processes may race to create it, so creation is guarded by a
//! file lock.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The pinned requirements file.
pub fn requirements() -> PathBuf {
    workspace().join("tests/python-requirements.txt")
}

/// The lab driver package the tests install, as a lab installs its own.
pub fn lab_package() -> PathBuf {
    workspace().join("tests/python/acme_lab")
}

/// What the virtualenv is made from: the requirements and the lab package's files.
fn wanted() -> String {
    let mut wanted =
        std::fs::read_to_string(requirements()).expect("tests/python-requirements.txt");
    for file in ["pyproject.toml", "acme_lab/driver.py", "acme_lab/client.py"] {
        wanted.push_str(&std::fs::read_to_string(lab_package().join(file)).unwrap_or_default());
    }
    wanted
}

/// The virtualenv's `bin` directory, created (or brought up to date with the requirements
/// file) on first use. Panics with the installer's output if that fails: tests cannot run
/// without it.
pub fn venv_bin() -> PathBuf {
    let venv = target_dir().join("python-client-0.9.0");
    let bin = venv.join("bin");
    let stamp = venv.join(".installed");
    let wanted = wanted();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return bin;
    }
    std::fs::create_dir_all(target_dir()).expect("target dir");
    let lock = std::fs::File::create(target_dir().join("python-client.lock")).expect("lock file");
    lock.lock().expect("lock the virtualenv");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run(Command::new(&python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv));
        run(Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements()));
        run(Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(lab_package()));
        std::fs::write(&stamp, &wanted).expect("write stamp");
    }
    bin
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
