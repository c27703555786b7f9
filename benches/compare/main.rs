//! Side-by-side benchmark: jmp-exporter, the upstream Python exporter 0.9.0, and a minimal
//! tonic server on the same protos (the practical limit of the stack on this machine), all
//! measured by the same Rust load generator over loopback TCP (h2c); then jmp-exporter leased
//! through the fake controller's router, serial through a pseudo-terminal, and a sustained
//! mixed load that watches our memory.
//!
//! Run: `cargo bench --bench compare` (about three and a half minutes). Prints markdown
//! tables (ready to paste into the README) and writes `target/bench/compare.json`.
//! `JMP_BENCH_SECONDS` sets the length of each measurement (default 3),
//! `JMP_BENCH_SUSTAINED_SECONDS` the memory phase (default 60). The Python exporter comes
//! from the tests' virtualenv (`jmp_testkit::python`), created on first use.
//!
//! Helper processes are this same binary started again with an environment variable: the
//! minimal server (`JMP_BENCH_MINIMAL_SERVER=ADDR`) and the fake controller + router
//! (`JMP_BENCH_FAKE_CONTROLLER=DIR`), which must not share a process with the load generator,
//! or the tunnel would be charged for the load generator's work and the other way round.
//! `JMP_BENCH_PROFILE=unary|echo|open` with `JMP_BENCH_ADDR`, `JMP_BENCH_COUNT` (and `JMP_BENCH_SIZE`) only drives a
//! fixed amount of load at an address and exits, for running a server under callgrind or perf.
//! `JMP_BENCH_ONLY=ours,pty,...` runs only some parts (see [`wanted`]); `duel` is the
//! head-to-head rounds of jmp-exporter and the minimal server.
//!
//! This is a measurement, not a test: it asserts nothing and is not part of `cargo test`.
//!
//! Layout: `targets` starts the servers measured (ours, Python, the minimal one in `minimal`),
//! `router` the leased setup behind the fake controller, `lease` the time a lease takes to
//! start there (hosted against Python), `flash` the resource-stream flashing case, `pty` the serial echo peer; `load`
//! drives and measures them, with `usage` reading what their processes spent; `report` prints
//! the tables and `profile` is the fixed-load mode.

mod flash;
mod lease;
mod load;
mod minimal;
mod network;
mod profile;
mod pty;
mod report;
mod router;
mod targets;
mod usage;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use load::{duel, measure, measure_tunnel, seconds, sustained};
use minimal::serve_minimal;
use profile::profile_load;
use pty::serial_pty;
use report::{print_duel, print_sustained, print_table, print_tunnel};
use router::{ours_through_router, serve_controller};
use targets::{minimal, ours, ours_hosted, python};

/// The README's demo config, the one every exporter is measured with.
pub(crate) const DEMO_EXPORT: &str = "export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: 'loop://'\n";

/// The same drivers, each run by jmp-exporter's Python driver host (`jmp_hosted`): what the
/// hosted path costs against the same Python drivers under the Python exporter.
pub(crate) const HOSTED_EXPORT: &str = "export:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n    jmp_hosted: true\n  echo:\n    type: jumpstarter_driver_network.driver.EchoNetwork\n    jmp_hosted: true\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    jmp_hosted: true\n    config:\n      url: 'loop://'\n";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `JMP_BENCH_ONLY` (a comma-separated list of ours, sustained, pty, python, hosted,
/// flash, network, minimal, duel, router; unset means all) asks for this part, to rerun a piece after a change.
fn wanted(part: &str) -> bool {
    match std::env::var("JMP_BENCH_ONLY") {
        Ok(only) => only.split(',').any(|p| p.trim() == part),
        Err(_) => true,
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "load_average_1min_at_start": load,
    })
}

