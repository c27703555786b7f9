//! SNMPServer with the unchanged 0.9.0 client against Debian's real `snmpd`, which the test
//! starts on a free loopback UDP port with SNMPv3 users for authPriv (SHA+AES, SHA+DES) and
//! authNoPriv (MD5). snmpd has no writable outlet of its own, so a `pass` script stands in for
//! the Raritan outlet table and records every SET it is handed; the test reads that record to
//! see what `on` and `off` wrote. Refused credentials, an agent error status and an agent that
//! never answers are checked from the client's side, and the exporter keeps serving after them.
//! Also: `check` refuses privacy without authentication, naming the YAML path and line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::exporter::{binary, Exporter};
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: snmp}\nendpoint: ''\ntoken: ''\n";

const OID: &str = "1.3.6.1.4.1.13742.6.4.1.2.1.2.1";

const SHA_KEY: &str = "sha-auth-Secret1";
const AES_KEY: &str = "aes-priv-Secret2";
const DES_KEY: &str = "des-priv-Secret3";
const MD5_KEY: &str = "md5-auth-Secret4";

/// A free loopback UDP port (taken, then given back for the agent or for nobody).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// snmpd in the foreground, killed when the test ends however it ends.
struct Snmpd {
    child: Child,
    log: PathBuf,
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Snmpd {
    /// Writes the agent's config, pass script and persistent dir under `dir` and starts it on
    /// `port`; returns once it answers for its port (its "NET-SNMP version" line is printed
    /// when it has read its config and opened the port).
    fn start(dir: &Path, port: u16, sets: &Path) -> Snmpd {
        let snmpd = Path::new("/usr/sbin/snmpd");
        assert!(
            snmpd.exists(),
            "this test runs Debian's snmpd: apt-get install snmpd"
        );
        let persist = dir.join("persist");
        std::fs::create_dir_all(&persist).unwrap();
        let script = dir.join("outlets.sh");
        // -s OID TYPE VALUE: record it (plug 99 is a locked outlet); -g: every outlet reads 0.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  -s)\n    case \"$2\" in *.99) echo not-writable; exit 0 ;; esac\n    echo \"$2 $3 $4\" >> '{}' ;;\n  -g) echo \"$2\"; echo integer; echo 0 ;;\nesac\nexit 0\n",
                sets.display()
            ),
        )
        .unwrap();
        let conf = dir.join("snmpd.conf");
        std::fs::write(
            &conf,
            format!(
                "agentAddress udp:127.0.0.1:{port}\n\
                 createUser shaaes SHA \"{SHA_KEY}\" AES \"{AES_KEY}\"\n\
                 createUser shades SHA \"{SHA_KEY}\" DES \"{DES_KEY}\"\n\
                 createUser md5user MD5 \"{MD5_KEY}\"\n\
                 rwuser shaaes priv\n\
                 rwuser shades priv\n\
                 rwuser md5user auth\n\
                 pass .{OID} /bin/sh {}\n",
                script.display()
            ),
        )
        .unwrap();
        let log = dir.join("snmpd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(snmpd)
            .args(["-f", "-Lo", "-C", "-c"])
            .arg(&conf)
            // createUser keys are stored here, not in /var/lib/snmp.
            .env("SNMP_PERSISTENT_DIR", &persist)
            // No MIB files to load: numeric OIDs only, and a quiet log.
            .env("MIBS", "")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start snmpd");
        let mut agent = Snmpd { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
            if text.contains("NET-SNMP version")
                && std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
            {
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("snmpd exited ({status}):\n{text}");
            }
            assert!(Instant::now() < deadline, "snmpd never got ready:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One SNMPServer entry.
fn entry(name: &str, port: u16, plug: u32, security: &str) -> String {
    format!(
        "  {name}:\n    type: jumpstarter_driver_snmp.driver.SNMPServer\n    config:\n      host: 127.0.0.1\n      port: {port}\n      plug: {plug}\n{security}"
    )
}

fn security(user: &str, auth: &str, auth_key: &str, privacy: Option<(&str, &str)>) -> String {
    let mut s = format!(
        "      user: {user}\n      auth_protocol: {auth}\n      auth_key: \"{auth_key}\"\n"
    );
    if let Some((protocol, key)) = privacy {
        s += &format!("      priv_protocol: {protocol}\n      priv_key: \"{key}\"\n");
    }
    s
}

#[test]
fn the_real_client_switches_outlets_on_a_real_snmpd() {
    let dir = tempfile::tempdir().unwrap();
    let sets = dir.path().join("sets.log");
    let port = free_udp_port();
    let agent = Snmpd::start(dir.path(), port, &sets);
    let nobody = free_udp_port();

    let authpriv = security("shaaes", "SHA", SHA_KEY, Some(("AES", AES_KEY)));
    let export = [
        entry("authpriv", port, 3, &authpriv),
        entry(
            "authnopriv",
            port,
            5,
            &security("md5user", "MD5", MD5_KEY, None),
        ),
        entry(
            "des",
            port,
            7,
            &security("shades", "SHA", SHA_KEY, Some(("DES", DES_KEY))),
        ),
        entry(
            "wrong_key",
            port,
            3,
            &security("shaaes", "SHA", "not-the-key-1", Some(("AES", AES_KEY))),
        ),
        entry(
            "unknown_user",
            port,
            3,
            &security("nobody", "SHA", SHA_KEY, Some(("AES", AES_KEY))),
        ),
        entry(
            "wrong_priv_key",
            port,
            3,
            &format!(
                "{}      timeout: 1.0\n",
                security("shaaes", "SHA", SHA_KEY, Some(("AES", "not-the-key-2")))
            ),
        ),
        entry("not_writable", port, 99, &authpriv),
        entry(
            "nowhere",
            nobody,
            3,
            &format!("{authpriv}      timeout: 1.0\n"),
        ),
    ]
    .concat();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}export:\n{export}")).unwrap();
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/snmp_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script)
        .arg("snmp")
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    let seen = python::scenario_result(
        "snmp_client.py",
        "snmp",
        python::output_with_timeout(cmd, 120),
    );
    let context = || {
        format!(
            "{seen:#}\nsnmpd:\n{}\nexporter:\n{}",
            agent.log(),
            exporter.log_tail(40)
        )
    };

    for name in ["authpriv", "authnopriv", "des"] {
        assert_eq!(seen[name]["class"], "SNMPServerClient", "{}", context());
    }
    assert_eq!(
        seen["answer"],
        "Power ON command sent successfully",
        "{}",
        context()
    );

    // What the agent was handed, in order: each outlet on then off, authpriv on again (the raw
    // call) and off at the end; nothing from the refused or unanswered calls.
    let written: Vec<String> = std::fs::read_to_string(&sets)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let set = |plug: u32, value: u8| format!(".{OID}.{plug} integer {value}");
    assert_eq!(
        written,
        vec![
            set(3, 1),
            set(3, 0),
            set(5, 1),
            set(5, 0),
            set(7, 1),
            set(7, 0),
            set(3, 1),
            set(3, 0),
        ],
        "{}",
        context()
    );

    // No read method at all: NOT_FOUND, which this client reports as a DriverError.
    let read = seen["read"]["message"].as_str().unwrap_or_default();
    assert!(
        read.contains("method read not found") && read.contains("NOT_FOUND"),
        "{}",
        context()
    );

    let agent_name = format!("SNMP agent 127.0.0.1:{port}");
    for (name, says) in [
        ("wrong_key", "refused the credentials of user `shaaes`"),
        ("unknown_user", "refused the credentials of user `nobody`"),
        ("not_writable", "notWritable"),
    ] {
        let message = seen[name]["message"].as_str().unwrap_or_default();
        assert_eq!(seen[name]["type"], "DriverError", "{name}: {}", context());
        assert!(message.contains(&agent_name), "{name}: {}", context());
        assert!(message.contains(says), "{name}: {}", context());
    }
    let locked = seen["not_writable"]["message"].as_str().unwrap_or_default();
    assert!(locked.contains(&format!("{OID}.99")), "{}", context());

    // A request snmpd cannot decrypt goes unanswered (it logs "error parsing ScopedPDU"), so
    // a wrong priv_key is a timeout; its message says that may be the cause.
    let wrong_priv = seen["wrong_priv_key"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        wrong_priv.contains("DEADLINE_EXCEEDED")
            && wrong_priv.contains(&format!("{agent_name} did not answer within 1 s"))
            && wrong_priv.contains("that priv_key and priv_protocol are the agent's"),
        "{}",
        context()
    );

    let nowhere = seen["nowhere"]["message"].as_str().unwrap_or_default();
    assert!(
        nowhere.contains(&format!(
            "SNMP agent 127.0.0.1:{nobody} did not answer within 1 s"
        )),
        "{}",
        context()
    );
    assert!(nowhere.contains("DEADLINE_EXCEEDED"), "{}", context());
    let took = seen["nowhere"]["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(took < 4.0, "the 1 s timeout took {took} s: {}", context());

    // The keys are in the exporter's config only: never in what it logs or answers.
    let everything = format!("{seen} {}", exporter.log());
    for key in [
        SHA_KEY,
        AES_KEY,
        DES_KEY,
        MD5_KEY,
        "not-the-key-1",
        "not-the-key-2",
    ] {
        assert!(!everything.contains(key), "a key leaked: {}", context());
    }
}

#[test]
fn check_refuses_privacy_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEADER}export:\n{}",
            entry(
                "pdu",
                161,
                1,
                &format!(
                    "      user: admin\n      priv_protocol: AES\n      priv_key: \"{AES_KEY}\"\n"
                ),
            )
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("export.pdu.config.priv_protocol (line 14)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no privacy without authentication"),
        "{stderr}"
    );
    assert!(!stderr.contains(AES_KEY), "{stderr}");
}
