//! [`Chip`] over the Linux GPIO character device (uAPI v2, through gpiocdev). Edge events are
//! read from the request's file descriptor through tokio's reactor, so a line with nobody
//! waiting costs nothing but an idle descriptor.

use std::io::ErrorKind;
use std::path::Path;

use async_trait::async_trait;
use gpiocdev::line::{self, EdgeDetection, EventClock, Value};
use gpiocdev::tokio::AsyncRequest;

use super::chip::{
    Bias, Chip, ChipInfo, Direction, Drive, Edge, EdgeKind, GpioError, LineInfo, LineRequest,
    LineSettings,
};

/// A kernel GPIO chip, opened for line information and requests.
pub struct CdevChip {
    chip: gpiocdev::Chip,
    info: ChipInfo,
}

impl CdevChip {
    /// Opens the chip at a device path (symlinks such as udev's are followed).
    pub fn open_path(path: &str) -> Result<Self, GpioError> {
        let chip = gpiocdev::Chip::from_path(path).map_err(|e| open_error(path, &e))?;
        let info = chip.info().map_err(|e| open_error(path, &e))?;
        Ok(Self {
            info: ChipInfo {
                name: info.name,
                label: info.label,
                path: chip.path().display().to_string(),
                num_lines: info.num_lines,
            },
            chip,
        })
    }

    /// Opens a chip by kernel name (`gpiochip0`) or by label (`pinctrl-bcm2711`).
    pub fn open_label(label: &str) -> Result<Self, GpioError> {
        let by_name = format!("/dev/{label}");
        if label.starts_with("gpiochip") && Path::new(&by_name).exists() {
            return Self::open_path(&by_name);
        }
        let mut found = Vec::new();
        let mut present = Vec::new();
        for chip in all_chips()? {
            match chip {
                Ok(chip) if chip.info.label == label => found.push(chip),
                Ok(chip) => present.push(format!("{} [{}]", chip.info.name, chip.info.label)),
                Err(e) => present.push(format!("{e}")),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(GpioError::ChipNotFound {
                chip: format!("labelled {label:?}"),
                present,
            }),
            _ => Err(GpioError::AmbiguousLabel {
                label: label.to_string(),
                paths: found.iter().map(|c| c.info.path.clone()).collect(),
            }),
        }
    }
}

/// Every GPIO character device on the machine, opened, in name order; a chip that cannot be
/// opened is an `Err` naming it and why.
pub fn all_chips() -> Result<Vec<Result<CdevChip, GpioError>>, GpioError> {
    let paths = gpiocdev::chip::chips().map_err(|e| GpioError::ChipAccess {
        path: "/dev".into(),
        message: e.to_string(),
    })?;
    Ok(paths
        .iter()
        .map(|p| CdevChip::open_path(&p.display().to_string()))
        .collect())
}

/// Finds a named line across every chip; the name must be unique.
pub fn find_named_line(name: &str) -> Result<(CdevChip, u32), GpioError> {
    let mut found = Vec::new();
    let mut searched = Vec::new();
    for chip in all_chips()? {
        let Ok(chip) = chip else { continue };
        searched.push(chip.info.name.clone());
        if let Some(offset) = chip.find_line(name)? {
            found.push((chip, offset));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(GpioError::NoNamedLine {
            name: name.to_string(),
            searched: if searched.is_empty() {
                "this machine (it has no GPIO chips the exporter can open)".into()
            } else {
                format!("any chip ({})", searched.join(", "))
            },
        }),
        _ => Err(GpioError::AmbiguousLineName {
            name: name.to_string(),
            places: found
                .iter()
                .map(|(c, o)| format!("{} line {o}", c.info.path))
                .collect(),
        }),
    }
}

fn errno(e: &gpiocdev::Error) -> Option<i32> {
    match e {
        gpiocdev::Error::Os(n) => Some(n.0),
        gpiocdev::Error::Uapi(_, gpiocdev_uapi::Error::Os(n)) => Some(n.0),
        _ => None,
    }
}

fn kind(e: &gpiocdev::Error) -> Option<ErrorKind> {
    errno(e).map(|n| std::io::Error::from_raw_os_error(n).kind())
}

fn open_error(path: &str, e: &gpiocdev::Error) -> GpioError {
    match kind(e) {
        Some(ErrorKind::NotFound) => GpioError::ChipNotFound {
            chip: path.to_string(),
            present: gpiocdev::chip::chips()
                .unwrap_or_default()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        },
        Some(ErrorKind::PermissionDenied) => GpioError::PermissionDenied {
            path: path.to_string(),
        },
        _ => GpioError::ChipAccess {
            path: path.to_string(),
            message: e.to_string(),
        },
    }
}

fn line_config(settings: &LineSettings) -> line::Config {
    let mut config = line::Config {
        active_low: settings.active_low,
        ..Default::default()
    };
    match settings.direction {
        Direction::AsIs => {
            config.as_is();
        }
        Direction::Input => {
            config.as_input();
            config.bias = settings.bias.map(bias);
            if settings.edges {
                config.edge_detection = Some(EdgeDetection::BothEdges);
                config.event_clock = Some(EventClock::Monotonic);
            }
        }
        Direction::Output(active) => {
            config.as_output(Value::from(active));
            config.bias = settings.bias.map(bias);
            config.drive = Some(match settings.drive {
                Drive::PushPull => line::Drive::PushPull,
                Drive::OpenDrain => line::Drive::OpenDrain,
                Drive::OpenSource => line::Drive::OpenSource,
            });
        }
    }
    config
}

fn bias(b: Bias) -> line::Bias {
    match b {
        Bias::PullUp => line::Bias::PullUp,
        Bias::PullDown => line::Bias::PullDown,
        Bias::Disabled => line::Bias::Disabled,
    }
}

impl Chip for CdevChip {
    fn info(&self) -> &ChipInfo {
        &self.info
    }

    fn line_info(&self, offset: u32) -> Result<LineInfo, GpioError> {
        if offset >= self.info.num_lines {
            return Err(GpioError::NoSuchLine {
                chip: self.info.to_string(),
                offset,
                num_lines: self.info.num_lines,
            });
        }
        let info = self.chip.line_info(offset).map_err(|e| GpioError::Line {
            chip: self.info.to_string(),
            line: format!("line {offset}"),
            action: "reading line info",
            message: e.to_string(),
        })?;
        Ok(LineInfo {
            offset,
            consumer: info.used.then(|| {
                if info.consumer.is_empty() {
                    "(unnamed)".to_string()
                } else {
                    info.consumer.clone()
                }
            }),
            name: info.name,
            output: info.direction == line::Direction::Output,
            active_low: info.active_low,
        })
    }

    fn request(
        &self,
        offset: u32,
        settings: &LineSettings,
        consumer: &str,
    ) -> Result<Box<dyn LineRequest>, GpioError> {
        let info = self.line_info(offset)?;
        let busy = |holder: Option<String>| GpioError::LineBusy {
            chip: self.info.to_string(),
            line: info.describe(),
            consumer: holder.unwrap_or_else(|| "(unknown)".into()),
        };
        if info.consumer.is_some() {
            return Err(busy(info.consumer.clone()));
        }
        // The reactor registration below needs a runtime; say so instead of panicking.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(GpioError::Line {
                chip: self.info.to_string(),
                line: info.describe(),
                action: "requesting",
                message: "no tokio runtime to watch edge events on".into(),
            });
        }
        let request = gpiocdev::Request::builder()
            .on_chip(self.chip.path())
            .with_consumer(consumer)
            .with_line(offset)
            .from_line_config(&line_config(settings))
            .request()
            .map_err(|e| {
                if kind(&e) == Some(ErrorKind::ResourceBusy) {
                    busy(self.line_info(offset).ok().and_then(|i| i.consumer))
                } else {
                    GpioError::Line {
                        chip: self.info.to_string(),
                        line: info.describe(),
                        action: "requesting",
                        message: e.to_string(),
                    }
                }
            })?;
        Ok(Box::new(CdevRequest {
            request: AsyncRequest::new(request),
            offset,
            chip: self.info.to_string(),
            line: info.describe(),
        }))
    }
}

