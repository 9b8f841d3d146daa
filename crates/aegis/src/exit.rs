//! The one list of `aegis` exit codes (documented in `aegis --help` and the README).

/// How `aegis` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success,
    /// 1: `aegis doctor` found a failing check.
    ChecksFailed,
    /// 2: the command line was wrong (clap uses the same code for its own errors).
    Usage,
    /// The guest command's own exit code, passed through by `run` and `exec` (a signal death is
    /// 128 + the signal number, as reported by the guest harness).
    Guest(u8),
    /// 125: Aegis itself failed (daemon unreachable, boot failure, refused request, …). A guest
    /// command can also exit with 125; `aegis` then prints no `error:` line.
    AegisFailure,
    /// 130: interrupted by Ctrl-C or SIGTERM (the `run` instance was stopped and deleted).
    Interrupted,
}

/// The code reserved for Aegis's own failures, as `docker run` does.
pub const AEGIS_FAILURE_CODE: u8 = 125;

/// Text for `aegis --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    `aegis doctor`: at least one check failed
  2    usage error (bad flag or value)
  125  Aegis itself failed (daemon not running, request refused, boot failure)
  130  interrupted (Ctrl-C / SIGTERM)
  `aegis run` and `aegis exec` otherwise exit with the guest command's own code
  (128 + N when a signal N killed it).";

impl Exit {
    /// The guest command's exit code as ours. The harness reports 0–255 (signals as 128 + N);
    /// anything else cannot be passed through and becomes [`Exit::AegisFailure`].
    pub fn from_guest(code: i32) -> Exit {
        match u8::try_from(code) {
            Ok(code) => Exit::Guest(code),
            Err(_) => Exit::AegisFailure,
        }
    }

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::ChecksFailed => 1,
            Exit::Usage => 2,
            Exit::Guest(code) => code,
            Exit::AegisFailure => AEGIS_FAILURE_CODE,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let rows = [
            (Exit::Success, 0),
            (Exit::ChecksFailed, 1),
            (Exit::Usage, 2),
            (Exit::AegisFailure, 125),
            (Exit::Interrupted, 130),
            (Exit::from_guest(0), 0),
            (Exit::from_guest(3), 3),
            (Exit::from_guest(137), 137),
            (Exit::from_guest(255), 255),
            (Exit::from_guest(256), 125),
            (Exit::from_guest(-1), 125),
        ];
        for (exit, code) in rows {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
    }
}
