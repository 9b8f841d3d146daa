//! Resolves a `user` spec (`name`, `uid`, `name:group`, `uid:gid`) against the guest's
//! `/etc/passwd` and `/etc/group`.
//!
//! The harness is statically linked against glibc, where NSS (`getpwnam` and friends) does not
//! work, so the files are parsed here. Only the fields a spawn needs are kept: ids, the home
//! directory and group memberships. Applying the identity is `spawn`'s job.

use std::path::Path;

/// `/etc/passwd` of the current root.
pub const PASSWD_FILE: &str = "/etc/passwd";
/// `/etc/group` of the current root.
pub const GROUP_FILE: &str = "/etc/group";

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Supplementary members (login names).
    pub members: Vec<String>,
}

/// A resolved identity to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// All groups, primary included, for `setgroups`.
    pub groups: Vec<u32>,
    /// Home directory from `/etc/passwd`, when the user has an entry.
    pub home: Option<String>,
}

/// Why a user spec does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// Empty user or group part.
    #[error("invalid user {spec:?}: expected name, uid, name:group or uid:gid")]
    Invalid {
        /// The spec.
        spec: String,
    },
    /// No such user name.
    #[error("unknown user {name:?} (not in {PASSWD_FILE})")]
    UnknownUser {
        /// The name.
        name: String,
    },
    /// No such group name.
    #[error("unknown group {name:?} (not in {GROUP_FILE})")]
    UnknownGroup {
        /// The name.
        name: String,
    },
}

/// Parses `/etc/passwd` text; malformed lines are skipped, as libc does.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_owned(),
                gid: fields[2].parse().ok()?,
                members: fields[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The account databases of one root, read once per spawn (they may change between spawns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// `/etc/passwd` entries.
    pub passwd: Vec<PasswdEntry>,
    /// `/etc/group` entries.
    pub groups: Vec<GroupEntry>,
}

impl Accounts {
    /// Reads `etc/passwd` and `etc/group` under `root`; a missing or unreadable file counts as
    /// empty (many minimal images have none, and numeric ids still work).
    pub fn load(root: &Path) -> Accounts {
        let read = |file: &str| {
            std::fs::read_to_string(root.join(file.trim_start_matches('/'))).unwrap_or_default()
        };
        Accounts {
            passwd: parse_passwd(&read(PASSWD_FILE)),
            groups: parse_group(&read(GROUP_FILE)),
        }
    }

    /// The name of `uid`, if it has an entry.
    pub fn user_name(&self, uid: u32) -> Option<&str> {
        self.passwd
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.name.as_str())
    }

    /// The name of `gid`, if it has an entry.
    pub fn group_name(&self, gid: u32) -> Option<&str> {
        self.groups
            .iter()
            .find(|e| e.gid == gid)
            .map(|e| e.name.as_str())
    }

    /// Home directory of `uid`, if it has an entry.
    pub fn home_of(&self, uid: u32) -> Option<&str> {
        self.passwd
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.home.as_str())
    }

    /// Resolves a spec. A numeric uid without an entry runs with gid 0 unless a group is given,
    /// as Docker does.
    ///
    /// # Errors
    /// [`UserError`] naming the part that does not resolve.
    pub fn resolve(&self, spec: &str) -> Result<Identity, UserError> {
        let invalid = || UserError::Invalid {
            spec: spec.to_owned(),
        };
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            return Err(invalid());
        }
        let entry = match user.parse::<u32>() {
            Ok(uid) => self.passwd.iter().find(|e| e.uid == uid),
            Err(_) => Some(self.passwd.iter().find(|e| e.name == user).ok_or_else(|| {
                UserError::UnknownUser {
                    name: user.to_owned(),
                }
            })?),
        };
        let uid = match (entry, user.parse::<u32>()) {
            (Some(entry), _) => entry.uid,
            (None, Ok(uid)) => uid,
            (None, Err(_)) => return Err(invalid()),
        };
        let gid = match group {
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    self.groups
                        .iter()
                        .find(|g| g.name == group)
                        .ok_or_else(|| UserError::UnknownGroup {
                            name: group.to_owned(),
                        })?
                        .gid
                }
            },
            None => entry.map_or(0, |e| e.gid),
        };
        let mut groups = vec![gid];
        if let Some(entry) = entry {
            for g in &self.groups {
                if g.members.contains(&entry.name) && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        Ok(Identity {
            uid,
            gid,
            groups,
            home: entry.map(|e| e.home.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1000:1000:App,,,:/home/app:/bin/sh
badid:x:notanumber:1::/:/bin/sh
";

    const GROUP: &str = "\
root:x:0:
adm:x:4:app,daemon
tty:x:5:
users:x:100:app
app:x:1000:
nogroup:x:65534:
";

    fn accounts() -> Accounts {
        Accounts {
            passwd: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        }
    }

    #[test]
    fn parses_passwd_and_skips_malformed_lines() {
        let passwd = parse_passwd(PASSWD);
        let names: Vec<&str> = passwd.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["root", "daemon", "nobody", "app"]);
        assert_eq!(
            passwd[3],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/app".into()
            }
        );
    }

    #[test]
    fn parses_group_members() {
        let groups = parse_group(GROUP);
        assert_eq!(groups[1].members, vec!["app", "daemon"]);
        assert!(groups[0].members.is_empty());
    }

    #[test]
    fn resolves_every_spec_form() {
        let a = accounts();
        let id = |uid, gid, groups: &[u32], home: Option<&str>| Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.map(str::to_owned),
        };
        let cases: &[(&str, Identity)] = &[
            ("app", id(1000, 1000, &[1000, 4, 100], Some("/home/app"))),
            ("1000", id(1000, 1000, &[1000, 4, 100], Some("/home/app"))),
            ("app:tty", id(1000, 5, &[5, 4, 100], Some("/home/app"))),
            ("app:7", id(1000, 7, &[7, 4, 100], Some("/home/app"))),
            ("1000:users", id(1000, 100, &[100, 4], Some("/home/app"))),
            ("root", id(0, 0, &[0], Some("/root"))),
            ("4242", id(4242, 0, &[0], None)),
            ("4242:4343", id(4242, 4343, &[4343], None)),
        ];
        for (spec, expected) in cases {
            assert_eq!(&a.resolve(spec).unwrap(), expected, "{spec}");
        }
    }

    #[test]
    fn unresolvable_specs_name_the_part() {
        let a = accounts();
        assert_eq!(
            a.resolve("ghost"),
            Err(UserError::UnknownUser {
                name: "ghost".into()
            })
        );
        assert_eq!(
            a.resolve("app:ghosts"),
            Err(UserError::UnknownGroup {
                name: "ghosts".into()
            })
        );
        for spec in ["", ":", "app:", ":app"] {
            assert!(
                matches!(a.resolve(spec), Err(UserError::Invalid { .. })),
                "{spec:?}"
            );
        }
        let message = a.resolve("ghost").unwrap_err().to_string();
        assert_eq!(message, "unknown user \"ghost\" (not in /etc/passwd)");
    }

    #[test]
    fn home_lookup() {
        let a = accounts();
        assert_eq!(a.home_of(0), Some("/root"));
        assert_eq!(a.home_of(31337), None);
    }
}
