//! `Command::Exec`: wakes the guest like any request, then starts the process from a task of
//! its own, so a wake that has to boot never holds the mailbox. The process's environment is
//! the image's and the instance's variables, the boot's secrets, then the exec's own.

use aegis_proto::control::{
    codes, DataReply, DataRequest, ExecId, ExecParams, Method, ProcessSpec, SignalParams,
    SpawnResult, DATA_SERVICE_PORT, MAX_DATA_REQUEST_BYTES,
};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroize;

use super::Actor;
use crate::control::{ControlError, CONTROL_CALL_TIMEOUT};
use crate::ids::InstanceId;
use crate::lifecycle::command::{reply_channel, GuestLink, LifecycleError, Reply};
use crate::lifecycle::exec::{ExecSpec, ExecStarted, StdinSink};
use crate::secrets::scrub_env;

impl Actor {
    pub(super) async fn exec(&mut self, spec: ExecSpec, reply: Reply<ExecStarted>) {
        let (woken, link) = reply_channel();
        self.wake(woken).await;
        let id = self.id();
        tokio::spawn(async move {
            let started = match link.await {
                Ok(Ok(link)) => spawn(&id, &link, spec).await,
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
    spec: ExecSpec,
) -> Result<ExecStarted, LifecycleError> {
    let stdin = spec.stdin;
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
        stdin: spec.stdin,
        timeout_ms: spec
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    };
    let spawned: Result<SpawnResult, ControlError> = link
        .control
        .call(Method::Exec, &params, CONTROL_CALL_TIMEOUT)
        .await;
    scrub_env(&mut params.process.env);
    match spawned {
        Ok(_) if stdin => {
            let stdin = match connect_stdin(id, link, &exec_id).await {
                Ok(stdin) => stdin,
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
                    return Err(e);
                }
            };
            Ok(ExecStarted {
                exec_id,
                feed,
                stdin: Some(stdin),
            })
        }
        Ok(_) => Ok(ExecStarted {
            exec_id,
            feed,
            stdin: None,
        }),
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

/// Opens the data-service connection that feeds `exec_id`'s stdin.
///
/// # Errors
/// [`LifecycleError::Stopped`] when the guest cannot be reached or refuses.
async fn connect_stdin(
    id: &InstanceId,
    link: &GuestLink,
    exec_id: &ExecId,
) -> Result<StdinSink, LifecycleError> {
    let failed = |why: String| LifecycleError::Stopped {
        id: id.clone(),
        reason: format!("cannot connect the process's stdin: {why}"),
    };
    let ingress = link
        .ingress
        .ok_or_else(|| failed("the guest has no ingress forward".to_owned()))?;
    let mut stream = ingress
        .open(DATA_SERVICE_PORT)
        .await
        .map_err(|status| failed(format!("the guest's data service answered {status:?}")))?;
    let mut request = serde_json::to_vec(&DataRequest::Stdin {
        exec_id: exec_id.clone(),
    })
    .map_err(|e| failed(e.to_string()))?;
    request.push(b'\n');
    stream
        .write_all(&request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    // One line, read byte by byte: what follows belongs to the caller's stream.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_DATA_REQUEST_BYTES {
        let n = tokio::time::timeout(CONTROL_CALL_TIMEOUT, stream.read(&mut byte))
            .await
            .map_err(|_| failed("the guest did not answer".to_owned()))?
            .map_err(|e| failed(e.to_string()))?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    match serde_json::from_slice::<DataReply>(&line) {
        Ok(DataReply { ok: true, .. }) => Ok(StdinSink { stream }),
        Ok(DataReply { error, .. }) => Err(failed(error.unwrap_or_default())),
        Err(e) => Err(failed(format!("unreadable answer: {e}"))),
    }
}
