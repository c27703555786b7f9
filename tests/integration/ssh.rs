//! `j ssh` with the unchanged 0.9.0 client against a real `sshd` (Debian's openssh-server,
//! started here on a loopback port with keys made for the test): through a local port forward
//! over the native SSHWrapper's `tcp` child and `--direct`; `forward-tcp` carrying 16 MiB
//! byte-exact; a target that never answers (the connect timeout); and the config errors.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::exporter::{binary, Exporter};
use crate::support::python;

const HEADER: &str = "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata: {namespace: default, name: ssh}\nendpoint: ''\ntoken: ''\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian's openssh-client, installed by .ci/run)");
    assert!(status.success());
}

/// A real sshd on a loopback port that lets the test's key in as the current user.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub key: PathBuf,
    pub user: String,
}

impl Sshd {
    pub fn start(dir: &Path) -> Self {
        let host_key = dir.join("host_key");
        let key = dir.join("id_client");
        keygen(&host_key);
        keygen(&key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("id_client.pub"), &authorized).unwrap();
        // Privilege separation wants its empty directory; a fresh machine may lack it.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
                host_key.display(),
                authorized.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (Debian's openssh-server, installed by .ci/run)");
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "sshd never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Sshd {
            child,
            port,
            key,
            user,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A thread-per-connection TCP echo peer.
fn tcp_echo() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                let mut writer = conn;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    port
}

/// A listener that never accepts, with its one-slot queue filled: a connection to it is
/// never answered (the SYN is dropped), as a board that is down behind a switch.
fn silent_listener() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>, u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(0).unwrap()
    });
    let port = listener.local_addr().unwrap().port();
    let mut fill = Vec::new();
    // Connections the kernel completes without an accept, until one is not answered.
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(300),
        ) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (listener, fill, port)
}

fn j(exporter: &Exporter, args: &[&str]) -> Command {
    let mut cmd = python::command("j");
    cmd.args(args)
        .env("JUMPSTARTER_HOST", exporter.host())
        .env("JMP_GRPC_INSECURE", "1");
    cmd
}

#[test]
fn j_ssh_reaches_a_real_sshd_forwarded_and_direct_and_forward_tcp_is_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(dir.path());
    let echo = tcp_echo();
    let (_listener, _fill, silent) = silent_listener();
    let export = format!(
        "export:\n  ssh:\n    type: jumpstarter_driver_ssh.driver.SSHWrapper\n    config: {{default_username: {user}, ssh_identity_file: {key}}}\n    children:\n      tcp:\n        type: jumpstarter_driver_network.driver.TcpNetwork\n        config: {{host: 127.0.0.1, port: {port}}}\n  echo:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {echo}}}\n  silent:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: 127.0.0.1, port: {silent}}}\n",
        user = sshd.user,
        key = sshd.key.display(),
        port = sshd.port,
    );
    let config = dir.path().join("exporter.yaml");
    std::fs::write(&config, format!("{HEADER}{export}")).unwrap();
    let exporter = Exporter::tcp_with_env(&config, &["--tls-grpc-insecure"], &[]);

    for direct in [false, true] {
        let mut args = vec!["ssh"];
        if direct {
            args.push("--direct");
        }
        args.extend(["echo", "hello-from-the-board"]);
        let out = python::output_with_timeout(j(&exporter, &args), 120);
        assert!(
            out.status.success(),
            "j {args:?}: {out:?}\n{}",
            exporter.log()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello-from-the-board\n",
            "j {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The remote command's exit code comes back through `j`.
    let out = python::output_with_timeout(j(&exporter, &["ssh", "exit", "7"]), 120);
    assert_eq!(out.status.code(), Some(7), "{out:?}");

    // forward-tcp: a local port whose connections are the echo entry's `connect` streams.
    let local = free_port();
    let mut forward = j(&exporter, &["echo", "forward-tcp", &local.to_string()]);
    forward.stdout(Stdio::null()).stderr(Stdio::null());
    let mut forward = forward.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let conn = loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", local)) {
            break c;
        }
        assert!(Instant::now() < until, "forward-tcp never listened");
        std::thread::sleep(Duration::from_millis(100));
    };
    let payload = crate::support::process::noise(16 << 20, 18);
    let mut writer = conn.try_clone().unwrap();
    let sent = payload.clone();
    let sender = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    let mut reader = conn;
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    reader.read_to_end(&mut back).unwrap();
    sender.join().unwrap();
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(back.len(), payload.len());
    assert!(
        back == payload,
        "16 MiB through forward-tcp came back changed"
    );

    // A target that never answers fails the stream within the connect timeout, naming it.
    let started = Instant::now();
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::network::stream_status(&exporter.host(), "silent"));
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains(&format!("127.0.0.1:{silent}")),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn an_ssh_wrapper_without_its_tcp_child_or_with_two_identities_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        format!("{HEADER}export:\n  ssh:\n    type: jumpstarter_driver_ssh.driver.SSHWrapper\n    config: {{default_username: root}}\n  both:\n    type: jumpstarter_driver_ssh.driver.SSHWrapper\n    config:\n      ssh_identity: SECRET-KEY-TEXT\n      ssh_identity_file: /etc/key\n    children:\n      tcp: {{ref: ssh}}\n  port:\n    type: jumpstarter_driver_network.driver.TcpNetwork\n    config: {{host: board, port: 0}}\n"),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("export.ssh.children (line 8)") && stderr.contains("named `tcp`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("export.both.config.ssh_identity_file (line 14)"),
        "{stderr}"
    );
    assert!(stderr.contains("export.port.config.port"), "{stderr}");
    assert!(!stderr.contains("SECRET-KEY-TEXT"), "{stderr}");
}
