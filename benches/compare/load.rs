//! The load generator: the cases (unary calls, streaming calls, byte-stream echo) driven
//! against a target and measured, and the runs made of them: the full set per target, the
//! head-to-head rounds, direct against routed, and the sustained load that watches memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jmp_exporter::frame;
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::{
    DriverCallRequest, FrameType, StreamRequest, StreamResponse, StreamingDriverCallRequest,
};
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Streaming};

use crate::report::get;
use crate::router::tunnel_channel;
use crate::targets::{Access, Target};
use crate::usage::{cpu_time, memory_detail, tree_cpu, tree_memory};

/// Case length while the head-to-head rounds run (milliseconds; 0: none).
static CASE_OVERRIDE_MS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn seconds() -> Duration {
    let overridden = CASE_OVERRIDE_MS.load(Ordering::Relaxed);
    if overridden > 0 {
        return Duration::from_millis(overridden);
    }
    let s = std::env::var("JMP_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

fn sustained_seconds() -> Duration {
    let s = std::env::var("JMP_BENCH_SUSTAINED_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(60.0);
    Duration::from_secs_f64(s)
}

pub(crate) async fn channels(target: &Target, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match &target.access {
            Access::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            Access::Router(router) => tunnel_channel(router).await,
        });
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Unary DriverCall `power.on` from `callers` concurrent callers.
async fn unary(target: &Target, callers: usize) -> Value {
    let chans = channels(target, callers.min(16)).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let pid = target.child.id();
    let others0 = OthersCpu::now(target);
    let cpu0 = tree_cpu(pid);
    let begin = Instant::now();
    let deadline = begin + seconds();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = ExporterServiceClient::new(chans[i % chans.len()].clone());
        let uuid = power.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let ok = client
                    .driver_call(DriverCallRequest {
                        uuid: uuid.clone(),
                        method: "on".into(),
                        args: vec![],
                    })
                    .await
                    .is_ok();
                if ok {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = begin.elapsed();
    let cpu = tree_cpu(pid).saturating_sub(cpu0);
    all.sort();
    let calls = all.len() as f64;
    let per_call = |cpu: f64| if calls > 0.0 { cpu * 1e6 / calls } else { 0.0 };
    let mut result = json!({
        "calls_per_s": calls / elapsed.as_secs_f64(),
        "p50_us": percentile(&all, 0.5).as_micros() as u64,
        "p99_us": percentile(&all, 0.99).as_micros() as u64,
        "cpu_us_per_call": per_call(cpu.as_secs_f64()),
    });
    others0.add_to(&mut result, target, "_cpu_us_per_call", per_call);
    result
}

/// CPU of the processes beside the measured server: the load generator (this process, which
/// also runs the client's end of a router tunnel) and the fake router when there is one.
struct OthersCpu {
    load_generator: Duration,
    router: Option<Duration>,
}

impl OthersCpu {
    fn now(target: &Target) -> OthersCpu {
        OthersCpu {
            load_generator: cpu_time(std::process::id()),
            router: target.helper.as_ref().map(|h| tree_cpu(h.id())),
        }
    }

    /// Adds `load_generator<suffix>` and `router<suffix>`: the CPU since `self`, scaled by `per`.
    fn add_to(&self, result: &mut Value, target: &Target, suffix: &str, per: impl Fn(f64) -> f64) {
        let spent = cpu_time(std::process::id()).saturating_sub(self.load_generator);
        result[format!("load_generator{suffix}")] = json!(per(spent.as_secs_f64()));
        if let (Some(helper), Some(before)) = (target.helper.as_ref(), self.router) {
            let spent = tree_cpu(helper.id()).saturating_sub(before);
            result[format!("router{suffix}")] = json!(per(spent.as_secs_f64()));
        }
    }
}

/// StreamingDriverCall `power.read` (two results each) from 16 callers.
async fn streaming(target: &Target) -> Value {
    let chans = channels(target, 16).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let begin = Instant::now();
    let deadline = begin + seconds();
    let messages = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for channel in chans {
        let (uuid, messages) = (power.clone(), messages.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExporterServiceClient::new(channel);
            let mut calls = 0u64;
            while Instant::now() < deadline {
                let request = StreamingDriverCallRequest {
                    uuid: uuid.clone(),
                    method: "read".into(),
                    args: vec![],
                };
                if let Ok(response) = client.streaming_driver_call(request).await {
                    let mut s = response.into_inner();
                    while let Ok(Some(_)) = s.message().await {
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    calls += 1;
                }
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    let elapsed = begin.elapsed().as_secs_f64();
    json!({
        "calls_per_s": calls as f64 / elapsed,
        "messages_per_s": messages.load(Ordering::Relaxed) as f64 / elapsed,
    })
}

/// Opens a byte stream to `driver`'s `connect`.
pub(crate) async fn open_stream(
    channel: &Channel,
    uuid: &str,
) -> (
    tokio::sync::mpsc::Sender<StreamRequest>,
    Streaming<StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamRequest>(64);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let target = format!(r#"{{"kind":"driver","uuid":"{uuid}","method":"connect"}}"#);
    request
        .metadata_mut()
        .insert("request", target.parse().unwrap());
    let inbound = RouterServiceClient::new(channel.clone())
        .stream(request)
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

/// Stream opens not measured, then measured, by [`echo`].
const OPEN_WARMUP: usize = 5;
const OPEN_SAMPLES: usize = 100;

/// Echo throughput with `size`-byte writes through `driver`, and stream open → first byte.
pub(crate) async fn echo(target: &Target, driver: &str, size: usize) -> Value {
    let chans = channels(target, 1).await;
    let uuid = jmp_testkit::client::driver_uuid(&chans[0], driver).await;
    let pid = target.child.id();

    // A few opens first: the first ones pay for lazy set-up on both sides, which is not what
    // a lab's hundredth `j ssh` costs; then enough samples for a steady median.
    let (mut first, mut heads) = (Vec::new(), Vec::new());
    for i in 0..OPEN_WARMUP + OPEN_SAMPLES {
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
        if i >= OPEN_WARMUP {
            first.push(t.elapsed());
            heads.push(opened);
        }
        drop(tx);
    }
    first.sort();
    heads.sort();

    let (tx, mut rx) = open_stream(&chans[0], &uuid).await;
    let payload = Bytes::from(vec![0x5au8; size]);
    let others0 = OthersCpu::now(target);
    let cpu0 = tree_cpu(pid);
    let begin = Instant::now();
    let deadline = begin + seconds();
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while Instant::now() < deadline {
            if tx.send(frame::data_request(payload.clone())).await.is_err() {
                break;
            }
            sent += payload.len() as u64;
        }
        let _ = tx.send(frame::goaway_request()).await;
        sent
    });
    let mut received = 0u64;
    let drain_deadline = deadline + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(drain_deadline.into(), rx.message()).await;
        match message {
            Ok(Ok(Some(f))) if f.frame_type == FrameType::Data as i32 => {
                received += f.payload.len() as u64
            }
            _ => break,
        }
    }
    let sent = writer.await.unwrap();
    let elapsed = begin.elapsed().as_secs_f64();
    let cpu = tree_cpu(pid).saturating_sub(cpu0).as_secs_f64();
    let per_gb = |cpu: f64| {
        if received > 0 {
            cpu / (received as f64 / 1e9)
        } else {
            0.0
        }
    };
    let mut result = json!({
        "mb_per_s": received as f64 / elapsed / 1e6,
        "sent_mb": sent as f64 / 1e6,
        "cpu_s_per_gb": per_gb(cpu),
        "first_byte_p50_us": percentile(&first, 0.5).as_micros() as u64,
        "open_headers_p50_us": percentile(&heads, 0.5).as_micros() as u64,
    });
    others0.add_to(&mut result, target, "_cpu_s_per_gb", per_gb);
    result
}

/// Rounds of the head-to-head comparison with the minimal server.
pub(crate) const DUEL_ROUNDS: usize = 7;

/// jmp-exporter and the minimal server measured in alternation, short cases, several rounds
/// (which of the two goes first alternates too): on a shared two-core machine the rate of a
/// single case swings by tens of percent, and only the median of ratios taken side by side
/// says where we stand against the limit.
pub(crate) async fn duel(ours: &Target, limit: &Target) -> Value {
    CASE_OVERRIDE_MS.store(1000, Ordering::Relaxed);
    let cases: [(&str, &str); 3] = [
        ("unary DriverCall, 16 callers (calls/s)", "unary16"),
        ("echo stream, 256 B writes (MB/s)", "echo256"),
        ("echo stream, 32 KiB writes (MB/s)", "echo32k"),
    ];
    async fn rate(target: &Target, case: &str) -> f64 {
        match case {
            "unary16" => get(&unary(target, 16).await, "calls_per_s"),
            "echo256" => get(&echo(target, "echo", 256).await, "mb_per_s"),
            _ => get(&echo(target, "echo", 32 * 1024).await, "mb_per_s"),
        }
    }
    let mut out = serde_json::Map::new();
    for (label, case) in cases {
        let mut ratios = Vec::new();
        for round in 0..DUEL_ROUNDS {
            let (a, b) = if round % 2 == 0 {
                let a = rate(ours, case).await;
                (a, rate(limit, case).await)
            } else {
                let b = rate(limit, case).await;
                (rate(ours, case).await, b)
            };
            if b > 0.0 {
                ratios.push(a / b);
            }
        }
        ratios.sort_by(|x, y| x.total_cmp(y));
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
        out.insert(
            label.into(),
            json!({
                "median_ratio": median,
                "min_ratio": ratios.first().copied().unwrap_or(0.0),
                "max_ratio": ratios.last().copied().unwrap_or(0.0),
                "rounds": ratios.len(),
            }),
        );
    }
    CASE_OVERRIDE_MS.store(0, Ordering::Relaxed);
    Value::Object(out)
}

/// The cases that show what the router tunnel costs, each measured on a directly reached
/// exporter and right after on the leased one, so that both see the same machine load.
pub(crate) async fn measure_tunnel(direct: &Target, routed: &Target) -> Value {
    let (mut d, mut r) = (BTreeMap::new(), BTreeMap::new());
    d.insert("unary_16".to_string(), unary(direct, 16).await);
    r.insert("unary_16".to_string(), unary(routed, 16).await);
    for size in [256, 4096, 32768] {
        d.insert(format!("echo_{size}"), echo(direct, "echo", size).await);
        r.insert(format!("echo_{size}"), echo(routed, "echo", size).await);
    }
    json!({"direct": d, "router": r})
}

pub(crate) async fn measure(target: &Target) -> Value {
    let mut results = BTreeMap::new();
    results.insert(
        "start_to_get_report_ms".to_string(),
        json!(target.start_to_report.as_secs_f64() * 1000.0),
    );
    for callers in [1, 16, 64] {
        results.insert(format!("unary_{callers}"), unary(target, callers).await);
    }
    results.insert("streaming_16".into(), streaming(target).await);
    for size in [256, 4096, 32768] {
        results.insert(format!("echo_{size}"), echo(target, "echo", size).await);
    }
    if target.name != "minimal tonic" {
        results.insert(
            "serial_loop_4096".into(),
            echo(target, "serial", 4096).await,
        );
    }
    let (rss, pss, peak) = tree_memory(target.child.id());
    results.insert(
        "memory_kib".into(),
        json!({"rss": rss, "pss": pss, "peak_rss": peak}),
    );
    json!(results)
}

/// Sustained mixed load on one target while its memory is sampled: unary callers, streaming
/// calls, and byte streams opened, filled and closed over and over (so that anything kept per
/// call or per stream would show as growth).
pub(crate) async fn sustained(target: &Target) -> Value {
    let total = sustained_seconds();
    let every = Duration::from_secs(5).min(total);
    let chans = channels(target, 12).await;
    let power = jmp_testkit::client::driver_uuid(&chans[0], "power").await;
    let echo_uuid = jmp_testkit::client::driver_uuid(&chans[0], "echo").await;
    let pid = target.child.id();
    let begin = Instant::now();
    let deadline = begin + total;
    let calls = Arc::new(AtomicU64::new(0));
    let streams = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, channel) in chans.into_iter().enumerate() {
        let (power, echo_uuid) = (power.clone(), echo_uuid.clone());
        let (calls, streams) = (calls.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = ExporterServiceClient::new(channel.clone());
            while Instant::now() < deadline {
                match i % 4 {
                    // Half the connections: unary calls.
                    0 | 1 => {
                        let request = DriverCallRequest {
                            uuid: power.clone(),
                            method: "on".into(),
                            args: vec![],
                        };
                        if client.driver_call(request).await.is_ok() {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    2 => {
                        let request = StreamingDriverCallRequest {
                            uuid: power.clone(),
                            method: "read".into(),
                            args: vec![],
                        };
                        if let Ok(r) = client.streaming_driver_call(request).await {
                            let mut s = r.into_inner();
                            while let Ok(Some(_)) = s.message().await {}
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // One byte stream at a time: 64 KiB in 4 KiB writes, echoed, then closed.
                    _ => {
                        let (tx, mut rx) = open_stream(&channel, &echo_uuid).await;
                        let chunk = Bytes::from(vec![0xa5u8; 4096]);
                        let writer = tokio::spawn(async move {
                            for _ in 0..16 {
                                let _ = tx.send(frame::data_request(chunk.clone())).await;
                            }
                            let _ = tx.send(frame::goaway_request()).await;
                        });
                        let mut got = 0;
                        while got < 16 * 4096 {
                            match rx.message().await {
                                Ok(Some(f)) => got += f.payload.len(),
                                _ => break,
                            }
                        }
                        let _ = writer.await;
                        streams.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut samples = Vec::new();
    loop {
        let (rss, pss, _, anon) = memory_detail(pid);
        let at = begin.elapsed().as_secs_f64();
        samples.push(json!({"at_s": at.round(), "rss_kib": rss, "pss_kib": pss, "anon_kib": anon}));
        let next = begin + every * samples.len() as u32;
        if next > deadline + Duration::from_millis(100) {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let field =
        |k: &str| -> Vec<u64> { samples.iter().map(|v| v[k].as_u64().unwrap_or(0)).collect() };
    let (rss, pss, anon) = (field("rss_kib"), field("pss_kib"), field("anon_kib"));
    let elapsed = begin.elapsed().as_secs_f64();
    let summary = |v: &[u64]| {
        let (first, last) = (v[0], *v.last().unwrap());
        json!({
            "start": first,
            "end": last,
            "peak": v.iter().max(),
            "growth": last as i64 - first as i64,
            "growth_pct": (last as f64 - first as f64) / first.max(1) as f64 * 100.0,
        })
    };
    json!({
        "seconds": elapsed,
        "calls_per_s": calls.load(Ordering::Relaxed) as f64 / elapsed,
        "byte_streams_per_s": streams.load(Ordering::Relaxed) as f64 / elapsed,
        "rss_kib": summary(&rss),
        "pss_kib": summary(&pss),
        "anon_kib": summary(&anon),
        "samples": samples,
    })
}
