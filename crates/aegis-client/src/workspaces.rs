//! The workspace routes of [`Client`]: `/v1/workspaces`.

use hyper::Method;

use aegis_proto::api::{CreateWorkspace, Deleted, WorkspaceInfo};

use crate::client::{encode, percent_encode, route, Client};
use crate::error::ClientError;

impl Client {
    /// `GET /v1/workspaces`: the named workspaces.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>, ClientError> {
        self.json(Method::GET, route("/workspaces"), None).await
    }

    /// `POST /v1/workspaces`: creates a named workspace.
    ///
    /// # Errors
    /// 400 for a bad name, kind or size, 409 when the name is taken; see [`ClientError`].
    pub async fn create_workspace(
        &self,
        req: &CreateWorkspace,
    ) -> Result<WorkspaceInfo, ClientError> {
        self.json(Method::POST, route("/workspaces"), Some(encode(req)))
            .await
    }

    /// `DELETE /v1/workspaces/{name}`: removes a named workspace and its files.
    ///
    /// # Errors
    /// 404 when there is none, 409 while instances use it; see [`ClientError`].
    pub async fn delete_workspace(&self, name: &str) -> Result<Deleted, ClientError> {
        self.json(Method::DELETE, workspace_route(name), None).await
    }
}

fn workspace_route(name: &str) -> String {
    route(&format!("/workspaces/{}", percent_encode(name)))
}
