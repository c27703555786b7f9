//! TasmotaPower against a fake MQTT broker that speaks the real protocol on a real socket (so
//! the driver's own connection code runs), with a fake plug inside it.

use super::*;
use bytes::BytesMut;
use rumqttc::{ConnAck, PubAck, Publish, SubAck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "s3cret-Pa55";

fn parse_src(src: &str) -> Result<TasmotaSpec, yaml::Error> {
    parse(&yaml::parse(src).unwrap(), "export.plug.config")
}

/// A plain-TCP config for a broker on `port`, with `extra` keys.
fn config(port: u16, extra: &str) -> String {
    format!(
        "host: 127.0.0.1\nport: {port}\ntls: false\ncmnd_topic: cmnd/plug/POWER\nstat_topic: stat/plug/POWER\n{extra}"
    )
}

fn driver(port: u16, extra: &str) -> Box<dyn Driver> {
    parse_src(&config(port, extra)).unwrap().build()
}

/// How the fake plug behind the fake broker answers a command on `cmnd/plug/POWER`.
#[derive(Clone, Copy, PartialEq)]
enum Plug {
    /// The same word on `stat/plug/POWER`.
    Echo,
    /// Nothing.
    Silent,
    /// Another word first, then the same word.
    OtherFirst,
    /// Nothing, but the broker holds a retained `ON` and `OFF` it sends on subscription.
    RetainedOnly,
}

/// A fake broker: what it saw, one line per packet (`connect <user>`, `subscribe <topic>`,
/// `publish <topic> <payload> <qos>`, `disconnect`).
struct FakeBroker {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeBroker {
    async fn start(refuse: Option<ConnectReturnCode>, plug: Plug) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, refuse, plug, log.clone()));
            }
        });
        FakeBroker { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn commands(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|l| l.starts_with("publish cmnd/"))
            .collect()
    }
}

async fn serve(
    mut s: tokio::net::TcpStream,
    refuse: Option<ConnectReturnCode>,
    plug: Plug,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let record = |line: String| seen.lock().unwrap().push(line);
    let mut buf = BytesMut::new();
    loop {
        let packet = loop {
            match Packet::read(&mut buf, 1 << 16) {
                Ok(p) => break p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    match s.read_buf(&mut buf).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                }
                Err(_) => return,
            }
        };
        let mut out = Vec::new();
        let mut stop = false;
        match packet {
            Packet::Connect(c) => {
                let user = c.login.as_ref().map(|l| l.username.clone());
                record(format!("connect {}", user.unwrap_or_default()));
                if let Some(l) = &c.login {
                    assert_eq!(l.password, PASSWORD, "the password reaches the broker");
                }
                let code = refuse.unwrap_or(ConnectReturnCode::Success);
                out.push(Packet::ConnAck(ConnAck::new(code, false)));
                stop = refuse.is_some();
            }
            Packet::Subscribe(sub) => {
                for f in &sub.filters {
                    record(format!("subscribe {}", f.path));
                }
                let codes = sub
                    .filters
                    .iter()
                    .map(|_| SubscribeReasonCode::Success(QoS::AtMostOnce))
                    .collect();
                out.push(Packet::SubAck(SubAck::new(sub.pkid, codes)));
                if plug == Plug::RetainedOnly {
                    for word in ["ON", "OFF"] {
                        let mut p = Publish::new("stat/plug/POWER", QoS::AtMostOnce, word);
                        p.retain = true;
                        out.push(Packet::Publish(p));
                    }
                }
            }
            Packet::Publish(p) => {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                record(format!("publish {} {payload} {:?}", p.topic, p.qos));
                if p.qos == QoS::AtLeastOnce {
                    out.push(Packet::PubAck(PubAck::new(p.pkid)));
                }
                let answer = |word: &str| {
                    Packet::Publish(Publish::new("stat/plug/POWER", QoS::AtMostOnce, word))
                };
                if p.topic == "cmnd/plug/POWER" {
                    match plug {
                        Plug::Echo => out.push(answer(&payload)),
                        Plug::OtherFirst => {
                            out.push(answer("Error"));
                            out.push(answer(&payload));
                        }
                        Plug::Silent | Plug::RetainedOnly => {}
                    }
                }
            }
            Packet::PingReq => out.push(Packet::PingResp),
            Packet::Disconnect => {
                record("disconnect".into());
                return;
            }
            _ => {}
        }
        let mut bytes = BytesMut::new();
        for p in out {
            p.write(&mut bytes, 1 << 16).unwrap();
        }
        if s.write_all(&bytes).await.is_err() || stop {
            return;
        }
    }
}

