//! The native `PySerial` driver against real kernel terminals (pseudo-terminal pairs, see
//! `support::pty`), served by the real exporter process and driven by the unchanged upstream
//! Python client: its pexpect adapter, its stream API and the `j <name> pipe` command.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::exporter::Exporter;
use crate::support::pty::{pattern, relink, Board};
use crate::support::python;

/// Generous: the whole suite shares two cores, and 16 MiB through a pty takes a while then.
const WAIT: Duration = Duration::from_secs(60);
const MIB: usize = 1024 * 1024;

/// An exporter whose `serial` console is a by-id-style link (absent until a board is plugged),
/// plus a `loop` console on loop://.
struct Rig {
    dir: tempfile::TempDir,
    link: PathBuf,
    exporter: Exporter,
}

impl Rig {
    fn new(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let by_id = dir.path().join("serial/by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        let link = by_id.join("usb-Test_Board_TB1234-if00-port0");
        let config = dir.path().join("exporter.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: jumpstarter.dev/v1alpha1\nkind: ExporterConfig\nmetadata:\n  namespace: default\n  name: serial-test\nexport:\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: {}\n{extra}  loop:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: 'loop://'\n",
                link.display()
            ),
        )
        .unwrap();
        let exporter = Exporter::unix(&config);
        Rig {
            dir,
            link,
            exporter,
        }
    }

    fn host(&self) -> String {
        self.exporter.host()
    }

    /// Plugs a new board in behind the link and waits until the exporter has opened it.
    fn plug(&self, label: &str) -> Board {
        let opened = self.count("serial console opened");
        let board = Board::start(label);
        relink(&self.link, &board.path);
        self.wait_count("serial console opened", opened + 1);
        board
    }

    /// Pulls the plug and the link, and waits until the exporter has noticed.
    fn unplug(&self, board: Board) {
        let gone = self.count("serial console went away");
        board.unplug();
        std::fs::remove_file(&self.link).unwrap();
        self.wait_count("serial console went away", gone + 1);
    }

    fn count(&self, needle: &str) -> usize {
        self.exporter.log().matches(needle).count()
    }

