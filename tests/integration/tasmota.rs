//! TasmotaPower with the unchanged 0.9.0 client, against Debian's real mosquitto (started here
//! with a password file, on TCP, websockets and a unix socket) and a plug the test plays: off at
//! session start, on, off, off at session end; `read` as upstream; a plug that never answers
//! and a refused password are errors naming the topic or the broker, and the exporter serves on.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::support::exporter::Exporter;
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: tasmota}\nendpoint: ''\ntoken: ''\n";

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const USER: &str = "lab";
const PASSWORD: &str = "plug-Pa55word";
const WRONG: &str = "not-the-Pa55word";

/// A mosquitto of our own, killed when dropped.
struct Mosquitto {
    child: Child,
    tcp: u16,
    ws: u16,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    fn start(dir: &Path) -> Self {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: apt-get install -y mosquitto"
        );
        let passwd = dir.join("passwd");
        let made = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([USER, PASSWORD])
            .status()
            .expect("mosquitto_passwd (package mosquitto)");
        assert!(made.success());
        let (tcp, ws) = (free_port(), free_port());
        let socket = dir.join("mqtt.sock");
        let conf = dir.join("mosquitto.conf");
        // `user root`: as root, mosquitto would otherwise become `mosquitto`, who cannot make
        // the socket in our temp dir.
        std::fs::write(
            &conf,
            format!(
                "listener {tcp} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\nlistener 0 {}\nallow_anonymous false\npassword_file {}\npersistence false\nuser root\nlog_dest stderr\nlog_type all\n",
                socket.display(),
                passwd.display()
            ),
        )
        .unwrap();
        let log = dir.join("mosquitto.log");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mosquitto");
        let broker = Mosquitto {
            child,
            tcp,
            ws,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", tcp)).is_err()
            || TcpStream::connect(("127.0.0.1", ws)).is_err()
            || !broker.socket.exists()
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The plug: subscribed to `cmnd/<name>/POWER` for each name, it answers each command with the
/// same word on `stat/<name>/POWER` and records `<name> <word>`. Returns once subscribed.
fn plug(port: u16, names: &[&str]) -> Arc<Mutex<Vec<String>>> {
    let mut options = MqttOptions::new("test-plug", "127.0.0.1", port);
    options.set_credentials(USER, PASSWORD);
    let (client, mut connection) = Client::new(options, 16);
    for name in names {
        client
            .subscribe(format!("cmnd/{name}/POWER"), QoS::AtLeastOnce)
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let (ready, subscribed) = mpsc::channel();
    let wanted = names.len();
    std::thread::spawn(move || {
        let mut acks = 0;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == wanted {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let name = p.topic.split('/').nth(1).unwrap_or_default().to_string();
                    let word = String::from_utf8_lossy(&p.payload).into_owned();
                    record.lock().unwrap().push(format!("{name} {word}"));
                    let _ = client.try_publish(
                        format!("stat/{name}/POWER"),
                        QoS::AtMostOnce,
                        false,
                        p.payload.to_vec(),
                    );
                }
                Ok(_) => {}
                // The broker is gone at the end of the test; stop rather than reconnect.
                Err(_) => break,
            }
        }
    });
    subscribed
        .recv_timeout(Duration::from_secs(10))
        .expect("the test plug subscribed");
    seen
}

fn entry(name: &str, keys: &str) -> String {
    format!(
        "  {name}:\n    type: jumpstarter_driver_tasmota.driver.TasmotaPower\n    config: {{{keys}, cmnd_topic: cmnd/{name}/POWER, stat_topic: stat/{name}/POWER}}\n"
    )
}

#[test]
fn the_real_client_switches_a_tasmota_plug_through_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let seen = plug(broker.tcp, &["plug", "ws", "usock"]);
    let tcp = format!(
        "host: 127.0.0.1, port: {}, tls: false, username: {USER}",
        broker.tcp
    );
    let export = [
        entry("plug", &format!("{tcp}, password: {PASSWORD}, timeout: 5")),
        entry(
            "ws",
            &format!(
                "host: 127.0.0.1, port: {}, transport: websockets, tls: false, username: {USER}, password: {PASSWORD}",
                broker.ws
            ),
        ),
        entry(
            "usock",
            &format!(
                "host: {}, transport: unix, tls: false, username: {USER}, password: {PASSWORD}",
                broker.socket.display()
            ),
        ),
        entry("silent", &format!("{tcp}, password: {PASSWORD}, timeout: 1")),
        entry("badpass", &format!("{tcp}, password: {WRONG}")),
    ]
    .concat();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}export:\n{export}")).unwrap();
    let mut exporter = Exporter::tcp_with_env(
        &config,
        &["--tls-grpc-insecure"],
        &[("JMP_EXPORTER_LOG", "debug")],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tasmota_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg("tasmota")
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let result = python::scenario_result(
        "tasmota_client.py",
        "tasmota",
        python::output_with_timeout(cmd, 120),
    );
    let context = |e: &Exporter| format!("{result}\n{}\n{}", e.log_tail(40), broker.log());
    assert_eq!(result["class"], "PowerClient", "{}", context(&exporter));
    assert!(
        result["on"].is_null() && result["off"].is_null(),
        "{}",
        context(&exporter)
    );
    // Upstream's `read` is a plain call: the client's streaming read is NOT_FOUND.
    let read = result["read"].as_str().unwrap_or_default();
    assert!(
        read.contains("marker_streamingdrivercall"),
        "{}",
        context(&exporter)
    );
    let silent = result["silent"].as_str().unwrap_or_default();
    assert!(
        silent.contains("no ON on stat_topic `stat/silent/POWER` within 1 s"),
        "{}",
        context(&exporter)
    );
    let badpass = result["badpass"].as_str().unwrap_or_default();
    assert!(
        badpass.contains(&format!("MQTT broker 127.0.0.1:{}", broker.tcp))
            && badpass.contains("refused the credentials of user `lab`"),
        "{}",
        context(&exporter)
    );

    exporter.stop();
    let log = exporter.log();
    assert!(
        log.contains("Power ON for Tasmota cmnd/plug/POWER"),
        "{}",
        context(&exporter)
    );
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret), "the password is in the log:\n{log}");
        assert!(!badpass.contains(secret) && !silent.contains(secret));
    }
    // Off at session start, the client's on, off, on, and off at session end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = [
        "plug OFF",
        "plug ON",
        "plug OFF",
        "plug ON",
        "plug OFF",
        "ws OFF",
        "ws ON",
        "ws OFF",
        "usock OFF",
        "usock ON",
        "usock OFF",
    ];
    loop {
        let mut got = seen.lock().unwrap().clone();
        // Per plug, in order; the entries' calls interleave.
        got.sort_by_key(|l| {
            l.split(' ')
                .next()
                .map(|n| ["plug", "ws", "usock"].iter().position(|p| *p == n))
        });
        if got == expected || Instant::now() > deadline {
            assert_eq!(got, expected, "{}", context(&exporter));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
