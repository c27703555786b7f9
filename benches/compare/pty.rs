//! A serial peer: the master side of a pseudo-terminal that sends back whatever it reads, so
//! that serial is measured through a real terminal rather than `loop://`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::load::echo;
use crate::targets::Target;

pub(crate) struct PtyEcho {
    /// The terminal device the exporter opens.
    path: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PtyEcho {
    fn start() -> PtyEcho {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let path = ptsname(&master, Vec::new())
            .expect("ptsname")
            .into_string()
            .expect("utf-8 terminal name");
        // Held open here so the master never reads EIO while the exporter has the port closed
        // (between streams, or before its driver opens it).
        let terminal = rustix::fs::open(
            path.as_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal side");
        rustix::fs::fcntl_setfl(&master, OFlags::NONBLOCK).expect("non-blocking master");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _terminal = terminal;
                let tick = Timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000_000,
                };
                let wait = |flags| {
                    let mut fds = [PollFd::new(&master, flags)];
                    matches!(poll(&mut fds, Some(&tick)), Ok(n) if n > 0)
                };
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if !wait(PollFlags::IN) {
                        continue;
                    }
                    let n = match rustix::io::read(&master, &mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
                        Err(_) => return,
                    };
                    let mut data = &buf[..n];
                    while !data.is_empty() && !stop.load(Ordering::Relaxed) {
                        match rustix::io::write(&master, data) {
                            Ok(w) => data = &data[w..],
                            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                                wait(PollFlags::OUT);
                            }
                            Err(_) => return,
                        }
                    }
                }
            })
        };
        PtyEcho {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PtyEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An export of one PySerial port on a pseudo-terminal.
fn pty_export(pty: &PtyEcho) -> String {
    format!(
        "export:\n  serial:\n    type: jumpstarter_driver_pyserial.driver.PySerial\n    config:\n      url: '{}'\n",
        pty.path
    )
}

/// Serial through a pseudo-terminal echo peer: `make` starts the exporter on the export it is
/// given.
pub(crate) async fn serial_pty<F, Fut>(make: F) -> Value
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Target>,
{
    let pty = PtyEcho::start();
    let mut target = make(pty_export(&pty)).await;
    target._pty = Some(pty);
    echo(&target, "serial", 4096).await
}
