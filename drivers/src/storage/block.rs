//! The block device a storage mux exposes to the host: refusing a target that would destroy
//! the host's own data (a mounted filesystem, swap, a device held by device-mapper/md/LVM, the
//! disk under `/`), opening it for writing as the card appears, and syncing it.
//!
//! Devices are matched by number, never by name: `/dev/disk/by-*` links, `/dev/mapper` names
//! and renamed nodes all lead to the same `major:minor`, which is what mountinfo and sysfs use.
//!
//! A target that does not exist yet passes [`check_target`]: a mux switched to the host only
//! shows its card a moment later. The caller checks again with [`check_opened`] on the file
//! [`open_for_write`] returns, before writing its first byte; checking the open descriptor
//! rather than the path again also covers a link that changed target in between.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use tokio::time::Instant;

use crate::DriverError;

/// Where the kernel's views are; tests point these at a fake tree.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
        }
    }
}

/// How long to wait between attempts while the card is not there yet, or is failing.
const RETRY: Duration = Duration::from_secs(1);

/// Bounds the walk from `/` down through stacked device-mapper/md devices, against a loop in
/// a broken (or fake) sysfs.
const MAX_DEPTH: usize = 16;

/// A `major:minor` device number.
type DevNo = (u32, u32);

/// Refuses `path` when writing it could destroy the host's data; a regular file passes.
///
/// A path that does not exist (or a link whose target is gone) passes too: the card may
/// appear later. Call [`check_opened`] on the opened file before writing.
pub fn check_target(path: &Path, roots: &Roots) -> Result<(), DriverError> {
    match rustix::fs::stat(path) {
        Ok(st) => check_stat(&st, path, roots),
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(DriverError::Failed(format!(
            "cannot check {} before writing it: {}; fix the path or its permissions",
            path.display(),
            io::Error::from(e)
        ))),
    }
}

/// [`check_target`] for an open file, by its descriptor: the check to make once
/// [`open_for_write`] has found the card, whatever `path` points at by now.
pub fn check_opened(file: impl AsFd, path: &Path, roots: &Roots) -> Result<(), DriverError> {
    let st = rustix::fs::fstat(file).map_err(|e| {
        DriverError::Failed(format!(
            "cannot check {} before writing it: {}",
            path.display(),
            io::Error::from(e)
        ))
    })?;
    check_stat(&st, path, roots)
}

fn check_stat(st: &Stat, path: &Path, roots: &Roots) -> Result<(), DriverError> {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(()),
        FileType::BlockDevice => {
            let rdev = st.st_rdev;
            check_block(
                (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
                path,
                roots,
            )
        }
        other => Err(not_storage(path, other)),
    }
}

fn not_storage(path: &Path, kind: FileType) -> DriverError {
    let kind = match kind {
        FileType::Directory => "a directory",
        FileType::CharacterDevice => "a character device",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        _ => "not a file",
    };
    DriverError::InvalidArgument(format!(
        "{} is {kind}, neither a block device nor a regular file; configure the storage mux's block device (e.g. a /dev/disk/by-id/usb-... link)",
        path.display()
    ))
}

