//! Changes to an instance's configuration while it exists: its secrets, lifetime and exposed
//! ports.

use aegis_proto::api::{Instance, OnTimeout};

use super::{Actor, State};
use crate::lifecycle::command::LifecycleError;
use crate::lifecycle::spec::{ExposeSpec, Lifetime};

impl Actor {
    /// Records a new set of secret names; it applies from the next boot on.
    pub(super) async fn set_secrets(
        &mut self,
        secrets: Vec<String>,
    ) -> Result<Instance, LifecycleError> {
        if self.spec.secrets == secrets {
            return Ok(self.view());
        }
        self.spec.secrets = secrets;
        self.persist_spec().await?;
        // A restored VM keeps the environment it had: start the next one fresh.
        self.discard_snapshot("the secrets changed");
        let shown = if self.spec.secrets.is_empty() {
            "none".to_owned()
        } else {
            self.spec.secrets.join(", ")
        };
        let when = match self.state {
            State::Stopped => "injected at the next start",
            State::Starting { .. } | State::Running(_) | State::Paused(_) => {
                "injected from the next boot on; the running VM keeps what it got"
            }
        };
        self.log.system(format!("secrets set to {shown}: {when}"));
        Ok(self.view())
    }

    /// Records a new lifetime (or none); the lifetime watch applies it.
    pub(super) async fn set_lifetime(
        &mut self,
        lifetime: Option<Lifetime>,
    ) -> Result<Instance, LifecycleError> {
        if self.spec.lifetime == lifetime {
            return Ok(self.view());
        }
        match &lifetime {
            Some(l) => self.log.system(format!(
                "lifetime set: {} at {}",
                match l.on_timeout {
                    OnTimeout::Delete => "deleted",
                    OnTimeout::Stop => "stopped",
                },
                l.expires_at
            )),
            None => self.log.system("lifetime removed".to_owned()),
        }
        self.spec.lifetime = lifetime;
        self.persist_spec().await?;
        Ok(self.view())
    }

    /// Records an exposed port (the caller has bound its public port).
    pub(super) async fn expose(&mut self, expose: ExposeSpec) -> Result<Instance, LifecycleError> {
        if self
            .spec
            .exposes
            .iter()
            .any(|e| e.guest_port == expose.guest_port)
        {
            return Err(LifecycleError::AlreadyExposed {
                id: self.id(),
                port: expose.guest_port,
            });
        }
        self.spec.exposes.push(expose);
        self.persist_spec().await?;
        Ok(self.view())
    }

    /// Forgets an exposed port; answers with what it was.
    pub(super) async fn unexpose(&mut self, guest_port: u16) -> Result<ExposeSpec, LifecycleError> {
        let Some(i) = self
            .spec
            .exposes
            .iter()
            .position(|e| e.guest_port == guest_port)
        else {
            return Err(LifecycleError::NotExposed {
                id: self.id(),
                port: guest_port,
            });
        };
        let removed = self.spec.exposes.remove(i);
        self.persist_spec().await?;
        Ok(removed)
    }
}
