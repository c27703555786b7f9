//! How the process ends, in either mode, and the exit code each way means to systemd (the unit
//! restarts the exporter on any code but these; see `systemd/jmp-exporter@.service`).

/// How a run of the exporter ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal (or SIGHUP after the lease).
    Clean,
    /// A hook with `onFailure: exit` took the exporter offline.
    HookFailure,
}

/// EX_CONFIG from sysexits.h: the config is wrong; the unit does not restart on it.
pub const CONFIG_ERROR: u8 = 78;
/// A hook with `onFailure: exit` took the exporter offline; the unit does not restart on it.
pub const HOOK_FAILURE: u8 = 1;
/// EX_TEMPFAIL from sysexits.h: SIGHUP with a good new config drained the exporter, to be
/// started again with it; the unit restarts on it (and on nothing a clean stop returns).
pub const RELOAD: u8 = 75;
/// EX_UNAVAILABLE from sysexits.h: something outside the exporter kept it from serving (an
/// address or socket path in use); the unit restarts it after a pause.
pub const UNAVAILABLE: u8 = 69;

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::HookFailure => HOOK_FAILURE,
        }
    }
}
