//! Flashing: the unchanged 0.9.0 client's `flash` of a 256 MiB image to MockStorageMuxFlasher,
//! raw and compressed (zstd, gzip, with `--compression`), under the Python exporter and
//! jmp-exporter (directly over TCP, and both leased through the fake controller's router); the
//! exporter's CPU per GB of image and the client's own CPU, to say where the limit is; our
//! memory before, during and after a 1 GiB flash; and our decompression against the
//! `zstd -d` / `gzip -d` tools on the same files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jmp_testkit::{FakeController, Options};
use serde_json::{json, Value};

use crate::targets::{ours, python, Access, Target};
use crate::usage::tree_cpu;

const IMAGE_MIB: usize = 256;

const EXPORT: &str =
    "export:\n  mux:\n    type: jumpstarter_driver_opendal.driver.MockStorageMuxFlasher\n";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/storage_client.py")
}

/// An image that compresses as a disk image does: random blocks between runs of zeros.
fn make_image(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let raw = dir.join("image.img");
    let mut data = Vec::with_capacity(IMAGE_MIB << 20);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for block in 0..(IMAGE_MIB * 16) {
        if block % 3 == 0 {
            for _ in 0..(64 << 10) / 8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.extend_from_slice(&seed.to_le_bytes());
            }
        } else {
            data.resize(data.len() + (64 << 10), 0);
        }
    }
    std::fs::write(&raw, &data).unwrap();
    let zst = dir.join("image.img.zst");
    let gz = dir.join("image.img.gz");
    let ok = Command::new("zstd")
        .args(["-q", "-3", "-f", "-o"])
        .arg(&zst)
        .arg(&raw)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "zstd is needed to make the benchmark's image");
    let gz_file = std::fs::File::create(&gz).unwrap();
    let ok = Command::new("gzip")
        .args(["-c", "-6"])
        .arg(&raw)
        .stdout(gz_file)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "gzip is needed to make the benchmark's image");
    (raw, zst, gz)
}

/// One flash by the Python client, with its result (seconds, client CPU).
fn client_flash(envs: &[(&str, String)], scenario: &str, file: &Path, compression: &str) -> Value {
    let bin = jmp_testkit::python::venv_bin();
    let out = Command::new(bin.join("python"))
        .arg(script())
        .arg(scenario)
        .arg("mux")
        .arg(file)
        .arg(compression)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*")
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"scenario\""))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["result"].clone())
        .unwrap_or_else(
            || json!({"error": format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr))}),
        )
}

/// Flashes this short swing by tens of percent on a shared two-core machine: each case is run
/// [`RUNS`] times and the run with the median time is kept, with its own CPU figures.
const RUNS: usize = 3;

fn case(target_pid: u32, image_bytes: u64, mut run: impl FnMut() -> Value) -> Value {
    let mut runs: Vec<Value> = (0..RUNS)
        .map(|_| {
            let cpu0 = tree_cpu(target_pid);
            let mut r = run();
            let cpu = tree_cpu(target_pid).saturating_sub(cpu0).as_secs_f64();
            if let Some(seconds) = r["seconds"].as_f64() {
                let gb = image_bytes as f64 / 1e9;
                r["mb_per_s"] = json!(image_bytes as f64 / seconds / 1e6);
                r["exporter_cpu_s_per_gb"] = json!(cpu / gb);
                r["client_cpu_s_per_gb"] = json!(r["client_cpu_s"].as_f64().unwrap_or(0.0) / gb);
            }
            r
        })
        .collect();
    runs.sort_by(|a, b| {
        let s = |v: &Value| v["seconds"].as_f64().unwrap_or(f64::INFINITY);
        s(a).total_cmp(&s(b))
    });
    let all: Vec<f64> = runs.iter().filter_map(|r| r["mb_per_s"].as_f64()).collect();
    let mut median = runs.swap_remove(RUNS / 2);
    median["runs_mb_per_s"] = json!(all);
    median
}

fn direct_cases(target: &Target, files: &[(&str, &PathBuf, &str)], image_bytes: u64) -> Value {
    let Access::Tcp(addr) = &target.access else {
        return json!({});
    };
    let envs = [
        ("JUMPSTARTER_HOST", addr.clone()),
        ("JMP_GRPC_INSECURE", "1".to_string()),
    ];
    let mut r = json!({});
    for (name, file, compression) in files {
        eprintln!("  {} {name} ...", target.name);
        r[*name] = case(target.child.id(), image_bytes, || {
            client_flash(&envs, "bench_flash", file, compression)
        });
    }
    r
}

