//! Native storage drivers and resource streams, driven by the unchanged 0.9.0 client: uploads
//! and dumps to MockStorageMux, MockStorageMuxFlasher (compressed in every encoding, and with
//! compression declined) and MockFlasher, over TCP, the Unix socket and the router tunnel;
//! then the stream's headers and every misuse of a handle, asked with our own client; and the
//! session's temporary files gone at lease end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jmp_exporter::frame::{data_request, goaway_request};
use jmp_exporter::proto::exporter_service_client::ExporterServiceClient;
use jmp_exporter::proto::router_service_client::RouterServiceClient;
use jmp_exporter::proto::{DriverCallRequest, StreamResponse};
use jmp_exporter::session::value::from_json;
use jmp_testkit::{FakeController, Options};
use serde_json::{json, Value};

use crate::support::exporter::Exporter;
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: storage}\nendpoint: ''\ntoken: ''\n";

const EXPORT: &str = "  storage:\n    type: jumpstarter_driver_opendal.driver.MockStorageMux\n  mux:\n    type: jumpstarter_driver_opendal.driver.MockStorageMuxFlasher\n  flasher:\n    type: jumpstarter_driver_opendal.driver.MockFlasher\n";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/storage_client.py")
}

fn client(host: &str, scenario: &str, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let mut cmd = python::command("python");
    cmd.arg(script()).arg(scenario).args(args);
    if !host.is_empty() {
        cmd.env("JUMPSTARTER_HOST", host)
            .env("JMP_GRPC_INSECURE", "1");
    }
    cmd.env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    python::scenario_result(
        "storage_client.py",
        scenario,
        python::output_with_timeout(cmd, 240),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn standalone_config(dir: &Path) -> PathBuf {
    write(dir, "exporter.yaml", &format!("{HEADER}export:\n{EXPORT}"))
}

fn assert_all_encodings(seen: &Value) {
    assert_eq!(
        seen["encodings"],
        json!(["gzip", "xz", "bz2", "zstd"]),
        "{seen}"
    );
}

#[test]
fn the_real_client_flashes_and_dumps_native_storage_over_tcp_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let tmp = files.path().display().to_string();
    // No Python for the exporter: the native path needs none.
    let exporter = Exporter::tcp_with_env(
        &standalone_config(dir.path()),
        &["--tls-grpc-insecure"],
        &[
            ("TMPDIR", &tmp),
            ("JMP_EXPORTER_PYTHON", "/nonexistent/python3"),
        ],
    );
    let host = exporter.host();
    let seen = client(&host, "storage", &["8", "storage"], &[]);
    assert_eq!(seen["bytes"], 8 << 20, "{seen}");
    assert_eq!(seen["class"], "StorageMuxClient");
    assert_all_encodings(&client(&host, "compressed", &["mux", "4"], &[]));
    let seen = client(&host, "flasher", &["flasher"], &[]);
    assert_eq!(seen["boot"], true, "{seen}");
    assert_eq!(seen["default"], true, "{seen}");
    assert!(
        seen["never"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was flashed to the mock flasher's partition never"),
        "{seen}"
    );
    assert!(
        exporter.wait_for_log("wrote the mock storage"),
        "{}",
        exporter.log()
    );

    // And as a user types it: `j mux flash --compression zstd FILE`, then `j mux dump`.
    let work = tempfile::tempdir().unwrap();
    let image = crate::support::process::noise(3 << 20, 11);
    let packed = work.path().join("image.img.zst");
    let zst = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(zstd_of(&image));
    std::fs::write(&packed, zst).unwrap();
    let back = work.path().join("back.img");
    for args in [
        vec![
            "mux",
            "flash",
            "--compression",
            "zstd",
            packed.to_str().unwrap(),
        ],
        vec!["mux", "dump", back.to_str().unwrap()],
    ] {
        let mut j = python::command("j");
        j.args(&args)
            .env("JUMPSTARTER_HOST", &host)
            .env("JMP_GRPC_INSECURE", "1")
            .env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*");
        let out = python::output_with_timeout(j, 120);
        assert!(out.status.success(), "j {args:?}: {out:?}");
    }
    assert!(
        std::fs::read(&back).unwrap() == image,
        "j's dump is the image j flashed"
    );
    assert!(!exporter.log().contains("ERROR"), "{}", exporter.log());
}

/// With `JMP_DISABLE_COMPRESSION=1` the exporter declines (no `x_jmp_accept_encoding`, a null
/// encoding in the handle) and the client does the work: it compresses dumps itself. (Its
/// 0.9.0 decompression of a declined *upload* fails at the end of the transfer, in the client,
/// whatever the exporter does: see the README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_compression_declined_the_client_compresses_dumps_itself_over_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = standalone_config(dir.path());
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::unix_with_env(&config, &[("JMP_DISABLE_COMPRESSION", "1")])
    })
    .await
    .unwrap();
    let host = exporter.host();
    let seen = tokio::task::spawn_blocking({
        let host = host.clone();
        move || client(&host, "dumps", &["mux", "2"], &[])
    })
    .await
    .unwrap();
    assert_all_encodings(&seen);
    let seen = tokio::task::spawn_blocking({
        let host = host.clone();
        move || client(&host, "storage", &["2", "mux"], &[])
    })
    .await
    .unwrap();
    assert_eq!(seen["class"], "StorageMuxFlasherClient");

    let channel =
        jmp_testkit::client::channel_over(tokio::net::UnixStream::connect(&host).await.unwrap())
            .await;
    let mux = jmp_testkit::client::driver_uuid(&channel, "mux").await;
    let request =
        format!(r#"{{"kind":"resource","uuid":"{mux}","x_jmp_content_encoding":"zstd"}}"#);
    let (headers, handle, _tx, _rx) = open(&channel, &request).await;
    assert!(
        headers.get("x_jmp_accept_encoding").is_none(),
        "{headers:?}"
    );
    assert_eq!(handle["x_jmp_content_encoding"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_router_and_the_sessions_files_are_gone_at_lease_end() {
    let c = FakeController::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let exporter_config = write(dir.path(), "exporter.yaml", &c.exporter_config_yaml(EXPORT));
    let client_config = write(dir.path(), "client.yaml", &c.client_config_yaml());
    let tmp = files.path().display().to_string();
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::controller_with_env(&exporter_config, &[("TMPDIR", &tmp)])
    })
    .await
    .unwrap();
    let envs = [
        (
            "CLIENT_CONFIG".to_string(),
            client_config.display().to_string(),
        ),
        ("EXPORTER_NAME".to_string(), "exporter1".to_string()),
    ];
    for (scenario, args) in [
        ("lease:storage", vec!["4", "storage"]),
        ("lease:compressed", vec!["mux", "2"]),
        ("lease:flasher", vec!["flasher"]),
    ] {
        let envs = envs.clone();
        let seen = tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client("", scenario, &args, &envs)
        })
        .await
        .unwrap();
        match scenario {
            "lease:storage" => assert_eq!(seen["bytes"], 4 << 20, "{seen}"),
            "lease:compressed" => assert_all_encodings(&seen),
            _ => assert_eq!(seen["boot"], true, "{seen}"),
        }
    }
    // Each lease ended with its client; its drivers' files went with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left: Vec<_> = std::fs::read_dir(files.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("jmp-mock-"))
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(left.is_empty(), "left behind: {left:?}\n{}", exporter.log());
}