    fn wait_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "the exporter never logged {needle:?} {n} times:\n{}",
                self.exporter.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn script_command(host: &str, args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/serial_client.py");
    let mut cmd = python::command("python");
    cmd.arg(script).args(args).env("JUMPSTARTER_HOST", host);
    cmd
}

/// Runs a scenario of `tests/python/serial_client.py` and returns its result.
fn script(host: &str, args: &[&str]) -> Value {
    let out = python::output_with_timeout(script_command(host, args), 180);
    python::scenario_result("serial_client.py", args[0], out)
}

/// A scenario that stops at `{"wait": ...}` lines until the test says `go`.
struct Interactive {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Interactive {
    fn start(host: &str, args: &[&str]) -> Interactive {
        let mut child = script_command(host, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serial_client.py");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        let stdin = child.stdin.take().unwrap();
        Interactive {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// The next JSON line; panics (with the script's stderr) if none comes in time.
    fn next(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = self.child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "serial_client.py said nothing:\n{}",
                    self.stderr.lock().unwrap()
                )
            });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    fn expect_wait(&mut self, what: &str) {
        let line = self.next();
        assert_eq!(line["wait"], what, "{line}");
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn result(mut self) -> Value {
        let line = self.next();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.stderr.lock().unwrap());
        line["result"].clone()
    }
}

/// `j serial pipe ARGS` with `input` piped to its stdin; its stdout is collected as it comes.
struct Pipe {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Pipe {
    fn start(host: &str, args: &[&str], input: Vec<u8>) -> Pipe {
        let mut j = python::command("j");
        j.arg("serial")
            .arg("pipe")
            .args(args)
            .env("JUMPSTARTER_HOST", host)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = j.spawn().expect("start j");
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let collect = |mut from: Box<dyn Read + Send>| {
            let into = Arc::new(Mutex::new(Vec::new()));
            let sink = into.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            into
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Pipe {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits for the exit; kills and panics after `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "j serial pipe did not exit within {limit:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn mb_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / MIB as f64 / seconds
}

#[test]
fn pexpect_logs_in_through_the_real_client() {
    let rig = Rig::new("");
    let board = rig.plug("v1");
    let result = script(&rig.host(), &["login"]);
    assert_eq!(result["kernel"], "Linux board 6.6.0");
    let seen = board.seen_text();
    assert!(
        seen.contains("root\n") && seen.contains("secret\n") && seen.contains("uname -a\n"),
        "{seen:?}"
    );
}

#[test]
fn pipe_forwards_piped_stdin_and_no_output_leaves_nothing_behind() {
    let rig = Rig::new("");
    let board = rig.plug("v1");

    // Fire and forget: the client sends, half-closes and leaves at once; every byte must still
    // reach the board.
    let n = 512 * 1024;
    let input = [format!("!recv {n}\n").into_bytes(), pattern(n)].concat();
    let mut pipe = Pipe::start(&rig.host(), &["--no-output"], input.clone());
    let status = pipe.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", pipe.stderr_text());
    assert!(
        board.wait_said(&format!("!got {n} ok"), WAIT),
        "the board got {} of {} bytes; said {:?}",
        board.seen.lock().unwrap().len(),
        input.len(),
        board.said_text()
    );
    assert!(*board.seen.lock().unwrap() == input, "byte-exact");

    // Both ways: stdin to the board, the board's answer to stdout, until the board goes away.
    let mut pipe = Pipe::start(&rig.host(), &[], b"!hello\n".to_vec());
    let deadline = Instant::now() + WAIT;
    while !pipe.stdout_text().contains("hello from v1\n") {
        assert!(
            Instant::now() < deadline,
            "no answer on stdout:\n{}",
            pipe.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rig.unplug(board);
    let status = pipe.wait(WAIT);
    assert!(status.success(), "{}", pipe.stderr_text());
    assert!(
        pipe.stderr_text()
            .contains("Serial connection closed normally"),
        "{}",
        pipe.stderr_text()
    );
}

#[test]
fn sixteen_mib_each_way_byte_exact() {
    let rig = Rig::new("");
    let board = rig.plug("v1");
    let n = 16 * MIB;
    let started = Instant::now();

    let rx = script(&rig.host(), &["rx", &n.to_string()]);
    assert_eq!(rx["bytes"], n);
    assert_eq!(rx["exact"], true, "device to client is byte-exact");

    let tx = script(&rig.host(), &["tx", &n.to_string()]);
    assert_eq!(
        tx["reply"],
        format!("!got {n} ok"),
        "client to device is byte-exact"
    );

    // The same through `j serial pipe --no-output` with 16 MiB on stdin.
    let input = [format!("!recv {n}\n").into_bytes(), pattern(n)].concat();
    let mut pipe = Pipe::start(&rig.host(), &["--no-output"], input);
    assert!(
        pipe.wait(Duration::from_secs(120)).success(),
        "{}",
        pipe.stderr_text()
    );
    assert!(
        board.wait_said(&format!("!got {n} ok\n!got {n} ok"), WAIT * 2),
        "{}",
        board.said_text()
    );

    let looped = script(&rig.host(), &["loop", &n.to_string()]);
    assert_eq!(looped["exact"], true, "loop:// echoes byte-exact");
    eprintln!(
        "16 MiB over a pty: device->client {:.1} MB/s, client->device {:.1} MB/s; loop:// {:.1} MB/s each way",
        mb_per_s(n, rx["seconds"].as_f64().unwrap()),
        mb_per_s(n, tx["seconds"].as_f64().unwrap()),
        mb_per_s(n, looped["seconds"].as_f64().unwrap()),
    );
    eprintln!("the four 16 MiB transfers took {:?}", started.elapsed());
}

#[test]
fn two_streams_both_see_the_output_and_both_reach_the_device() {
    let rig = Rig::new("");
    let board = rig.plug("v1");
    let result = script(&rig.host(), &["two"]);
    assert_eq!(result["a"], true, "{result}");
    assert_eq!(result["b"], true, "{result}");
    let seen = board.seen_text();
    assert!(seen.contains("!note from stream a\n") && seen.contains("!note from stream b\n"));
}

#[test]
fn unplug_and_replug_during_a_stream_and_while_idle() {
    let capture = tempfile::tempdir().unwrap();
    let log = capture.path().join("console.log");
    let rig = Rig::new(&format!("      log_file: {}\n", log.display()));
    let pid = rig.exporter.pid();
    let board = rig.plug("v1");
    board.print(b"U-Boot 2024.01 (nobody attached)\r\n");

    // During a stream.
    let mut client = Interactive::start(&rig.host(), &["unplug"]);
    client.expect_wait("unplug");
    rig.unplug(board);
    client.go();
    client.expect_wait("replug");
    let board = rig.plug("v2");
    client.go();
    let result = client.result();
    assert_eq!(
        result["ended"], "EndOfStream",
        "the open stream ended cleanly: {result}"
    );
    let unplugged = &result["while_unplugged"];
    assert_eq!(unplugged["code"], "UNAVAILABLE", "{result}");
    let message = unplugged["message"].as_str().unwrap();
    assert!(
        message.contains(&rig.link.display().to_string()),
        "{message}"
    );
    assert_eq!(result["after_replug"], "hello from v2");

    // While idle.
    rig.unplug(board);
    let board = rig.plug("v3");
    assert_eq!(script(&rig.host(), &["hello"])["reply"], "hello from v3");
    assert_eq!(rig.exporter.pid(), pid);
    drop(board);

    // The console log kept all of it, including what was printed with nobody attached.
    let needles = [
        "(nobody attached)",
        "hello from v1",
        "hello from v2",
        "hello from v3",
    ];
    let deadline = Instant::now() + WAIT;
    loop {
        let captured =
            String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        if needles.iter().all(|n| captured.contains(n)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "console log incomplete: {captured:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = &rig.dir;
}

/// The board is unplugged while the client is sending in bulk (16 MiB, far more than the
/// board can take before the unplug): the client must not hang, and must not be told that all
/// went well; the exporter lives on, and the port works once the board is back.
#[test]
fn a_board_removed_during_a_write_ends_the_write_and_the_port_recovers() {
    let rig = Rig::new("");
    let pid = rig.exporter.pid();
    let board = rig.plug("v1");
    let n = 16 * MIB;
    let mut client = Interactive::start(&rig.host(), &["write_unplug", &n.to_string()]);
    let line = client.next();
    assert_eq!(line["wait"], "unplug", "{line}");
    let seen_before = board.seen.lock().unwrap().len();
    rig.unplug(board);
    client.go();
    client.expect_wait("replug");
    let board = rig.plug("v2");
    client.go();
    let result = client.result();
    eprintln!("board got {seen_before}+ bytes before the unplug; the client saw {result}");

    let sent = result["sent"].as_u64().unwrap() as usize;
    assert!(sent < n, "the client was never told: {result}");
    assert_ne!(result["send"], "timeout", "the write hung: {result}");
    assert_ne!(result["receive"], "timeout", "the stream hung: {result}");
    assert!(result.get("stream").is_none(), "{result}");
    // The client's receive side is told why, naming the device and what it lost. One race
    // is the Python client's own: when our status arrives while one of its writes is in
    // flight, grpc aio fails that write locally and replaces the call's status with its own
    // INTERNAL "Internal error from Core" on both sides (seen once in 13 runs here, in a
    // full suite on a loaded machine; reading on after the failure made it more frequent).
    // Then the client still learns that the stream broke, only not why; the exporter's log,
    // checked below, says why.
    let masked = |side: &str| {
        result[side]["code"] == "INTERNAL" && result[side]["message"] == "Internal error from Core"
    };
    if masked("receive") && masked("send") {
        eprintln!("the Python client replaced our status with its own INTERNAL (its write race)");
    } else {
        assert_eq!(result["receive"]["code"], "UNAVAILABLE", "{result}");
        let told = result["receive"]["message"].as_str().unwrap_or_default();
        assert!(
            told.contains("usb-Test_Board_TB1234") && told.contains("were not written"),
            "{result}"
        );
    }
    assert!(
        rig.exporter.log().contains("went away during a write"),
        "the exporter says the write was cut short:\n{}",
        rig.exporter.log()
    );
    let log = rig.exporter.log();
    if let Some(line) = log.lines().find(|l| l.contains("went away during a write")) {
        eprintln!("the exporter said: {line}");
    }
    assert_eq!(result["after_replug"], "hello from v2");
    assert_eq!(script(&rig.host(), &["hello"])["reply"], "hello from v2");
    assert_eq!(rig.exporter.pid(), pid);
    drop(board);
}

/// Disk full while capturing the console: the log file is a link to `/dev/full` (every write
/// fails with ENOSPC, no root needed), then the link is pointed at a real file, as if space
/// came back.
#[test]
fn a_full_disk_costs_only_the_console_log_which_resumes_with_the_gap_marked() {
    let capture = tempfile::tempdir().unwrap();
    let log = capture.path().join("console.log");
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let rig = Rig::new(&format!("      log_file: {}\n", log.display()));
    let board = rig.plug("v1");

    // Clients see everything while the log cannot be written.
    let n = 4 * MIB;
    let rx = script(&rig.host(), &["rx", &n.to_string()]);
    assert_eq!(rx["bytes"], n);
    assert_eq!(rx["exact"], true, "the console stream lost nothing: {rx}");
    assert_eq!(script(&rig.host(), &["hello"])["reply"], "hello from v1");
    let warned = "cannot write the console log";
    rig.wait_count(warned, 1);

    // Space comes back; the next retry (every 5 s) finds a writable file.
    let real = capture.path().join("real.log");
    std::fs::write(&real, b"").unwrap();
    let swap = capture.path().join("swap");
    std::os::unix::fs::symlink(&real, &swap).unwrap();
    std::fs::rename(&swap, &log).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        board.print(b"still booting\r\n");
        let text = String::from_utf8_lossy(&std::fs::read(&real).unwrap()).into_owned();
        if text.contains("still booting") {
            assert!(
                text.starts_with("\n[jmp-exporter: ") && text.contains("bytes of console output are missing here; the log could not be written: No space left on device"),
                "the gap is marked: {:?}",
                &text[..text.len().min(300)]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture never resumed:\n{}",
            rig.exporter.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        rig.count(warned),
        1,
        "the full disk was reported once, not per write or per retry:\n{}",
        rig.exporter.log()
    );
    assert_eq!(rig.count("console capture resumed"), 1);
    assert_eq!(script(&rig.host(), &["hello"])["reply"], "hello from v1");
}

#[test]
fn a_missing_device_at_start_is_unavailable_until_it_appears() {
    let rig = Rig::new("");
    // The exporter started and serves; the device is not there.
    let result = script(&rig.host(), &["absent"]);
    assert_eq!(result["code"], "UNAVAILABLE", "{result}");
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains(&rig.link.display().to_string()),
        "{message}"
    );
    assert!(message.contains("not present"), "{message}");
    assert!(
        rig.exporter.log().contains("is not present"),
        "{}",
        rig.exporter.log()
    );

    let _board = rig.plug("late");
    assert_eq!(script(&rig.host(), &["hello"])["reply"], "hello from late");
}

#[test]
fn the_port_is_held_exclusively_and_modem_lines_act_on_it() {
    use rustix::fs::{flock, FlockOperation, Mode, OFlags};
    let rig = Rig::new("");
    let board = rig.plug("v1");
    // Another program on the host cannot take the console (root ignores TIOCEXCL, so the
    // exclusive lock is what shows here).
    let other =
        rustix::fs::open(&board.path, OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).unwrap();
    assert!(flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
    drop(other);

    let result = script(&rig.host(), &["lines"]);
    for method in ["set_dtr", "set_rts"] {
        let text = result[method].as_str().unwrap();
        assert!(text.contains("no modem control lines"), "{method}: {text}");
        assert!(
            text.contains(&rig.link.display().to_string()),
            "{method}: {text}"
        );
    }
}

/// Throughput of one `connect` stream through the real client, for the record.
#[test]
#[ignore = "measurement, prints MB/s; run with --ignored --nocapture"]
fn measure_throughput() {
    let rig = Rig::new("");
    let _board = rig.plug("v1");
    let n = 64 * MIB;
    for _ in 0..2 {
        let rx = script(&rig.host(), &["rx", &n.to_string()]);
        let tx = script(&rig.host(), &["tx", &n.to_string()]);
        let looped = script(&rig.host(), &["loop", &n.to_string()]);
        assert_eq!(rx["exact"], true);
        assert_eq!(tx["reply"], format!("!got {n} ok"));
        assert_eq!(looped["exact"], true);
        eprintln!(
            "64 MiB over a pty: device->client {:.1} MB/s, client->device {:.1} MB/s; loop:// {:.1} MB/s each way",
            mb_per_s(n, rx["seconds"].as_f64().unwrap()),
            mb_per_s(n, tx["seconds"].as_f64().unwrap()),
            mb_per_s(n, looped["seconds"].as_f64().unwrap()),
        );
    }
}
