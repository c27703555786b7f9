//! The `config:` of a `PySerial` entry: upstream's keys with upstream's defaults, plus our
//! console-capture keys. Everything is checked here, once, with the YAML path and line of the
//! offending key; nothing here opens a device.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::yaml::{self, Node};

/// The `url` forms this build serves, as named in error messages.
const SUPPORTED: &str =
    "a device path (/dev/ttyUSB0, /dev/serial/by-id/..., /dev/serial/by-path/...), \
     loop://, or socket://host:port";

/// What `url` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A terminal device, opened through any symlinks (by-id, by-path) each time it is opened.
    Device(PathBuf),
    /// pyserial's `loop://`: every stream is its own echo.
    Loop,
    /// pyserial's `socket://host:port`: raw TCP to a serial server such as ser2net.
    Socket { host: String, port: u16 },
}

/// Console capture settings (`log_file` and its rotation keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub path: PathBuf,
    /// A file is rotated before it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`log_file.1` is the newest); 0 keeps none.
    pub keep: u32,
}

/// A checked `PySerial` configuration.
#[derive(Clone, Debug)]
pub struct SerialConfig {
    /// `url` as written; error messages and logs name the device by it.
    pub url: String,
    pub target: Target,
    pub baudrate: u32,
    pub check_present: bool,
    /// Characters per second written to the device; `None` for no throttling.
    pub cps: Option<f64>,
    pub disable_hupcl: bool,
    pub capture: Option<Capture>,
}

/// Default `log_file_max_bytes`: 16 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Default `log_file_keep`.
pub const DEFAULT_LOG_KEEP: u32 = 4;
/// The smallest `log_file_max_bytes` accepted.
const MIN_LOG_MAX_BYTES: u64 = 1024;
/// The most rotated files kept.
const MAX_LOG_KEEP: u32 = 100;

/// The slowest `cps` accepted: one character every 1,000 s.
pub const MIN_CPS: f64 = 0.001;

fn default_baudrate() -> u32 {
    115_200
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: String,
    #[serde(default = "default_baudrate")]
    baudrate: u32,
    #[serde(default = "default_true")]
    check_present: bool,
    #[serde(default)]
    cps: Option<f64>,
    #[serde(default)]
    disable_hupcl: bool,
    #[serde(default)]
    log_file: Option<PathBuf>,
    #[serde(default)]
    log_file_max_bytes: Option<ByteSize>,
    #[serde(default)]
    log_file_keep: Option<u32>,
}

/// Parses and checks one entry's `config:` node, found at `path`.
pub fn parse(node: &Node, path: &str) -> Result<SerialConfig, yaml::Error> {
    let raw: Raw = yaml::from_node(node, path)?;
    let at = |key: &str, message: String| {
        let n = node.get(key).unwrap_or(node);
        yaml::Error::at(&yaml::join(path, key), n, message)
    };
    let target = parse_url(&raw.url).map_err(|m| at("url", m))?;
    if raw.baudrate == 0 {
        return Err(at(
            "baudrate",
            "baudrate must be a positive number of bits per second, such as 115200".into(),
        ));
    }
    // Upstream throttles only when `cps` is above zero; zero, a negative number or infinity
    // mean "as fast as the port goes".
    let cps = raw.cps.filter(|c| c.is_finite() && *c > 0.0);
    if let Some(c) = cps {
        if c < MIN_CPS {
            return Err(at(
                "cps",
                format!("cps {c} would send one character every {:.0} s; use at least {MIN_CPS}, or 0 for no throttling", 1.0 / c),
            ));
        }
    }
    let capture = match raw.log_file {
        None => {
            for key in ["log_file_max_bytes", "log_file_keep"] {
                if node.get(key).is_some() {
                    return Err(at(key, format!("{key} has no effect without log_file")));
                }
            }
            None
        }
        Some(file) => {
            if target == Target::Loop {
                return Err(at(
                    "log_file",
                    "loop:// has no device output to capture; remove log_file or use a device"
                        .into(),
                ));
            }
            if !file.is_absolute() {
                return Err(at(
                    "log_file",
                    format!(
                        "log_file must be an absolute path, got {:?}",
                        file.display().to_string()
                    ),
                ));
            }
            let max_bytes = raw
                .log_file_max_bytes
                .map_or(DEFAULT_LOG_MAX_BYTES, |b| b.0);
            if max_bytes < MIN_LOG_MAX_BYTES {
                return Err(at(
                    "log_file_max_bytes",
                    format!("log_file_max_bytes must be at least {MIN_LOG_MAX_BYTES} bytes, got {max_bytes}"),
                ));
            }
            let keep = raw.log_file_keep.unwrap_or(DEFAULT_LOG_KEEP);
            if keep > MAX_LOG_KEEP {
                return Err(at(
                    "log_file_keep",
                    format!("log_file_keep must be at most {MAX_LOG_KEEP}, got {keep}"),
                ));
            }
            Some(Capture {
                path: file,
                max_bytes,
                keep,
            })
        }
    };
    Ok(SerialConfig {
        url: raw.url,
        target,
        baudrate: raw.baudrate,
        check_present: raw.check_present,
        cps,
        disable_hupcl: raw.disable_hupcl,
        capture,
    })
}

