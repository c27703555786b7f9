//! Pseudo-terminals standing in for serial devices: the exporter opens the terminal side
//! (through a by-id-style symlink), and a thread on the master side plays the board.
//!
//! Pulling the plug is closing the master: the exporter's port then fails as a vanished USB
//! adapter's does. The board never speaks first except when told to, so nothing it prints is
//! read with the terminal's cooked start-up settings.
//!
//! The board's protocol, one line per command (`\n` ends a line, `\r` is ignored):
//! - a login flow: any line at `board login: ` asks for `root`, then `Password: ` wants
//!   `secret`, then a shell prompt `root@board:~# ` answering `uname -a` and `echo ...`;
//! - test commands starting with `!`: `!hello` (prints `hello from LABEL`), `!send N` (prints
//!   N bytes of [`pattern`]), `!recv N` (takes the next N raw bytes, checks them against
//!   [`pattern`], prints `!got N ok` or `!got N bad`), `!lines N` (prints N numbered lines, then
//!   `!end`).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// 8-byte little-endian counters: any lost, repeated or reordered chunk shows.
pub fn pattern(n: usize) -> Vec<u8> {
    pattern_range(0, n)
}

/// Bytes `start..start + len` of [`pattern`] (written plainly: tests run unoptimised, and the
/// board checks tens of MiB with it).
pub fn pattern_range(start: usize, len: usize) -> Vec<u8> {
    let (first, last) = (start / 8, (start + len).div_ceil(8));
    let mut bytes = Vec::with_capacity((last - first) * 8);
    for i in first..last {
        bytes.extend_from_slice(&(i as u64).to_le_bytes());
    }
    bytes.drain(..start % 8);
    bytes.truncate(len);
    bytes
}

/// A running fake board behind a fresh pseudo-terminal.
pub struct Board {
    /// The terminal device the exporter opens.
    pub path: PathBuf,
    /// Every byte the board received.
    pub seen: Arc<Mutex<Vec<u8>>>,
    /// What the board answered (answers of 64 KiB and more are left out).
    pub said: Arc<Mutex<Vec<u8>>>,
    /// Text for the board to print unprompted.
    print: std::sync::mpsc::Sender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Board {
    /// A new pseudo-terminal with a board named `label` on its master side.
    pub fn start(label: &str) -> Board {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let path = PathBuf::from(name.to_str().expect("utf-8 pts name"));
        // Held by the board so the master never reads EIO while the exporter reopens.
        let slave = rustix::fs::open(
            &path,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal side");
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK).expect("non-blocking master");
        let (stop, seen, said) = (
            Arc::new(AtomicBool::new(false)),
            Arc::default(),
            Arc::default(),
        );
        let (print, printed) = std::sync::mpsc::channel();
        let thread = {
            let io = Io {
                stop: Arc::clone(&stop),
                seen: Arc::clone(&seen),
                said: Arc::clone(&said),
                printed,
            };
            let mut shell = Shell::new(label);
            let master = File::from(master);
            std::thread::spawn(move || {
                let _slave = File::from(slave);
                serve(master, &io, &mut shell);
            })
        };
        Board {
            path,
            seen,
            said,
            print,
            stop,
            thread: Some(thread),
        }
    }

    /// Pulls the plug: the master (and the board's own terminal handle) close.
    pub fn unplug(mut self) {
        self.stop_thread();
    }

    /// Makes the board print `text` unprompted (as a booting board does).
    pub fn print(&self, text: &[u8]) {
        self.print
            .send(text.to_vec())
            .expect("board thread is gone");
    }

    /// What the board answered, as text.
    pub fn said_text(&self) -> String {
        String::from_utf8_lossy(&self.said.lock().unwrap()).into_owned()
    }

    /// Waits until the board has answered `needle`.
    pub fn wait_said(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.said_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// What the board received, as text.
    pub fn seen_text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Points `link` at `target`, replacing what it pointed at (as udev moves a by-id link).
pub fn relink(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

/// The board thread's links to the test.
struct Io {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<u8>>>,
    said: Arc<Mutex<Vec<u8>>>,
    printed: std::sync::mpsc::Receiver<Vec<u8>>,
}

fn serve(mut master: File, io: &Io, shell: &mut Shell) {
    let stop = &*io.stop;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        while let Ok(text) = io.printed.try_recv() {
            if !write_all(&mut master, &text, stop) {
                return;
            }
        }
        if !wait(&master, PollFlags::IN) {
            continue;
        }
        let n = match master.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        io.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        let out = shell.input(&buf[..n]);
        if out.len() < 64 * 1024 {
            io.said.lock().unwrap().extend_from_slice(&out);
        }
        if !write_all(&mut master, &out, stop) {
            return;
        }
    }
}

/// Polls for `flags` for a short while; true when ready.
fn wait(fd: &impl AsFd, flags: PollFlags) -> bool {
    let mut fds = [PollFd::new(fd, flags)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
}

fn write_all(master: &mut File, mut data: &[u8], stop: &AtomicBool) -> bool {
    while !data.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match master.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait(master, PollFlags::OUT);
            }
            Err(_) => return false,
        }
    }
    true
}

/// The board's side of the conversation.
struct Shell {
    label: String,
    line: Vec<u8>,
    state: Login,
    /// Raw bytes still expected by `!recv`, with the offset reached.
    receiving: Option<(usize, usize, bool)>,
}

#[derive(PartialEq)]
enum Login {
    User,
    Password,
    Shell,
}

const PROMPT: &[u8] = b"root@board:~# ";

impl Shell {
    fn new(label: &str) -> Self {
        Shell {
            label: label.to_string(),
            line: Vec::new(),
            state: Login::User,
            receiving: None,
        }
    }

