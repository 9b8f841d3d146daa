//! The lifecycle state machine as a pure function, tested for every pair.

use aegis_proto::api::InstanceStatus;

/// What happens to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Boot requested (start, restart, or a wake by exec or traffic).
    Boot,
    /// The harness answered.
    BootSucceeded,
    /// Boot failed.
    BootFailed,
    /// Freeze the vCPUs.
    Pause,
    /// Unfreeze.
    Resume,
    /// Stop the VM (graceful or not, requested or because the primary process exited).
    Stop,
    /// The VMM process died on its own.
    VmExited,
    /// A VM a previous daemon left running was found running.
    Reattached,
    /// A VM a previous daemon left running was found paused.
    ReattachedPaused,
}

/// An event that is not allowed in a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} an instance that is {from}", verb(*event))]
pub struct InvalidTransition {
    /// Current status.
    pub from: InstanceStatus,
    /// Rejected event.
    pub event: Event,
}

fn verb(event: Event) -> &'static str {
    match event {
        Event::Boot => "start",
        Event::BootSucceeded | Event::BootFailed => "finish booting",
        Event::Pause => "pause",
        Event::Resume => "resume",
        Event::Stop => "stop",
        Event::VmExited => "lose the VM of",
        Event::Reattached | Event::ReattachedPaused => "re-attach to",
    }
}

/// The status after `event` in `from`.
///
/// # Errors
/// [`InvalidTransition`] when the event makes no sense in that state.
pub fn next(from: InstanceStatus, event: Event) -> Result<InstanceStatus, InvalidTransition> {
    use InstanceStatus::{Paused, Running, Starting, Stopped};
    let to = match (from, event) {
        (Stopped, Event::Boot) => Starting,
        (Starting, Event::BootSucceeded) => Running,
        (Starting, Event::BootFailed) => Stopped,
        (Running, Event::Pause) => Paused,
        (Paused, Event::Resume) => Running,
        (Starting | Running | Paused, Event::Stop | Event::VmExited) => Stopped,
        (Stopped, Event::Stop) => Stopped,
        (Stopped, Event::Reattached) => Running,
        (Stopped, Event::ReattachedPaused) => Paused,
        (Stopped | Running | Paused, Event::BootSucceeded | Event::BootFailed)
        | (Starting | Running | Paused, Event::Boot)
        | (Stopped | Starting | Paused, Event::Pause)
        | (Stopped | Starting | Running, Event::Resume)
        | (Stopped, Event::VmExited)
        | (Starting | Running | Paused, Event::Reattached | Event::ReattachedPaused) => {
            return Err(InvalidTransition { from, event })
        }
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus::{Paused, Running, Starting, Stopped};

    #[test]
    fn every_pair() {
        let events = [
            Event::Boot,
            Event::BootSucceeded,
            Event::BootFailed,
            Event::Pause,
            Event::Resume,
            Event::Stop,
            Event::VmExited,
            Event::Reattached,
            Event::ReattachedPaused,
        ];
        let allowed = [
            (Stopped, Event::Boot, Starting),
            (Starting, Event::BootSucceeded, Running),
            (Starting, Event::BootFailed, Stopped),
            (Running, Event::Pause, Paused),
            (Paused, Event::Resume, Running),
            (Starting, Event::Stop, Stopped),
            (Running, Event::Stop, Stopped),
            (Paused, Event::Stop, Stopped),
            (Stopped, Event::Stop, Stopped),
            (Starting, Event::VmExited, Stopped),
            (Running, Event::VmExited, Stopped),
            (Paused, Event::VmExited, Stopped),
            (Stopped, Event::Reattached, Running),
            (Stopped, Event::ReattachedPaused, Paused),
        ];
        for from in [Stopped, Starting, Running, Paused] {
            for event in events {
                let want = allowed
                    .iter()
                    .find(|(f, e, _)| *f == from && *e == event)
                    .map(|(_, _, to)| *to);
                assert_eq!(next(from, event).ok(), want, "{from:?} + {event:?}");
            }
        }
        assert_eq!(
            next(Stopped, Event::Pause).unwrap_err().to_string(),
            "cannot pause an instance that is stopped"
        );
    }
}
