//! What the actor records: the registry row, and the view it publishes on every change.

use aegis_proto::api::{Instance, SnapshotView};

use super::{Actor, State};
use crate::lifecycle::command::LifecycleError;
use crate::lifecycle::spec::{ExposeSpec, InstanceSpec};
use crate::lifecycle::Ctx;
use crate::registry::InstanceRow;

impl Actor {
    pub(super) async fn persist_spec(&mut self) -> Result<(), LifecycleError> {
        self.row.spec =
            serde_json::to_string(&self.spec).map_err(|e| LifecycleError::Registry {
                id: self.id(),
                source: crate::registry::RegistryError::Corrupt {
                    id: self.id().to_string(),
                    reason: e.to_string(),
                },
            })?;
        self.persist().await
    }

    pub(super) async fn persist_status(&mut self) -> Result<(), LifecycleError> {
        self.row.status = self.status;
        self.persist().await
    }

    pub(super) async fn persist(&mut self) -> Result<(), LifecycleError> {
        let res = self
            .ctx
            .registry
            .update_instance(self.row.clone())
            .await
            .map_err(|source| LifecycleError::Registry {
                id: self.id(),
                source,
            });
        self.publish();
        res
    }

    pub(super) fn publish(&self) {
        self.snapshot.send_replace(self.view());
    }

    pub(super) fn view(&self) -> Instance {
        let pid = match &self.state {
            State::Running(l) | State::Paused(l) => Some(l.guest.vm.pid()),
            State::Stopped | State::Starting { .. } => None,
        };
        let mut row = self.row.clone();
        row.status = self.status;
        render(&self.ctx, &row, &self.spec, pid, self.saved.clone())
    }
}

/// Builds the API view of an instance, with what the layer above adds to it.
pub fn render(
    ctx: &Ctx,
    row: &InstanceRow,
    spec: &InstanceSpec,
    vmm_pid: Option<u32>,
    saved: Option<SnapshotView>,
) -> Instance {
    let mut view = Instance {
        id: row.id.to_string(),
        handle: row.handle.as_ref().map(ToString::to_string),
        state: row.status,
        enabled: row.enabled,
        image_ref: spec.image_ref.clone(),
        command: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        auto_remove: spec.auto_remove,
        env_keys: spec.env.keys().cloned().collect(),
        created_at: row.created_at.clone(),
        stopped_at: row.stopped_at.clone(),
        last_active_at: row.last_active_at.clone(),
        endpoints: spec.exposes.iter().map(ExposeSpec::endpoint).collect(),
        secret_keys: spec.secrets.clone(),
        kit: None,
        memory_mb: spec.memory_mib,
        vcpus: spec.vcpus,
        workspace: ctx
            .workspaces
            .view(&spec.workspace(), &ctx.config.instance_dir(&row.id)),
        reason: row.reason.clone(),
        exit_code: row.exit_code,
        vmm_pid,
        idle_pause_secs: spec.idle_pause_secs,
        idle_stop_secs: spec.idle_stop_secs,
        egress: spec.egress,
        snapshot: spec.snapshot,
        saved_snapshot: saved,
        egress_hints: Vec::new(),
        daemons: Vec::new(),
        expires_at: spec.lifetime.as_ref().map(|l| l.expires_at.clone()),
        on_timeout: spec.lifetime.as_ref().map(|l| l.on_timeout),
    };
    ctx.policy.present(&spec.app, &mut view);
    view
}
