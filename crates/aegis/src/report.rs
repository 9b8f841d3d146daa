//! Printing a failure: `error: <cause chain joined by ": ">`, then one `hint:` line per distinct
//! remedy found in the chain (from the daemon's error body or from typed errors).

use crate::term::{Paint, Term};

/// An error of the CLI's own with a remedy.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hinted {
    /// What failed.
    pub message: String,
    /// What to do.
    pub hint: String,
}

/// Prints `err` to stderr.
pub fn error(err: &anyhow::Error, term: Term) {
    let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
    eprintln!("{} {}", term.err(Paint::Red, "error:"), chain.join(": "));
    for hint in hints(err) {
        eprintln!("{} {hint}", term.err(Paint::Cyan, "hint:"));
    }
}

fn hints(err: &anyhow::Error) -> Vec<String> {
    let mut hints: Vec<String> = Vec::new();
    for cause in err.chain() {
        let hint = if let Some(e) = cause.downcast_ref::<aegis_client::ClientError>() {
            e.hint()
        } else if let Some(e) = cause.downcast_ref::<Hinted>() {
            Some(e.hint.clone())
        } else {
            cause
                .downcast_ref::<aegis_vmm::boot::KernelError>()
                .map(aegis_vmm::boot::KernelError::hint)
        };
        if let Some(hint) = hint.filter(|h| !hints.contains(h)) {
            hints.push(hint);
        }
    }
    hints
}

/// True when the failure is a write to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    // A request to the daemon that broke off (its socket closed while a body was being sent)
    // is a failure, whatever the I/O error under it says.
    let talking_to_the_daemon = err
        .chain()
        .any(|cause| cause.downcast_ref::<aegis_client::ClientError>().is_some());
    !talking_to_the_daemon
        && err.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_from_the_chain_once() {
        let err = anyhow::Error::new(Hinted {
            message: "no aegisd binary".to_owned(),
            hint: "run `scripts/build.sh`".to_owned(),
        })
        .context("cannot start the daemon");
        assert_eq!(hints(&err), ["run `scripts/build.sh`"]);
    }

    #[test]
    fn broken_pipes_are_recognised() {
        let err = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("cannot write a log line");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