/// The checks on block device `dev`, reading only under `roots`; `path` is what the caller
/// named, for the messages.
fn check_block(dev: DevNo, path: &Path, roots: &Roots) -> Result<(), DriverError> {
    let shown = path.display();
    let refuse = |found: String| format!("refusing to write {shown}: {found}");

    let target = node(roots, dev).map_err(|e| {
        DriverError::Failed(format!(
            "cannot check {shown} (block device {}:{}) before writing it: {e}; is sysfs mounted at {}?",
            dev.0,
            dev.1,
            roots.sys.display()
        ))
    })?;
    let disk = whole_disk(roots, &target).map_err(|e| {
        DriverError::Failed(format!(
            "cannot check {shown} (/dev/{}) before writing it: {e}",
            target.name
        ))
    })?;
    let cannot = |e: io::Error| {
        DriverError::Failed(format!(
            "cannot check {shown} (/dev/{}) before writing it: {e}",
            disk.name
        ))
    };
    // A partition's siblings count: a flash rewrites the whole card's partition table.
    let mut family = vec![disk.clone()];
    family.extend(partitions(&disk).map_err(cannot)?);

    let mounts = mounts(roots).map_err(cannot)?;

    // First, being the wrong disk altogether says the most about the configuration.
    if root_disks(roots, &mounts).contains(&disk.dev) {
        return Err(DriverError::InvalidArgument(refuse(format!(
            "/dev/{} holds the root filesystem; pick another device (the card's, e.g. a /dev/disk/by-id/usb-... link)",
            disk.name
        ))));
    }
    for m in &mounts {
        if let Some(n) = family.iter().find(|n| n.dev == m.dev) {
            return Err(DriverError::Unavailable(refuse(format!(
                "/dev/{} is mounted on {}; unmount it (umount {}) or pick another device",
                n.name, m.point, m.point
            ))));
        }
    }
    for swap in swaps(roots).map_err(cannot)? {
        if let Some(n) = family
            .iter()
            .find(|n| swap.dev == Some(n.dev) || swap.name == n.name)
        {
            return Err(DriverError::Unavailable(refuse(format!(
                "/dev/{} is in use as swap; turn it off (swapoff {}) or pick another device",
                n.name, swap.path
            ))));
        }
    }
    for n in &family {
        let holders = list(&n.dir.join("holders")).map_err(cannot)?;
        if !holders.is_empty() {
            return Err(DriverError::Unavailable(refuse(format!(
                "/dev/{} is held by {} (device-mapper, LVM, md or LUKS on top of it); take that down or pick another device",
                n.name,
                holders.join(", ")
            ))));
        }
    }
    Ok(())
}

/// A block device's node in sysfs.
#[derive(Clone, Debug)]
struct Node {
    /// The kernel's name, which is also the one under /dev.
    name: String,
    dev: DevNo,
    dir: PathBuf,
}

/// The sysfs node of device `dev`, through `/sys/dev/block/MAJ:MIN`.
fn node(roots: &Roots, dev: DevNo) -> io::Result<Node> {
    let link = roots
        .sys
        .join("dev/block")
        .join(format!("{}:{}", dev.0, dev.1));
    let dir = std::fs::canonicalize(&link)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", link.display())))?;
    node_at(dir)
}

fn node_at(dir: PathBuf) -> io::Result<Node> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dev = read_dev(&dir)?;
    Ok(Node { name, dev, dir })
}

fn read_dev(dir: &Path) -> io::Result<DevNo> {
    let file = dir.join("dev");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    parse_dev(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a device number: {text:?}", file.display()),
        )
    })
}

fn parse_dev(text: &str) -> Option<DevNo> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn is_partition(dir: &Path) -> bool {
    dir.join("partition").is_file()
}

/// The disk `node` is a partition of, or `node` itself.
fn whole_disk(roots: &Roots, node: &Node) -> io::Result<Node> {
    if !is_partition(&node.dir) {
        return Ok(node.clone());
    }
    let parent = node
        .dir
        .parent()
        .filter(|p| p.starts_with(&roots.sys))
        .ok_or_else(|| {
            io::Error::other(format!(
                "partition {} has no disk above it in sysfs",
                node.name
            ))
        })?;
    node_at(parent.to_path_buf())
}

fn partitions(disk: &Node) -> io::Result<Vec<Node>> {
    let mut found = Vec::new();
    for name in list(&disk.dir)? {
        let dir = disk.dir.join(&name);
        if is_partition(&dir) {
            found.push(node_at(dir)?);
        }
    }
    Ok(found)
}

