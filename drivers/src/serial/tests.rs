//! The driver against real kernel terminals: a pseudo-terminal pair stands in for the device,
//! and the test plays the board on its master side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::{timeout, Instant};
use tokio_serial::{SerialPort, SerialStream};

use super::fanout::STALL;
use super::port::{WRITE_BUDGET, WRITE_CHUNK};
use super::*;

const T: Duration = Duration::from_secs(10);

/// The board end of a pseudo-terminal; dropping it is pulling the plug (the port then fails,
/// as a vanished USB adapter does).
struct Board {
    rx: AsyncMutex<ReadHalf<SerialStream>>,
    tx: AsyncMutex<WriteHalf<SerialStream>>,
    /// Held so the terminal outlives the driver's reopen attempts (raw, as `pair` leaves
    /// it), and to read its settings.
    slave: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl Board {
    fn new() -> Self {
        use rustix::fs::{Mode, OFlags};
        let (master, pair_slave) = SerialStream::pair().unwrap();
        let path = PathBuf::from(pair_slave.name().unwrap());
        let slave = rustix::fs::open(&path, OFlags::RDWR | OFlags::NOCTTY, Mode::empty()).unwrap();
        drop(pair_slave);
        let (rx, tx) = tokio::io::split(master);
        Board {
            rx: AsyncMutex::new(rx),
            tx: AsyncMutex::new(tx),
            slave,
            path,
        }
    }

    async fn write_all(&self, data: &[u8]) {
        self.tx.lock().await.write_all(data).await.unwrap();
    }

    async fn read_some(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = self.rx.lock().await.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    }

    async fn read_exact(&self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(
                timeout(T, self.read_some())
                    .await
                    .expect("board read timed out"),
            );
        }
        got
    }

