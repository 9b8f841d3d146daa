//! Pause, resume and wake, and the idle timers that pause and stop an instance nobody uses.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aegis_proto::api::Instance;
use aegis_proto::control::ActivityParams;

use super::{Actor, State};
use crate::lifecycle::command::{GuestLink, LifecycleError, Reply};
use crate::lifecycle::idle;
use crate::lifecycle::state::{next, Event};
use crate::logs::now_ts;

impl Actor {
    /// Pauses or stops the instance when its idle timers say so.
    pub(super) async fn idle_tick(&mut self) {
        let now = Instant::now();
        if self.connections.load(Ordering::Relaxed) > 0 {
            self.last_active = now;
        }
        let state = match &self.state {
            State::Running(_) => idle::IdleState::Running {
                last_active: self.last_active,
            },
            State::Paused(_) => idle::IdleState::Paused {
                since: self.paused_since.unwrap_or(now),
            },
            State::Stopped | State::Starting { .. } => idle::IdleState::Other,
        };
        let policy = idle::IdlePolicy {
            pause_after: self.spec.idle_pause_secs.map(Duration::from_secs),
            stop_after: self.spec.idle_stop_secs.map(Duration::from_secs),
        };
        match idle::decide(policy, state, now) {
            Some(idle::IdleAction::Pause) => {
                let secs = self.spec.idle_pause_secs.unwrap_or_default();
                match self.pause().await {
                    Ok(_) => {
                        self.log.system(format!("idle for {secs}s: paused"));
                        tracing::info!(secs, "paused for idleness");
                    }
                    Err(e) => tracing::warn!(error = %e, "idle pause failed"),
                }
            }
            Some(idle::IdleAction::Stop) => {
                let secs = self.spec.idle_stop_secs.unwrap_or_default();
                let reason = format!("paused for {secs}s: stopped (idle)");
                if let Err(e) = self.stop_saving(&reason).await {
                    tracing::warn!(error = %e, "idle stop failed");
                }
            }
            None => {}
        }
    }

    /// A guest heartbeat: busy work counts as activity.
    pub(super) fn heartbeat(&mut self, activity: &ActivityParams) {
        if idle::heartbeat_is_active(activity) {
            tracing::trace!(?activity, "busy heartbeat");
            self.touch();
        }
    }

    pub(super) async fn pause(&mut self) -> Result<Instance, LifecycleError> {
        next(self.status, Event::Pause)?;
        let live = match self.take() {
            State::Running(live) => live,
            other => {
                self.put_back(other);
                return Ok(self.view());
            }
        };
        if let Err(source) = live.guest.vm.pause().await {
            self.put_back(State::Running(live));
            return Err(LifecycleError::Vmm {
                id: self.id(),
                source,
            });
        }
        self.enter(Event::Pause, State::Paused(live));
        self.paused_since = Some(Instant::now());
        self.log.system("paused");
        self.persist_status().await?;
        Ok(self.view())
    }

    pub(super) async fn resume(&mut self) -> Result<Instance, LifecycleError> {
        next(self.status, Event::Resume)?;
        self.resume_inner().await?;
        Ok(self.view())
    }

    pub(super) async fn resume_inner(&mut self) -> Result<(), LifecycleError> {
        let live = match self.take() {
            State::Paused(live) => live,
            other => {
                self.put_back(other);
                return Ok(());
            }
        };
        if let Err(source) = live.guest.vm.resume().await {
            self.put_back(State::Paused(live));
            return Err(LifecycleError::Vmm {
                id: self.id(),
                source,
            });
        }
        self.enter(Event::Resume, State::Running(live));
        self.paused_since = None;
        self.touch();
        self.log.system("resumed");
        self.row.last_active_at = Some(now_ts());
        self.persist_status().await
    }

    pub(super) async fn wake(&mut self, reply: Reply<GuestLink>) {
        match &mut self.state {
            State::Running(_) => {
                self.touch();
                let _ = reply.send(self.link());
            }
            State::Starting { waiters, .. } => waiters.push(reply),
            State::Paused(_) => {
                let r = match self.resume_inner().await {
                    Ok(()) => self.link().map(|l| GuestLink { woke: true, ..l }),
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            State::Stopped if !self.row.enabled => {
                let _ = reply.send(Err(LifecycleError::Disabled { id: self.id() }));
            }
            State::Stopped => {
                self.log.system("woken by a request");
                if let Err(e) = self.begin_boot(vec![]).await {
                    let _ = reply.send(Err(e));
                } else if let State::Starting { waiters, .. } = &mut self.state {
                    waiters.push(reply);
                }
            }
        }
    }
}
