//! Scale to zero: when an instance pauses and stops by itself. A pure decision over the clock and
//! the last activity, so every case is testable without a VM.
//!
//! Activity is: a routed connection opening, closing or staying open; an exec starting or
//! ending; and a guest heartbeat that shows work (see [`heartbeat_is_active`]).

use std::time::{Duration, Instant};

use aegis_proto::control::ActivityParams;

/// How often the actor checks its idle timers.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// Guest CPU use (per mille of one CPU over the heartbeat interval) that counts as work: a
/// busy background job keeps its VM awake, an idle kernel's housekeeping does not.
pub const CPU_ACTIVE_PERMILLE: u64 = 100;
/// Network bytes per heartbeat interval that count as traffic (ARP and the like stay below).
pub const NET_ACTIVE_BYTES: u64 = 4096;

/// What the timers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    /// Freeze the vCPUs.
    Pause,
    /// Stop the VM.
    Stop,
}

/// Idle timeouts of one instance; `None` = never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Running this long without activity pauses.
    pub pause_after: Option<Duration>,
    /// Paused this long stops.
    pub stop_after: Option<Duration>,
}

/// Where the instance is, as far as idleness goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    /// Running, last active at this instant.
    Running {
        /// Last activity.
        last_active: Instant,
    },
    /// Paused since this instant.
    Paused {
        /// When it was paused.
        since: Instant,
    },
    /// Anything else (starting, stopped): no timer runs.
    Other,
}

/// The action due at `now`, if any.
pub fn decide(policy: IdlePolicy, state: IdleState, now: Instant) -> Option<IdleAction> {
    match state {
        IdleState::Running { last_active } => policy
            .pause_after
            .filter(|after| now.saturating_duration_since(last_active) >= *after)
            .map(|_| IdleAction::Pause),
        IdleState::Paused { since } => policy
            .stop_after
            .filter(|after| now.saturating_duration_since(since) >= *after)
            .map(|_| IdleAction::Stop),
        IdleState::Other => None,
    }
}

/// Whether a heartbeat shows the guest doing something.
pub fn heartbeat_is_active(a: &ActivityParams) -> bool {
    let cpu_permille = a.cpu_ms.saturating_mul(1000) / a.interval_ms.max(1);
    a.execs > 0
        || a.leases > 0
        || a.tcp_established > 0
        || a.net_bytes >= NET_ACTIVE_BYTES
        || cpu_permille >= CPU_ACTIVE_PERMILLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let policy = IdlePolicy {
            pause_after: Some(s(60)),
            stop_after: Some(s(300)),
        };
        let rows = [
            (IdleState::Running { last_active: t0 }, s(59), None),
            (
                IdleState::Running { last_active: t0 },
                s(60),
                Some(IdleAction::Pause),
            ),
            (IdleState::Paused { since: t0 }, s(299), None),
            (
                IdleState::Paused { since: t0 },
                s(300),
                Some(IdleAction::Stop),
            ),
            (IdleState::Other, s(10_000), None),
        ];
        for (state, after, want) in rows {
            assert_eq!(
                decide(policy, state, t0 + after),
                want,
                "{state:?} +{after:?}"
            );
        }
        let never = IdlePolicy {
            pause_after: None,
            stop_after: None,
        };
        assert_eq!(
            decide(
                never,
                IdleState::Running { last_active: t0 },
                t0 + s(1 << 20)
            ),
            None
        );
        assert_eq!(
            decide(never, IdleState::Paused { since: t0 }, t0 + s(1 << 20)),
            None
        );
    }

    #[test]
    fn heartbeats() {
        let quiet = ActivityParams {
            interval_ms: 5000,
            cpu_ms: 20,
            net_bytes: 300,
            ..Default::default()
        };
        assert!(!heartbeat_is_active(&quiet));
        for busy in [
            ActivityParams { execs: 1, ..quiet },
            ActivityParams { leases: 1, ..quiet },
            ActivityParams {
                tcp_established: 2,
                ..quiet
            },
            ActivityParams {
                net_bytes: 100_000,
                ..quiet
            },
            ActivityParams {
                cpu_ms: 2500,
                ..quiet
            },
        ] {
            assert!(heartbeat_is_active(&busy), "{busy:?}");
        }
    }
}