    fn input(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if let Some((total, done, ok)) = self.receiving.as_mut() {
                let take = (*total - *done).min(bytes.len());
                *ok &= bytes[..take] == pattern_range(*done, take)[..];
                *done += take;
                bytes = &bytes[take..];
                if done == total {
                    let verdict = if *ok { "ok" } else { "bad" };
                    out.extend_from_slice(format!("!got {total} {verdict}\n").as_bytes());
                    self.receiving = None;
                }
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            match b {
                b'\r' => {}
                b'\n' => {
                    let line =
                        String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                    out.extend(self.line_in(line.trim()));
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn line_in(&mut self, line: &str) -> Vec<u8> {
        if let Some(command) = line.strip_prefix('!') {
            let mut words = command.split_whitespace();
            let (verb, n) = (
                words.next().unwrap_or(""),
                words.next().and_then(|w| w.parse().ok()),
            );
            return match (verb, n) {
                ("hello", _) => format!("hello from {}\n", self.label).into_bytes(),
                ("send", Some(n)) => pattern(n),
                ("recv", Some(n)) => {
                    self.receiving = Some((n, 0, true));
                    Vec::new()
                }
                ("lines", Some(n)) => {
                    let mut out: Vec<u8> = (0..n)
                        .flat_map(|i| format!("line {i:04}\n").into_bytes())
                        .collect();
                    out.extend_from_slice(b"!end\n");
                    out
                }
                _ => Vec::new(),
            };
        }
        match self.state {
            Login::User if line == "root" => {
                self.state = Login::Password;
                b"Password: ".to_vec()
            }
            Login::User => b"\r\nboard login: ".to_vec(),
            Login::Password if line == "secret" => {
                self.state = Login::Shell;
                [b"\r\nWelcome to TestBoard\r\n".as_slice(), PROMPT].concat()
            }
            Login::Password => {
                self.state = Login::User;
                b"\r\nLogin incorrect\r\nboard login: ".to_vec()
            }
            Login::Shell => {
                let reply = if line == "uname -a" {
                    "Linux board 6.6.0 #1 SMP aarch64 GNU/Linux\r\n".to_string()
                } else if let Some(text) = line.strip_prefix("echo ") {
                    format!("{text}\r\n")
                } else if line.is_empty() {
                    String::new()
                } else {
                    format!("-sh: {line}: not found\r\n")
                };
                [reply.as_bytes(), PROMPT].concat()
            }
        }
    }
}
