//! The kit routes of [`Client`]: `/v1/kits`.

use hyper::{Method, StatusCode};

use aegis_proto::api::Deleted;
use aegis_proto::kit::{InstallKit, KitInfo};

use crate::client::{encode, percent_encode, route, Client};
use crate::error::ClientError;

/// Largest answer of a kit route read (manifests are small; a list of many fits easily).
const MAX_KIT_BODY: usize = 16 * 1024 * 1024;

/// The answer to [`Client::install_kit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitInstalled {
    /// The kit as installed.
    pub kit: KitInfo,
    /// True when it replaced an installed kit of the same name (HTTP 200 instead of 201).
    pub replaced: bool,
}

impl Client {
    /// `GET /v1/kits`: the installed kits, by name.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_kits(&self) -> Result<Vec<KitInfo>, ClientError> {
        self.json(Method::GET, route("/kits"), None).await
    }

    /// `GET /v1/kits/{name}`.
    ///
    /// # Errors
    /// 404 when no such kit is installed, 400 when its manifest file is invalid; see
    /// [`ClientError`].
    pub async fn kit(&self, name: &str) -> Result<KitInfo, ClientError> {
        self.json(Method::GET, kit_route(name), None).await
    }

    /// `POST /v1/kits`: validates and installs a manifest.
    ///
    /// # Errors
    /// 400 naming the offending field of an invalid manifest, 409 when a kit of that name is
    /// installed and `replace` is not set; see [`ClientError`].
    pub async fn install_kit(&self, body: &InstallKit) -> Result<KitInstalled, ClientError> {
        let exchange = self
            .exchange(Method::POST, route("/kits"), Some(encode(body)))
            .await?;
        let replaced = exchange.response.status() == StatusCode::OK;
        let kit = exchange.json(MAX_KIT_BODY).await?;
        Ok(KitInstalled { kit, replaced })
    }

    /// `DELETE /v1/kits/{name}`.
    ///
    /// # Errors
    /// 404 when no such kit is installed; see [`ClientError`].
    pub async fn remove_kit(&self, name: &str) -> Result<Deleted, ClientError> {
        self.json(Method::DELETE, kit_route(name), None).await
    }
}

fn kit_route(name: &str) -> String {
    route(&format!("/kits/{}", percent_encode(name)))
}
