//! Console capture (`log_file`, our extension): everything the device prints is appended to a
//! file, whether or not a client is attached, so a lab keeps the boot log of a board that
//! crashed while nobody watched.
//!
//! The file never grows past `log_file_max_bytes`: before it would, it is renamed to `.1` (the
//! previous `.1` to `.2`, and so on), keeping `log_file_keep` old files, and a new one is
//! started. Writes happen on a thread of their own, fed through a bounded queue, so a slow disk
//! never stalls the console; bytes the queue cannot take are counted and reported instead.
//! A file that cannot be opened or written (missing directory, permissions, a full disk) is
//! reported once and retried, the console goes on without it, and the gap is marked in the file
//! once writing works again (see [`RotatingFile`]).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

/// Opens the capture file for appending and says how long it already is. Tests swap it for a
/// writer that fails the way a full disk does.
pub type Opener = Box<dyn FnMut(&Path) -> io::Result<(Box<dyn Write + Send>, u64)> + Send>;

fn open_file(path: &Path) -> io::Result<(Box<dyn Write + Send>, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((Box::new(file), size))
}

/// The capture file and its rotation.
///
/// A file that cannot be written (disk full, file-size limit, missing directory) costs the
/// log, never the console: the failed bytes are counted and dropped, the problem is logged once
/// (not per write, and not again at each retry that meets the same error), and the file is
/// reopened every [`RETRY`]. The first write that succeeds again first puts a marker line into
/// the file saying how many bytes are missing there and why, so a reader of the log sees the
/// gap instead of output that silently jumps.
pub struct RotatingFile {
    config: Capture,
    device: String,
    opener: Opener,
    retry: Duration,
    file: Option<Box<dyn Write + Send>>,
    size: u64,
    /// Set while the file cannot be written: when it last failed, and why.
    failed: Option<(Instant, String)>,
    /// Bytes dropped since the file last took a write.
    lost: u64,
    /// Warnings logged about failed writes (one per distinct error in a failure spell).
    pub warnings: u64,
}

impl RotatingFile {
    pub fn new(config: Capture, device: String) -> Self {
        Self::with_opener(config, device, Box::new(open_file), RETRY)
    }

    pub fn with_opener(config: Capture, device: String, opener: Opener, retry: Duration) -> Self {
        Self {
            config,
            device,
            opener,
            retry,
            file: None,
            size: 0,
            failed: None,
            lost: 0,
            warnings: 0,
        }
    }

    /// Appends `data`, rotating as needed; drops (and counts) what the file cannot take.
    pub fn write(&mut self, data: &[u8]) {
        if self.failed.is_some() && !self.recover() {
            self.lost += data.len() as u64;
            return;
        }
        if let Err((e, unwritten)) = self.append(data) {
            self.lost += unwritten as u64;
            self.fail(e);
        }
    }

