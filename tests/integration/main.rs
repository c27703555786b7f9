//! One integration-test binary: the real `jmp-exporter` process driven by the unchanged
//! upstream Python client, plus checks of our protos against the upstream stubs.

mod support;

mod bad_input;
mod cli;
mod controller;
mod degraded;
mod descriptors;
mod faults;
mod flood;
mod gpio;
mod hooks;
mod hosted;
mod http_power;
mod lease_drivers;
mod load;
mod metrics;
mod network;
mod python_client;
mod secrets;
mod serial;
mod shell;
mod snmp;
mod ssh;
mod storage;
mod systemd;
mod tasmota;
mod tunnel;
mod usb;
