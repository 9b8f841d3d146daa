//! The names a request may give to something Aegis keeps — instance handles, workspace, kit,
//! instance-daemon and secret names — and environment variable names. Each kind has one rule,
//! checked here before the name is used: handles, workspace and kit names become file and
//! directory names under `AEGIS_HOME`, so a name that could be read as a path (`..`, `/etc`,
//! `a/b`, an empty name, NUL or control characters, a name longer than a file name may be) is
//! refused with a message saying what is wrong. What a valid name then names is the business of
//! the module that owns it.

use std::fmt;

/// The kinds of names, each with its own rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// An instance handle (`--name`): letters, digits, `.`, `_`, `-`; not `inst-…`.
    Handle,
    /// What a request uses to find an instance: an instance id (`inst-…`) or a handle.
    InstanceRef,
    /// A named workspace: the rule of handles, and not `none` (which means no workspace).
    Workspace,
    /// A kit: lowercase letters, digits, `.`, `_`, `-`.
    Kit,
    /// An instance daemon of a kit: the rule of kit names.
    Daemon,
    /// A secret: the name of the environment variable it becomes.
    Secret,
}

/// Longest handle or workspace name: one DNS label, and far below a file name's 255 bytes.
pub const MAX_HANDLE_BYTES: usize = 63;
/// Longest kit or instance-daemon name (fits a file name and a log tag comfortably).
pub const MAX_KIT_NAME_BYTES: usize = 63;
/// Longest secret name. Far above any real variable name; keeps error messages and list output
/// bounded.
pub const MAX_SECRET_NAME_BYTES: usize = 255;
/// How much of a refused name an error message quotes.
const SHOWN_BYTES: usize = 64;