struct CdevRequest {
    request: AsyncRequest,
    offset: u32,
    chip: String,
    line: String,
}

impl CdevRequest {
    fn fail(&self, action: &'static str, e: gpiocdev::Error) -> GpioError {
        // The same error the mock chip gives, so the recovery in `line` is one code path.
        if errno(&e).is_some_and(super::chip::errno_means_gone) {
            return GpioError::ChipGone {
                chip: self.chip.clone(),
                line: self.line.clone(),
                action,
                message: e.to_string(),
            };
        }
        GpioError::Line {
            chip: self.chip.clone(),
            line: self.line.clone(),
            action,
            message: e.to_string(),
        }
    }
}

#[async_trait]
impl LineRequest for CdevRequest {
    fn value(&self) -> Result<bool, GpioError> {
        self.request
            .as_ref()
            .value(self.offset)
            .map(|v| v == Value::Active)
            .map_err(|e| self.fail("reading the value", e))
    }

    fn set_value(&self, active: bool) -> Result<(), GpioError> {
        self.request
            .as_ref()
            .set_value(self.offset, Value::from(active))
            .map_err(|e| self.fail("setting the value", e))
    }

    fn reconfigure(&self, settings: &LineSettings) -> Result<(), GpioError> {
        let mut config = gpiocdev::request::Config::default();
        config
            .with_line(self.offset)
            .from_line_config(&line_config(settings));
        self.request
            .as_ref()
            .reconfigure(&config)
            .map_err(|e| self.fail("reconfiguring", e))
    }

    async fn next_edge(&self) -> Result<Edge, GpioError> {
        let event = self
            .request
            .read_edge_event()
            .await
            .map_err(|e| self.fail("reading an edge event", e))?;
        Ok(Edge {
            kind: match event.kind {
                line::EdgeKind::Rising => EdgeKind::Rising,
                line::EdgeKind::Falling => EdgeKind::Falling,
            },
            timestamp_ns: event.timestamp_ns,
        })
    }
}
