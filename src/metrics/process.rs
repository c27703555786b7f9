//! The standard `process_*` series. They come from the prometheus crate's process collector,
//! except `process_cpu_seconds_total`: that one counts whole seconds there, and an exporter that
//! idles at a few milliseconds of CPU a second would read as 0 for minutes on a dashboard. Ours
//! is read from `/proc/self/stat` at each scrape, to the kernel's tick (10 ms).

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

const CPU: &str = "process_cpu_seconds_total";

pub struct Process {
    standard: ProcessCollector,
    cpu: Counter,
    descs: Vec<Desc>,
}

impl Process {
    pub fn new() -> Self {
        let standard = ProcessCollector::for_self();
        let cpu = Counter::with_opts(Opts::new(
            CPU,
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("a valid metric");
        let mut descs: Vec<Desc> = standard
            .desc()
            .into_iter()
            .filter(|d| d.fq_name != CPU)
            .cloned()
            .collect();
        descs.extend(cpu.desc().into_iter().cloned());
        Process {
            standard,
            cpu,
            descs,
        }
    }
}

impl Collector for Process {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(seconds) = cpu_seconds() {
            // Scrapes may overlap; the counter only moves forward.
            let past = self.cpu.get();
            if seconds > past {
                self.cpu.inc_by(seconds - past);
            }
        }
        let mut families: Vec<MetricFamily> = self
            .standard
            .collect()
            .into_iter()
            .filter(|f| f.name() != CPU)
            .collect();
        families.extend(self.cpu.collect());
        families
    }
}

/// User plus system CPU of the whole process (every thread), in seconds.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    ticks(&stat).map(|t| t as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime from a `/proc/PID/stat` line: fields 14 and 15, counted after the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn ticks(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (jmp (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 4 0 99 1 2";
        assert_eq!(ticks(line), Some(42));
        assert_eq!(ticks("garbage"), None);
    }

    #[test]
    fn cpu_is_counted_below_a_second() {
        let before = cpu_seconds().expect("/proc/self/stat");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut spin = 0u64;
        while std::time::Instant::now() < until {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = cpu_seconds().unwrap();
        assert!(after - before >= 0.1, "{before} → {after}");

        let p = Process::new();
        let families = p.collect();
        let cpu = families
            .iter()
            .find(|f| f.name() == CPU)
            .expect("cpu series");
        assert_eq!(families.iter().filter(|f| f.name() == CPU).count(), 1);
        assert!(cpu.get_metric()[0].get_counter().get_value() > 0.0);
        assert!(families
            .iter()
            .any(|f| f.name() == "process_resident_memory_bytes"));
    }
}