impl NameKind {
    /// What the name is called in messages.
    pub fn what(self) -> &'static str {
        match self {
            NameKind::Handle => "handle",
            NameKind::InstanceRef => "instance id or handle",
            NameKind::Workspace => "workspace name",
            NameKind::Kit => "kit name",
            NameKind::Daemon => "instance daemon name",
            NameKind::Secret => "secret name",
        }
    }

    /// The longest name accepted, in bytes.
    pub fn max_bytes(self) -> usize {
        match self {
            NameKind::Handle | NameKind::InstanceRef | NameKind::Workspace => MAX_HANDLE_BYTES,
            NameKind::Kit | NameKind::Daemon => MAX_KIT_NAME_BYTES,
            NameKind::Secret => MAX_SECRET_NAME_BYTES,
        }
    }

    fn first_ok(self, c: char) -> bool {
        match self {
            NameKind::Handle | NameKind::InstanceRef | NameKind::Workspace => {
                c.is_ascii_alphanumeric()
            }
            NameKind::Kit | NameKind::Daemon => c.is_ascii_lowercase() || c.is_ascii_digit(),
            NameKind::Secret => c.is_ascii_alphabetic() || c == '_',
        }
    }

    fn rest_ok(self, c: char) -> bool {
        match self {
            NameKind::Handle | NameKind::InstanceRef | NameKind::Workspace => {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
            }
            NameKind::Kit | NameKind::Daemon => {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            }
            NameKind::Secret => c.is_ascii_alphanumeric() || c == '_',
        }
    }

    /// The rule, as a message tells it.
    pub fn rule(self) -> &'static str {
        match self {
            NameKind::Handle | NameKind::InstanceRef | NameKind::Workspace => {
                "use letters, digits, '.', '_' and '-', starting with a letter or digit"
            }
            NameKind::Kit | NameKind::Daemon => {
                "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
            }
            NameKind::Secret => {
                "use letters, digits and '_', not starting with a digit (the name of the \
                 environment variable it becomes)"
            }
        }
    }

    fn reserved(self, name: &str) -> Option<&'static str> {
        match self {
            NameKind::Handle | NameKind::Workspace if name.starts_with("inst-") => {
                Some("the prefix \"inst-\" is reserved for instance ids")
            }
            NameKind::Workspace if name == "none" => Some("\"none\" means no workspace"),
            NameKind::Handle
            | NameKind::InstanceRef
            | NameKind::Workspace
            | NameKind::Kit
            | NameKind::Daemon
            | NameKind::Secret => None,
        }
    }
}

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameProblem {
    /// No characters at all.
    Empty,
    /// Longer than the kind allows.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A first character the kind does not allow (`.`, `/`, `-`, …).
    First(char),
    /// A character the kind does not allow anywhere (`/`, NUL, a control character, …).
    Char(char),
    /// A name the kind keeps for another meaning.
    Reserved(&'static str),
}

/// A name refused by its kind's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The kind of name.
    pub kind: NameKind,
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub problem: NameProblem,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, rule) = (self.kind, self.kind.rule());
        write!(f, "invalid {} {}: ", kind.what(), shown(&self.name))?;
        match &self.problem {
            NameProblem::Empty => write!(f, "it is empty; {rule}"),
            NameProblem::TooLong { len } => write!(
                f,
                "{len} bytes is longer than the {} allowed",
                kind.max_bytes()
            ),
            NameProblem::First(c) => write!(f, "it must not start with {c:?}; {rule}"),
            NameProblem::Char(c) => write!(f, "{c:?} is not allowed; {rule}"),
            NameProblem::Reserved(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for NameError {}

/// The name quoted for a message: escaped (control characters and NUL show as escapes, never
/// raw) and cut after [`SHOWN_BYTES`], so a 4 KiB name does not become a 4 KiB message.
fn shown(name: &str) -> String {
    if name.len() <= SHOWN_BYTES {
        return format!("{name:?}");
    }
    let mut end = SHOWN_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &name[..end], name.len())
}

/// Checks `name` against the rule of `kind`.
///
/// # Errors
/// [`NameError`] naming the first problem: empty, too long, a bad first character, a bad
/// character, a reserved name — in that order.
pub fn check(kind: NameKind, name: &str) -> Result<(), NameError> {
    let problem = if name.is_empty() {
        Some(NameProblem::Empty)
    } else if name.len() > kind.max_bytes() {
        Some(NameProblem::TooLong { len: name.len() })
    } else if let Some(c) = name.chars().next().filter(|&c| !kind.first_ok(c)) {
        Some(NameProblem::First(c))
    } else if let Some(c) = name.chars().find(|&c| !kind.rest_ok(c)) {
        Some(NameProblem::Char(c))
    } else {
        kind.reserved(name).map(NameProblem::Reserved)
    };
    match problem {
        Some(problem) => Err(NameError {
            kind,
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Whether `name` is a valid environment variable name: letters, digits and `_`, not starting
/// with a digit (no length bound: the process environment's total size bounds it).
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [NameKind; 6] = [
        NameKind::Handle,
        NameKind::InstanceRef,
        NameKind::Workspace,
        NameKind::Kit,
        NameKind::Daemon,
        NameKind::Secret,
    ];

    /// Names that read as paths or carry bytes no file name should: refused by every kind.
    fn hostile() -> Vec<String> {
        let mut names: Vec<String> = [
            "",
            ".",
            "..",
            "../x",
            "../../etc/passwd",
            "/etc",
            "/",
            "a/b",
            "a\\b",
            "a\0b",
            "\0",
            "a\nb",
            "a\rb",
            "a\tb",
            "a\u{1b}[31m",
            "a\u{7f}",
            " a",
            "a b",
            "-x",
            "~x",
            "é",
            "a\u{202e}",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        names.push("a".repeat(4096));
        names.push("A".repeat(4096));
        names
    }

    #[test]
    fn path_like_names_are_refused_by_every_kind() {
        for kind in ALL {
            for name in hostile() {
                let err = check(kind, &name).expect_err(&format!("{kind}: {name:?}"));
                let text = err.to_string();
                assert!(
                    text.starts_with(&format!("invalid {} ", kind.what())),
                    "{text}"
                );
                assert!(
                    text.len() < 400,
                    "{kind} {name:?}: message too long: {text}"
                );
                assert!(
                    !text.chars().any(|c| c.is_control()),
                    "{kind} {name:?}: raw control character in {text:?}"
                );
            }
        }
    }

    #[test]
    fn valid_names_pass() {
        let rows: &[(NameKind, &[&str])] = &[
            (
                NameKind::Handle,
                &["web", "a", "9lives", "my-agent_1.2", "Web"],
            ),
            (NameKind::InstanceRef, &["web", "inst-1761234567890123456"]),
            (NameKind::Workspace, &["shared", "data.v2", "a-b_c"]),
            (NameKind::Kit, &["example", "famiglia", "a.b-c_1", "9"]),
            (NameKind::Daemon, &["gateway", "g1"]),
            (NameKind::Secret, &["A", "_x", "API_KEY_2", "a1"]),
        ];
        for (kind, names) in rows {
            for name in *names {
                assert_eq!(check(*kind, name), Ok(()), "{kind}: {name}");
            }
        }
        assert_eq!(check(NameKind::Handle, &"a".repeat(63)), Ok(()));
        assert_eq!(check(NameKind::Secret, &"A".repeat(255)), Ok(()));
    }

    #[test]
    fn each_kind_has_its_own_rule() {
        let rows: &[(NameKind, &str, NameProblem)] = &[
            (
                NameKind::Handle,
                "inst-1",
                NameProblem::Reserved("the prefix \"inst-\" is reserved for instance ids"),
            ),
            (
                NameKind::Workspace,
                "none",
                NameProblem::Reserved("\"none\" means no workspace"),
            ),
            (
                NameKind::Workspace,
                "inst-x",
                NameProblem::Reserved("the prefix \"inst-\" is reserved for instance ids"),
            ),
            (NameKind::Kit, "Web", NameProblem::First('W')),
            (NameKind::Kit, "wEb", NameProblem::Char('E')),
            (NameKind::Secret, "1A", NameProblem::First('1')),
            (NameKind::Secret, "A-B", NameProblem::Char('-')),
            (NameKind::Secret, "A.B", NameProblem::Char('.')),
            (
                NameKind::Handle,
                &"a".repeat(64),
                NameProblem::TooLong { len: 64 },
            ),
            (
                NameKind::Secret,
                &"A".repeat(256),
                NameProblem::TooLong { len: 256 },
            ),
        ];
        for (kind, name, problem) in rows {
            assert_eq!(
                check(*kind, name).map_err(|e| e.problem),
                Err(problem.clone()),
                "{kind}: {name}"
            );
        }
    }

    #[test]
    fn handles_follow_the_cli_rule() {
        // The CLI checks handles with `aegis_proto::api::validate_handle` before sending them;
        // the daemon's rule must agree with it, or one side refuses what the other accepts.
        let mut names = hostile();
        names.extend(
            ["web", "a", "9lives", "my-agent_1.2", "inst-1", "x.", "a..b"].map(String::from),
        );
        names.push("a".repeat(63));
        names.push("a".repeat(64));
        for name in names {
            assert_eq!(
                check(NameKind::Handle, &name).is_ok(),
                aegis_proto::api::validate_handle(&name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let rows: &[(NameKind, &str, &str)] = &[
            (
                NameKind::Secret,
                "",
                "invalid secret name \"\": it is empty; use letters, digits and '_', not \
                 starting with a digit (the name of the environment variable it becomes)",
            ),
            (
                NameKind::Workspace,
                "../x",
                "invalid workspace name \"../x\": it must not start with '.'; use letters, \
                 digits, '.', '_' and '-', starting with a letter or digit",
            ),
            (
                NameKind::Kit,
                "a/b",
                "invalid kit name \"a/b\": '/' is not allowed; use lowercase letters, digits, \
                 '.', '_' and '-', starting with a letter or digit",
            ),
            (
                NameKind::Handle,
                "a\0b",
                "invalid handle \"a\\0b\": '\\0' is not allowed; use letters, digits, '.', '_' \
                 and '-', starting with a letter or digit",
            ),
        ];
        for (kind, name, want) in rows {
            assert_eq!(check(*kind, name).unwrap_err().to_string(), *want);
        }
        let long = check(NameKind::Kit, &"k".repeat(4096))
            .unwrap_err()
            .to_string();
        assert_eq!(
            long,
            format!(
                "invalid kit name {:?}… (4096 bytes): 4096 bytes is longer than the 63 allowed",
                "k".repeat(64)
            )
        );
        // A cut never splits a character.
        let wide = check(NameKind::Secret, &"é".repeat(200))
            .unwrap_err()
            .to_string();
        assert!(wide.contains("(400 bytes)"), "{wide}");
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_x", "API_KEY_2", "a1"] {
            assert!(valid_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "é", "A\0"] {
            assert!(!valid_env_name(bad), "{bad:?}");
        }
    }
}