/// A resource stream opened with our own client: its headers, then the handle.
async fn open(
    channel: &tonic::transport::Channel,
    request: &str,
) -> (
    tonic::metadata::MetadataMap,
    Value,
    tokio::sync::mpsc::Sender<jmp_exporter::proto::StreamRequest>,
    tonic::Streaming<StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    call.metadata_mut()
        .insert("request", request.parse().unwrap());
    let answer = RouterServiceClient::new(channel.clone())
        .stream(call)
        .await
        .expect("a resource stream opens");
    let headers = answer.metadata().clone();
    let handle: Value = serde_json::from_str(
        headers
            .get("resource")
            .and_then(|v| v.to_str().ok())
            .expect("a resource header"),
    )
    .expect("the handle is JSON");
    (headers, handle, tx, answer.into_inner())
}

async fn call(
    channel: &tonic::transport::Channel,
    uuid: &str,
    method: &str,
    args: Vec<Value>,
) -> Result<Value, tonic::Status> {
    ExporterServiceClient::new(channel.clone())
        .driver_call(DriverCallRequest {
            uuid: uuid.into(),
            method: method.into(),
            args: args.into_iter().map(from_json).collect(),
        })
        .await
        .map(|r| jmp_exporter::session::value::to_json(r.into_inner().result.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_say_what_is_accepted_and_every_misuse_of_a_handle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = standalone_config(dir.path());
    let exporter = tokio::task::spawn_blocking(move || {
        Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[])
    })
    .await
    .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", exporter.host()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let storage = jmp_testkit::client::driver_uuid(&channel, "storage").await;
    let flasher = jmp_testkit::client::driver_uuid(&channel, "flasher").await;
    let resource = |uuid: &str, encoding: &str| {
        format!(r#"{{"kind":"resource","uuid":"{uuid}","x_jmp_content_encoding":{encoding}}}"#)
    };

    // Accepted: the header, and the same encoding in the handle.
    let (headers, handle, _tx, _rx) = open(&channel, &resource(&storage, "\"zstd\"")).await;
    assert_eq!(headers.get("x_jmp_accept_encoding").unwrap(), "zstd");
    assert_eq!(handle["kind"], "client_stream");
    assert_eq!(handle["x_jmp_content_encoding"], "zstd");
    // Declined (unknown, or none asked): no header at all, and null in the handle.
    for asked in ["\"lz4\"", "null"] {
        let (headers, handle, _tx, _rx) = open(&channel, &resource(&storage, asked)).await;
        assert!(headers.get("x_jmp_accept_encoding").is_none(), "{asked}");
        assert_eq!(handle["x_jmp_content_encoding"], Value::Null, "{asked}");
    }

    // A handle works once, on its own driver.
    let (_, handle, tx, _rx) = open(&channel, &resource(&storage, "null")).await;
    let foreign = call(&channel, &flasher, "flash", vec![handle.clone()])
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::InvalidArgument);
    assert!(
        foreign.message().contains("was opened for driver"),
        "{foreign:?}"
    );
    tx.send(data_request(bytes::Bytes::from_static(b"hello")))
        .await
        .unwrap();
    tx.send(goaway_request()).await.unwrap();
    call(&channel, &storage, "write", vec![handle.clone()])
        .await
        .expect("write");
    let again = call(&channel, &storage, "write", vec![handle.clone()])
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
    assert!(again.message().contains("was used already"), "{again:?}");

    // What was written comes back through a dump: DATA, then GOAWAY.
    let (_, handle, _tx, mut rx) = open(&channel, &resource(&storage, "null")).await;
    call(&channel, &storage, "read", vec![handle])
        .await
        .expect("read");
    let first = rx.message().await.unwrap().unwrap();
    assert_eq!(&first.payload[..], b"hello");
    let end = rx.message().await.unwrap().unwrap();
    assert_eq!(end, jmp_exporter::frame::goaway_response());

    // An upload cut short (the client drops its stream mid-way) fails the call, naming how
    // far it got: never a truncated image reported as written.
    let (_, handle, tx, rx) = open(&channel, &resource(&storage, "null")).await;
    let writing = {
        let (channel, storage, handle) = (channel.clone(), storage.clone(), handle.clone());
        tokio::spawn(async move { call(&channel, &storage, "write", vec![handle]).await })
    };
    // 4 MiB: more than HTTP/2's windows and our channel hold, so these sends finish only once
    // the driver is reading (the call has reached it), and the cut comes mid-upload.
    for _ in 0..64 {
        tx.send(data_request(bytes::Bytes::from(vec![7u8; 64 * 1024])))
            .await
            .unwrap();
    }
    drop((tx, rx));
    let cut = tokio::time::timeout(Duration::from_secs(10), writing)
        .await
        .expect("the write call ends")
        .unwrap()
        .unwrap_err();
    assert!(
        cut.message().contains("stopped after") && cut.message().contains("the upload"),
        "{cut:?}"
    );

    // A compressed upload that stops mid-stream (GOAWAY after half a zstd frame) is an error,
    // not a short image.
    let (_, handle, tx, _rx) = open(&channel, &resource(&storage, "\"zstd\"")).await;
    let image = crate::support::process::noise(1 << 20, 3);
    let mut packed = zstd_of(&image).await;
    packed.truncate(packed.len() / 2);
    tx.send(data_request(bytes::Bytes::from(packed)))
        .await
        .unwrap();
    tx.send(goaway_request()).await.unwrap();
    let truncated = call(&channel, &storage, "write", vec![handle])
        .await
        .unwrap_err();
    assert!(
        truncated.message().contains("stopped after") && truncated.message().contains("upload"),
        "{truncated:?}"
    );

    let never = json!({"kind": "client_stream", "uuid": "5b0b9a4e-9d53-4a31-a7a4-0d2d1f9d1c11"});
    for (bad, says) in [
        (never, "is not open in this session"),
        (
            json!({"kind": "client_stream", "uuid": "nope"}),
            "is not a UUID",
        ),
        (json!({"kind": "ftp"}), "unknown resource handle kind"),
        (json!(42), "expected a resource handle"),
        (
            json!({"kind": "presigned_request", "url": "https://example.invalid/x", "method": "PUT", "headers": {}}),
            "is a PUT",
        ),
    ] {
        let e = call(&channel, &storage, "write", vec![bad.clone()])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains(says), "{bad}: {e:?}");
    }
}

