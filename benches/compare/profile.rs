//! Profile mode: a fixed amount of load and nothing measured, for running a server under
//! callgrind or perf, where only the difference between two counts means anything.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jmp_exporter::frame;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::DriverCallRequest;

use crate::load::{channels, open_stream};
use crate::targets::{Access, Target};

/// Profile mode: a fixed amount of load at `JMP_BENCH_ADDR`, nothing measured, so that a
/// server running under callgrind can be charged per call (run it twice with different
/// counts; the difference divided by the difference in count is the cost of one call).
pub(crate) fn profile_load(kind: &str) {
    let addr = std::env::var("JMP_BENCH_ADDR").expect("JMP_BENCH_ADDR");
    let count: u64 = std::env::var("JMP_BENCH_COUNT")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let target = Target {
            name: "profiled",
            child: Command::new("true").spawn().unwrap(),
            access: Access::Tcp(addr),
            start_to_report: Duration::ZERO,
            helper: None,
            _pty: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        let chans = channels(&target, 16).await;
        let begin = Instant::now();
        match kind {
            "unary" => {
                let uuid = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
                let left = Arc::new(AtomicU64::new(count));
                let mut tasks = Vec::new();
                for channel in chans {
                    let (uuid, left) = (uuid.clone(), left.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut client = ExporterServiceClient::new(channel);
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_ok()
                        {
                            let request = DriverCallRequest {
                                uuid: uuid.clone(),
                                method: "on".into(),
                                args: vec![],
                            };
                            client.driver_call(request).await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            }
            "echo" => {
                // COUNT writes of `JMP_BENCH_SIZE` bytes (4 KiB) through one byte stream of
                // `JMP_BENCH_DRIVER` (echo).
                let driver = std::env::var("JMP_BENCH_DRIVER").unwrap_or_else(|_| "echo".into());
                let size: u64 = std::env::var("JMP_BENCH_SIZE")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(4096);
                let uuid = jmp_testkit::client::driver_uuid(&chans[0], &driver).await;
                let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
                let chunk = Bytes::from(vec![0x5au8; size as usize]);
                let writer = tokio::spawn(async move {
                    for _ in 0..count {
                        tx.send(frame::data_request(chunk.clone())).await.unwrap();
                    }
                    let _ = tx.send(frame::goaway_request()).await;
                });
                let mut got = 0u64;
                while got < count * size {
                    match rx.message().await {
                        Ok(Some(f)) => got += f.payload.len() as u64,
                        _ => break,
                    }
                }
                writer.await.unwrap();
            }
            "open" => {
                // COUNT byte streams of `JMP_BENCH_DRIVER` (echo) opened one after another,
                // one byte sent on each and awaited back; the medians of the two round trips
                // (response headers; the byte after them) say which one to look at.
                let driver = std::env::var("JMP_BENCH_DRIVER").unwrap_or_else(|_| "echo".into());
                let uuid = jmp_testkit::client::driver_uuid(&chans[0], &driver).await;
                let (mut heads, mut echoes) = (Vec::new(), Vec::new());
                for _ in 0..count {
                    let t = Instant::now();
                    let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
                    let opened = t.elapsed();
                    tx.send(frame::data_request(Bytes::from_static(b"x")))
                        .await
                        .unwrap();
                    while let Ok(Some(f)) = rx.message().await {
                        if !f.payload.is_empty() {
                            break;
                        }
                    }
                    heads.push(opened);
                    echoes.push(t.elapsed() - opened);
                }
                heads.sort();
                echoes.sort();
                let mid = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default();
                eprintln!(
                    "open p50: headers {:?}, then first byte {:?}",
                    mid(&heads),
                    mid(&echoes)
                );
            }
            other => panic!("JMP_BENCH_PROFILE={other}: use unary, echo or open"),
        }
        eprintln!("{kind} x {count}: {:?}", begin.elapsed());
    });
}
