//! What `jmp-exporter list gpio` shows: every GPIO chip with its label, path and line count,
//! and its named lines (plus unnamed lines in use) with their offsets and current consumer.
//! Plain data with a `Display` for the terminal; nothing is requested.

use std::fmt;

use super::cdev;
use super::chip::{Chip, ChipInfo, GpioError, LineInfo};

/// All chips of the machine, in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpioListing {
    pub chips: Vec<ChipListing>,
    /// Chips that could not be read, each a sentence naming the chip and what to do.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipListing {
    pub info: ChipInfo,
    /// Named lines and lines in use, by offset.
    pub lines: Vec<LineInfo>,
}

/// Lists the kernel's GPIO chips.
pub fn list_chips() -> GpioListing {
    let mut listing = GpioListing::default();
    match cdev::all_chips() {
        Ok(chips) => {
            for chip in chips {
                match chip.and_then(|c| describe_chip(&c)) {
                    Ok(c) => listing.chips.push(c),
                    Err(e) => listing.problems.push(e.to_string()),
                }
            }
        }
        Err(e) => listing.problems.push(e.to_string()),
    }
    listing
}

/// The listing of one chip.
pub fn describe_chip(chip: &dyn Chip) -> Result<ChipListing, GpioError> {
    let mut lines = Vec::new();
    for offset in 0..chip.info().num_lines {
        let line = chip.line_info(offset)?;
        if !line.name.is_empty() || line.consumer.is_some() {
            lines.push(line);
        }
    }
    Ok(ChipListing {
        info: chip.info().clone(),
        lines,
    })
}

impl fmt::Display for GpioListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.chips.is_empty() && self.problems.is_empty() {
            writeln!(f, "no GPIO chips on this machine")?;
        }
        for chip in &self.chips {
            write!(f, "{chip}")?;
        }
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ChipListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.info;
        writeln!(
            f,
            "{} [{}] {}, {} lines",
            i.name, i.label, i.path, i.num_lines
        )?;
        if self.lines.is_empty() {
            return writeln!(f, "    (no named lines)");
        }
        let width = self
            .lines
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        for line in &self.lines {
            let name = if line.name.is_empty() {
                "-"
            } else {
                &line.name
            };
            match &line.consumer {
                Some(c) => writeln!(
                    f,
                    "  {:>4}  {name:<width$}  used by {c:?}, {}",
                    line.offset,
                    if line.output { "output" } else { "input" }
                )?,
                None => writeln!(f, "  {:>4}  {name}", line.offset)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::chip::{Direction, Drive, LineSettings};
    use crate::gpio::mock;

    #[test]
    fn listing_the_machine_never_fails() {
        // Whatever this machine has (often no chips at all on CI), there is something to print.
        assert!(!list_chips().to_string().is_empty());
    }

    #[test]
    fn a_chip_lists_named_and_used_lines() {
        let chip = mock::open(
            &mock::MockSpec::parse(
                "listing?lines=6&names=BOARD_RESET,,BOOT_BUTTON&held=4:spi0 CS0",
            )
            .unwrap(),
        )
        .unwrap();
        let _out = chip
            .request(
                0,
                &LineSettings {
                    direction: Direction::Output(false),
                    active_low: false,
                    bias: None,
                    drive: Drive::PushPull,
                    edges: false,
                },
                "jumpstarter-gpiod",
            )
            .unwrap();
        let listing = GpioListing {
            chips: vec![describe_chip(&chip).unwrap()],
            problems: vec!["cannot open GPIO chip /dev/gpiochip9: permission denied; ...".into()],
        };
        assert_eq!(
            listing.to_string(),
            "listing [mock] mock://listing, 6 lines\n\
             \x20    0  BOARD_RESET  used by \"jumpstarter-gpiod\", output\n\
             \x20    2  BOOT_BUTTON\n\
             \x20    4  -            used by \"spi0 CS0\", input\n\
             cannot open GPIO chip /dev/gpiochip9: permission denied; ...\n"
        );
        assert_eq!(
            GpioListing::default().to_string(),
            "no GPIO chips on this machine\n"
        );
    }
}
