//! The Shell driver (`jumpstarter_driver_shell.driver.Shell`, drivers.md §6): the lab's own
//! scripts, named in the config, run on the test host for a client. The contract is
//! upstream's: argv is `shell + [command, method] + args`, the client's `env` is checked
//! against the same deny list and merged into the exporter's environment, output comes as
//! `[stdout, stderr, returncode]` items, and a script past its timeout gets SIGTERM, 5 s, then
//! SIGKILL and a last item with code 199.
//!
//! Where it differs on purpose: output is sent as the script writes it ([`run`] waits on the
//! pipes instead of polling every 100 ms), a multi-byte character split across reads is not
//! broken, a client that goes away ends the script's process group, the session's end ends
//! every script still running, and a method without a command (or an empty one, or an empty
//! `shell:`) is a config error at load instead of a failure at the call.

mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::{self, MapAccess, Visitor};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::yaml::{self, Node};
use crate::{args, Driver, DriverError, DriverSpec, Json, MethodKind, ResultStream};

pub const TYPE: &str = "jumpstarter_driver_shell.driver.Shell";

/// Names a client may not set: each lets it change what the script runs (a preloaded
/// library, another `PATH`, a startup file) or whose credentials it uses.
const BLOCKED_NAMES: &[&str] = &[
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "PYTHONPATH",
    "BASH_ENV",
    "KUBECONFIG",
    "HOME",
];
const BLOCKED_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];

/// How long the session's end waits for its scripts' process groups to go.
const CLOSE_WAIT: Duration = Duration::from_secs(7);

fn default_shell() -> Vec<String> {
    vec!["bash".into(), "-c".into()]
}

fn default_timeout() -> f64 {
    300.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellConfig {
    methods: Methods,
    #[serde(default = "default_shell")]
    shell: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout: f64,
    #[serde(default)]
    cwd: Option<PathBuf>,
}

/// A method as the config gives it: a command, or a command with a description and its own
/// timeout.
#[derive(Deserialize)]
#[serde(untagged)]
enum MethodConfig {
    Command(String),
    Full(FullMethod),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullMethod {
    command: Option<String>,
    description: Option<String>,
    timeout: Option<f64>,
}

/// `methods:` in config order (`get_methods` answers in that order, and the CLI lists them so).
struct Methods(Vec<(String, MethodConfig)>);

impl<'de> Deserialize<'de> for Methods {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Methods;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of method names to commands")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Methods, A::Error> {
                let mut out = Vec::new();
                while let Some((name, method)) = map.next_entry()? {
                    out.push((name, method));
                }
                Ok(Methods(out))
            }
        }
        d.deserialize_map(InOrder)
    }
}

/// One method, checked.
#[derive(Clone, Debug)]
struct Method {
    name: String,
    command: String,
    description: Option<String>,
    timeout: f64,
}

#[derive(Clone, Debug)]
struct ShellSpec {
    methods: Vec<Method>,
    shell: Vec<String>,
    cwd: Option<PathBuf>,
}

fn positive(seconds: f64) -> bool {
    seconds.is_finite() && seconds > 0.0
}

pub fn spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    Ok(Box::new(read(node, path)?))
}

fn read(node: &Node, path: &str) -> Result<ShellSpec, yaml::Error> {
    let c: ShellConfig = yaml::from_node(node, path)?;
    let at = |key: &str, message: String| {
        let key_path = yaml::join(path, key);
        let located = key
            .split('.')
            .try_fold(node, |n, k| n.get(k))
            .unwrap_or(node);
        yaml::Error::at(&key_path, located, message)
    };
    if c.shell.is_empty() || c.shell[0].trim().is_empty() {
        return Err(at(
            "shell",
            "`shell:` is empty: give the program and its flags, such as [bash, -c]".into(),
        ));
    }
    if !positive(c.timeout) {
        return Err(at(
            "timeout",
            format!("timeout {} is not a number of seconds above 0", c.timeout),
        ));
    }
    if c.methods.0.is_empty() {
        return Err(at(
            "methods",
            "`methods:` is empty: name at least one method and its command".into(),
        ));
    }
    let mut methods = Vec::new();
    for (name, method) in c.methods.0 {
        let key = format!("methods.{name}");
        let (command, description, timeout) = match method {
            MethodConfig::Command(command) => (Some(command), None, None),
            MethodConfig::Full(f) => (f.command, f.description, f.timeout),
        };
        let command = match command {
            Some(command) if !command.trim().is_empty() => command,
            Some(_) => return Err(at(&key, format!("method `{name}` has an empty command"))),
            None => {
                return Err(at(
                    &key,
                    format!("method `{name}` has no `command:`: give the script it runs"),
                ))
            }
        };
        let timeout = timeout.unwrap_or(c.timeout);
        if !positive(timeout) {
            return Err(at(
                &key,
                format!("method `{name}`: timeout {timeout} is not a number of seconds above 0"),
            ));
        }
        methods.push(Method {
            name,
            command,
            description,
            timeout,
        });
    }
    Ok(ShellSpec {
        methods,
        shell: c.shell,
        cwd: c.cwd,
    })
}

impl DriverSpec for ShellSpec {
    fn client(&self) -> &'static str {
        crate::client::SHELL
    }

    fn methods_description(&self) -> Vec<(String, String)> {
        self.methods
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.description.clone()?)))
            .collect()
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(Shell::new(self.clone()))
    }
}

