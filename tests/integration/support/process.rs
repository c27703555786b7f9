//! What a process holds (file descriptors, threads, child processes, memory), read from
//! /proc, for tests that check nothing leaked; and deterministic test bytes.

use std::time::Duration;

/// What the process holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    pub fds: usize,
    pub threads: usize,
    pub children: usize,
    pub rss_kib: u64,
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Resident memory (VmRSS) in KiB; 0 once the process is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn holdings(pid: u32) -> Holdings {
    let children = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
                .filter(|stat| {
                    // The parent pid is the second field after the parenthesised command name.
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| {
                            rest.split_whitespace().nth(1).map(|p| p == pid.to_string())
                        })
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0);
    Holdings {
        fds: count(format!("/proc/{pid}/fd")),
        threads: count(format!("/proc/{pid}/task")),
        children,
        rss_kib: rss_kib(pid),
    }
}

/// Waits (bounded) until the process holds no more fds and children than at `baseline`, and
/// at most `thread_slack` more threads (runtimes start pool threads lazily); returns what it
/// holds then, for the caller to assert on.
pub async fn settles_back(pid: u32, baseline: Holdings, thread_slack: usize) -> Holdings {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = holdings(pid);
        let settled = now.fds <= baseline.fds
            && now.children <= baseline.children
            && now.threads <= baseline.threads + thread_slack;
        if settled || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The pids of `pid`'s child processes.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let parent = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_string();
            (parent == pid.to_string()).then_some(child)
        })
        .collect()
}