/// Python's HTTP server on a free loopback port serving `dir`, over TLS with `cert` when
/// given; killed on drop.
struct Site {
    child: std::process::Child,
    port: u16,
}

impl Site {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Site {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = "import functools, http.server, os, ssl, sys\n\
            port, root = int(sys.argv[1]), sys.argv[2]\n\
            class Handler(http.server.SimpleHTTPRequestHandler):\n    \
                def do_PUT(self):\n        \
                    if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':\n            \
                        data = b''\n            \
                        while True:\n                \
                            size = int(self.rfile.readline().strip(), 16)\n                \
                            if size == 0:\n                    \
                                self.rfile.readline()\n                    \
                                break\n                \
                            data += self.rfile.read(size)\n                \
                            self.rfile.readline()\n        \
                    else:\n            \
                        data = self.rfile.read(int(self.headers.get('Content-Length', 0)))\n        \
                    with open(os.path.join(root, self.path.lstrip('/')), 'wb') as f:\n            \
                        f.write(data)\n        \
                    self.send_response(201)\n        \
                    self.send_header('Content-Length', '0')\n        \
                    self.end_headers()\n\
            handler = functools.partial(Handler, directory=root)\n\
            server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)\n\
            if len(sys.argv) > 3:\n    \
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n    \
                context.load_cert_chain(sys.argv[3], sys.argv[4])\n    \
                server.socket = context.wrap_socket(server.socket, server_side=True)\n\
            server.serve_forever()\n";
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-c").arg(script).arg(port.to_string()).arg(dir);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 HTTP server");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the HTTP server never listened"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Site { child, port }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flash` of an `https://` URL from a server whose certificate only a test CA vouches for:
/// refused while the exporter does not trust it (verification is on, the error names the
/// URL), fetched once `SSL_CERT_FILE` names the CA.
#[test]
fn an_https_url_is_fetched_only_from_a_server_the_exporter_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let image = site.path().join("image.img");
    std::fs::write(&image, crate::support::process::noise(1 << 20, 5)).unwrap();
    let cert = jmp_testkit::tls::TestCert::generate();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pem()).unwrap();
    let server = Site::start(site.path(), Some((&cert_file, &key_file)));
    let url = format!("https://127.0.0.1:{}/image.img", server.port);
    let expected = image.display().to_string();

    let untrusting = Exporter::tcp_with_env(
        &standalone_config(dir.path()),
        &["--tls-grpc-insecure"],
        &[],
    );
    let mut cmd = python::command("python");
    cmd.arg(script())
        .args(["from_url", "flasher", &url, &expected])
        .env("JUMPSTARTER_HOST", untrusting.host())
        .env("JMP_GRPC_INSECURE", "1")
        .env("JMP_DRIVERS_ALLOW", "jumpstarter_driver_*");
    let out = python::output_with_timeout(cmd, 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unknown CA must be refused");
    assert!(
        stderr.contains("127.0.0.1") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    drop(untrusting);

    let cert_path = cert_file.display().to_string();
    let trusting = Exporter::tcp_with_env(
        &standalone_config(dir.path()),
        &["--tls-grpc-insecure"],
        &[("SSL_CERT_FILE", &cert_path)],
    );
    let seen = client(
        &trusting.host(),
        "from_url",
        &["flasher", &url, &expected],
        &[],
    );
    assert_eq!(seen["same"], true, "{seen}\n{}", trusting.log());
}

/// `flash` of an `http://` URL: the client sends a presigned GET handle and the exporter
/// fetches the image from the server (Python's own HTTP server, on loopback) into the driver.
#[test]
fn a_url_is_fetched_by_the_exporter_itself() {
    let dir = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let image = site.path().join("disk image.img");
    std::fs::write(&image, crate::support::process::noise(3 << 20, 7)).unwrap();
    let server = Site::start(site.path(), None);
    let port = server.port;
    let exporter = Exporter::tcp_with_env(
        &standalone_config(dir.path()),
        &["--tls-grpc-insecure"],
        &[],
    );
    // A space in the name: the URL's percent-encoding must reach the server as written.
    let url = format!("http://127.0.0.1:{port}/disk%20image.img");
    let expected = image.display().to_string();
    for path in ["flasher", "mux"] {
        let seen = client(&exporter.host(), "from_url", &[path, &url, &expected], &[]);
        assert_eq!(seen["same"], true, "{path}: {seen}\n{}", exporter.log());
    }
    drop(server);
}

#[test]
fn a_dump_to_a_url_is_put_by_the_exporter_itself() {
    let dir = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.img");
    let data = crate::support::process::noise(3 << 20, 11);
    std::fs::write(&image, &data).unwrap();
    let server = Site::start(site.path(), None);
    let exporter = Exporter::tcp_with_env(
        &standalone_config(dir.path()),
        &["--tls-grpc-insecure"],
        &[],
    );
    let url = format!("http://127.0.0.1:{}/dumped.img", server.port);
    let seen = client(
        &exporter.host(),
        "to_url",
        &["flasher", &url, &image.display().to_string()],
        &[],
    );
    assert_eq!(seen["dumped"], true, "{seen}");
    let put = std::fs::read(site.path().join("dumped.img")).unwrap_or_default();
    assert_eq!(put.len(), data.len(), "{}", exporter.log());
    assert!(put == data, "the PUT body is the flashed image");
    drop(server);
}

/// SD-Wire on a simulated mux (`fake:`), its card a file: the real client writes, flashes in
/// every encoding (host, write, board, as its `flash` does) and reads back; the mux's
/// requests are upstream's.
#[test]
fn sd_wire_flashes_through_its_mux_onto_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.img");
    std::fs::write(&card, b"").unwrap();
    let log = dir.path().join("usb.log");
    let export = format!(
        "export:\n  sdwire:\n    type: jumpstarter_driver_sdwire.driver.SDWire\n    config:\n      storage_device: {}\n      storage_leeway: 0\n      fake: {{log: {}}}\n",
        card.display(),
        log.display()
    );
    let config = write(dir.path(), "exporter.yaml", &format!("{HEADER}{export}"));
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);
    let host = exporter.host();
    let seen = client(&host, "storage", &["4", "sdwire"], &[]);
    assert_eq!(seen["bytes"], 4 << 20, "{seen}");
    assert_eq!(seen["class"], "StorageMuxFlasherClient");
    assert_eq!(
        std::fs::metadata(&card).unwrap().len(),
        4 << 20,
        "the card holds the image"
    );
    assert_all_encodings(&client(&host, "compressed", &["sdwire", "2"], &[]));
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        requests.contains("40 0b 20f1 0000") && requests.contains("40 0b 20f0 0000"),
        "host and board switches, as upstream's requests:\n{requests}"
    );
    let last = requests.lines().last().unwrap_or_default();
    assert!(
        last.contains("40 0b 20f0"),
        "flash ends on the board side: {last}"
    );
    assert!(
        exporter.wait_for_log("wrote the SD card"),
        "{}",
        exporter.log()
    );
}

