//! jmp-exporter: a Jumpstarter exporter daemon, wire-compatible with the upstream 0.9.0 Python
//! client and controller.
//!
//! The path every client byte takes:
//! connection (Unix socket, TCP, router tunnel) → [`edge`] (makes real clients' HTTP/2
//! acceptable) → [`server`] (one tonic server per session) → [`service`] → [`tree`] →
//! a driver from the `jmp-drivers` crate → the device.
//! Beside it: [`config`] reads the upstream YAML, [`session`] holds status and logs,
//! [`standalone`] serves without a controller.

pub mod admission;
pub mod backoff;
pub mod config;
pub mod controller;
pub mod edge;
pub mod exit;
pub mod frame;
pub mod fuzzing;
pub mod hooks;
pub mod host;
pub mod lifecycle;
pub mod logging;
pub mod logs;
pub mod panics;
pub mod proto;
pub mod rejection;
pub mod server;
pub mod service;
pub mod session;
pub mod signal;
pub mod standalone;
pub mod systemd;
pub mod tree;
pub mod value;
