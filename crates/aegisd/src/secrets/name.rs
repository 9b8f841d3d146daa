//! Secret names (environment-variable rules, checked once) and the selection of secrets an
//! instance asks for: names, or [`ALL`].

use std::fmt;

use crate::names::{self, NameError, NameKind};

/// The selection that means "every secret in the store, as it is at each boot".
pub const ALL: &str = "*";

/// A valid secret name: letters, digits and `_`, not starting with a digit — the name of the
/// environment variable it becomes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName(String);

impl SecretName {
    /// Checks `name`.
    ///
    /// # Errors
    /// [`NameError`] when it is not a valid environment variable name of at most
    /// [`names::MAX_SECRET_NAME_BYTES`].
    pub fn parse(name: &str) -> Result<SecretName, NameError> {
        names::check(NameKind::Secret, name)?;
        Ok(SecretName(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which secrets an instance gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSelection {
    /// Every secret in the store at boot time (`*`).
    All,
    /// These names, each of which must exist (empty: none).
    Names(Vec<SecretName>),
}

impl SecretSelection {
    /// Parses the stored or requested list: names, or `*` (which wins over any names beside it).
    /// Duplicates are dropped, order is kept.
    ///
    /// # Errors
    /// The first entry that is neither `*` nor a valid name.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<SecretSelection, NameError> {
        let mut names: Vec<SecretName> = Vec::new();
        let mut all = false;
        for entry in entries {
            let entry = entry.as_ref();
            if entry == ALL {
                all = true;
                continue;
            }
            let name = SecretName::parse(entry)?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(if all {
            SecretSelection::All
        } else {
            SecretSelection::Names(names)
        })
    }

    /// The canonical list to store and show: `["*"]`, or the names.
    pub fn to_list(&self) -> Vec<String> {
        match self {
            SecretSelection::All => vec![ALL.to_owned()],
            SecretSelection::Names(names) => names.iter().map(|n| n.0.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_env_rules() {
        for ok in ["A", "_x", "API_KEY_2", "a1"] {
            assert_eq!(SecretName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "1A", "A-B", "A B", "*", "é", "A=B", &"A".repeat(256)] {
            assert!(SecretName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selections() {
        let none: [&str; 0] = [];
        assert_eq!(
            SecretSelection::parse(&none).unwrap(),
            SecretSelection::Names(vec![])
        );
        assert_eq!(
            SecretSelection::parse(&["B", "A", "B"]).unwrap().to_list(),
            ["B", "A"]
        );
        assert_eq!(
            SecretSelection::parse(&["A", "*"]).unwrap(),
            SecretSelection::All
        );
        assert_eq!(SecretSelection::All.to_list(), ["*"]);
        assert_eq!(
            SecretSelection::parse(&["A", "no-way"]).unwrap_err().name,
            "no-way"
        );
    }
}
