//! The ttRPC services on the CDH socket, each a thin adapter onto [`Hub`].

use std::path::Path;
use std::sync::Arc;

use keyprovider::protocol::Op;
use ttrpc::r#async::{Server, TtrpcContext};

use super::hub::{Hub, HubError};
use super::pb::{api, api_ttrpc, keyprovider as kp, keyprovider_ttrpc};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("ttRPC server")]
    Ttrpc(#[source] ttrpc::Error),
}

/// The ttRPC answer for a failed call: the code from [`HubError::code`] (kata-agent
/// and CoCo clients act on it), the message [`HubError::message`] (the chain once).
pub fn status(e: HubError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.message()))
}

/// Every CDH service over one hub.
#[derive(Clone)]
pub struct Services(pub Arc<Hub>);

#[async_trait::async_trait]
impl api_ttrpc::ImagePullService for Services {
    async fn pull_image(
        &self,
        _ctx: &TtrpcContext,
        req: api::ImagePullRequest,
    ) -> ttrpc::Result<api::ImagePullResponse> {
        let digest = self.0.pull_image(&req.image_url, &req.bundle_path).await.map_err(status)?;
        let mut resp = api::ImagePullResponse::new();
        resp.manifest_digest = digest;
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl api_ttrpc::GetResourceService for Services {
    async fn get_resource(
        &self,
        _ctx: &TtrpcContext,
        req: api::GetResourceRequest,
    ) -> ttrpc::Result<api::GetResourceResponse> {
        let bytes = self.0.get_resource(&req.ResourcePath).await.map_err(status)?;
        let mut resp = api::GetResourceResponse::new();
        resp.Resource = bytes.to_vec();
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl api_ttrpc::SealedSecretService for Services {
    async fn unseal_secret(
        &self,
        _ctx: &TtrpcContext,
        req: api::UnsealSecretInput,
    ) -> ttrpc::Result<api::UnsealSecretOutput> {
        let plain = self.0.unseal_secret(&req.secret).await.map_err(status)?;
        let mut resp = api::UnsealSecretOutput::new();
        resp.plaintext = plain.to_vec();
        Ok(resp)
    }
}

#[async_trait::async_trait]
impl api_ttrpc::SecureMountService for Services {
    async fn secure_mount(
        &self,
        _ctx: &TtrpcContext,
        req: api::SecureMountRequest,
    ) -> ttrpc::Result<api::SecureMountResponse> {
        self.0
            .secure_mount(&req.volume_type, &req.options, &req.flags, &req.mount_point)
            .await
            .map_err(status)?;
        Ok(api::SecureMountResponse::new())
    }
}

#[async_trait::async_trait]
impl keyprovider_ttrpc::KeyProviderService for Services {
    async fn wrap_key(
        &self,
        _ctx: &TtrpcContext,
        req: kp::KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<kp::KeyProviderKeyWrapProtocolOutput> {
        let out =
            self.0.keyprovider(&req.KeyProviderKeyWrapProtocolInput, Op::KeyWrap).await.map_err(status)?;
        let mut resp = kp::KeyProviderKeyWrapProtocolOutput::new();
        resp.KeyProviderKeyWrapProtocolOutput = out;
        Ok(resp)
    }

    async fn un_wrap_key(
        &self,
        _ctx: &TtrpcContext,
        req: kp::KeyProviderKeyWrapProtocolInput,
    ) -> ttrpc::Result<kp::KeyProviderKeyWrapProtocolOutput> {
        let out =
            self.0.keyprovider(&req.KeyProviderKeyWrapProtocolInput, Op::KeyUnwrap).await.map_err(status)?;
        let mut resp = kp::KeyProviderKeyWrapProtocolOutput::new();
        resp.KeyProviderKeyWrapProtocolOutput = out;
        Ok(resp)
    }
}

/// Binds `socket` (a filesystem path; a stale socket file is replaced, its
/// directory created 0700-private if missing) and starts serving. The returned
/// server stops with [`Server::shutdown`].
pub async fn start(hub: Arc<Hub>, socket: &Path) -> Result<Server, ServeError> {
    let services = Arc::new(Services(hub));
    let mut all = api_ttrpc::create_image_pull_service(services.clone());
    all.extend(api_ttrpc::create_get_resource_service(services.clone()));
    all.extend(api_ttrpc::create_sealed_secret_service(services.clone()));
    all.extend(api_ttrpc::create_secure_mount_service(services.clone()));
    all.extend(keyprovider_ttrpc::create_key_provider_service(services));
    start_services(all, socket).await
}

/// Binds `socket` as [`start`] describes and serves `services` on it (the CDH
/// services, or attestation-agent's).
pub async fn start_services(
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
    socket: &Path,
) -> Result<Server, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let sock_err = |reason: String| ServeError::Socket { path: socket.display().to_string(), reason };
    if let Some(dir) = socket.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| sock_err(format!("creating its directory: {e}")))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    match socket.symlink_metadata() {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(socket).map_err(|e| sock_err(format!("removing the stale socket: {e}")))?
        }
        Ok(_) => return Err(sock_err("exists and is not a socket; refusing to replace it".into())),
        Err(_) => {}
    }
    // kata-agent (and anything else) connects as soon as the socket path exists: the
    // path must appear only once the socket listens, already private. So it listens
    // under a random name beside the final one, and one rename publishes it.
    let dir = socket.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let suffix = crate::fsutil::unpredictable_suffix().map_err(|e| sock_err(format!("random name: {e}")))?;
    let staging = dir.join(format!(".cdh-{suffix}.sock"));
    let listener = tokio::net::UnixListener::bind(&staging).map_err(|e| sock_err(format!("bind: {e}")))?;
    let publish = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, socket));
    if let Err(e) = publish {
        let _ = std::fs::remove_file(&staging);
        return Err(sock_err(format!("publishing the listening socket: {e}")));
    }
    let mut server = Server::new().add_listener(listener.into()).register_service(services);
    server.start().await.map_err(ServeError::Ttrpc)?;
    Ok(server)
}

/// Watches `socket` and, whenever its path is gone (kata-agent removes `cdh.sock`
/// before launching `confidential-data-hub`), publishes it again with `start`. The
/// servers started here live as long as the task; abort it before removing the
/// socket at shutdown.
pub fn keep_published<F, Fut>(socket: std::path::PathBuf, start: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(std::path::PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Server, ServeError>> + Send,
{
    tokio::spawn(async move {
        let mut again: Vec<Server> = Vec::new();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if socket.symlink_metadata().is_ok() {
                continue;
            }
            match start(socket.clone()).await {
                Ok(s) => {
                    tracing::info!(socket = %socket.display(), "socket path was removed; published again");
                    again.push(s);
                }
                Err(e) => tracing::warn!(error = %report::Line(&e), "publishing the socket again"),
            }
        }
    })
}
