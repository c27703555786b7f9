//! Who may open a device node: the group that owns it, named in the permission errors of
//! every driver that opens one (serial consoles, storage cards), so the fix can be copied.

use std::path::Path;

/// The name of the group that owns `path`, or `fallback` when it cannot be told.
pub fn owning_group(path: &Path, fallback: &str) -> String {
    rustix::fs::stat(path)
        .ok()
        .and_then(|st| group_name(st.st_gid))
        .unwrap_or_else(|| fallback.into())
}

/// The name of group `gid`, from /etc/group.
pub fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}
