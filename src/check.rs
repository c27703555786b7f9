//! What `jmp-exporter check` prints, and the part of config checking that needs the Python
//! driver host: every hosted class must import with the chosen interpreter, and a missing one
//! is a config error naming the entry, its YAML line and the package to install. `run` does the
//! same before it binds anything.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use jmp_drivers::yaml;

use crate::config::{resolve, Entry, EntryKind, ExporterConfig, HostedWhy, Loaded};
use crate::session::hosted::process::HostError;
use crate::session::hosted::{Hosting, HostingError};

/// The interpreter for hosted drivers: `--python`, else `JMP_EXPORTER_PYTHON` (clap reads it),
/// else `python3` from `PATH`.
pub fn python(chosen: Option<PathBuf>) -> PathBuf {
    chosen.unwrap_or_else(|| PathBuf::from(crate::session::hosted::DEFAULT_PYTHON))
}

/// Starts the Python driver host if the config hosts anything; every reason it cannot is a
/// config error, ready to print.
pub async fn start_hosting(
    loaded: &Loaded,
    python: PathBuf,
) -> Result<Option<Arc<Hosting>>, Vec<String>> {
    match Hosting::start(&loaded.config, &loaded.source, python.clone()).await {
        Ok(hosting) => Ok(hosting),
        Err(HostingError::Imports(imports)) => {
            let mut errors: Vec<(String, yaml::Error)> = imports
                .errors
                .iter()
                .map(|(dotted, why)| (dotted.clone(), import_error(&loaded.config, dotted, why)))
                .collect();
            errors.sort_by(|a, b| a.0.cmp(&b.0));
            Err(errors.into_iter().map(|(_, e)| e.to_string()).collect())
        }
        Err(HostingError::Host(e)) => Err(vec![host_error(&loaded.config, &python, &e)]),
    }
}

/// A hosted class that does not import, located at its entry's `type:`.
fn import_error(config: &ExporterConfig, dotted: &str, why: &str) -> yaml::Error {
    let names: Vec<String> = dotted.split('.').map(str::to_string).collect();
    let entry = config.find(&names);
    let (type_name, mark) = match entry.map(|e| &e.kind) {
        Some(EntryKind::Hosted {
            type_name, mark, ..
        }) => (type_name.clone(), *mark),
        _ => (String::new(), None),
    };
    let module = type_name.split('.').next().unwrap_or_default();
    let fix = if module.starts_with("jumpstarter_driver_") {
        format!("pip install {}==0.9.0", module.replace('_', "-"))
    } else {
        format!("install the package that provides `{module}`")
    };
    let missing = why.contains("is not installed") || why.contains("ModuleNotFoundError");
    let message = if missing {
        format!("driver class `{type_name}` is not installed for the Python driver host; {fix} into the interpreter the exporter uses (JMP_EXPORTER_PYTHON or --python)")
    } else {
        format!("driver class `{type_name}` cannot be imported by the Python driver host: {why}")
    };
    yaml::Error {
        path: entry
            .map(|e| yaml::join(&e.path, "type"))
            .unwrap_or_else(|| dotted.to_string()),
        mark,
        message,
    }
}

fn host_error(config: &ExporterConfig, python: &std::path::Path, e: &HostError) -> String {
    let entries: Vec<String> = crate::session::hosted::hosted_roots(config)
        .iter()
        .map(|e| e.dotted())
        .collect();
    match e {
        HostError::Spawn { .. } => format!("{} need the Python driver host: {e}", entries.join(", ")),
        _ => format!(
            "{} need the Python driver host, which did not start with {}: {e}; check that jumpstarter 0.9.0 is installed there (pip install jumpstarter==0.9.0) and see the lines above",
            entries.join(", "),
            python.display()
        ),
    }
}

