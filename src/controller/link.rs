//! The exporter's link to the controller: one channel and identity for the life of the
//! process, one channel per router endpoint, and the calls the exporter makes (Register,
//! Status, ReleaseLease, ReportStatus, Unregister), each with its deadline and its retry rule.
//! The link knows nothing of leases or drivers; the runner decides when to call what.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_rustls::rustls;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};

use super::channel::{self, ChannelOptions, ControllerError, Identity};
use crate::backoff::Backoff;
use crate::config::ExporterConfig;
use crate::lifecycle::SHUTDOWN_MESSAGE;
use crate::proto::controller_service_client::ControllerServiceClient;
use crate::proto::{
    DriverInstanceReport, ExporterStatus, RegisterRequest, ReleaseLeaseRequest,
    ReportStatusRequest, StatusRequest, StatusResponse, UnregisterRequest,
};

/// Deadline of one ReportStatus, Register, ReleaseLease or Unregister call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Time allowed for OFFLINE and Unregister on the way out.
const GOODBYE_BUDGET: Duration = Duration::from_secs(10);
const COMPAT_RELEASE_MESSAGE: &str = "Lease released (compat: ReportStatus with release_lease)";

pub struct Link {
    /// `host:port` of the controller, for messages.
    pub endpoint: String,
    controller: ControllerServiceClient<Channel>,
    identity: Identity,
    tls: Arc<rustls::ClientConfig>,
    options: ChannelOptions,
    routers: Mutex<HashMap<String, Channel>>,
    /// The controller lacks ReleaseLease; release through ReportStatus instead.
    compat_release: AtomicBool,
}

impl Link {
    /// The channel to the controller the config names (it connects lazily, on first use).
    pub fn new(config: &ExporterConfig) -> Result<Self, ControllerError> {
        let endpoint = config
            .endpoint
            .clone()
            .ok_or(ControllerError::Missing("endpoint"))?;
        let identity = Identity::from_config(config)?;
        let tls = channel::client_tls(&config.tls)?;
        if config.tls.insecure {
            tracing::warn!(
                "tls.insecure is set: the controller's and router's certificates are not verified"
            );
        }
        let (options, unused) = ChannelOptions::from_grpc_options(&config.grpc_options);
        for key in unused {
            tracing::warn!(option = %key, "grpcOptions key is not used by this exporter");
        }
        let channel = channel::channel(&endpoint, tls.clone(), &options)?;
        Ok(Self {
            endpoint,
            controller: ControllerServiceClient::new(channel),
            identity,
            tls,
            options,
            routers: Mutex::new(HashMap::new()),
            compat_release: AtomicBool::new(false),
        })
    }

    /// A client of the controller's service, sharing the link's channel.
    pub fn client(&self) -> ControllerServiceClient<Channel> {
        self.controller.clone()
    }

    /// Wraps a message with the exporter's credentials.
    pub fn request<T>(&self, message: T) -> Request<T> {
        self.identity.request(message)
    }

    /// One channel per router endpoint, reused by every tunnel to it.
    pub fn router(&self, endpoint: &str) -> Result<Channel, ControllerError> {
        // A panic elsewhere while holding the lock leaves a map that is still sound.
        let mut routers = self.routers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = routers.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = channel::channel(endpoint, self.tls.clone(), &self.options)?;
        routers.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    pub async fn register(
        &self,
        reports: Vec<DriverInstanceReport>,
    ) -> Result<(), ControllerError> {
        let mut request = self.request(RegisterRequest {
            labels: HashMap::new(),
            reports,
        });
        request.set_timeout(CALL_DEADLINE);
        self.client().register(request).await?;
        Ok(())
    }

    /// Opens the Status stream, which lasts for the life of the registration.
    pub async fn status(&self) -> Result<Streaming<StatusResponse>, ControllerError> {
        let response = self.client().status(self.request(StatusRequest {})).await?;
        Ok(response.into_inner())
    }

    /// Ends the lease from the exporter's side: ReleaseLease, retried while the controller is
    /// unreachable; a controller that does not know ReleaseLease (or refuses it as an old one
    /// does) gets ReportStatus with `release_lease` instead, from then on.
    pub async fn release_lease(&self, lease: &str, current: ExporterStatus) {
        if !self.compat_release.load(Ordering::Relaxed) {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            for attempt in 1..=21 {
                let mut request = self.request(ReleaseLeaseRequest {
                    name: lease.to_string(),
                });
                request.set_timeout(CALL_DEADLINE);
                match self.client().release_lease(request).await {
                    Ok(_) => {
                        tracing::info!(lease = %lease, "lease released");
                        return;
                    }
                    Err(e) => match e.code() {
                        Code::PermissionDenied
                        | Code::InvalidArgument
                        | Code::Unauthenticated
                        | Code::Unimplemented => {
                            tracing::info!(lease = %lease, code = ?e.code(), "the controller does not take ReleaseLease; using ReportStatus with release_lease");
                            self.compat_release.store(true, Ordering::Relaxed);
                            break;
                        }
                        Code::Unavailable | Code::DeadlineExceeded if attempt < 21 => {
                            tracing::debug!(lease = %lease, attempt, "release failed; retrying");
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        _ => {
                            tracing::warn!(lease = %lease, error = %ControllerError::from(e), "could not release the lease");
                            return;
                        }
                    },
                }
            }
        }
        let status = match current {
            ExporterStatus::Available => ExporterStatus::AfterLeaseHook,
            other => other,
        };
        let mut request = self.request(ReportStatusRequest {
            status: status as i32,
            message: Some(COMPAT_RELEASE_MESSAGE.to_string()),
            release_lease: Some(true),
        });
        request.set_timeout(CALL_DEADLINE);
        if let Err(e) = self.client().report_status(request).await {
            tracing::warn!(lease = %lease, error = %ControllerError::from(e), "could not release the lease");
        }
    }

    /// OFFLINE and Unregister, bounded in time.
    pub async fn goodbye(&self) {
        let goodbye = async {
            let mut report = self.request(ReportStatusRequest {
                status: ExporterStatus::Offline as i32,
                message: Some(SHUTDOWN_MESSAGE.to_string()),
                release_lease: None,
            });
            report.set_timeout(GOODBYE_BUDGET);
            if let Err(e) = self.client().report_status(report).await {
                tracing::warn!(error = %ControllerError::from(e), "could not report OFFLINE");
            }
            let mut unregister = self.request(UnregisterRequest {
                reason: "Exporter shutdown".to_string(),
            });
            unregister.set_timeout(GOODBYE_BUDGET);
            match self.client().unregister(unregister).await {
                Ok(_) => tracing::info!("unregistered from the controller"),
                Err(e) => tracing::warn!(error = %ControllerError::from(e), "could not unregister"),
            }
        };
        if tokio::time::timeout(GOODBYE_BUDGET, goodbye).await.is_err() {
            tracing::warn!(
                "the controller did not take OFFLINE and Unregister within {GOODBYE_BUDGET:?}"
            );
        }
    }
}
