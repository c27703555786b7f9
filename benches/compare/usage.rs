//! What a process tree has used, read from /proc: CPU time and memory. The Python exporter
//! works in a forked child, so every figure covers the whole tree under the started process.

use std::time::Duration;

/// CPU time (user + system) a process has used.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // Linux reports in clock ticks of 1/100 s on every architecture we run on.
    Duration::from_millis(ticks * 10)
}

/// RSS and PSS (KiB) from smaps_rollup, and the peak RSS.
fn memory(pid: u32) -> (u64, u64, u64) {
    let (rss, pss, peak, _) = memory_detail(pid);
    (rss, pss, peak)
}

/// [`memory`] plus anonymous memory (heap and stacks: what a leak grows). PSS alone is a poor
/// leak signal here: it shrinks whenever another process maps the same binary, as the test
/// suite's exporters do on a shared machine.
pub(crate) fn memory_detail(pid: u32) -> (u64, u64, u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (
        field(&rollup, "Rss:"),
        field(&rollup, "Pss:"),
        field(&status, "VmHWM:"),
        field(&rollup, "Anonymous:"),
    )
}

/// The Python `jmp run` forks a child that does the work: measure the whole process tree.
pub(crate) fn tree_pids(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(parent) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        i += 1;
    }
    pids
}

pub(crate) fn tree_cpu(root: u32) -> Duration {
    tree_pids(root).into_iter().map(cpu_time).sum()
}

pub(crate) fn tree_memory(root: u32) -> (u64, u64, u64) {
    tree_pids(root)
        .into_iter()
        .map(memory)
        .fold((0, 0, 0), |a, m| (a.0 + m.0, a.1 + m.1, a.2 + m.2))
}

/// PSS and RSS of each process of a tree (the exporter, its driver host), by command name.
pub(crate) fn memory_by_process(root: u32) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for pid in tree_pids(root) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let (rss, pss, _, _) = memory_detail(pid);
        out.insert(
            format!("{name} ({pid})"),
            serde_json::json!({"rss": rss, "pss": pss}),
        );
    }
    serde_json::Value::Object(out)
}
