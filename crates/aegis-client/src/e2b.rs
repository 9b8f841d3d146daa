//! The routes of [`Client`] for the E2B-compatible listener's keys: `/v1/e2b/keys`.

use hyper::Method;

use aegis_proto::api::{CreateE2bKey, Deleted, E2bKeyCreated, E2bKeyInfo};

use crate::client::{encode, percent_encode, route, Client};
use crate::error::ClientError;

impl Client {
    /// `POST /v1/e2b/keys`: a new key, shown in this answer only.
    ///
    /// # Errors
    /// 400 for an invalid name, 409 when one of that name exists; see [`ClientError`].
    pub async fn create_e2b_key(&self, name: &str) -> Result<E2bKeyCreated, ClientError> {
        let body = encode(&CreateE2bKey {
            name: name.to_owned(),
        });
        self.json(Method::POST, route("/e2b/keys"), Some(body))
            .await
    }

    /// `GET /v1/e2b/keys`: names and dates, never keys.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_e2b_keys(&self) -> Result<Vec<E2bKeyInfo>, ClientError> {
        self.json(Method::GET, route("/e2b/keys"), None).await
    }

    /// `DELETE /v1/e2b/keys/{id-or-name}`.
    ///
    /// # Errors
    /// 404 when there is no such key; see [`ClientError`].
    pub async fn revoke_e2b_key(&self, id_or_name: &str) -> Result<Deleted, ClientError> {
        let path = route(&format!("/e2b/keys/{}", percent_encode(id_or_name)));
        self.json(Method::DELETE, path, None).await
    }
}
