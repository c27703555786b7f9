//! The `config:` keys of the three gpiod drivers, read with upstream's meaning and checked at
//! config load, so `jmp-exporter check` finds what upstream finds only when it opens the chip.
//! Nothing here touches hardware.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::chip::{Bias, ChipRef, Drive};
use super::mock::MockSpec;
use crate::yaml::{self, join, Node};

/// Upstream's default chip.
pub const DEFAULT_DEVICE: &str = "/dev/gpiochip0";

/// `line:` an offset, as upstream, or (our extension) a line name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineRef {
    Offset(u32),
    Name(String),
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineRef::Offset(o) => write!(f, "{o}"),
            LineRef::Name(n) => f.write_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for LineRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "a line offset (0, 1, ...) or a line name";
        impl Visitor<'_> for V {
            type Value = LineRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LineRef, E> {
                u32::try_from(v)
                    .map(LineRef::Offset)
                    .map_err(|_| E::custom(format!("line {v} is not a line offset")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LineRef, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LineRef, E> {
                if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                    Ok(LineRef::Offset(v as u32))
                } else {
                    Err(E::custom(format!("line {v} is not a line offset")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LineRef, E> {
                // Upstream's int field takes "17" too.
                if let Ok(offset) = v.trim().parse::<u32>() {
                    return Ok(LineRef::Offset(offset));
                }
                if v.trim().is_empty() {
                    return Err(E::custom(format!("expected {EXPECTED}, found nothing")));
                }
                Ok(LineRef::Name(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LineRef, E> {
                Err(E::custom(format!(
                    "expected {EXPECTED}, found {v} (quote a line named like a YAML boolean)"
                )))
            }
            fn visit_unit<E: de::Error>(self) -> Result<LineRef, E> {
                Err(E::custom(format!("expected {EXPECTED}, found nothing")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `initial_value:` upstream takes `"active"`, `"on"`, `true` for active and `"inactive"`,
/// `"off"`, `false`, null for inactive; YAML 1.1 makes plain `on`/`off`/`yes`/`no` booleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InitialValue(bool);

impl<'de> Deserialize<'de> for InitialValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "active, inactive, on, off, true or false";
        impl Visitor<'_> for V {
            type Value = InitialValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<InitialValue, E> {
                Ok(InitialValue(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InitialValue, E> {
                match v {
                    "active" | "on" => Ok(InitialValue(true)),
                    "inactive" | "off" => Ok(InitialValue(false)),
                    _ => Err(E::custom(format!("`{v}` is not one of: {EXPECTED}"))),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<InitialValue, E> {
                Ok(InitialValue(false))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<InitialValue, E> {
                Err(E::custom(format!("`{v}` is not one of: {EXPECTED}")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<InitialValue, E> {
                Err(E::custom(format!("`{v}` is not one of: {EXPECTED}")))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BiasKey {
    AsIs,
    PullUp,
    PullDown,
    Disabled,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DriveKey {
    PushPull,
    OpenDrain,
    OpenSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputKeys {
    line: LineRef,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    active_low: bool,
    #[serde(default)]
    bias: Option<BiasKey>,
    #[serde(default)]
    drive: Option<DriveKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputKeys {
    line: LineRef,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    active_low: bool,
    #[serde(default)]
    bias: Option<BiasKey>,
    #[serde(default)]
    drive: Option<DriveKey>,
    #[serde(default)]
    initial_value: Option<InitialValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerSwitchKeys {
    line: LineRef,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    active_low: bool,
    #[serde(default)]
    bias: Option<BiasKey>,
    #[serde(default)]
    drive: Option<DriveKey>,
    #[serde(default)]
    initial_value: Option<InitialValue>,
    /// Accepted and unused, as upstream: `drive` decides.
    #[serde(default)]
    #[allow(dead_code)]
    mode: Option<String>,
}

/// Which way a line goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Input,
    /// An output and the logical value it returns to at every session start.
    Output {
        initial: bool,
    },
}

/// One gpiod entry's checked config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineSpec {
    /// The entry's YAML path (`export.reset`), which also tells two entries apart.
    pub entry: String,
    /// `None`: a named line looked up on every chip.
    pub chip: Option<ChipRef>,
    pub line: LineRef,
    pub active_low: bool,
    pub bias: Option<Bias>,
    pub drive: Drive,
    pub role: Role,
}

pub fn input(node: &Node, path: &str) -> Result<LineSpec, yaml::Error> {
    let k: InputKeys = yaml::from_node(node, path)?;
    let drive = drive(k.drive);
    if drive != Drive::PushPull {
        return Err(at(
            node,
            path,
            "drive",
            "drive applies to outputs, and a DigitalInput line is an input; leave `drive` out",
        ));
    }
    let shared = Shared {
        line: k.line,
        device: k.device,
        active_low: k.active_low,
        bias: k.bias,
        drive,
    };
    common(node, path, shared, Role::Input)
}

pub fn output(node: &Node, path: &str) -> Result<LineSpec, yaml::Error> {
    output_spec(node, path, yaml::from_node(node, path)?)
}

/// A power switch is an output whose config may also carry upstream's unused `mode`.
pub fn power_switch(node: &Node, path: &str) -> Result<LineSpec, yaml::Error> {
    let k: PowerSwitchKeys = yaml::from_node(node, path)?;
    let keys = OutputKeys {
        line: k.line,
        device: k.device,
        active_low: k.active_low,
        bias: k.bias,
        drive: k.drive,
        initial_value: k.initial_value,
    };
    output_spec(node, path, keys)
}

fn output_spec(node: &Node, path: &str, k: OutputKeys) -> Result<LineSpec, yaml::Error> {
    let role = Role::Output {
        initial: k.initial_value.is_some_and(|v| v.0),
    };
    let shared = Shared {
        line: k.line,
        device: k.device,
        active_low: k.active_low,
        bias: k.bias,
        drive: drive(k.drive),
    };
    common(node, path, shared, role)
}

fn drive(key: Option<DriveKey>) -> Drive {
    match key {
        None | Some(DriveKey::PushPull) => Drive::PushPull,
        Some(DriveKey::OpenDrain) => Drive::OpenDrain,
        Some(DriveKey::OpenSource) => Drive::OpenSource,
    }
}

fn at(node: &Node, path: &str, key: &str, message: &str) -> yaml::Error {
    let target = node.get(key).unwrap_or(node);
    yaml::Error::at(&join(path, key), target, message)
}

/// The keys all three drivers share, once read.
struct Shared {
    line: LineRef,
    device: Option<String>,
    active_low: bool,
    bias: Option<BiasKey>,
    drive: Drive,
}

fn common(node: &Node, path: &str, k: Shared, role: Role) -> Result<LineSpec, yaml::Error> {
    let chip = match k.device.as_deref() {
        None => match k.line {
            LineRef::Offset(_) => Some(ChipRef::Path(DEFAULT_DEVICE.into())),
            LineRef::Name(_) => None,
        },
        Some(text) => Some(parse_device(text).map_err(|m| at(node, path, "device", &m))?),
    };
    let entry = path.strip_suffix(".config").unwrap_or(path).to_string();
    Ok(LineSpec {
        entry,
        chip,
        line: k.line,
        active_low: k.active_low,
        bias: match k.bias {
            None | Some(BiasKey::AsIs) => None,
            Some(BiasKey::PullUp) => Some(Bias::PullUp),
            Some(BiasKey::PullDown) => Some(Bias::PullDown),
            Some(BiasKey::Disabled) => Some(Bias::Disabled),
        },
        drive: k.drive,
        role,
    })
}

/// `device:` a path (upstream), a chip name or label (ours), or `mock://NAME` (the fake).
pub fn parse_device(text: &str) -> Result<ChipRef, String> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("mock://") {
        return MockSpec::parse(rest).map(ChipRef::Mock);
    }
    if text.contains("://") {
        return Err(format!(
            "`{text}` is not a GPIO chip: give a device path (/dev/gpiochip0), a chip name or \
             label, or mock://NAME"
        ));
    }
    if text.is_empty() {
        return Err("expected a GPIO chip, found nothing".into());
    }
    if text.starts_with('/') {
        Ok(ChipRef::Path(text.to_string()))
    } else {
        Ok(ChipRef::Label(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parser = fn(&Node, &str) -> Result<LineSpec, yaml::Error>;

    fn parse(f: Parser, src: &str) -> Result<LineSpec, yaml::Error> {
        let doc = yaml::parse(src).unwrap();
        f(doc.get("config").unwrap(), "export.reset.config")
    }

    #[test]
    fn upstream_keys_and_defaults() {
        let s = parse(output, "config:\n  line: 17\n").unwrap();
        assert_eq!(
            s,
            LineSpec {
                entry: "export.reset".into(),
                chip: Some(ChipRef::Path("/dev/gpiochip0".into())),
                line: LineRef::Offset(17),
                active_low: false,
                bias: None,
                drive: Drive::PushPull,
                role: Role::Output { initial: false },
            }
        );
        let s = parse(
            output,
            "config:\n  line: 4.0\n  device: /dev/gpiochip1\n  active_low: yes\n  bias: pull_up\n  drive: open_drain\n  initial_value: active\n",
        )
        .unwrap();
        assert_eq!(s.line, LineRef::Offset(4));
        assert_eq!(s.chip, Some(ChipRef::Path("/dev/gpiochip1".into())));
        assert!(s.active_low);
        assert_eq!(s.bias, Some(Bias::PullUp));
        assert_eq!(s.drive, Drive::OpenDrain);
        assert_eq!(s.role, Role::Output { initial: true });
        let s = parse(
            input,
            "config:\n  line: '3'\n  bias: as_is\n  drive: push_pull\n",
        )
        .unwrap();
        assert_eq!(
            (s.line, s.bias, s.role),
            (LineRef::Offset(3), None, Role::Input)
        );
        let s = parse(
            power_switch,
            "config:\n  line: 2\n  mode: open_drain\n  initial_value: on\n",
        )
        .unwrap();
        assert_eq!(s.role, Role::Output { initial: true });
        assert_eq!(s.drive, Drive::PushPull, "mode is accepted and unused");
    }

    #[test]
    fn initial_value_takes_every_upstream_spelling() {
        for (text, active) in [
            ("on", true),
            ("'on'", true),
            ("\"active\"", true),
            ("active", true),
            ("true", true),
            ("yes", true),
            ("off", false),
            ("'off'", false),
            ("inactive", false),
            ("false", false),
            ("null", false),
            ("", false),
        ] {
            let s = parse(
                output,
                &format!("config:\n  line: 1\n  initial_value: {text}\n"),
            )
            .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.role, Role::Output { initial: active }, "{text}");
        }
        let err = parse(output, "config:\n  line: 1\n  initial_value: high\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "export.reset.config.initial_value (line 3): `high` is not one of: active, inactive, on, off, true or false"
        );
        let err = parse(output, "config:\n  line: 1\n  initial_value: 1\n").unwrap_err();
        assert!(err.message.contains("`1` is not one of"), "{err}");
    }

    #[test]
    fn our_extensions_named_lines_and_chips() {
        let s = parse(input, "config:\n  line: BOOT_BUTTON\n").unwrap();
        assert_eq!(s.line, LineRef::Name("BOOT_BUTTON".into()));
        assert_eq!(
            s.chip, None,
            "a named line without a device is looked up everywhere"
        );
        let s = parse(
            input,
            "config:\n  line: GPIO17\n  device: pinctrl-bcm2711\n",
        )
        .unwrap();
        assert_eq!(s.chip, Some(ChipRef::Label("pinctrl-bcm2711".into())));
        let s = parse(
            input,
            "config:\n  line: 0\n  device: mock://bench?lines=4\n",
        )
        .unwrap();
        match s.chip {
            Some(ChipRef::Mock(m)) => assert_eq!((m.name.as_str(), m.lines), ("bench", Some(4))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases: [(Parser, &str, &str); 9] = [
            (output, "config:\n  device: /dev/gpiochip0\n", "export.reset.config (line 2): missing field `line`"),
            (output, "config:\n  line: -1\n", "export.reset.config.line (line 2): line -1 is not a line offset"),
            (output, "config:\n  line: 1\n  bias: pullup\n", "export.reset.config.bias (line 3): `pullup` is not one of: as_is, pull_up, pull_down, disabled"),
            (output, "config:\n  line: 1\n  drive: totem\n", "export.reset.config.drive (line 3): `totem` is not one of: push_pull, open_drain, open_source"),
            (input, "config:\n  line: 1\n  drive: open_drain\n", "export.reset.config.drive (line 3): drive applies to outputs"),
            (input, "config:\n  line: 1\n  initial_value: on\n", "export.reset.config.initial_value (line 3): unknown field `initial_value`"),
            (output, "config:\n  line: 1\n  mode: push_pull\n", "export.reset.config.mode (line 3): unknown field `mode`"),
            (output, "config:\n  line: 1\n  device: mock://a b\n", "export.reset.config.device (line 3): mock chip name `a b`"),
            (output, "config:\n  line: 1\n  device: http://x\n", "export.reset.config.device (line 3): `http://x` is not a GPIO chip"),
        ];
        for (f, src, want) in cases {
            let err = parse(f, src).unwrap_err().to_string();
            assert!(err.starts_with(want), "{src:?}\n got: {err}\nwant: {want}");
        }
        let err = parse(output, "config:\n  line: on\n").unwrap_err();
        assert!(err.message.contains("quote a line named"), "{err}");
    }
}
