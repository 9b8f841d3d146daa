//! The secret routes of [`Client`]: `/v1/secrets` and `PUT /v1/instances/{id}/secrets`. No
//! answer of the daemon ever carries a value; the value travels only in
//! [`Client::set_secret`]'s request body.

use hyper::{Method, StatusCode};

use aegis_proto::api::{Deleted, Instance, PutSecret, SecretInfo, SetInstanceSecrets};

use crate::client::{encode, percent_encode, route, Client};
use crate::error::ClientError;

/// Largest answer of a secret route read (a list of thousands of names fits easily).
const MAX_SECRET_BODY: usize = 4 * 1024 * 1024;

/// The answer to [`Client::set_secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSet {
    /// The secret's name and dates.
    pub secret: SecretInfo,
    /// True when it did not exist before (HTTP 201 instead of 200).
    pub created: bool,
}

impl Client {
    /// `PUT /v1/secrets/{name}`: creates or replaces a secret.
    ///
    /// # Errors
    /// 400 for an invalid name or value, 500 when the daemon's master key is unusable; see
    /// [`ClientError`].
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<SecretSet, ClientError> {
        let body = encode(&PutSecret {
            value: value.to_owned(),
        });
        let exchange = self
            .exchange(Method::PUT, secret_route(name), Some(body))
            .await?;
        let created = exchange.response.status() == StatusCode::CREATED;
        let secret = exchange.json(MAX_SECRET_BODY).await?;
        Ok(SecretSet { secret, created })
    }

    /// `GET /v1/secrets`: names and dates, by name.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>, ClientError> {
        self.json(Method::GET, route("/secrets"), None).await
    }

    /// `DELETE /v1/secrets/{name}`.
    ///
    /// # Errors
    /// 404 when there is no such secret; see [`ClientError`].
    pub async fn delete_secret(&self, name: &str) -> Result<Deleted, ClientError> {
        self.json(Method::DELETE, secret_route(name), None).await
    }

    /// `PUT /v1/instances/{id-or-handle}/secrets`: the secrets (names, or `*`) injected from the
    /// instance's next boot on.
    ///
    /// # Errors
    /// 404 for an unknown instance, 400 when a name is invalid or does not exist; see
    /// [`ClientError`].
    pub async fn set_instance_secrets(
        &self,
        id_or_handle: &str,
        secrets: &[String],
    ) -> Result<Instance, ClientError> {
        let body = encode(&SetInstanceSecrets {
            secrets: secrets.to_vec(),
        });
        let path = route(&format!(
            "/instances/{}/secrets",
            percent_encode(id_or_handle)
        ));
        self.json(Method::PUT, path, Some(body)).await
    }
}

fn secret_route(name: &str) -> String {
    route(&format!("/secrets/{}", percent_encode(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_encoded() {
        assert_eq!(secret_route("API_KEY"), "/v1/secrets/API_KEY");
        assert_eq!(secret_route("a/b"), "/v1/secrets/a%2Fb");
    }
}