/// The driver tree as `check` prints it: names, types, client classes, and where each runs.
pub fn describe_tree(config: &ExporterConfig, hosting: Option<&Hosting>) -> String {
    fn walk(
        config: &ExporterConfig,
        hosting: Option<&Hosting>,
        entries: &[Entry],
        depth: usize,
        out: &mut String,
    ) {
        for e in entries {
            let indent = "  ".repeat(depth);
            match &e.kind {
                EntryKind::Driver { type_name, spec } => {
                    let _ = writeln!(
                        out,
                        "{indent}{}: {type_name} -> {} (native)",
                        e.name,
                        spec.client()
                    );
                }
                EntryKind::Hosted { type_name, why, .. } => {
                    let client = hosting
                        .and_then(|h| h.labels().get(&e.dotted()))
                        .map_or("?", String::as_str);
                    let why = match why {
                        HostedWhy::NoNativeDriver | HostedWhy::InsideHosted => String::new(),
                        HostedWhy::Asked => ", as jmp_hosted asks".into(),
                        HostedWhy::Referenced(by) => {
                            format!(", because the hosted `{by}` refers to it")
                        }
                    };
                    let _ = writeln!(
                        out,
                        "{indent}{}: {type_name} -> {client} (Python host{why})",
                        e.name
                    );
                }
                EntryKind::Proxy { target, .. } => {
                    let target_entry = resolve(config, e).ok();
                    let client = match target_entry.map(|t| &t.kind) {
                        Some(EntryKind::Driver { spec, .. }) => spec.client().to_string(),
                        Some(EntryKind::Hosted { .. }) => hosting
                            .and_then(|h| {
                                target_entry.and_then(|t| h.labels().get(&t.dotted()).cloned())
                            })
                            .unwrap_or_else(|| "?".into()),
                        _ => "?".into(),
                    };
                    let _ = writeln!(
                        out,
                        "{indent}{}: ref {} -> {client}",
                        e.name,
                        target.join(".")
                    );
                }
            }
            walk(config, hosting, &e.children, depth + 1, out);
        }
    }
    let mut out = format!("(root) -> {}\n", jmp_drivers::client::COMPOSITE);
    walk(config, hosting, &config.export, 1, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_lists_names_types_clients_and_where_each_runs() {
        let config = crate::config::parse(
            "metadata: {}\nexport:\n  power: {type: jumpstarter_driver_power.driver.MockPower}\n  dut:\n    children:\n      s: {type: jumpstarter_driver_pyserial.driver.PySerial, config: {url: 'loop://'}}\n  c: {ref: dut.s}\n  storage: {type: jumpstarter_driver_opendal.driver.Opendal}\n  flasher:\n    type: vendor.Flasher\n    children:\n      serial: {ref: dut.s}\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let text = describe_tree(&config, None);
        assert_eq!(
            text,
            "(root) -> jumpstarter_driver_composite.client.CompositeClient\n  power: jumpstarter_driver_power.driver.MockPower -> jumpstarter_driver_power.client.PowerClient (native)\n  dut: jumpstarter_driver_composite.driver.Composite -> jumpstarter_driver_composite.client.CompositeClient (native)\n    s: jumpstarter_driver_pyserial.driver.PySerial -> ? (Python host, because the hosted `flasher.serial` refers to it)\n  c: ref dut.s -> ?\n  storage: jumpstarter_driver_opendal.driver.Opendal -> ? (Python host)\n  flasher: vendor.Flasher -> ? (Python host)\n    serial: ref dut.s -> ?\n"
        );
    }

    #[test]
    fn a_missing_upstream_driver_package_is_named_with_its_pip_line() {
        let config = crate::config::parse(
            "metadata: {}\nexport:\n  storage:\n    type: jumpstarter_driver_opendal.driver.Opendal\n  mine: {type: vendorpkg.sub.Thing}\n",
            &|_| None,
        )
        .unwrap()
        .config;
        let e = import_error(
            &config,
            "storage",
            "MissingDriverError: Driver 'x' is not installed.",
        );
        assert_eq!(e.path, "export.storage.type");
        assert_eq!(e.mark.map(|m| m.line), Some(4));
        assert!(
            e.message
                .contains("pip install jumpstarter-driver-opendal==0.9.0"),
            "{e}"
        );
        let e = import_error(
            &config,
            "mine",
            "MissingDriverError: Driver 'vendorpkg.sub.Thing' is not installed.",
        );
        assert!(
            e.message
                .contains("install the package that provides `vendorpkg`"),
            "{e}"
        );
    }
}