/// The names in directory `dir`, sorted; none if it does not exist (old kernels, fake trees).
fn list(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// One line of mountinfo.
#[derive(Debug)]
struct Mount {
    dev: DevNo,
    point: String,
}

fn mounts(roots: &Roots) -> io::Result<Vec<Mount>> {
    let file = roots.proc.join("self/mountinfo");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    Ok(text.lines().filter_map(parse_mount).collect())
}

fn parse_mount(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mut dev = parse_dev(fields.get(2)?)?;
    let point = unescape(fields.get(4)?);
    // btrfs (and some others) show an anonymous 0:N here rather than the disk; the source
    // after the " - " separator names the device then.
    if dev.0 == 0 {
        let dash = fields.iter().position(|f| *f == "-")?;
        let source = unescape(fields.get(dash + 2)?);
        if source.starts_with('/') {
            if let Some(real) = block_number(Path::new(&source)) {
                dev = real;
            }
        }
    }
    Some(Mount { dev, point })
}

/// The device number of the block device at `path` on this host, if it is one.
fn block_number(path: &Path) -> Option<DevNo> {
    let st = rustix::fs::stat(path).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice)
        .then(|| (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo and swaps fields.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The disks (whole-disk device numbers) under the filesystem mounted on `/`, through any
/// device-mapper or md devices in between.
fn root_disks(roots: &Roots, mounts: &[Mount]) -> HashSet<DevNo> {
    let mut disks = HashSet::new();
    // The last mount on `/` is the one on top, the one this process sees.
    if let Some(root) = mounts.iter().rev().find(|m| m.point == "/") {
        let mut seen = HashSet::new();
        disks_under(roots, root.dev, 0, &mut seen, &mut disks);
    }
    disks
}

fn disks_under(
    roots: &Roots,
    dev: DevNo,
    depth: usize,
    seen: &mut HashSet<DevNo>,
    disks: &mut HashSet<DevNo>,
) {
    if depth > MAX_DEPTH || !seen.insert(dev) {
        return;
    }
    // Not a block device sysfs knows (overlay, tmpfs, NFS): no local disk to protect.
    let Ok(node) = node(roots, dev) else {
        return;
    };
    let slaves = list(&node.dir.join("slaves")).unwrap_or_default();
    if slaves.is_empty() {
        if let Ok(disk) = whole_disk(roots, &node) {
            disks.insert(disk.dev);
        }
        return;
    }
    for slave in slaves {
        if let Ok(below) = read_dev(&node.dir.join("slaves").join(&slave)) {
            disks_under(roots, below, depth + 1, seen, disks);
        }
    }
}

/// A swap partition in use.
#[derive(Debug)]
struct Swap {
    /// As /proc/swaps shows it, for the message.
    path: String,
    /// Its device number when the path is a block device on this host.
    dev: Option<DevNo>,
    /// Its kernel name: the last part of the path, links resolved where they can be.
    name: String,
}

fn swaps(roots: &Roots) -> io::Result<Vec<Swap>> {
    let file = roots.proc.join("swaps");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        // A kernel built without swap has no such file, and no swap.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
    };
    Ok(text.lines().skip(1).filter_map(parse_swap).collect())
}

fn parse_swap(line: &str) -> Option<Swap> {
    let mut fields = line.split_whitespace();
    let path = unescape(fields.next()?);
    // A swap file lives on a mounted filesystem, which the mount check already covers.
    if fields.next()? != "partition" {
        return None;
    }
    let resolved = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
    let name = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dev = block_number(Path::new(&path));
    Some(Swap { path, dev, name })
}

/// Opens `path` for writing once it can be, retrying while the card is not there yet.
///
/// A block device is opened as it is (no truncation, nothing created) and must report a
/// non-zero size; a regular file is an image file and is truncated. Anything else is refused.
pub async fn open_for_write(
    path: &Path,
    timeout: Duration,
) -> Result<tokio::fs::File, DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        let owned = path.to_path_buf();
        let attempt = tokio::task::spawn_blocking(move || try_open(&owned))
            .await
            .unwrap_or_else(|e| {
                Err(Attempt::Fail(DriverError::Failed(format!(
                    "opening {} failed: {e}",
                    path.display()
                ))))
            });
        let why = match attempt {
            Ok(file) => return Ok(tokio::fs::File::from_std(file)),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(why)) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::Timeout(format!(
                "{} was not ready to write within {timeout:?} (last: {why}); check that the card is in the mux and the mux is switched to the host",
                path.display()
            )));
        }
        tracing::debug!(path = %path.display(), %why, "storage device not ready; retrying");
        tokio::time::sleep(RETRY.min(deadline - now)).await;
    }
}

