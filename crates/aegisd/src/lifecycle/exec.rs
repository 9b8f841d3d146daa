//! Running an additional process in a guest: its environment (the image's and the instance's
//! variables, the boot's secrets, then the exec's own), its id, and the guest's `exec` call.

use std::collections::BTreeMap;

use aegis_proto::control::{codes, ExecId, ExecParams, Method, ProcessSpec, SpawnResult};
use rand::Rng;
use zeroize::Zeroize;

use super::command::{GuestLink, LifecycleError};
use super::output::ExecFeed;
use crate::control::{ControlError, CONTROL_CALL_TIMEOUT};
use crate::ids::InstanceId;
use crate::secrets::scrub_env;

/// An exec as asked for (validated by the caller).
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// What to run.
    pub argv: Vec<String>,
    /// Variables on top of the instance's.
    pub env: BTreeMap<String, String>,
    /// Working directory; the instance's when absent.
    pub workdir: Option<String>,
}

/// An exec the guest has started.
#[derive(Debug)]
pub struct ExecStarted {
    /// Its id: its output is in the instance's log under it.
    pub exec_id: ExecId,
    /// Its output, then how it ended.
    pub feed: ExecFeed,
}

/// Starts `spec` in the guest behind `link`. The secret values travel only in the call and are
/// wiped from memory after it.
///
/// # Errors
/// [`LifecycleError::Spawn`] when the guest cannot start the program; [`LifecycleError::Stopped`]
/// when the guest went away; [`LifecycleError::Control`] for other channel failures.
pub async fn spawn(
    id: &InstanceId,
    link: &GuestLink,
    spec: ExecSpec,
) -> Result<ExecStarted, LifecycleError> {
    let exec_id = ExecId(format!("exec-{:08x}", rand::thread_rng().gen::<u32>()));
    let feed = link
        .output
        .subscribe(exec_id.clone())
        .await
        .ok_or_else(|| LifecycleError::Stopped {
            id: id.clone(),
            reason: "the VM stopped".to_owned(),
        })?;
    let mut env = link.defaults.env.clone();
    link.secrets.inject_into(&mut env);
    for (key, value) in spec.env {
        if let Some(mut replaced) = env.insert(key, value) {
            replaced.zeroize();
        }
    }
    let mut params = ExecParams {
        exec_id: exec_id.clone(),
        process: ProcessSpec {
            argv: spec.argv,
            env,
            workdir: spec.workdir.or_else(|| link.defaults.workdir.clone()),
            user: link.defaults.user.clone(),
        },
    };
    let spawned: Result<SpawnResult, ControlError> = link
        .control
        .call(Method::Exec, &params, CONTROL_CALL_TIMEOUT)
        .await;
    scrub_env(&mut params.process.env);
    match spawned {
        Ok(_) => Ok(ExecStarted { exec_id, feed }),
        Err(ControlError::Rpc { error, .. }) if error.code == codes::SPAWN_FAILED => {
            Err(LifecycleError::Spawn {
                id: id.clone(),
                message: error.message,
            })
        }
        Err(source) => Err(LifecycleError::Control {
            id: id.clone(),
            source,
        }),
    }
}