    /// Appends with rotation; on failure, returns the error and how many bytes of `data` did
    /// not reach the file.
    fn append(&mut self, mut data: &[u8]) -> Result<(), (io::Error, usize)> {
        while !data.is_empty() {
            if self.file.is_none() {
                self.open().map_err(|e| (e, data.len()))?;
            }
            if self.size >= self.config.max_bytes {
                self.rotate().map_err(|e| (e, data.len()))?;
                continue;
            }
            let room = usize::try_from(self.config.max_bytes - self.size).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            let Some(file) = self.file.as_mut() else {
                return Err((io::Error::other("the capture file is not open"), data.len()));
            };
            // Written piecewise rather than with write_all, so a short write before the error
            // (the last blocks of a filling disk) is counted as written, not as lost.
            match file.write(&data[..n]) {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), data.len())),
                Ok(written) => {
                    self.size += written as u64;
                    data = &data[written..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((e, data.len())),
            }
        }
        Ok(())
    }

    /// After a failure, once [`RETRY`] has passed: reopens the file and writes the gap marker.
    /// Says whether the file takes writes again.
    fn recover(&mut self) -> bool {
        match &self.failed {
            Some((at, _)) if at.elapsed() < self.retry => return false,
            _ => {}
        }
        self.file = None;
        let why = self
            .failed
            .as_ref()
            .map(|(_, m)| m.clone())
            .unwrap_or_default();
        let marker = format!(
            "\n[jmp-exporter: {} bytes of console output are missing here; the log could not be written: {why}]\n",
            self.lost
        );
        match self.append(marker.as_bytes()) {
            Ok(()) => {
                tracing::info!(
                    device = %self.device,
                    file = %self.config.path.display(),
                    lost = self.lost,
                    "console capture resumed; the log marks where bytes are missing"
                );
                self.failed = None;
                self.lost = 0;
                true
            }
            Err((e, _)) => {
                self.fail(e);
                false
            }
        }
    }

    fn open(&mut self) -> io::Result<()> {
        let (file, size) = (self.opener)(&self.config.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
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
        self.open()
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
            self.warnings += 1;
            tracing::warn!(
                device = %self.device,
                file = %self.config.path.display(),
                error = %message,
                "cannot write the console log; the console and its streams go on without it, the bytes it misses are counted, and the file is retried every {:?}",
                self.retry
            );
        }
        self.failed = Some((Instant::now(), message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

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

    /// A disk with `free` bytes left: short writes as it fills, then ENOSPC, like a real one.
    struct FillingDisk {
        file: File,
        free: Arc<AtomicU64>,
        writes: Arc<AtomicU64>,
    }

    impl Write for FillingDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            let free = self.free.load(Ordering::SeqCst);
            if free == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(usize::try_from(free).unwrap_or(usize::MAX));
            let n = self.file.write(&buf[..n])?;
            self.free.fetch_sub(n as u64, Ordering::SeqCst);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_costs_only_the_log_is_reported_once_and_the_gap_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let free = Arc::new(AtomicU64::new(1000));
        let writes = Arc::new(AtomicU64::new(0));
        let opener: Opener = {
            let (free, writes) = (free.clone(), writes.clone());
            Box::new(move |p: &Path| {
                let file = OpenOptions::new().create(true).append(true).open(p)?;
                let size = file.metadata()?.len();
                let disk = FillingDisk {
                    file,
                    free: free.clone(),
                    writes: writes.clone(),
                };
                Ok((Box::new(disk) as Box<dyn Write + Send>, size))
            })
        };
        let retry = Duration::from_millis(50);
        let capture = Capture {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        };
        let mut log = RotatingFile::with_opener(capture, "/dev/ttyTEST".into(), opener, retry);

        // 1000 bytes fit; the disk fills in the middle of the next chunk (a short write), and
        // everything after that is dropped for as long as the disk stays full.
        log.write(&[b'a'; 900]);
        log.write(&[b'b'; 300]);
        for _ in 0..200 {
            log.write(&[b'c'; 100]);
        }
        assert_eq!(
            log.warnings, 1,
            "the full disk is reported once, not per write"
        );
        // Retries while still full meet the same error and stay quiet.
        std::thread::sleep(retry * 2);
        log.write(&[b'd'; 10]);
        std::thread::sleep(retry * 2);
        log.write(&[b'd'; 10]);
        assert_eq!(
            log.warnings, 1,
            "retries that fail the same way are not reported again"
        );
        let attempts = writes.load(Ordering::SeqCst);
        assert!(
            attempts < 10,
            "the disk is not hammered at every chunk: {attempts} writes"
        );

        // Space returns: after the retry interval the next chunk lands, behind a marker that
        // counts exactly what is missing (200 of the b's, 200 * 100 c's, 2 * 10 d's).
        free.store(u64::MAX / 2, Ordering::SeqCst);
        std::thread::sleep(retry * 2);
        log.write(b"back again");
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        let missing = 200 + 200 * 100 + 2 * 10;
        let expected = format!(
            "{}{}\n[jmp-exporter: {missing} bytes of console output are missing here; the log could not be written: {}]\nback again",
            "a".repeat(900),
            "b".repeat(100),
            io::Error::from_raw_os_error(28)
        );
        assert_eq!(text, expected);
        assert!(log.failed.is_none() && log.lost == 0);
        assert_eq!(log.warnings, 1);
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
