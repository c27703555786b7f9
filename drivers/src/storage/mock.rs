//! Storage drivers without hardware, as upstream's opendal package has them: `MockStorageMux`
//! and `MockStorageMuxFlasher` (one temporary file per session, `write` replaces it with the
//! upload, `read` streams it back) and `MockFlasher` (one temporary file per partition name,
//! `default` when none is given). Labs dry-run flashing pipelines with them, and upstream's own
//! e2e suite uses `MockStorageMux`; the files go when the session ends.

use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;

use super::{cut_short, pump};
use crate::resource::Resources;
use crate::yaml::{self, Node};
use crate::{args, Driver, DriverError, DriverSpec, Json, MethodKind};

pub const MOCK_STORAGE_MUX: &str = "jumpstarter_driver_opendal.driver.MockStorageMux";
pub const MOCK_STORAGE_MUX_FLASHER: &str =
    "jumpstarter_driver_opendal.driver.MockStorageMuxFlasher";
pub const MOCK_FLASHER: &str = "jumpstarter_driver_opendal.driver.MockFlasher";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

pub fn mock_mux_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let NoConfig {} = yaml::from_node(node, path)?;
    Ok(Box::new(MuxSpec {
        client: crate::client::STORAGE_MUX,
    }))
}

pub fn mock_mux_flasher_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let NoConfig {} = yaml::from_node(node, path)?;
    Ok(Box::new(MuxSpec {
        client: crate::client::STORAGE_MUX_FLASHER,
    }))
}

pub fn mock_flasher_spec(node: &Node, path: &str) -> Result<Box<dyn DriverSpec>, yaml::Error> {
    let NoConfig {} = yaml::from_node(node, path)?;
    Ok(Box::new(FlasherSpec))
}

struct MuxSpec {
    client: &'static str,
}

impl DriverSpec for MuxSpec {
    fn client(&self) -> &'static str {
        self.client
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(MockStorageMux {
            file: Mutex::new(None),
        })
    }
}

/// The session's temporary file, made at the first transfer (build touches nothing).
pub struct MockStorageMux {
    file: Mutex<Option<tempfile::TempPath>>,
}

impl MockStorageMux {
    fn path(&self) -> Result<PathBuf, DriverError> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            let made = tempfile::Builder::new()
                .prefix("jmp-mock-storage-")
                .tempfile()
                .map_err(|e| {
                    DriverError::Failed(format!("cannot make the mock storage's file: {e}"))
                })?;
            *file = Some(made.into_temp_path());
        }
        Ok(file.as_ref().map(|p| p.to_path_buf()).unwrap_or_default())
    }
}

#[async_trait]
impl Driver for MockStorageMux {
    fn method(&self, name: &str) -> Option<MethodKind> {
        super::mux_method(name)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        self.call_with(method, args, &crate::resource::NoResources)
            .await
    }

    async fn call_with(
        &self,
        method: &str,
        args: Vec<Json>,
        resources: &dyn Resources,
    ) -> Result<Json, DriverError> {
        match method {
            "host" | "dut" | "off" => {
                args::expect_count(method, &args, 0)?;
                tracing::info!("mock storage switched to {method}");
                Ok(Json::Null)
            }
            "write" => {
                args::expect_count(method, &args, 1)?;
                let path = self.path()?;
                write_file(&path, &args[0], resources, "the mock storage").await
            }
            "read" => {
                args::expect_count(method, &args, 1)?;
                let path = self.path()?;
                super::card::read(&path, "the mock storage", &args[0], resources).await
            }
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of MockStorageMux"
            ))),
        }
    }

    async fn close(&self) {
        // Dropping the path removes the file.
        self.file.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

struct FlasherSpec;

impl DriverSpec for FlasherSpec {
    fn client(&self) -> &'static str {
        crate::client::FLASHER
    }

    fn build(&self) -> Box<dyn Driver> {
        Box::new(MockFlasher {
            dir: Mutex::new(None),
        })
    }
}

/// One file per partition in the session's temporary directory.
pub struct MockFlasher {
    dir: Mutex<Option<tempfile::TempDir>>,
}

impl MockFlasher {
    fn path(&self, partition: &str) -> Result<PathBuf, DriverError> {
        if partition.is_empty()
            || partition.contains('/')
            || partition == "."
            || partition == ".."
            || partition.contains('\0')
        {
            return Err(DriverError::InvalidArgument(format!(
                "partition {partition:?} is not a plain name"
            )));
        }
        let mut dir = self.dir.lock().unwrap_or_else(|p| p.into_inner());
        if dir.is_none() {
            let made = tempfile::Builder::new()
                .prefix("jmp-mock-flasher-")
                .tempdir()
                .map_err(|e| {
                    DriverError::Failed(format!("cannot make the mock flasher's directory: {e}"))
                })?;
            *dir = Some(made);
        }
        Ok(dir
            .as_ref()
            .map(|d| d.path().join(partition))
            .unwrap_or_default())
    }
}

/// The partition argument: absent or null is `default`, as upstream.
fn partition(method: &str, args: &[Json]) -> Result<String, DriverError> {
    match args.get(1) {
        None | Some(Json::Null) => Ok("default".into()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(DriverError::InvalidArgument(format!(
            "{method}: the partition must be a name or null, not {other}"
        ))),
    }
}

#[async_trait]
impl Driver for MockFlasher {
    fn method(&self, name: &str) -> Option<MethodKind> {
        matches!(name, "flash" | "dump").then_some(MethodKind::Call)
    }

    async fn call(&self, method: &str, args: Vec<Json>) -> Result<Json, DriverError> {
        self.call_with(method, args, &crate::resource::NoResources)
            .await
    }

    async fn call_with(
        &self,
        method: &str,
        args: Vec<Json>,
        resources: &dyn Resources,
    ) -> Result<Json, DriverError> {
        if args.is_empty() || args.len() > 2 {
            return Err(DriverError::InvalidArgument(format!(
                "{method} takes a resource handle and an optional partition, not {} arguments",
                args.len()
            )));
        }
        let partition = partition(method, &args)?;
        let path = self.path(&partition)?;
        let what = format!("the mock flasher's partition {partition}");
        match method {
            "flash" => write_file(&path, &args[0], resources, &what).await,
            "dump" => {
                if !path.exists() {
                    return Err(DriverError::Failed(format!(
                        "nothing was flashed to {what} in this session"
                    )));
                }
                super::card::read(&path, &what, &args[0], resources).await
            }
            _ => Err(DriverError::NotImplemented(format!(
                "{method} is not a method of MockFlasher"
            ))),
        }
    }

    async fn close(&self) {
        self.dir.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Replaces the file's content with the upload behind `handle`.
async fn write_file(
    path: &std::path::Path,
    handle: &Json,
    resources: &dyn Resources,
    what: &str,
) -> Result<Json, DriverError> {
    let mut source = resources.open_read(handle).await?;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| DriverError::Failed(format!("cannot open {what} for writing: {e}")))?;
    let moved = pump(&mut source, &mut file)
        .await
        .map_err(|(moved, cut)| cut_short("writing", "the upload", what, moved, cut))?;
    tracing::info!(bytes = moved, "wrote {what}");
    Ok(Json::Null)
}
