//! One integration-test binary: the real `jmp-exporter` process driven by the unchanged
//! upstream Python client, plus checks of our protos against the upstream stubs.

mod support;

mod cli;
mod controller;
mod descriptors;
mod faults;
mod gpio;
mod hooks;
mod python_client;
mod secrets;
mod serial;
mod systemd;
mod tunnel;
mod usb;
