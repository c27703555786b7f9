//! The PowerClient contract every power switch shares (drivers.md §2): `on` and `off` are
//! calls without arguments, `read` is a streaming call of readings. Switches that cannot
//! measure answer `read` with a clean "not implemented".
//!
//! Network-attached switches live beside it: [`tasmota`] (MQTT plugs, whose `read` is upstream's
//! plain call returning null).

use crate::{args, DriverError, Json, MethodKind};

pub mod energenie;
pub mod http;
pub mod snmp;
pub mod tasmota;

/// The kinds of the PowerClient methods.
pub fn method_kind(name: &str) -> Option<MethodKind> {
    match name {
        "on" | "off" => Some(MethodKind::Call),
        "read" => Some(MethodKind::Streaming),
        _ => None,
    }
}

/// Which way an `on`/`off` call switches, after checking it has no arguments.
pub fn switch_of(method: &str, args: &[Json]) -> Result<bool, DriverError> {
    args::expect_count(method, args, 0)?;
    match method {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(DriverError::NotImplemented(format!(
            "{method} is not a method of a power switch"
        ))),
    }
}

/// The answer to `read` from a switch that cannot measure (`what` names it: "a YKUSH").
pub fn no_readings(method: &str, what: &str) -> DriverError {
    DriverError::NotImplemented(format!(
        "{method}: {what} cannot measure voltage or current; this power switch has on and off only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_power_contract() {
        assert_eq!(method_kind("on"), Some(MethodKind::Call));
        assert_eq!(method_kind("read"), Some(MethodKind::Streaming));
        assert_eq!(method_kind("cycle"), None, "cycle is client-side");
        assert!(switch_of("on", &[]).unwrap());
        assert!(!switch_of("off", &[]).unwrap());
        assert!(matches!(
            switch_of("on", &[json!(1)]),
            Err(DriverError::InvalidArgument(_))
        ));
        assert!(no_readings("read", "a YKUSH")
            .to_string()
            .starts_with("read: a YKUSH cannot measure"));
    }
}
