//! jmp-exporter: a Jumpstarter exporter daemon, wire-compatible with the upstream 0.9.0 Python
//! client and controller.
//!
//! The folders follow the path of a client's bytes:
//! - [`session`]: what serves one session, from a connection to a driver (listeners, the
//!   HTTP/2 edge, the tonic server, the gRPC handlers, the driver tree).
//! - [`controller`]: controller mode (the link to the controller, the lease runner, router
//!   tunnels that bring clients into a lease's session).
//! - The process shell and what both modes share: [`config`] reads the upstream YAML,
//!   [`lifecycle`] is the lease lifecycle as a pure state machine, [`hooks`] runs lease hooks,
//!   [`standalone`] serves without a controller, [`exit`], [`signal`], [`systemd`],
//!   [`logging`], [`backoff`]; [`proto`] and [`frame`] are wire formats.

pub mod backoff;
pub mod check;
pub mod config;
pub mod controller;
pub mod exit;
pub mod frame;
pub mod fuzzing;
pub mod hooks;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod session;
pub mod signal;
pub mod standalone;
pub mod systemd;