#[test]
fn upstream_keys_and_defaults() {
    let s =
        parse_src("host: broker\ncmnd_topic: cmnd/a/POWER\nstat_topic: stat/a/POWER\n").unwrap();
    let b = &s.0;
    assert_eq!((b.port, b.tls, b.transport), (1883, true, Transport::Tcp));
    assert_eq!(b.timeout, DEFAULT_TIMEOUT);
    assert_eq!(
        (b.client_id.as_deref(), b.username.as_deref()),
        (None, None)
    );
    assert_eq!(b.name(), "MQTT broker broker:1883");
    assert_eq!(s.client(), crate::client::POWER);
    let s = parse_src(
        "host: ::1\nport: 8883\ntransport: websockets\nclient_id: bench\nusername: lab\npassword: x\ncmnd_topic: c\nstat_topic: s\ntimeout: 2.5\n",
    )
    .unwrap();
    let b = &s.0;
    assert_eq!(b.transport, Transport::Websockets);
    assert_eq!(b.ws_url(), "wss://[::1]:8883/mqtt");
    assert_eq!(b.timeout, Duration::from_millis(2500));
    assert_eq!(b.client_id.as_deref(), Some("bench"));
    let s =
        parse_src("host: /run/mosquitto.sock\ntransport: unix\ntls: false\nport: 0\ncmnd_topic: c\nstat_topic: s\n")
            .unwrap();
    assert_eq!(s.0.name(), "MQTT broker unix:/run/mosquitto.sock");
    let id = random_client_id();
    assert!(
        id.len() <= 23 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    assert_ne!(random_client_id(), id);
}

#[test]
fn config_errors_name_the_key_and_line() {
    let base = "host: broker\ncmnd_topic: cmnd/a/POWER\nstat_topic: stat/a/POWER\n";
    let err = |extra: &str| parse_src(&format!("{base}{extra}")).err().unwrap();

    let e = parse_src("host: broker\ncmnd_topic: c\n").err().unwrap();
    assert_eq!(e.path, "export.plug.config");
    assert!(e.message.contains("missing field `stat_topic`"), "{e}");

    let e = err("transport: mqtt\n");
    assert_eq!(e.path, "export.plug.config.transport");
    assert_eq!(e.mark.map(|m| m.line), Some(4));
    assert!(e.message.contains("tcp, websockets, unix"), "{e}");

    let e = err("port: 0\n");
    assert_eq!(
        (e.path.as_str(), e.mark.map(|m| m.line)),
        ("export.plug.config.port", Some(4))
    );
    let e = err("port: 70000\n");
    assert_eq!(e.path, "export.plug.config.port");
    let e = err("port: mqtt\n");
    assert_eq!(e.path, "export.plug.config.port");

    for bad in ["0", "-1", "1e9", ".nan"] {
        let e = err(&format!("timeout: {bad}\n"));
        assert_eq!(e.path, "export.plug.config.timeout", "{bad}: {e}");
    }

    let e = parse_src("host: b\ncmnd_topic: cmnd/+/POWER\nstat_topic: s\n")
        .err()
        .unwrap();
    assert_eq!(e.path, "export.plug.config.cmnd_topic");
    assert!(e.message.contains("wildcard"), "{e}");
    let e = parse_src("host: b\ncmnd_topic: c\nstat_topic: ''\n")
        .err()
        .unwrap();
    assert_eq!(e.path, "export.plug.config.stat_topic");
    let e = parse_src("host: ' '\ncmnd_topic: c\nstat_topic: s\n")
        .err()
        .unwrap();
    assert_eq!(e.path, "export.plug.config.host");

    let e = err("transport: unix\n");
    assert_eq!(e.path, "export.plug.config.transport");
    assert!(e.message.contains("tls: false"), "{e}");
    let e = err("transport: unix\ntls: yes\n");
    assert_eq!(
        (e.path.as_str(), e.mark.map(|m| m.line)),
        ("export.plug.config.tls", Some(5))
    );

    let e = err(&format!("password: {PASSWORD}\n"));
    assert_eq!(e.path, "export.plug.config.password");
    assert!(e.message.contains("username"), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");

    let e = err("ca: /etc/ca.pem\n");
    assert_eq!(e.path, "export.plug.config.ca");
    assert!(e.message.contains("unknown field `ca`"), "{e}");
}

#[tokio::test]
async fn the_password_never_shows() {
    let extra = format!("username: lab\npassword: {PASSWORD}\ntimeout: 0.3\n");
    let spec = parse_src(&config(1, &extra)).unwrap();
    let debug = format!("{spec:?} {:#?}", spec.0);
    assert!(
        debug.contains("<hidden>") && !debug.contains(PASSWORD),
        "{debug}"
    );

    // A config error elsewhere in a config that has one.
    let e = parse_src(&format!("{}bogus: 1\n", config(1, &extra)))
        .err()
        .unwrap();
    assert!(!format!("{e} {e:?}").contains(PASSWORD));

    // The broker refuses the credentials; a plug that never answers; a broker that is gone.
    for (refuse, plug) in [
        (Some(ConnectReturnCode::BadUserNamePassword), Plug::Echo),
        (Some(ConnectReturnCode::NotAuthorized), Plug::Echo),
        (None, Plug::Silent),
    ] {
        let broker = FakeBroker::start(refuse, plug).await;
        let e = driver(broker.port, &extra)
            .call("on", vec![])
            .await
            .unwrap_err();
        assert!(!format!("{e} {e:?}").contains(PASSWORD), "{e:?}");
        assert_eq!(broker.seen()[0], "connect lab");
    }
    let e = driver(closed_port(), &extra)
        .call("on", vec![])
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(PASSWORD), "{e:?}");
}

#[tokio::test]
async fn refused_credentials_are_a_clear_error() {
    let extra = format!("username: lab\npassword: {PASSWORD}\n");
    let broker = FakeBroker::start(Some(ConnectReturnCode::NotAuthorized), Plug::Echo).await;
    let e = driver(broker.port, &extra)
        .call("off", vec![])
        .await
        .unwrap_err();
    let broker_name = format!("MQTT broker 127.0.0.1:{}", broker.port);
    assert!(
        matches!(&e, DriverError::Failed(m) if m.contains(&broker_name) && m.contains("refused the credentials of user `lab`")),
        "{e:?}"
    );
    assert!(
        broker.commands().is_empty(),
        "nothing published when refused"
    );
}

#[tokio::test]
async fn on_and_off_publish_the_word_and_wait_for_the_plug() {
    let broker = FakeBroker::start(None, Plug::Echo).await;
    let d = driver(broker.port, "client_id: bench-3\n");
    assert_eq!(d.call("on", vec![]).await.unwrap(), Json::Null);
    assert_eq!(d.call("off", vec![]).await.unwrap(), Json::Null);
    let exchange = |word: &str| {
        vec![
            "connect ".to_string(),
            "subscribe stat/plug/POWER".into(),
            format!("publish cmnd/plug/POWER {word} AtLeastOnce"),
            "disconnect".into(),
        ]
    };
    let expected = [exchange("ON"), exchange("OFF")].concat();
    // The broker reads the last DISCONNECT after the call has returned.
    for _ in 0..100 {
        if broker.seen().len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(broker.seen(), expected);
    let e = d.call("on", vec![Json::Bool(true)]).await.unwrap_err();
    assert!(matches!(e, DriverError::InvalidArgument(_)), "{e:?}");
}

#[tokio::test]
async fn another_answer_first_is_waited_past() {
    let broker = FakeBroker::start(None, Plug::OtherFirst).await;
    driver(broker.port, "timeout: 5\n")
        .call("on", vec![])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_plug_times_out_naming_topic_and_timeout() {
    for plug in [Plug::Silent, Plug::RetainedOnly] {
        let broker = FakeBroker::start(None, plug).await;
        let d = driver(broker.port, "timeout: 0.3\n");
        let started = std::time::Instant::now();
        let e = d.call("on", vec![]).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the timeout"
        );
        assert!(
            matches!(&e, DriverError::Timeout(m) if m.contains("no ON on stat_topic `stat/plug/POWER` within 0.3 s")
                && m.contains("cmnd_topic `cmnd/plug/POWER`")),
            "{e:?}"
        );
        assert_eq!(
            broker.commands(),
            ["publish cmnd/plug/POWER ON AtLeastOnce"]
        );
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_unreachable_broker_is_unavailable_naming_it() {
    let port = closed_port();
    let e = driver(port, "").call("on", vec![]).await.unwrap_err();
    assert!(
        matches!(&e, DriverError::Unavailable(m) if m.contains(&format!("cannot reach MQTT broker 127.0.0.1:{port}"))),
        "{e:?}"
    );
    let unix = parse_src(
        "host: /nonexistent/mqtt.sock\ntransport: unix\ntls: false\ncmnd_topic: c\nstat_topic: s\n",
    )
    .unwrap()
    .build();
    let e = unix.call("off", vec![]).await.unwrap_err();
    assert!(
        matches!(&e, DriverError::Unavailable(m) if m.contains("MQTT broker unix:/nonexistent/mqtt.sock")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_broker_that_never_answers_times_out() {
    // Accepts the TCP connection, then says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let e = driver(port, "timeout: 0.3\n")
        .call("on", vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DriverError::Timeout(m) if m.contains(&format!("MQTT broker 127.0.0.1:{port} did not accept a connection within 0.3 s"))),
        "{e:?}"
    );
}

#[tokio::test]
async fn read_is_a_plain_call_and_sessions_start_and_end_off() {
    let broker = FakeBroker::start(None, Plug::Echo).await;
    let d = driver(broker.port, "");
    assert_eq!(
        d.method("read"),
        Some(MethodKind::Call),
        "as upstream exports it"
    );
    assert_eq!(d.method("on"), Some(MethodKind::Call));
    assert_eq!(d.method("cycle"), None);
    assert_eq!(d.call("read", vec![]).await.unwrap(), Json::Null);
    assert!(broker.seen().is_empty(), "read touches nothing");
    d.reset().await.unwrap();
    d.close().await;
    assert_eq!(
        broker.commands(),
        [
            "publish cmnd/plug/POWER OFF AtLeastOnce",
            "publish cmnd/plug/POWER OFF AtLeastOnce"
        ]
    );
    // A broker that is gone: reset fails (the tree logs it), close logs and returns.
    let gone = driver(closed_port(), "timeout: 0.3\n");
    assert!(gone.reset().await.is_err());
    gone.close().await;
}
