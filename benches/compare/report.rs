//! The report: the markdown tables the README shows, printed from the same JSON that is written
//! to `compare.json`, so that the two cannot disagree. Nothing here measures.

use serde_json::Value;

use crate::load::DUEL_ROUNDS;

pub(crate) fn print_duel(results: &Value) {
    let Some(duel) = results["duel"].as_object() else {
        return;
    };
    println!(
        "\nHead to head with the minimal server ({DUEL_ROUNDS} rounds of 1 s cases, in alternation):\n"
    );
    println!("| ours/limit | median | lowest | highest | target |");
    println!("|---|---:|---:|---:|---|");
    for (label, v) in duel {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | ≥ 0.8 |",
            get(v, "median_ratio"),
            get(v, "min_ratio"),
            get(v, "max_ratio")
        );
    }
}

pub(crate) fn get(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Numbers as the README shows them: thin spaces between thousands, fewer decimals as they
/// grow.
fn show(x: f64) -> String {
    if !x.is_finite() {
        return String::new();
    }
    let text = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(a, b)| (a, Some(b)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn ratio(x: f64, y: f64) -> String {
    if y.is_finite() && y != 0.0 && x.is_finite() {
        let r = x / y;
        if r >= 10.0 {
            format!("{r:.0}")
        } else if r >= 0.1 {
            format!("{r:.2}")
        } else {
            format!("{r:.3}")
        }
    } else {
        String::new()
    }
}

/// The main table, as markdown.
pub(crate) fn print_table(results: &Value) {
    // (label, key, target): the targets are the issue's, ratios ours/Python and ours/limit.
    let rows: &[(&str, &str, &str)] = &[
        (
            "start → first GetReport (ms)",
            "start_to_get_report_ms",
            "< 50 ms",
        ),
        (
            "unary DriverCall, 1 caller (calls/s)",
            "unary_1.calls_per_s",
            "",
        ),
        (
            "unary DriverCall, 16 callers (calls/s)",
            "unary_16.calls_per_s",
            "≥ 20× Python, ≥ 0.8 limit",
        ),
        (
            "unary DriverCall, 64 callers (calls/s)",
            "unary_64.calls_per_s",
            "",
        ),
        ("unary p50, 16 callers (µs)", "unary_16.p50_us", ""),
        ("unary p99, 16 callers (µs)", "unary_16.p99_us", ""),
        (
            "exporter CPU per call, 16 callers (µs)",
            "unary_16.cpu_us_per_call",
            "≤ 1/20 Python",
        ),
        (
            "streaming `read` (messages/s)",
            "streaming_16.messages_per_s",
            "",
        ),
        (
            "echo stream, 256 B writes (MB/s)",
            "echo_256.mb_per_s",
            "≥ 30× Python, ≥ 0.8 limit",
        ),
        (
            "echo stream, 4 KiB writes (MB/s)",
            "echo_4096.mb_per_s",
            "≥ 0.8 limit",
        ),
        (
            "echo stream, 32 KiB writes (MB/s)",
            "echo_32768.mb_per_s",
            "≥ 10× Python, ≥ 0.8 limit",
        ),
        (
            "echo 32 KiB, exporter CPU (s/GB)",
            "echo_32768.cpu_s_per_gb",
            "",
        ),
        (
            "stream open → first byte p50 (µs)",
            "echo_4096.first_byte_p50_us",
            "",
        ),
        (
            "serial `loop://`, 4 KiB writes (MB/s)",
            "serial_loop_4096.mb_per_s",
            "",
        ),
        (
            "serial via a pty echo peer, 4 KiB writes (MB/s)",
            "serial_pty_4096.mb_per_s",
            "",
        ),
        (
            "PSS after the run (KiB)",
            "memory_kib.pss",
            "≤ 1/10 Python, < 12 MiB",
        ),
        ("RSS peak (KiB)", "memory_kib.peak_rss", ""),
    ];
    let (o, p, m) = (
        &results["jmp-exporter"],
        &results["python 0.9.0"],
        &results["minimal tonic"],
    );
    println!(
        "\n| | jmp-exporter | Python 0.9.0 | minimal tonic | ours/Python | ours/limit | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for (label, key, target) in rows {
        let (a, b, c) = (get(o, key), get(p, key), get(m, key));
        println!(
            "| {label} | {} | {} | {} | {} | {} | {target} |",
            show(a),
            show(b),
            show(c),
            ratio(a, b),
            ratio(a, c)
        );
    }
}

pub(crate) fn print_tunnel(results: &Value) {
    let (direct, routed) = (&results["tunnel"]["direct"], &results["tunnel"]["router"]);
    println!("\n| through the router tunnel | direct | via router | router/direct | cost (target ≤ 25%) |");
    println!("|---|---:|---:|---:|---:|");
    for (label, key) in [
        (
            "unary DriverCall, 16 callers (calls/s)",
            "unary_16.calls_per_s",
        ),
        ("echo stream, 256 B writes (MB/s)", "echo_256.mb_per_s"),
        ("echo stream, 4 KiB writes (MB/s)", "echo_4096.mb_per_s"),
        ("echo stream, 32 KiB writes (MB/s)", "echo_32768.mb_per_s"),
    ] {
        let (a, b) = (get(direct, key), get(routed, key));
        println!(
            "| {label} | {} | {} | {} | {:.0}% |",
            show(a),
            show(b),
            ratio(b, a),
            (1.0 - b / a) * 100.0
        );
    }
    // Throughput counts every process on the two cores; CPU per call and per byte show what
    // the tunnel costs each of them, the exporter included.
    println!(
        "\n| CPU spent, all on the same two cores | unary, 16 callers (µs per call): direct | via router | echo, 32 KiB writes (s per GB): direct | via router |"
    );
    println!("|---|---:|---:|---:|---:|");
    let rows = [
        ("jmp-exporter", "cpu"),
        ("fake router (its own process)", "router_cpu"),
        (
            "load generator, with the client's end of the tunnel",
            "load_generator_cpu",
        ),
    ];
    let mut totals = [0.0; 4];
    for (label, prefix) in rows {
        let cells = [
            get(direct, &format!("unary_16.{prefix}_us_per_call")),
            get(routed, &format!("unary_16.{prefix}_us_per_call")),
            get(direct, &format!("echo_32768.{prefix}_s_per_gb")),
            get(routed, &format!("echo_32768.{prefix}_s_per_gb")),
        ];
        // A process that was not there (no router when reached directly) spent nothing.
        let cells = cells.map(|c| if c.is_nan() { 0.0 } else { c });
        for (t, c) in totals.iter_mut().zip(cells) {
            *t += c;
        }
        let shown: Vec<String> = cells
            .iter()
            .map(|&c| if c > 0.0 { show(c) } else { String::new() })
            .collect();
        println!("| {label} | {} |", shown.join(" | "));
    }
    let shown: Vec<String> = totals.iter().map(|&t| show(t)).collect();
    println!("| all three | {} |", shown.join(" | "));
    let exporter_ratio = |key: &str| ratio(get(routed, key), get(direct, key));
    println!(
        "\nThe exporter's own CPU through the router, against direct: {}× per unary call, {}× per GB \
         echoed at 32 KiB writes (what limits it where the router and the clients run on other hosts).",
        exporter_ratio("unary_16.cpu_us_per_call"),
        exporter_ratio("echo_32768.cpu_s_per_gb"),
    );
}

pub(crate) fn print_sustained(results: &Value) {
    let s = &results["jmp-exporter"]["sustained"];
    println!(
        "\nSustained mixed load on jmp-exporter for {:.0} s ({} calls/s, {} byte streams/s), memory every 5 s:\n",
        get(s, "seconds"),
        show(get(s, "calls_per_s")),
        show(get(s, "byte_streams_per_s")),
    );
    println!("| | start | end | peak | growth |");
    println!("|---|---:|---:|---:|---:|");
    for (label, key) in [
        ("RSS (KiB)", "rss_kib"),
        ("anonymous (KiB)", "anon_kib"),
        ("PSS (KiB)", "pss_kib"),
    ] {
        let v = &s[key];
        println!(
            "| {label} | {} | {} | {} | {} ({:+.1}%) |",
            show(get(v, "start")),
            show(get(v, "end")),
            show(get(v, "peak")),
            show(get(v, "growth")),
            get(v, "growth_pct"),
        );
    }
    let samples: Vec<String> = s["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| format!("{}", v["rss_kib"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    println!("\nRSS samples (KiB): {}", samples.join(" "));
}

/// The hosted path against the same Python drivers under the Python exporter.
pub(crate) fn print_hosted(results: &Value) {
    let (hosted, python) = (&results["hosted"], &results["python 0.9.0"]);
    println!(
        "\n| same Python drivers | jmp-exporter, hosted | Python 0.9.0 | hosted/Python | target |"
    );
    println!("|---|---:|---:|---:|---|");
    for (label, key, target) in [
        (
            "start → first GetReport (ms)",
            "start_to_get_report_ms",
            "no slower",
        ),
        (
            "lease assigned → LEASE_READY, p50 of 8 (ms)",
            "lease.lease_ready_p50_ms",
            "no slower",
        ),
        (
            "lease assigned → LEASE_READY, slowest of 8 (ms)",
            "lease.lease_ready_max_ms",
            "",
        ),
        (
            "unary DriverCall, 1 caller (calls/s)",
            "unary_1.calls_per_s",
            "≥ 0.9",
        ),
        (
            "unary DriverCall, 16 callers (calls/s)",
            "unary_16.calls_per_s",
            "≥ 0.9",
        ),
        (
            "unary DriverCall, 64 callers (calls/s)",
            "unary_64.calls_per_s",
            "≥ 0.9",
        ),
        ("unary p50, 1 caller (µs)", "unary_1.p50_us", ""),
        ("unary p50, 16 callers (µs)", "unary_16.p50_us", ""),
        (
            "streaming `read` (messages/s)",
            "streaming_16.messages_per_s",
            "≥ 0.9",
        ),
        (
            "echo stream, 256 B writes (MB/s)",
            "echo_256.mb_per_s",
            "≥ 0.9",
        ),
        (
            "echo stream, 4 KiB writes (MB/s)",
            "echo_4096.mb_per_s",
            "≥ 0.9",
        ),
        (
            "echo stream, 32 KiB writes (MB/s)",
            "echo_32768.mb_per_s",
            "≥ 0.9",
        ),
        (
            "serial `loop://`, 4 KiB writes (MB/s)",
            "serial_loop_4096.mb_per_s",
            "≥ 0.9",
        ),
        (
            "PSS after the run, all processes (KiB)",
            "memory_kib.pss",
            "≤ 0.6",
        ),
    ] {
        let (a, b) = (get(hosted, key), get(python, key));
        println!(
            "| {label} | {} | {} | {} | {target} |",
            show(a),
            show(b),
            ratio(a, b)
        );
    }
    println!(
        "\nAdded p50 latency per call, 1 caller: {:.0} µs (hosted minus Python exporter).",
        get(hosted, "unary_1.p50_us") - get(python, "unary_1.p50_us")
    );
    if let Some(by) = hosted["memory_by_process_kib"].as_object() {
        let parts: Vec<String> = by
            .iter()
            .map(|(name, m)| format!("{name}: PSS {} KiB", m["pss"]))
            .collect();
        println!("PSS by process (hosted): {}.", parts.join(", "));
    }
}

/// Flashing through resource streams, with the Python client.
pub(crate) fn print_flash(flash: &Value) {
    let (py, ours, py_routed, routed) = (
        &flash["python 0.9.0"],
        &flash["jmp-exporter"],
        &flash["python 0.9.0, router"],
        &flash["jmp-exporter, router"],
    );
    println!(
        "\n| flash {} MiB to MockStorageMuxFlasher, 0.9.0 client | Python 0.9.0 | jmp-exporter | ours/Python | Python via router | ours via router | ours/Python via router | target |",
        flash["image_mib"]
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, key, target) in [
        ("raw image (MB/s)", "raw.mb_per_s", "≥ 2×"),
        (
            "`--compression zstd` (MB/s of image)",
            "zstd.mb_per_s",
            "≥ 2×",
        ),
        (
            "`--compression gzip` (MB/s of image)",
            "gzip.mb_per_s",
            "≥ 2×",
        ),
        (
            "exporter CPU, raw (s/GB)",
            "raw.exporter_cpu_s_per_gb",
            "≤ 0.1×",
        ),
        (
            "exporter CPU, zstd (s/GB of image)",
            "zstd.exporter_cpu_s_per_gb",
            "≤ 0.1×",
        ),
        (
            "exporter CPU, gzip (s/GB of image)",
            "gzip.exporter_cpu_s_per_gb",
            "≤ 0.1×",
        ),
        ("client CPU, raw (s/GB)", "raw.client_cpu_s_per_gb", ""),
        (
            "client CPU, zstd (s/GB of image)",
            "zstd.client_cpu_s_per_gb",
            "",
        ),
        (
            "client CPU, gzip (s/GB of image)",
            "gzip.client_cpu_s_per_gb",
            "",
        ),
    ] {
        let (a, b, c, d) = (
            get(py, key),
            get(ours, key),
            get(py_routed, key),
            get(routed, key),
        );
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {target} |",
            show(a),
            show(b),
            ratio(b, a),
            show(c),
            show(d),
            ratio(d, c)
        );
    }
    let m = &flash["memory_1gib"];
    println!(
        "\njmp-exporter's RSS around a raw 1 GiB flash: {} KiB before, {} KiB at most during, {} KiB after.",
        show(get(m, "rss_before_kib")),
        show(get(m, "rss_peak_during_kib")),
        show(get(m, "rss_after_kib"))
    );
    let d = &flash["decompression"];
    for (name, tool) in [("zstd", "zstd -d"), ("gzip", "gzip -d")] {
        let (ours, theirs) = (
            get(d, &format!("{name}.ours_mb_per_s")),
            get(d, &format!("{name}.tool_mb_per_s")),
        );
        println!(
            "\nDecompression, {name}: ours {} MB/s, `{tool}` {} MB/s ({} of the tool; target ≥ 0.8).",
            show(ours),
            show(theirs),
            ratio(ours, theirs)
        );
    }
}

/// TcpNetwork to an echo peer, under each exporter, directly and through the router.
pub(crate) fn print_network(network: &Value) {
    let (py, ours, py_routed, routed) = (
        &network["python 0.9.0"],
        &network["jmp-exporter"],
        &network["python 0.9.0 via router"],
        &network["via router"],
    );
    println!(
        "\n| TcpNetwork to an echo peer | Python 0.9.0 | jmp-exporter | ours/Python | Python via router | ours via router | ours/Python via router | target |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for (label, key, target) in [
        ("4 KiB writes (MB/s)", "echo_4096.mb_per_s", "≥ 10×"),
        ("32 KiB writes (MB/s)", "echo_32768.mb_per_s", "≥ 3×"),
        (
            "exporter CPU, 4 KiB (s/GB)",
            "echo_4096.cpu_s_per_gb",
            "≤ 0.1×",
        ),
        (
            "exporter CPU, 32 KiB (s/GB)",
            "echo_32768.cpu_s_per_gb",
            "≤ 0.1×",
        ),
        (
            "stream open → first byte, p50 (µs)",
            "echo_4096.first_byte_p50_us",
            "≤ 0.25×",
        ),
    ] {
        let (a, b, c, d) = (
            get(py, key),
            get(ours, key),
            get(py_routed, key),
            get(routed, key),
        );
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {target} |",
            show(a),
            show(b),
            ratio(b, a),
            show(c),
            show(d),
            ratio(d, c)
        );
    }
    let floor = &network["bare relay"];
    println!(
        "\nThe floor, a bare relay (256 KiB blocking copies, no framing) over the same four loopback crossings: 4 KiB writes {} MB/s at {} s/GB of relay CPU, 32 KiB writes {} MB/s at {} s/GB.",
        show(get(floor, "echo_4096.mb_per_s")),
        show(get(floor, "echo_4096.cpu_s_per_gb")),
        show(get(floor, "echo_32768.mb_per_s")),
        show(get(floor, "echo_32768.cpu_s_per_gb")),
    );
}

/// Shell: call to first output, under each exporter.
pub(crate) fn print_shell(shell: &Value) {
    let (py, ours) = (&shell["python 0.9.0"], &shell["jmp-exporter"]);
    println!("\n| Shell `call_method` (echo, sleep 0.3 s, echo) | Python 0.9.0 | jmp-exporter | ours/Python |");
    println!("|---|---:|---:|---:|");
    for (label, key) in [
        ("call → first output, p50 (ms)", "first_output_p50_ms"),
        (
            "call → first output, slowest of 20 (ms)",
            "first_output_max_ms",
        ),
        ("whole call, p50 (ms)", "call_p50_ms"),
    ] {
        let (a, b) = (get(py, key), get(ours, key));
        println!("| {label} | {} | {} | {} |", show(a), show(b), ratio(b, a));
    }
}