/// Reads `url` the way pyserial's `serial_for_url` does, for the forms we serve.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err(format!("url is empty; give {SUPPORTED}"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        // pyserial's only option for these handlers is `?logging=LEVEL`; accept and ignore it.
        if let Some(q) = query {
            if !q.split('&').all(|kv| kv.starts_with("logging=")) {
                return Err(format!(
                    "url {url}: the only option accepted after `?` is logging=LEVEL"
                ));
            }
        }
        return match scheme.to_ascii_lowercase().as_str() {
            "loop" if rest.is_empty() => Ok(Target::Loop),
            "loop" => Err(format!("url {url}: write loop:// with nothing after it")),
            "socket" => parse_host_port(rest)
                .map(|(host, port)| Target::Socket { host, port })
                .map_err(|m| format!("url {url}: {m}; write socket://host:port")),
            other => Err(format!(
                "url {url}: the {other}:// scheme is not supported by this exporter; use {SUPPORTED}"
            )),
        };
    }
    if !url.starts_with('/') {
        return Err(format!(
            "url {url:?} is not an absolute device path; use {SUPPORTED}"
        ));
    }
    Ok(Target::Device(PathBuf::from(url)))
}

fn parse_host_port(rest: &str) -> Result<(String, u16), String> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs a closing `]`")?;
        let port = after
            .strip_prefix(':')
            .ok_or("the port is missing after the address")?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or("the port is missing")?
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(format!("`{port}` is not a TCP port (1-65535)")),
    }
}