/// The cases leased through a fake controller and router, under the exporter `python` names
/// (the upstream one, else ours).
async fn routed_cases(files: &[(&str, &PathBuf, &str)], image_bytes: u64, python: bool) -> Value {
    let controller = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let body = EXPORT.strip_prefix("export:\n").unwrap_or(EXPORT);
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, controller.exporter_config_yaml(body)).unwrap();
    let client_config = dir.path().join("client.yaml");
    std::fs::write(&client_config, controller.client_config_yaml()).unwrap();
    let (name, mut command) = if python {
        let bin = jmp_testkit::python::venv_bin();
        let mut cmd = tokio::process::Command::new(bin.join("jmp"));
        cmd.args(["run", "--exporter-config"]).arg(&config).env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        ("python 0.9.0", cmd)
    } else {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jmp-exporter"));
        cmd.args(["--log-level", "warn", "run", "--config"])
            .arg(&config);
        ("jmp-exporter", cmd)
    };
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let pid = child.id().unwrap_or(0);
    let ready = Instant::now() + Duration::from_secs(30);
    while controller.exporter_status().is_none() && Instant::now() < ready {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let envs = [
        ("CLIENT_CONFIG", client_config.display().to_string()),
        ("EXPORTER_NAME", "exporter1".to_string()),
    ];
    let mut r = json!({});
    for (case_name, file, compression) in files {
        eprintln!("  {name} through the router {case_name} ...");
        r[*case_name] = tokio::task::block_in_place(|| {
            case(pid, image_bytes, || {
                client_flash(&envs, "lease:bench_flash", file, compression)
            })
        });
    }
    // `jmp run` forks the process that does the work: stop the whole tree.
    for pid in crate::usage::tree_pids(pid).into_iter().skip(1) {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    let _ = child.kill().await;
    r
}

/// Decompression speed, MB/s of output: the command-line tool, then ours in-process.
async fn decompression(file: &Path, tool: &str, encoding: &str, image_bytes: u64) -> Value {
    let started = Instant::now();
    let ok = Command::new(tool)
        .args(["-d", "-c"])
        .arg(file)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tool_s = started.elapsed().as_secs_f64();
    let encoding = jmp_exporter::session::resources::codec::Encoding::parse(encoding).unwrap();
    // From memory, in the 1 MiB reads the drivers make: the decoder's own speed, as the
    // tool's is (it reads the file from the page cache).
    let compressed = std::fs::read(file).unwrap();
    let started = Instant::now();
    let mut decoded = jmp_exporter::session::resources::codec::decoder(
        encoding,
        std::io::Cursor::new(compressed),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = tokio::io::AsyncReadExt::read(&mut decoded, &mut buf)
            .await
            .unwrap();
        if got == 0 {
            break;
        }
        n += got as u64;
    }
    let ours_s = started.elapsed().as_secs_f64();
    json!({
        "tool_ok": ok && n == image_bytes,
        "tool_mb_per_s": image_bytes as f64 / tool_s / 1e6,
        "ours_mb_per_s": image_bytes as f64 / ours_s / 1e6,
    })
}

/// RSS of jmp-exporter before, at most during, and after a raw 1 GiB flash (KiB).
fn memory_during_a_large_flash(target: &Target, dir: &Path) -> Value {
    let Access::Tcp(addr) = &target.access else {
        return json!({});
    };
    let image = dir.join("large.img");
    let file = std::fs::File::create(&image).unwrap();
    // Zeros: what is measured is the exporter's memory, not the bytes.
    file.set_len(1 << 30).unwrap();
    let pid = target.child.id();
    let rss = move || crate::usage::memory_detail(pid).0;
    let before = rss();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let envs = [
        ("JUMPSTARTER_HOST", addr.clone()),
        ("JMP_GRPC_INSECURE", "1".to_string()),
    ];
    let r = client_flash(&envs, "bench_flash", &image, "");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = sampler.join().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let _ = std::fs::remove_file(&image);
    json!({"rss_before_kib": before, "rss_peak_during_kib": during, "rss_after_kib": rss(), "seconds": r["seconds"]})
}

pub(crate) async fn flash() -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (raw, zst, gz) = make_image(dir.path());
    let image_bytes = std::fs::metadata(&raw).unwrap().len();
    let files: [(&str, &PathBuf, &str); 3] = [
        ("raw", &raw, ""),
        ("zstd", &zst, "zstd"),
        ("gzip", &gz, "gzip"),
    ];
    let mut r = json!({"image_mib": IMAGE_MIB});
    let target = python("python 0.9.0", EXPORT).await;
    r["python 0.9.0"] = tokio::task::block_in_place(|| direct_cases(&target, &files, image_bytes));
    drop(target);
    let target = ours("jmp-exporter", EXPORT).await;
    r["jmp-exporter"] = tokio::task::block_in_place(|| direct_cases(&target, &files, image_bytes));
    eprintln!("  jmp-exporter, memory during a 1 GiB flash ...");
    r["memory_1gib"] =
        tokio::task::block_in_place(|| memory_during_a_large_flash(&target, dir.path()));
    drop(target);
    r["python 0.9.0, router"] = routed_cases(&files[..2], image_bytes, true).await;
    r["jmp-exporter, router"] = routed_cases(&files[..2], image_bytes, false).await;
    r["decompression"] = json!({
        "zstd": decompression(&zst, "zstd", "zstd", image_bytes).await,
        "gzip": decompression(&gz, "gzip", "gzip", image_bytes).await,
    });
    r
}