pub struct Shell {
    spec: Arc<ShellSpec>,
    /// The session's running scripts, so that its end can wait for them to be gone.
    scripts: TaskTracker,
    /// Cancelled at the session's end: every script still running is ended.
    session: CancellationToken,
}

/// Python's name for a JSON value's type, as upstream's messages give it.
fn python_class(v: &Json) -> &'static str {
    match v {
        Json::Null => "<class 'NoneType'>",
        Json::Bool(_) => "<class 'bool'>",
        Json::Number(n) if n.is_f64() => "<class 'float'>",
        Json::Number(_) => "<class 'int'>",
        Json::String(_) => "<class 'str'>",
        Json::Array(_) => "<class 'list'>",
        Json::Object(_) => "<class 'dict'>",
    }
}

/// Python's `repr` of a string, as upstream's messages quote names and commands.
fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr` of a list of strings.
fn python_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| python_repr(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Seconds as Python prints the config's number (`300`, `0.5`).
fn python_seconds(s: f64) -> String {
    if s.fract() == 0.0 && s.abs() < 1e15 {
        format!("{}", s as i64)
    } else {
        format!("{s}")
    }
}

/// Python's `str.isidentifier`, for the names a shell can take.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn invalid(message: String) -> DriverError {
    DriverError::InvalidArgument(message)
}

impl Shell {
    fn new(spec: ShellSpec) -> Self {
        Shell {
            spec: Arc::new(spec),
            scripts: TaskTracker::new(),
            session: CancellationToken::new(),
        }
    }

    fn method_named(&self, name: &str) -> Result<&Method, DriverError> {
        self.spec
            .methods
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                let names: Vec<String> = self.spec.methods.iter().map(|m| m.name.clone()).collect();
                invalid(format!(
                    "Method {} not found in available methods: {}",
                    python_repr(name),
                    python_list(&names)
                ))
            })
    }

    /// Checks a `call_method` request as upstream does, in its order.
    fn job(&self, args: &[Json]) -> Result<run::Job, DriverError> {
        if args.len() < 2 {
            return Err(invalid(format!(
                "call_method takes the method's name and its environment (an object), then its arguments; got {} argument(s)",
                args.len()
            )));
        }
        let name = args[0].as_str().ok_or_else(|| {
            invalid(format!(
                "the method's name must be a string, got {}",
                python_class(&args[0])
            ))
        })?;
        let method = self.method_named(name)?;
        let mut env = Vec::new();
        match &args[1] {
            Json::Null => {}
            Json::Object(vars) => {
                for (key, value) in vars {
                    if !is_identifier(key) {
                        return Err(invalid(format!("Invalid environment variable name: {key}")));
                    }
                    if BLOCKED_NAMES.contains(&key.as_str())
                        || BLOCKED_PREFIXES.iter().any(|p| key.starts_with(p))
                    {
                        return Err(invalid(format!(
                            "Environment variable {} is blocked for security reasons",
                            python_repr(key)
                        )));
                    }
                    let Json::String(value) = value else {
                        return Err(invalid(format!(
                            "Environment variable {} must be a string, got {}",
                            python_repr(key),
                            python_class(value)
                        )));
                    };
                    env.push((key.clone(), value.clone()));
                }
            }
            other => {
                return Err(invalid(format!(
                    "the environment must be an object of names to strings, got {}",
                    python_class(other)
                )))
            }
        }
        let mut script_args = Vec::new();
        for arg in &args[2..] {
            match arg {
                Json::String(s) => script_args.push(s.clone()),
                other => {
                    return Err(invalid(format!(
                        "All arguments must be strings, got {}",
                        python_class(other)
                    )))
                }
            }
        }
        if let Some(cwd) = &self.spec.cwd {
            if !cwd.is_dir() {
                return Err(invalid(format!(
                    "Working directory does not exist: {}",
                    cwd.display()
                )));
            }
        }
        let mut argv = self.spec.shell.clone();
        argv.push(method.command.clone());
        argv.push(method.name.clone());
        argv.extend(script_args);
        Ok(run::Job {
            method: method.name.clone(),
            timeout_text: python_seconds(method.timeout),
            timeout: Duration::from_secs_f64(method.timeout),
            argv_text: python_list(&argv),
            argv,
            env,
            cwd: self.spec.cwd.clone(),
        })
    }
}

#[async_trait]
impl Driver for Shell {
    fn method(&self, name: &str) -> Option<MethodKind> {
        match name {
            "get_methods" => Some(MethodKind::Call),
            "call_method" => Some(MethodKind::Streaming),
            _ => None,
        }
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        args::expect_count(method, &args, 0)?;
        Ok(Json::Array(
            self.spec
                .methods
                .iter()
                .map(|m| Json::String(m.name.clone()))
                .collect(),
        ))
    }

    async fn streaming_call(
        &self,
        _method: &str,
        args: Vec<Json>,
    ) -> Result<ResultStream, DriverError> {
        let job = self.job(&args)?;
        tracing::info!(
            method = %job.method,
            args = job.argv.len() - self.spec.shell.len() - 2,
            env = job.env.len(),
            "running shell method"
        );
        run::start(job, &self.scripts, self.session.child_token())
    }

    async fn close(&self) {
        self.session.cancel();
        self.scripts.close();
        if tokio::time::timeout(CLOSE_WAIT, self.scripts.wait())
            .await
            .is_err()
        {
            tracing::warn!("a shell script's process group outlived the session's end");
        }
    }
}

#[cfg(test)]
mod tests;