/// A size in bytes, written as a whole number or with a binary unit: `512K`, `16M`, `1GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes, such as 16777216 or 16M")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative, got {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a size; write bytes (16777216) or use K, M or G (16M)"
                    ))
                })
            }
        }
        deserializer.deserialize_any(V)
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "k" | "KiB" | "KB" => 10,
        "M" | "MiB" | "MB" => 20,
        "G" | "GiB" | "GB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> Result<SerialConfig, yaml::Error> {
        parse(
            &yaml::parse(src).unwrap(),
            "export.dut.children.console.config",
        )
    }

    fn err(src: &str) -> yaml::Error {
        load(src).expect_err("config should be refused")
    }

    #[test]
    fn upstream_defaults() {
        let c = load("url: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0\n").unwrap();
        assert_eq!(
            c.target,
            Target::Device("/dev/serial/by-id/usb-FTDI_FT232R-if00-port0".into())
        );
        assert_eq!(c.baudrate, 115_200);
        assert!(c.check_present);
        assert_eq!(c.cps, None);
        assert!(!c.disable_hupcl);
        assert_eq!(c.capture, None);
    }

    #[test]
    fn unknown_scheme_names_the_supported_forms_with_path_and_line() {
        let e = err("baudrate: 9600\nurl: rfc2217://lab-ts1:7001\n");
        assert_eq!(e.path, "export.dut.children.console.config.url");
        assert_eq!(e.mark.unwrap().line, 2);
        for needle in [
            "rfc2217://",
            "not supported",
            "/dev/serial/by-id/",
            "loop://",
            "socket://host:port",
        ] {
            assert!(e.message.contains(needle), "{needle:?} missing from: {e}");
        }
        let e = err("url: ttyUSB0\n");
        assert!(e.message.contains("not an absolute device path"), "{e}");
        assert_eq!(e.mark.unwrap().line, 1);
    }

    #[test]
    fn bad_baudrate_has_path_and_line() {
        for (src, needle) in [
            ("url: loop://\nbaudrate: fast\n", "whole number"),
            ("url: loop://\nbaudrate: 0\n", "positive"),
            ("url: loop://\nbaudrate: -9600\n", "out of range"),
            ("url: loop://\nbaudrate: 115200.5\n", "whole number"),
        ] {
            let e = err(src);
            assert_eq!(
                e.path, "export.dut.children.console.config.baudrate",
                "{src}"
            );
            assert_eq!(e.mark.unwrap().line, 2, "{src}");
            assert!(e.message.contains(needle), "{src}: {e}");
        }
        assert_eq!(
            load("url: loop://\nbaudrate: 9600.0\n").unwrap().baudrate,
            9600
        );
    }

    #[test]
    fn url_forms() {
        assert_eq!(parse_url("loop://").unwrap(), Target::Loop);
        assert_eq!(parse_url("loop://?logging=debug").unwrap(), Target::Loop);
        assert_eq!(
            parse_url("socket://ser2net.lab:3001").unwrap(),
            Target::Socket {
                host: "ser2net.lab".into(),
                port: 3001
            }
        );
        assert_eq!(
            parse_url("socket://[::1]:3001").unwrap(),
            Target::Socket {
                host: "::1".into(),
                port: 3001
            }
        );
        assert_eq!(
            parse_url("/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0").unwrap(),
            Target::Device("/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0".into())
        );
        for bad in [
            "socket://host",
            "socket://host:0",
            "socket://host:http",
            "socket://:3001",
            "loop://x",
            "socket://h:1?timeout=3",
            "",
            "COM3",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn log_file_keys() {
        let c = load("url: /dev/ttyUSB0\nlog_file: /var/log/jmp/console.log\n").unwrap();
        assert_eq!(
            c.capture,
            Some(Capture {
                path: "/var/log/jmp/console.log".into(),
                max_bytes: DEFAULT_LOG_MAX_BYTES,
                keep: DEFAULT_LOG_KEEP
            })
        );
        let c =
            load("url: /dev/ttyUSB0\nlog_file: /l\nlog_file_max_bytes: 512K\nlog_file_keep: 0\n")
                .unwrap()
                .capture
                .unwrap();
        assert_eq!((c.max_bytes, c.keep), (512 * 1024, 0));
        let c = load("url: /dev/ttyUSB0\nlog_file: /l\nlog_file_max_bytes: 4096\n")
            .unwrap()
            .capture
            .unwrap();
        assert_eq!(c.max_bytes, 4096);
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        for (src, key, line, needle) in [
            ("url: loop://\nlog_file: /l\n", "log_file", 2, "loop://"),
            (
                "url: /dev/ttyS0\nlog_file: console.log\n",
                "log_file",
                2,
                "absolute",
            ),
            (
                "url: /dev/ttyS0\nlog_file_keep: 3\n",
                "log_file_keep",
                2,
                "without log_file",
            ),
            (
                "url: /dev/ttyS0\nlog_file: /l\nlog_file_max_bytes: 10 parsecs\n",
                "log_file_max_bytes",
                3,
                "not a size",
            ),
            (
                "url: /dev/ttyS0\nlog_file: /l\nlog_file_max_bytes: 100\n",
                "log_file_max_bytes",
                3,
                "at least",
            ),
            (
                "url: /dev/ttyS0\nlog_file: /l\nlog_file_keep: 1000\n",
                "log_file_keep",
                3,
                "at most",
            ),
        ] {
            let e = err(src);
            assert_eq!(
                e.path,
                format!("export.dut.children.console.config.{key}"),
                "{src}"
            );
            assert_eq!(e.mark.unwrap().line, line, "{src}");
            assert!(e.message.contains(needle), "{src}: {e}");
        }
    }

    #[test]
    fn other_keys() {
        let e = err("url: loop://\nbaud: 9600\n");
        assert!(e.message.contains("unknown field `baud`"), "{e}");
        assert!(err("baudrate: 9600\n")
            .message
            .contains("missing field `url`"));
        for none in ["0", "-5", "0.0", ".inf", ".nan"] {
            let c = load(&format!("url: loop://\ncps: {none}\n")).unwrap();
            assert_eq!(c.cps, None, "cps: {none} means no throttling, as upstream");
        }
        let e = err("url: loop://\ncps: 0.00001\n");
        assert_eq!(e.path, "export.dut.children.console.config.cps");
        assert!(e.message.contains("or 0 for no throttling"), "{e}");
        let c = load("url: loop://\ncps: 10\ncheck_present: no\ndisable_hupcl: yes\n").unwrap();
        assert_eq!(c.cps, Some(10.0));
        assert!(!c.check_present && c.disable_hupcl);
    }
}