    async fn expect(&self, needles: &[&[u8]]) -> Vec<u8> {
        let mut got = Vec::new();
        while !needles.iter().all(|n| contains(&got, n)) {
            got.extend(timeout(T, self.read_some()).await.unwrap_or_else(|_| {
                panic!(
                    "board never saw {needles:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            }));
        }
        got
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// 8-byte little-endian counters: any lost, repeated or reordered chunk shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n.div_ceil(8) as u64)
        .flat_map(u64::to_le_bytes)
        .take(n)
        .collect()
}

fn serial(url: &Path, extra: &str) -> Box<dyn DriverSpec> {
    let src = format!("url: {}\n{extra}", url.display());
    spec(&yaml::parse(&src).unwrap(), "export.console.config").unwrap()
}

async fn read_until(io: &mut BoxedIo, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&got, needle) {
        let n = timeout(T, io.read(&mut buf))
            .await
            .expect("stream read timed out")
            .expect("stream read failed");
        assert!(n > 0, "stream ended before {needle:?}: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn read_to_end(io: &mut BoxedIo) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    timeout(T, io.read_to_end(&mut got))
        .await
        .expect("stream did not end")?;
    Ok(got)
}

fn unavailable(r: Result<BoxedIo, DriverError>) -> String {
    match r {
        Err(DriverError::Unavailable(m)) => m,
        Err(e) => panic!("expected UNAVAILABLE, got {e:?}"),
        Ok(_) => panic!("expected UNAVAILABLE, got a stream"),
    }
}

#[tokio::test]
async fn loop_echoes_per_stream_and_close_ends_the_newest() {
    let driver = spec(&yaml::parse("url: loop://\n").unwrap(), "c")
        .unwrap()
        .build();
    let mut first = driver.connect("connect").await.unwrap();
    let mut io = driver.connect("connect").await.unwrap();
    io.write_all(b"login: ").await.unwrap();
    let mut buf = [0u8; 7];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"login: ");
    driver.call("close", vec![]).await.unwrap();
    assert!(read_to_end(&mut io).await.unwrap().is_empty());
    first.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still", "each loop stream is its own echo");
    assert_eq!(
        driver
            .call("set_dtr", vec![Json::Bool(true)])
            .await
            .unwrap(),
        Json::Null
    );
}

#[tokio::test]
async fn two_streams_see_everything_and_both_write() {
    let board = Board::new();
    let driver = serial(&board.path, "").build();
    let mut a = driver.connect("connect").await.unwrap();
    let mut b = driver.connect("connect").await.unwrap();
    a.write_all(b"from a\n").await.unwrap();
    b.write_all(b"from b\n").await.unwrap();
    board.expect(&[b"from a\n", b"from b\n"]).await;
    board.write_all(b"U-Boot 2024.01\r\nboard login: ").await;
    for io in [&mut a, &mut b] {
        let got = read_until(io, b"login: ").await;
        assert_eq!(got, b"U-Boot 2024.01\r\nboard login: ");
    }
}

#[tokio::test]
async fn a_single_slow_stream_paces_the_device_and_loses_nothing() {
    let board = std::sync::Arc::new(Board::new());
    let driver = serial(&board.path, "").build();
    let mut io = driver.connect("connect").await.unwrap();
    let data = pattern(4 << 20);
    let sender = {
        let (board, data) = (board.clone(), data.clone());
        tokio::spawn(async move { board.write_all(&data).await })
    };
    // Far more than the stream's queue arrives while nobody reads.
    tokio::time::sleep(STALL * 2).await;
    let mut got = vec![0u8; data.len()];
    timeout(T, io.read_exact(&mut got)).await.unwrap().unwrap();
    assert!(got == data, "the stream got every byte, in order");
    sender.await.unwrap();
}

#[tokio::test]
async fn a_stream_that_cannot_keep_up_is_dropped_and_the_others_go_on() {
    let board = std::sync::Arc::new(Board::new());
    let driver = serial(&board.path, "").build();
    let mut stuck = driver.connect("connect").await.unwrap();
    let mut reader = driver.connect("connect").await.unwrap();
    let data = pattern(3 << 20);
    let sender = {
        let (board, data) = (board.clone(), data.clone());
        tokio::spawn(async move { board.write_all(&data).await })
    };
    let start = Instant::now();
    let mut got = vec![0u8; data.len()];
    timeout(T, reader.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "the reading stream got every byte");
    assert!(
        start.elapsed() < STALL * 4,
        "held up for {:?}",
        start.elapsed()
    );
    sender.await.unwrap();
    let err = read_to_end(&mut stuck)
        .await
        .expect_err("the stuck stream ends with a reason");
    assert!(err.to_string().contains("could not keep up"), "{err}");
    assert!(err.to_string().contains(&board.path.display().to_string()));
}

#[tokio::test]
async fn absent_then_present_then_gone_then_back_behind_the_same_link() {
    let dir = tempfile::tempdir().unwrap();
    let by_id = dir.path().join("by-id");
    std::fs::create_dir(&by_id).unwrap();
    let link = by_id.join("usb-Test_Board_1234-if00-port0");
    let driver = serial(&link, "").build();

    let m = unavailable(driver.connect("connect").await);
    assert!(
        m.contains(&link.display().to_string()) && m.contains("not present"),
        "{m}"
    );

    let board = Board::new();
    std::os::unix::fs::symlink(&board.path, &link).unwrap();
    let mut io = driver.connect("connect").await.expect("appeared");
    board.write_all(b"v1 ready\n").await;
    read_until(&mut io, b"v1 ready\n").await;
    io.write_all(b"ping\n").await.unwrap();
    board.expect(&[b"ping\n"]).await;

    drop(board); // Unplugged: the stream ends cleanly (end of file, not an error).
    read_to_end(&mut io).await.expect("clean end");
    let m = unavailable(driver.connect("connect").await);
    assert!(m.contains(&link.display().to_string()), "{m}");
    assert!(
        io.write_all(b"x").await.is_err(),
        "writes to a vanished port fail"
    );

    std::fs::remove_file(&link).unwrap();
    let board = Board::new();
    std::os::unix::fs::symlink(&board.path, &link).unwrap();
    let mut io = driver.connect("connect").await.expect("back");
    io.write_all(b"again\n").await.unwrap();
    board.expect(&[b"again\n"]).await;
}

#[tokio::test]
async fn the_port_is_held_exclusively() {
    let board = Board::new();
    let first = serial(&board.path, "").build();
    let _io = first.connect("connect").await.unwrap();
    let second = serial(&board.path, "").build();
    let m = unavailable(second.connect("connect").await);
    assert!(m.contains("in use by another process"), "{m}");
    assert!(m.contains(&board.path.display().to_string()), "{m}");
}

#[tokio::test]
async fn close_ends_the_newest_stream_and_the_session_end_ends_all() {
    let board = Board::new();
    let spec = serial(&board.path, "");
    let driver = spec.build();
    let mut older = driver.connect("connect").await.unwrap();
    let mut newest = driver.connect("connect").await.unwrap();
    driver.call("close", vec![]).await.unwrap();
    assert!(read_to_end(&mut newest).await.unwrap().is_empty());
    board.write_all(b"still here\n").await;
    read_until(&mut older, b"still here\n").await;
    driver.close().await;
    read_to_end(&mut older).await.unwrap();
    // The port stays open for the next session, which builds a fresh driver from the spec.
    let next = spec.build();
    let mut again = next.connect("connect").await.unwrap();
    board.write_all(b"next\n").await;
    read_until(&mut again, b"next\n").await;
}

#[tokio::test]
async fn handed_over_bytes_reach_the_device_after_the_stream_ends() {
    let board = Board::new();
    let driver = serial(&board.path, "").build();
    let mut io = driver.connect("connect").await.unwrap();
    let data = pattern(200 * 1024);
    io.write_all(&data).await.unwrap();
    io.shutdown().await.unwrap();
    drop(io);
    assert!(board.read_exact(data.len()).await == data);
}

#[tokio::test]
async fn cps_paces_what_reaches_the_device() {
    let board = Board::new();
    let driver = serial(&board.path, "cps: 400\n").build();
    let mut io = driver.connect("connect").await.unwrap();
    let start = Instant::now();
    io.write_all(&[b'a'; 100]).await.unwrap();
    assert_eq!(board.read_exact(100).await, vec![b'a'; 100]);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(230) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn the_console_is_captured_with_nobody_attached() {
    let dir = tempfile::tempdir().unwrap();
    let board = Board::new();
    let log = dir.path().join("console.log");
    let spec = serial(
        &board.path,
        &format!(
            "log_file: {}\nlog_file_max_bytes: 4096\nlog_file_keep: 1\n",
            log.display()
        ),
    );
    // Started with the exporter: capture runs with no session at all.
    spec.start();
    let data = pattern(10_000);
    board.write_all(&data).await;
    let rotated = dir.path().join("console.log.1");
    let deadline = Instant::now() + T;
    loop {
        let now = std::fs::read(&log).unwrap_or_default();
        let old = std::fs::read(&rotated).unwrap_or_default();
        if old.len() + now.len() == 4096 + 10_000 % 4096 {
            assert_eq!(
                [old, now].concat(),
                data[data.len() - (4096 + 10_000 % 4096)..]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "capture incomplete: {} + {}",
            old.len(),
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!dir.path().join("console.log.2").exists());
}

#[tokio::test]
async fn set_dtr_acts_on_the_open_port() {
    let board = Board::new();
    let driver = serial(&board.path, "").build();
    let _io = driver.connect("connect").await.unwrap();
    // A pseudo-terminal has no modem lines: the kernel's answer proves the call reached the
    // open port (a second open would have been refused as busy).
    match driver.call("set_rts", vec![Json::Bool(false)]).await {
        Err(DriverError::Failed(m)) => {
            assert!(m.contains("no modem control lines"), "{m}");
            assert!(m.contains(&board.path.display().to_string()), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        driver.call("set_dtr", vec![Json::from("on")]).await,
        Err(DriverError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn socket_urls_are_shared_and_reconnect() {
    use tokio::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("socket://{}", listener.local_addr().unwrap());
    let spec = spec(&yaml::parse(&format!("url: '{url}'\n")).unwrap(), "c").unwrap();
    spec.start();
    let driver = spec.build();
    let (mut server, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
    let mut a = driver.connect("connect").await.unwrap();
    let mut b = driver.connect("connect").await.unwrap();
    server.write_all(b"ser2net banner\n").await.unwrap();
    read_until(&mut a, b"banner\n").await;
    read_until(&mut b, b"banner\n").await;
    b.write_all(b"typed\n").await.unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"typed\n");
    assert_eq!(
        driver
            .call("set_dtr", vec![Json::Bool(true)])
            .await
            .unwrap(),
        Json::Null
    );
    drop(server);
    read_to_end(&mut a).await.unwrap();
    let (mut server, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
    let mut c = driver.connect("connect").await.unwrap();
    server.write_all(b"again\n").await.unwrap();
    read_until(&mut c, b"again\n").await;
}

#[tokio::test]
async fn an_unreachable_socket_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let driver = spec(
        &yaml::parse(&format!("url: 'socket://{addr}'\n")).unwrap(),
        "c",
    )
    .unwrap()
    .build();
    let m = unavailable(driver.connect("connect").await);
    assert!(
        m.contains(&format!("socket://{addr}")) && m.contains("ser2net"),
        "{m}"
    );
}

#[tokio::test]
async fn the_port_is_raw_8n1_at_the_baudrate_and_hupcl_follows_the_config() {
    use rustix::termios::{tcgetattr, tcsetattr, ControlModes, InputModes, OptionalActions};
    // Pseudo-terminals start without HUPCL; USB serial ports start with it. Set it as theirs.
    let with_hupcl = |board: &Board| {
        let mut t = tcgetattr(&board.slave).unwrap();
        t.control_modes.insert(ControlModes::HUPCL);
        tcsetattr(&board.slave, OptionalActions::Now, &t).unwrap();
    };
    let board = Board::new();
    with_hupcl(&board);
    let driver = serial(&board.path, "baudrate: 9600\n").build();
    let _io = driver.connect("connect").await.unwrap();
    let t = tcgetattr(&board.slave).unwrap();
    assert_eq!(t.output_speed(), 9600);
    assert!(t
        .control_modes
        .contains(ControlModes::CS8 | ControlModes::CREAD | ControlModes::CLOCAL));
    assert!(!t
        .control_modes
        .intersects(ControlModes::PARENB | ControlModes::CSTOPB | ControlModes::CRTSCTS));
    assert!(!t
        .input_modes
        .intersects(InputModes::IXON | InputModes::IXOFF | InputModes::ICRNL));
    assert!(
        t.control_modes.contains(ControlModes::HUPCL),
        "left alone by default"
    );
    drop((_io, driver));

    let board = Board::new();
    with_hupcl(&board);
    let driver = serial(&board.path, "disable_hupcl: true\n").build();
    let _io = driver.connect("connect").await.unwrap();
    let t = tcgetattr(&board.slave).unwrap();
    assert!(
        !t.control_modes.contains(ControlModes::HUPCL),
        "disable_hupcl clears it"
    );
    assert_eq!(t.output_speed(), 115_200);
}

#[tokio::test]
async fn check_present_false_opens_at_the_first_connect_and_keeps_it_open() {
    use rustix::fs::{flock, FlockOperation};
    let board = Board::new();
    let spec = serial(&board.path, "check_present: false\n");
    let driver = spec.build();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nobody holds the lock: the device was not opened at start.
    flock(&board.slave, FlockOperation::NonBlockingLockExclusive).expect("not opened yet");
    flock(&board.slave, FlockOperation::Unlock).unwrap();
    let io = driver.connect("connect").await.unwrap();
    drop(io);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        flock(&board.slave, FlockOperation::NonBlockingLockExclusive).is_err(),
        "opened by the first connect, and still held with no stream open"
    );
    // An eager (default) port is held from the start, with no client at all.
    let board = Board::new();
    let eager = serial(&board.path, "");
    eager.start();
    let deadline = Instant::now() + T;
    while flock(&board.slave, FlockOperation::NonBlockingLockExclusive).is_ok() {
        flock(&board.slave, FlockOperation::Unlock).unwrap();
        assert!(Instant::now() < deadline, "never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_path_that_is_not_a_terminal_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-tty");
    std::fs::write(&file, b"").unwrap();
    let driver = serial(&file, "").build();
    let m = unavailable(driver.connect("connect").await);
    assert!(m.contains("not a terminal device"), "{m}");
}

/// The device vanishes while a stream is writing in bulk (the board stopped reading, so the
/// terminal's buffer and the write queue are full and the writer is parked): the write fails
/// with an error that names the device and counts what was lost, the read side fails the same
/// way instead of ending cleanly, and the port works again once the device is back.
#[tokio::test]
async fn a_device_removed_during_a_write_fails_the_writer_and_counts_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-Test_Board_1234-if00-port0");
    let board = Board::new();
    std::os::unix::fs::symlink(&board.path, &link).unwrap();
    let driver = serial(&link, "").build();
    let io = driver.connect("connect").await.expect("present");
    let (mut reader, mut writer) = tokio::io::split(io);

    // Write until the writer parks: nothing is read on the board's side.
    let (accepted_tx, mut accepted_rx) = tokio::sync::watch::channel(0usize);
    let writing = tokio::spawn(async move {
        let chunk = vec![0x55u8; 16 * 1024];
        let mut accepted = 0usize;
        loop {
            match writer.write(&chunk).await {
                Ok(n) => {
                    accepted += n;
                    let _ = accepted_tx.send(accepted);
                }
                Err(e) => return (accepted, e),
            }
        }
    });
    // Parked: the count stops moving once the queue and the terminal's buffer are full.
    let mut last = 0;
    let deadline = Instant::now() + T;
    loop {
        assert!(
            Instant::now() < deadline,
            "the writer never parked ({last} bytes accepted)"
        );
        match timeout(Duration::from_millis(500), accepted_rx.changed()).await {
            Ok(_) => last = *accepted_rx.borrow(),
            Err(_) if last >= WRITE_BUDGET => break,
            Err(_) => {}
        }
    }

    drop(board); // Unplugged in the middle of it.
    let (accepted, error) = timeout(T, writing)
        .await
        .expect("the parked write ended")
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains(&link.display().to_string()) && message.contains("during a write"),
        "{message}"
    );
    let lost: usize = message
        .split(": ")
        .find_map(|part| part.strip_suffix(" bytes this stream sent were not written to it; connect again once it is back and send them again").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no count in {message:?}"));
    // What was accepted is either lost (and counted) or was taken by the kernel's buffer of the
    // terminal before it vanished; the queue alone held WRITE_BUDGET.
    assert!(
        lost >= WRITE_BUDGET - WRITE_CHUNK && lost <= accepted,
        "lost {lost} of {accepted}"
    );
    eprintln!(
        "accepted {accepted} bytes before the removal; {lost} were counted as lost, {} had reached the terminal",
        accepted - lost
    );
    let mut rest = Vec::new();
    let read = timeout(T, reader.read_to_end(&mut rest))
        .await
        .expect("the read side ended");
    let read_error = read.expect_err("a stream that lost writes does not end cleanly");
    assert_eq!(read_error.to_string(), message);

    // Back behind the same link: a fresh stream works, and a stream that never wrote ends
    // cleanly at the next removal.
    std::fs::remove_file(&link).unwrap();
    let board = Board::new();
    std::os::unix::fs::symlink(&board.path, &link).unwrap();
    let mut io = driver.connect("connect").await.expect("back");
    io.write_all(b"again\n").await.unwrap();
    board.expect(&[b"again\n"]).await;
    board.write_all(b"pong\n").await;
    read_until(&mut io, b"pong\n").await;
    let mut quiet = driver.connect("connect").await.expect("back");
    drop(board);
    read_to_end(&mut quiet)
        .await
        .expect("nothing lost, a clean end");
}

#[test]
fn presence_is_the_device_path_existing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttyUSB-test");
    let of = |url: &str| spec(&yaml::parse(&format!("url: '{url}'\n")).unwrap(), "c").unwrap();
    let device = of(&path.display().to_string());
    assert_eq!(device.device_present(), Some(false));
    std::fs::write(&path, b"").unwrap();
    assert_eq!(
        device.device_present(),
        Some(true),
        "looked up again at every call"
    );
    assert_eq!(of("loop://").device_present(), None, "a loop has no device");
}