fn main() {
    if let Ok(addr) = std::env::var("JMP_BENCH_MINIMAL_SERVER") {
        serve_minimal(&addr);
        return;
    }
    if let Ok(dir) = std::env::var("JMP_BENCH_FAKE_CONTROLLER") {
        serve_controller(Path::new(&dir));
        return;
    }
    if let Ok(kind) = std::env::var("JMP_BENCH_PROFILE") {
        profile_load(&kind);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut results = serde_json::Map::new();
        results.insert("machine".into(), machine());
        results.insert("seconds_per_case".into(), json!(seconds().as_secs_f64()));
        let mut ours_r = json!({});
        let mut python_r = json!({});

        if wanted("ours") {
            let target = ours("jmp-exporter", DEMO_EXPORT).await;
            eprintln!("measuring {} ...", target.name);
            ours_r = measure(&target).await;
            if wanted("sustained") {
                eprintln!("sustained load on {} ...", target.name);
                ours_r["sustained"] = sustained(&target).await;
            }
        }
        if wanted("pty") {
            eprintln!("serial through a pseudo-terminal: jmp-exporter ...");
            ours_r["serial_pty_4096"] =
                serial_pty(|e| async move { ours("jmp-exporter", &e).await }).await;
        }
        if wanted("python") {
            let target = python("python 0.9.0", DEMO_EXPORT).await;
            eprintln!("measuring {} ...", target.name);
            python_r = measure(&target).await;
            drop(target);
            if wanted("pty") {
                eprintln!("serial through a pseudo-terminal: python ...");
                python_r["serial_pty_4096"] =
                    serial_pty(|e| async move { python("python 0.9.0", &e).await }).await;
            }
        }
        if wanted("hosted") {
            let target = ours_hosted("jmp-exporter, hosted", HOSTED_EXPORT).await;
            eprintln!("measuring {} ...", target.name);
            let mut r = measure(&target).await;
            r["memory_by_process_kib"] = usage::memory_by_process(target.child.id());
            drop(target);
            eprintln!("lease start behind the fake controller: hosted, then python ...");
            r["lease"] = lease::lease_start(true).await;
            if wanted("python") {
                python_r["lease"] = lease::lease_start(false).await;
            }
            results.insert("hosted".into(), r);
        }
        if wanted("flash") {
            eprintln!("flashing through resource streams, Python client ...");
            results.insert("flash".into(), flash::flash().await);
        }
        if wanted("network") {
            eprintln!("TcpNetwork to an echo peer ...");
            results.insert("network".into(), network::tcp_network().await);
        }
        if wanted("shell") {
            eprintln!("Shell, call to first output ...");
            results.insert("shell".into(), network::shell().await);
        }
        if wanted("minimal") {
            let target = minimal().await;
            eprintln!("measuring {} ...", target.name);
            results.insert(target.name.into(), measure(&target).await);
        }
        if wanted("duel") {
            let ours_t = ours("jmp-exporter", DEMO_EXPORT).await;
            let limit = minimal().await;
            eprintln!("jmp-exporter and minimal tonic head to head ...");
            results.insert("duel".into(), duel(&ours_t, &limit).await);
        }
        if wanted("router") {
            let routed = ours_through_router(DEMO_EXPORT).await;
            let direct = ours("jmp-exporter", DEMO_EXPORT).await;
            eprintln!("measuring {} (and direct, case by case) ...", routed.name);
            results.insert("tunnel".into(), measure_tunnel(&direct, &routed).await);
        }
        results.insert("jmp-exporter".into(), ours_r);
        results.insert("python 0.9.0".into(), python_r);
        Value::Object(results)
    });
    let m = &results["machine"];
    println!(
        "\nLatest run ({} cores, {}, {} s per case, release build, {:.0} s in all; load average {} at the start):",
        m["cpus"],
        m["cpu"].as_str().unwrap_or(""),
        seconds().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        m["load_average_1min_at_start"].as_str().unwrap_or(""),
    );
    let measured = |name: &str| results[name].as_object().is_some_and(|o| !o.is_empty());
    if measured("jmp-exporter") || measured("python 0.9.0") || measured("minimal tonic") {
        print_table(&results);
    }
    print_duel(&results);
    if results.get("tunnel").is_some() {
        print_tunnel(&results);
    }
    if results.get("hosted").is_some() && measured("python 0.9.0") {
        report::print_hosted(&results);
    }
    if results.get("shell").is_some() {
        report::print_shell(&results["shell"]);
    }
    if results.get("network").is_some() {
        report::print_network(&results["network"]);
    }
    if results.get("flash").is_some() {
        report::print_flash(&results["flash"]);
    }
    if results["jmp-exporter"].get("sustained").is_some() {
        print_sustained(&results);
    }
    let out = workspace().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("compare.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("\nresults: {}", file.display());
}