enum Attempt {
    /// Not there yet; worth another try.
    Retry(String),
    Fail(DriverError),
}

fn try_open(path: &Path) -> Result<std::fs::File, Attempt> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;

    let fail = |e: io::Error| classify(path, e);
    // Neither create nor truncate: the path is a device node that appears with the card, and
    // a file that is not there yet must not be mistaken for one. O_EXCL without O_CREAT
    // claims a block device exclusively (EBUSY while mounted or held, and no automounter
    // can mount it while the image goes in); Linux ignores it for a regular file.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(fail)?;
    let st = rustix::fs::fstat(&file).map_err(|e| fail(e.into()))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {
            file.set_len(0).map_err(fail)?;
            Ok(file)
        }
        FileType::BlockDevice => {
            // A reader without a card can still show a node, with no sectors behind it.
            let size = file.seek(SeekFrom::End(0)).map_err(fail)?;
            if size == 0 {
                return Err(Attempt::Retry(
                    "the device has size 0 (no card yet?)".into(),
                ));
            }
            file.seek(SeekFrom::Start(0)).map_err(fail)?;
            Ok(file)
        }
        other => Err(Attempt::Fail(not_storage(path, other))),
    }
}

fn classify(path: &Path, e: io::Error) -> Attempt {
    let shown = path.display();
    let errno = Errno::from_io_error(&e);
    match errno {
        // Absent, no medium, a reader still being enumerated, or one that is resetting. ENODEV
        // joins them for a node left behind by a reader that is re-enumerating.
        Some(Errno::NOENT | Errno::NOMEDIUM | Errno::NXIO | Errno::IO | Errno::NODEV) => {
            Attempt::Retry(e.to_string())
        }
        Some(Errno::ACCESS | Errno::PERM) => Attempt::Fail(DriverError::Failed(permission_problem(path))),
        Some(Errno::BUSY) => Attempt::Fail(DriverError::Unavailable(format!(
            "{shown} is busy: mounted, or held open exclusively by another process; unmount it or find the process with `fuser -v {shown}`"
        ))),
        Some(Errno::ROFS) => Attempt::Fail(DriverError::Failed(format!(
            "{shown} is read-only: the card's write-protect switch may be on; slide it off and try again"
        ))),
        Some(Errno::ISDIR) => Attempt::Fail(not_storage(path, FileType::Directory)),
        _ => Attempt::Fail(DriverError::Failed(format!("cannot open {shown} for writing: {e}"))),
    }
}

fn permission_problem(path: &Path) -> String {
    let group = crate::access::owning_group(path, "disk");
    format!(
        "permission denied opening {} for writing; add the user the exporter runs as to the group that owns it, `{group}` (usermod -aG {group} USER), then restart the exporter; if it is in that group already, the card may be write-protected",
        path.display()
    )
}

