//! Console capture (`log_file`, our extension): everything the device prints is appended to a
//! file, whether or not a client is attached, so a lab keeps the boot log of a board that
//! crashed while nobody watched.
//!
//! The file never grows past `log_file_max_bytes`: before it would, it is renamed to `.1` (the
//! previous `.1` to `.2`, and so on), keeping `log_file_keep` old files, and a new one is
//! started. Writes happen on a thread of their own, fed through a bounded queue, so a slow disk
//! never stalls the console; bytes the queue cannot take are counted and reported instead.
//! A file that cannot be opened (missing directory, permissions) is reported and retried, and
//! the console goes on without it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::config::Capture;

/// Chunks waiting for the disk before the console stops capturing.
const QUEUE: usize = 256;
/// How long a file that could not be opened is left alone before the next try.
const RETRY: Duration = Duration::from_secs(5);

/// Starts the capture thread; it ends when the returned sender (and its clones) are dropped.
pub fn start(config: Capture, device: String) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let spawned = std::thread::Builder::new()
        .name("serial-capture".into())
        .spawn(move || {
            let mut file = RotatingFile::new(config, device);
            while let Some(chunk) = rx.blocking_recv() {
                file.write(&chunk);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the console capture thread; capture is off");
    }
    tx
}

/// The capture file and its rotation.
pub struct RotatingFile {
    config: Capture,
    device: String,
    file: Option<File>,
    size: u64,
    /// Set while the file cannot be written; cleared by the next success.
    failed: Option<(Instant, String)>,
}

impl RotatingFile {
    pub fn new(config: Capture, device: String) -> Self {
        Self {
            config,
            device,
            file: None,
            size: 0,
            failed: None,
        }
    }

    /// Appends `data`, rotating as needed; drops it while the file cannot be written.
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.file.is_none() && !self.open() {
                return;
            }
            if self.size >= self.config.max_bytes {
                if let Err(e) = self.rotate() {
                    self.fail(e);
                    return;
                }
                continue;
            }
            let room = usize::try_from(self.config.max_bytes - self.size).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            let Some(file) = self.file.as_mut() else {
                return;
            };
            match file.write_all(&data[..n]) {
                Ok(()) => {
                    self.size += n as u64;
                    data = &data[n..];
                }
                Err(e) => {
                    self.fail(e);
                    return;
                }
            }
        }
    }

    fn open(&mut self) -> bool {
        if let Some((at, _)) = &self.failed {
            if at.elapsed() < RETRY {
                return false;
            }
        }
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.config.path)
            .and_then(|f| f.metadata().map(|m| (f, m.len())));
        match opened {
            Ok((file, size)) => {
                if self.failed.take().is_some() {
                    tracing::info!(device = %self.device, file = %self.config.path.display(), "console capture resumed");
                }
                self.file = Some(file);
                self.size = size;
                true
            }
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.config.keep == 0 {
            File::create(&self.config.path)?;
        } else {
            for i in (1..self.config.keep).rev() {
                match std::fs::rename(self.numbered(i), self.numbered(i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.config.path, self.numbered(1))?;
        }
        self.size = 0;
        if self.open() {
            Ok(())
        } else {
            Err(io::Error::other("cannot reopen after rotation"))
        }
    }

    /// `log_file.N`.
    pub fn numbered(&self, n: u32) -> PathBuf {
        let mut name = OsString::from(self.config.path.as_os_str());
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn fail(&mut self, e: io::Error) {
        self.file = None;
        let message = e.to_string();
        let repeated = matches!(&self.failed, Some((_, m)) if *m == message);
        if !repeated {
            tracing::warn!(
                device = %self.device,
                file = %self.config.path.display(),
                error = %message,
                "cannot write the console log; the console goes on without it and the file is retried every {RETRY:?}"
            );
        }
        self.failed = Some((Instant::now(), message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(dir: &tempfile::TempDir, max_bytes: u64, keep: u32) -> RotatingFile {
        RotatingFile::new(
            Capture {
                path: dir.path().join("console.log"),
                max_bytes,
                keep,
            },
            "/dev/ttyTEST".into(),
        )
    }

    #[test]
    fn rotates_at_the_size_bound_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = capture(&dir, 1000, 2);
        let data: Vec<u8> = (0..4500u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(333) {
            file.write(chunk);
        }
        let read = |p: PathBuf| std::fs::read(p).unwrap();
        let (now, one, two) = (
            read(dir.path().join("console.log")),
            read(file.numbered(1)),
            read(file.numbered(2)),
        );
        assert!(!file.numbered(3).exists(), "only two old files are kept");
        assert_eq!((two.len(), one.len(), now.len()), (1000, 1000, 500));
        let kept = [two, one, now].concat();
        assert_eq!(
            kept,
            data[data.len() - 2500..],
            "the newest bytes, in order"
        );
    }

    #[test]
    fn appends_to_an_existing_file_and_keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("console.log"), vec![b'x'; 900]).unwrap();
        let mut file = capture(&dir, 1000, 0);
        file.write(&[b'y'; 50]);
        assert_eq!(
            std::fs::read(dir.path().join("console.log")).unwrap().len(),
            950
        );
        file.write(&[b'z'; 100]);
        let now = std::fs::read(dir.path().join("console.log")).unwrap();
        assert_eq!(now, vec![b'z'; 50]);
        assert!(!file.numbered(1).exists());
    }

    #[test]
    fn a_missing_directory_is_survived() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = RotatingFile::new(
            Capture {
                path: dir.path().join("missing/console.log"),
                max_bytes: 1000,
                keep: 1,
            },
            "/dev/ttyTEST".into(),
        );
        file.write(b"lost");
        file.write(b"lost too");
        assert!(file.failed.is_some());
    }
}