/// DUT Link on a simulated board: the real client builds its three children, switches power
/// (upstream's requests to the vendor interface), reads a reading, writes and reads back its
/// storage, and echoes through its console.
#[test]
fn dut_link_is_a_composite_of_power_storage_and_console_as_upstream_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let card = dir.path().join("card.img");
    std::fs::write(&card, b"").unwrap();
    let log = dir.path().join("usb.log");
    let export = format!(
        "export:\n  dutlink:\n    type: jumpstarter_driver_dutlink.driver.Dutlink\n    config:\n      storage_device: {}\n      storage_leeway: 0\n      alternate_console: 'loop://'\n      fake: {{log: {}}}\n",
        card.display(),
        log.display()
    );
    let config = write(dir.path(), "exporter.yaml", &format!("{HEADER}{export}"));
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);
    let seen = client(&exporter.host(), "dutlink", &["dutlink"], &[]);
    assert_eq!(seen["power"], "PowerClient", "{seen}");
    assert_eq!(seen["storage"], "StorageMuxFlasherClient", "{seen}");
    assert_eq!(seen["console"], "ping", "{seen}");
    assert_eq!(
        seen["reading"],
        json!({"voltage": 5.01, "current": 0.45}),
        "{seen}"
    );
    assert_eq!(std::fs::metadata(&card).unwrap().len(), 2 << 20);
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    for (what, request) in [
        ("power on", "41 01 0001 0002"),
        ("rescue", "41 01 0004 0002"),
        ("power off", "41 01 0000 0002"),
        ("storage to the host", "41 02 0001 0002"),
        ("a reading", "c1 04 0001 0002"),
    ] {
        assert!(
            requests.contains(request),
            "{what} ({request}) not sent:\n{requests}"
        );
    }
}

