//! The `/v1/images` routes of [`Client`]: list, inspect, remove, prune, and pull / import with a
//! stream of progress events. References travel percent-encoded in one path segment.

use hyper::Method;

use aegis_proto::api::{
    ImageDetail, ImageEvent, ImageSummary, ImportRequest, PruneResult, PullRequest, RemovedImage,
};

use crate::client::{encode, percent_encode, route, Client};
use crate::error::ClientError;
use crate::ndjson::NdjsonStream;

impl Client {
    /// `GET /v1/images`: every stored reference.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_images(&self) -> Result<Vec<ImageSummary>, ClientError> {
        self.json(Method::GET, route("/images"), None).await
    }

    /// `GET /v1/images/{reference}`: one stored image with its run-time settings.
    ///
    /// # Errors
    /// 404 when the reference is not stored, 400 when it does not parse; see [`ClientError`].
    pub async fn image(&self, reference: &str) -> Result<ImageDetail, ClientError> {
        self.json(Method::GET, image_route(reference), None).await
    }

    /// `DELETE /v1/images/{reference}`: removes the reference; blobs stay until
    /// [`Client::prune_images`].
    ///
    /// # Errors
    /// 404 when the reference is not stored; see [`ClientError`].
    pub async fn remove_image(&self, reference: &str) -> Result<RemovedImage, ClientError> {
        self.json(Method::DELETE, image_route(reference), None)
            .await
    }

    /// `POST /v1/images/prune`: removes what no reference and no instance needs.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn prune_images(&self) -> Result<PruneResult, ClientError> {
        self.json(Method::POST, route("/images/prune"), None).await
    }

    /// `POST /v1/images/pull`: a stream of [`ImageEvent`]s ending with `Done` or `Error`.
    ///
    /// # Errors
    /// 400 for a malformed body; see [`ClientError`]. Pull failures arrive as the stream's
    /// last item, [`ImageEvent::Error`].
    pub async fn pull_image(
        &self,
        reference: &str,
    ) -> Result<NdjsonStream<ImageEvent>, ClientError> {
        let body = PullRequest {
            reference: reference.to_owned(),
        };
        let exchange = self
            .exchange(Method::POST, route("/images/pull"), Some(encode(&body)))
            .await?;
        Ok(NdjsonStream::new(exchange))
    }

    /// `POST /v1/images/import`: imports a file the daemon can read (`body.path` must be
    /// absolute); a stream of [`ImageEvent`]s ending with `Done` or `Error`.
    ///
    /// # Errors
    /// 400 for a relative path or a malformed body; see [`ClientError`]. Import failures arrive
    /// as the stream's last item, [`ImageEvent::Error`].
    pub async fn import_image(
        &self,
        body: &ImportRequest,
    ) -> Result<NdjsonStream<ImageEvent>, ClientError> {
        let exchange = self
            .exchange(Method::POST, route("/images/import"), Some(encode(body)))
            .await?;
        Ok(NdjsonStream::new(exchange))
    }
}

fn image_route(reference: &str) -> String {
    route(&format!("/images/{}", percent_encode(reference)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_one_path_segment() {
        assert_eq!(
            image_route("127.0.0.1:5000/aegis/test:v1"),
            "/v1/images/127.0.0.1%3A5000%2Faegis%2Ftest%3Av1"
        );
        assert_eq!(
            image_route("alpine@sha256:ab"),
            "/v1/images/alpine%40sha256%3Aab"
        );
    }
}