/// Flushes what was written to the card, retrying EIO.
///
/// Beware: after an EIO the kernel may have dropped the pages it could not write and marked
/// them clean, so a later fsync that succeeds does not prove they reached the card. A
/// success after a retry is logged as a warning; a caller that must be sure verifies a
/// read-back.
pub async fn sync(file: &tokio::fs::File, timeout: Duration) -> Result<(), DriverError> {
    let deadline = Instant::now() + timeout;
    let mut failures = 0u32;
    loop {
        let e = match file.sync_all().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(
                        failures,
                        "syncing the card succeeded only after I/O errors; data written before them may be lost"
                    );
                }
                return Ok(());
            }
            Err(e) => e,
        };
        if Errno::from_io_error(&e) != Some(Errno::IO) {
            return Err(DriverError::Failed(format!("syncing the card failed: {e}")));
        }
        failures += 1;
        let now = Instant::now();
        if now >= deadline {
            return Err(DriverError::Timeout(format!(
                "syncing the card still failed with I/O errors after {timeout:?} ({e}); reseat the card, or replace the card or the reader"
            )));
        }
        tracing::debug!(error = %e, "syncing the card failed; retrying");
        tokio::time::sleep(RETRY.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::group_name;

    /// A fake /proc and /sys in a tempdir, in the kernel's layout: nodes under
    /// sys/devices/virtual/block, partitions inside their disk, sys/dev/block and
    /// sys/class/block links to them. The host's `/` is on vda (254:0) unless a test mounts
    /// something else there.
    struct Fake {
        _dir: tempfile::TempDir,
        roots: Roots,
    }

    impl Fake {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let roots = Roots {
                proc: dir.path().join("proc"),
                sys: dir.path().join("sys"),
            };
            std::fs::create_dir_all(roots.proc.join("self")).unwrap();
            std::fs::create_dir_all(roots.sys.join("dev/block")).unwrap();
            std::fs::create_dir_all(roots.sys.join("class/block")).unwrap();
            std::fs::create_dir_all(roots.sys.join("devices/virtual/block")).unwrap();
            std::fs::write(
                roots.proc.join("swaps"),
                "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
            )
            .unwrap();
            let fake = Self { _dir: dir, roots };
            std::fs::write(fake.roots.proc.join("self/mountinfo"), "").unwrap();
            fake.mount_line("22 27 0:21 / /proc rw,relatime - proc proc rw");
            fake.disk("vda", (254, 0));
            fake.mount((254, 0), "/");
            fake
        }

        fn register(&self, name: &str, dev: DevNo, dir: &Path) {
            std::fs::create_dir_all(dir.join("holders")).unwrap();
            std::fs::create_dir_all(dir.join("slaves")).unwrap();
            std::fs::write(dir.join("dev"), format!("{}:{}\n", dev.0, dev.1)).unwrap();
            let link = format!("{}:{}", dev.0, dev.1);
            std::os::unix::fs::symlink(dir, self.roots.sys.join("dev/block").join(link)).unwrap();
            std::os::unix::fs::symlink(dir, self.roots.sys.join("class/block").join(name)).unwrap();
        }

        fn dir(&self, name: &str) -> PathBuf {
            std::fs::canonicalize(self.roots.sys.join("class/block").join(name)).unwrap()
        }

        fn disk(&self, name: &str, dev: DevNo) {
            let dir = self.roots.sys.join("devices/virtual/block").join(name);
            // Something that is not a partition, as real disks have (queue, power, ...).
            std::fs::create_dir_all(dir.join("queue")).unwrap();
            self.register(name, dev, &dir);
        }

        fn partition(&self, disk: &str, name: &str, dev: DevNo) {
            let dir = self.dir(disk).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("partition"), "1\n").unwrap();
            self.register(name, dev, &dir);
        }

        fn mount_line(&self, line: &str) {
            let file = self.roots.proc.join("self/mountinfo");
            let mut text = std::fs::read_to_string(&file).unwrap();
            text.push_str(line);
            text.push('\n');
            std::fs::write(file, text).unwrap();
        }

        fn mount(&self, dev: DevNo, point: &str) {
            let point = point.replace(' ', "\\040");
            self.mount_line(&format!(
                "40 27 {}:{} / {point} rw,relatime shared:1 - ext4 /dev/fake rw",
                dev.0, dev.1
            ));
        }

        fn swap(&self, line: &str) {
            let file = self.roots.proc.join("swaps");
            let mut text = std::fs::read_to_string(&file).unwrap();
            text.push_str(line);
            text.push('\n');
            std::fs::write(file, text).unwrap();
        }

        fn hold(&self, name: &str, holder: &str) {
            std::fs::create_dir_all(self.dir(name).join("holders").join(holder)).unwrap();
        }

        /// `upper` (a dm or md device) sits on `lower`, as sysfs links them.
        fn slave(&self, upper: &str, lower: &str) {
            std::os::unix::fs::symlink(self.dir(lower), self.dir(upper).join("slaves").join(lower))
                .unwrap();
        }

        /// A card reader's disk sdb with two partitions.
        fn with_card(self) -> Self {
            self.disk("sdb", (8, 16));
            self.partition("sdb", "sdb1", (8, 17));
            self.partition("sdb", "sdb2", (8, 18));
            self
        }

        fn check(&self, dev: DevNo) -> Result<(), DriverError> {
            check_block(dev, Path::new("/dev/disk/by-diskseq/12"), &self.roots)
        }
    }

    fn unavailable(r: Result<(), DriverError>) -> String {
        match r {
            Err(DriverError::Unavailable(m)) => m,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    fn invalid(r: Result<(), DriverError>) -> String {
        match r {
            Err(DriverError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_free_disk_and_its_partitions_pass() {
        let fake = Fake::new().with_card();
        // Mounted things elsewhere must not count against it.
        fake.disk("sdc", (8, 32));
        fake.partition("sdc", "sdc1", (8, 33));
        fake.mount((8, 33), "/data");
        fake.hold("sdc", "dm-3");
        fake.swap("/dev/sdc2\t\t\t\tpartition\t1048572\t\t0\t\t-2");
        for dev in [(8, 16), (8, 17), (8, 18)] {
            fake.check(dev).unwrap();
        }
    }

    #[test]
    fn a_mounted_partition_of_the_disk_is_refused_by_name() {
        let fake = Fake::new().with_card();
        fake.mount((8, 18), "/media/my card");
        let m = unavailable(fake.check((8, 16)));
        assert!(
            m.contains("/dev/disk/by-diskseq/12")
                && m.contains("/dev/sdb2 is mounted on /media/my card")
                && m.contains("umount"),
            "{m}"
        );
    }

    #[test]
    fn a_mounted_whole_disk_is_refused() {
        let fake = Fake::new().with_card();
        fake.mount((8, 16), "/media/x");
        let m = unavailable(fake.check((8, 17)));
        assert!(m.contains("/dev/sdb is mounted on /media/x"), "{m}");
    }

    #[test]
    fn a_partition_whose_sibling_is_mounted_is_refused() {
        let fake = Fake::new().with_card();
        fake.mount((8, 18), "/media/x");
        let m = unavailable(fake.check((8, 17)));
        assert!(m.contains("/dev/sdb2 is mounted on /media/x"), "{m}");
    }

    #[test]
    fn holders_are_refused() {
        let fake = Fake::new().with_card();
        fake.disk("sdz", (65, 144));
        fake.hold("sdz", "dm-0");
        let m = unavailable(fake.check((65, 144)));
        assert!(m.contains("/dev/sdz is held by dm-0"), "{m}");

        // A partition's holder counts for the disk.
        fake.hold("sdb1", "md127");
        let m = unavailable(fake.check((8, 16)));
        assert!(m.contains("/dev/sdb1 is held by md127"), "{m}");
    }

    #[test]
    fn swap_is_refused() {
        let fake = Fake::new();
        // A name no test host is likely to have, so that it is matched by name here.
        fake.disk("sdzz", (259, 900));
        fake.partition("sdzz", "sdzz2", (259, 902));
        fake.swap("/swapfile                               file\t\t1048572\t\t0\t\t-2");
        fake.check((259, 900)).unwrap();

        fake.swap("/dev/sdzz2\t\t\t\tpartition\t1048572\t\t0\t\t-3");
        let m = unavailable(fake.check((259, 900)));
        assert!(
            m.contains("/dev/sdzz2 is in use as swap") && m.contains("swapoff"),
            "{m}"
        );
    }

    #[test]
    fn the_root_filesystems_disk_is_refused() {
        let fake = Fake::new();
        fake.disk("sda", (8, 0));
        fake.partition("sda", "sda1", (8, 1));
        fake.partition("sda", "sda2", (8, 2));
        fake.mount((8, 2), "/");
        for dev in [(8, 0), (8, 1)] {
            let m = invalid(fake.check(dev));
            assert!(m.contains("/dev/sda holds the root filesystem"), "{m}");
        }
        // vda's `/` was mounted over: no longer the root filesystem, but still mounted.
        let m = unavailable(fake.check((254, 0)));
        assert!(m.contains("/dev/vda is mounted on /"), "{m}");
    }

    #[test]
    fn the_disk_under_a_device_mapper_root_is_refused() {
        let fake = Fake::new();
        fake.disk("sda", (8, 0));
        fake.partition("sda", "sda2", (8, 2));
        fake.disk("dm-0", (253, 0));
        fake.slave("dm-0", "sda2");
        // No holders link on sda2: only the walk down from `/` can find it.
        fake.mount((253, 0), "/");
        let m = invalid(fake.check((8, 0)));
        assert!(m.contains("/dev/sda holds the root filesystem"), "{m}");
    }

    #[test]
    fn the_disk_under_stacked_devices_is_refused() {
        // Root on LVM (dm-1) on LUKS (dm-0) on an md mirror of two disks.
        let fake = Fake::new();
        fake.disk("sda", (8, 0));
        fake.partition("sda", "sda1", (8, 1));
        fake.disk("sdb", (8, 16));
        fake.partition("sdb", "sdb1", (8, 17));
        fake.disk("md0", (9, 0));
        fake.slave("md0", "sda1");
        fake.slave("md0", "sdb1");
        fake.disk("dm-0", (253, 0));
        fake.slave("dm-0", "md0");
        fake.disk("dm-1", (253, 1));
        fake.slave("dm-1", "dm-0");
        fake.mount((253, 1), "/");
        for (dev, name) in [((8, 0), "/dev/sda"), ((8, 17), "/dev/sdb")] {
            let m = invalid(fake.check(dev));
            assert!(
                m.contains(&format!("{name} holds the root filesystem")),
                "{m}"
            );
        }
    }

    #[test]
    fn a_device_sysfs_does_not_know_is_refused() {
        let fake = Fake::new();
        match fake.check((8, 48)) {
            Err(DriverError::Failed(m)) => {
                assert!(
                    m.contains("/dev/disk/by-diskseq/12") && m.contains("8:48"),
                    "{m}"
                )
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_mountinfo_fails_the_check() {
        let fake = Fake::new().with_card();
        std::fs::remove_file(fake.roots.proc.join("self/mountinfo")).unwrap();
        assert!(matches!(fake.check((8, 16)), Err(DriverError::Failed(_))));
    }

    #[test]
    fn mountinfo_fields_are_unescaped_and_bad_lines_skipped() {
        assert_eq!(unescape(r"/media/a\040b\134c\011"), "/media/a b\\c\t");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape(r"/x\999"), r"/x\999");
        assert!(parse_mount("garbage").is_none());
        assert!(parse_mount("1 2 8:x / /").is_none());
        let m =
            parse_mount("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw").unwrap();
        assert_eq!((m.dev, m.point.as_str()), ((98, 0), "/mnt2"));
        // An anonymous device whose source is no block device stays as it is.
        let m = parse_mount("30 1 0:27 / / rw - overlay overlay rw").unwrap();
        assert_eq!(m.dev, (0, 27));
    }

    #[test]
    fn a_regular_file_passes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("card.img");
        std::fs::write(&image, b"image").unwrap();
        check_target(&image, &Roots::default()).unwrap();
        check_opened(
            std::fs::File::open(&image).unwrap(),
            &image,
            &Roots::default(),
        )
        .unwrap();
        // Through a link too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        check_target(&link, &Roots::default()).unwrap();
    }

    #[test]
    fn a_missing_path_passes_until_it_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        check_target(&dir.path().join("sdb"), &Roots::default()).unwrap();
        // A link whose device has gone is missing too.
        let link = dir.path().join("by-diskseq-12");
        std::os::unix::fs::symlink(dir.path().join("gone"), &link).unwrap();
        check_target(&link, &Roots::default()).unwrap();
    }

    #[test]
    fn a_directory_or_character_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = invalid(check_target(dir.path(), &Roots::default()));
        assert!(
            m.contains(&dir.path().display().to_string()) && m.contains("a directory"),
            "{m}"
        );
        let m = invalid(check_target(Path::new("/dev/null"), &Roots::default()));
        assert!(m.contains("/dev/null is a character device"), "{m}");
    }

    #[test]
    fn a_path_under_a_file_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            check_target(&file.join("x"), &Roots::default()),
            Err(DriverError::Failed(_))
        ));
    }

    /// On a host whose `/` is on a block device, that device is refused through the real
    /// /proc and /sys; elsewhere (overlay in a container) there is nothing to check.
    #[test]
    fn this_hosts_root_device_is_refused() {
        let roots = Roots::default();
        let Ok(mounts) = mounts(&roots) else { return };
        let Some(root) = mounts.iter().rev().find(|m| m.point == "/") else {
            return;
        };
        let Ok(node) = node(&roots, root.dev) else {
            return;
        };
        let path = PathBuf::from("/dev").join(&node.name);
        if block_number(&path) != Some(root.dev) {
            return;
        }
        let m = invalid(check_target(&path, &roots));
        assert!(m.contains("holds the root filesystem"), "{m}");
    }

    #[tokio::test]
    async fn a_path_that_appears_later_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdb");
        let later = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            std::fs::write(later, b"old contents").unwrap();
        });
        let start = std::time::Instant::now();
        let file = open_for_write(&path, Duration::from_secs(5)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(1400));
        assert_eq!(file.metadata().await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_path_that_never_appears_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdb");
        let start = std::time::Instant::now();
        match open_for_write(&path, Duration::from_millis(1200)).await {
            Err(DriverError::Timeout(m)) => assert!(
                m.contains(&path.display().to_string()) && m.contains("1.2s"),
                "{m}"
            ),
            other => panic!("expected Timeout, got {other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Nothing was created while waiting.
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_regular_file_is_truncated() {
        use tokio::io::AsyncWriteExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.img");
        std::fs::write(&path, b"a much longer old image").unwrap();
        let mut file = open_for_write(&path, Duration::from_secs(1)).await.unwrap();
        file.write_all(b"new").await.unwrap();
        sync(&file, Duration::from_secs(1)).await.unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[tokio::test]
    async fn errors_other_than_absence_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        let r = open_for_write(dir.path(), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(DriverError::InvalidArgument(_))), "{r:?}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let r = open_for_write(&file.join("x"), Duration::from_secs(5)).await;
        assert!(matches!(r, Err(DriverError::Failed(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(900));
    }

    #[test]
    fn permission_errors_say_which_group_to_join() {
        let m = permission_problem(Path::new("/dev/null"));
        let group = group_name(0).unwrap_or_else(|| "disk".into());
        assert!(
            m.contains("/dev/null") && m.contains(&format!("usermod -aG {group} USER")),
            "{m}"
        );
        assert!(permission_problem(Path::new("/nonexistent/sdb")).contains("`disk`"));
    }

    #[tokio::test]
    async fn sync_of_a_regular_file_succeeds() {
        use tokio::io::AsyncWriteExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.img");
        std::fs::write(&path, b"").unwrap();
        let mut file = open_for_write(&path, Duration::from_secs(1)).await.unwrap();
        file.write_all(&[7u8; 4096]).await.unwrap();
        sync(&file, Duration::from_secs(1)).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
    }
}