/// A zstd frame of `data`.
async fn zstd_of(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let mut z = async_compression::tokio::write::ZstdEncoder::new(Vec::new());
    z.write_all(data).await.unwrap();
    z.shutdown().await.unwrap();
    z.into_inner()
}

/// A tmpfs of `size` mounted on a fresh directory for the life of the guard: a card that fills
/// up (CI runs as root, as the package check does; a machine that cannot mount fails the test
/// saying so, never skips it).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the test needs root, as CI has)"
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_card_that_fills_up_fails_the_flash_naming_the_device_and_the_driver_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount("1m");
    let card = disk.dir.path().join("card.img");
    std::fs::write(&card, b"").unwrap();
    let log = dir.path().join("usb.log");
    let export = format!(
        "export:\n  sdwire:\n    type: jumpstarter_driver_sdwire.driver.SDWire\n    config:\n      storage_device: {}\n      storage_leeway: 0\n      fake: {{log: {}}}\n",
        card.display(),
        log.display()
    );
    let config = write(dir.path(), "exporter.yaml", &format!("{HEADER}{export}"));
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);
    let seen = client(&exporter.host(), "overfill", &["sdwire", "4"], &[]);
    let error = seen["error"]
        .as_str()
        .unwrap_or_else(|| panic!("4 MiB fit on 1 MiB: {seen}"));
    assert!(
        error.contains(&card.display().to_string()),
        "the error names the card: {error}\n{}",
        exporter.log()
    );
    assert!(
        error.to_lowercase().contains("space"),
        "the error says why: {error}"
    );
    assert_eq!(seen["after"], "answered", "{seen}");
    let requests = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        requests
            .lines()
            .last()
            .unwrap_or_default()
            .contains("40 0b 20f0"),
        "the mux is back on the board side after the failed write:\n{requests}"
    );
}
