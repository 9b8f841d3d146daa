//! `Command::Exec`: wakes the guest like any request, then starts the process from a task of
//! its own, so a wake that has to boot never holds the mailbox. The process's environment is
//! the image's and the instance's variables, the boot's secrets, then the exec's own.

use aegis_proto::control::{
    codes, ExecId, ExecParams, Method, ProcessSpec, SignalParams, SpawnResult,
};
use rand::Rng;
use zeroize::Zeroize;

use std::sync::Arc;

use super::Actor;
use crate::control::{ControlError, CONTROL_CALL_TIMEOUT};
use crate::ids::InstanceId;
use crate::lifecycle::command::{reply_channel, GuestLink, LifecycleError, Reply};
use crate::lifecycle::data::DataError;
use crate::lifecycle::exec::{ExecInput, ExecSpec, ExecStarted, StdinSink, Terminal};
use crate::lifecycle::processes::{ProcessTable, StartedAs};
use crate::secrets::scrub_env;

impl Actor {
    pub(super) async fn exec(&mut self, spec: ExecSpec, reply: Reply<ExecStarted>) {
        let (woken, link) = reply_channel();
        self.wake(woken).await;
        let id = self.id();
        let processes = Arc::clone(&self.processes);
        tokio::spawn(async move {
            let started = match link.await {
                Ok(Ok(link)) => spawn(&id, &link, &processes, spec).await,
                Ok(Err(e)) => Err(e),
                Err(_) => Err(LifecycleError::Gone { id }),
            };
            let _ = reply.send(started);
        });
    }
}

/// Starts `spec` in the guest behind `link`. The secret values travel only in the call and are
/// wiped from memory after it.
///
/// # Errors
/// [`LifecycleError::Spawn`] when the guest cannot start the program; [`LifecycleError::Stopped`]
/// when the guest went away; [`LifecycleError::Control`] for other channel failures.
async fn spawn(
    id: &InstanceId,
    link: &GuestLink,
    processes: &ProcessTable,
    spec: ExecSpec,
) -> Result<ExecStarted, LifecycleError> {
    let command = spec.argv.clone();
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
        stdin: spec.stdin && spec.tty.is_none(),
        timeout_ms: spec
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        tty: spec.tty,
    };
    // Listed before the call: a process that ends at once is reported (by the output router)
    // before the call's answer arrives here, and its exit must find its entry.
    let how = StartedAs {
        detached: spec.detach,
        stdin: params.stdin,
        tty: spec.tty.is_some(),
    };
    processes.started(&exec_id, command, how);
    let spawned: Result<SpawnResult, ControlError> = link
        .control
        .call(Method::Exec, &params, CONTROL_CALL_TIMEOUT)
        .await;
    scrub_env(&mut params.process.env);
    if spawned.is_err() {
        processes.forget(&exec_id);
    }
    match spawned {
        Ok(_) if spec.detach || !(how.stdin || how.tty) => Ok(ExecStarted {
            exec_id,
            feed,
            input: None,
        }),
        Ok(_) => {
            let input = if how.tty {
                Terminal::connect(link, Some(&exec_id))
                    .await
                    .map(ExecInput::Terminal)
            } else {
                StdinSink::connect(link, Some(&exec_id), false)
                    .await
                    .map(ExecInput::Stdin)
            };
            match input {
                Ok(input) => Ok(ExecStarted {
                    exec_id,
                    feed,
                    input: Some(input),
                }),
                // A pipe is refused once the process has ended (`true` can end before this
                // connection comes): its exit is on the way, and input has nowhere to go, as
                // with a pipe whose reader is gone.
                Err(DataError::Refused { .. }) if !how.tty => Ok(ExecStarted {
                    exec_id,
                    feed,
                    input: None,
                }),
                Err(e) => {
                    // Left running it would wait for input that never comes.
                    let kill = SignalParams {
                        exec_id: Some(exec_id.clone()),
                        signal: libc::SIGKILL,
                    };
                    let _ = link
                        .control
                        .call::<serde_json::Value>(Method::Signal, &kill, CONTROL_CALL_TIMEOUT)
                        .await;
                    Err(LifecycleError::Stopped {
                        id: id.clone(),
                        reason: format!("cannot connect the process's input: {e}"),
                    })
                }
            }
        }
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
