//! The names an instance is known by: its id (`inst-…`, minted by the daemon) and its handle
//! (`--name`, chosen by the user). Each is its own type, so one is never passed where the other
//! is meant, and a handle exists only once it has passed the handle rule.

use std::borrow::Borrow;
use std::fmt;

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

use crate::names::{self, NameError, NameKind};

/// An instance id, `inst-` and the creation time in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// The id minted for an instance created at `unix_nanos`.
    pub fn minted(unix_nanos: i128) -> InstanceId {
        InstanceId(format!("inst-{unix_nanos}"))
    }

    /// An id as stored (the registry, a directory name): not checked, ids are only ever minted
    /// by the daemon.
    pub fn from_stored(id: String) -> InstanceId {
        InstanceId(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated instance handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Handle(String);

impl Handle {
    /// Checks `name` against the handle rule.
    ///
    /// # Errors
    /// [`NameError`] saying what is wrong with it.
    pub fn parse(name: &str) -> Result<Handle, NameError> {
        names::check(NameKind::Handle, name)?;
        Ok(Handle(name.to_owned()))
    }

    /// The handle as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Handle {
    type Error = NameError;

    fn try_from(name: String) -> Result<Handle, NameError> {
        names::check(NameKind::Handle, &name)?;
        Ok(Handle(name))
    }
}

impl From<Handle> for String {
    fn from(h: Handle) -> String {
        h.0
    }
}

macro_rules! text_like {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0.as_str()))
            }
        }
    };
}

text_like!(InstanceId);
text_like!(Handle);

impl FromSql for InstanceId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        String::column_result(value).map(InstanceId)
    }
}

/// A stored handle that breaks today's rule (made by an older daemon) is kept as it is: refusing
/// it would hide the instance.
impl FromSql for Handle {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        String::column_result(value).map(Handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_follow_the_rule_and_ids_are_their_own_type() {
        assert_eq!(Handle::parse("web-1").unwrap().as_str(), "web-1");
        assert!(Handle::parse("inst-1").is_err());
        assert!(serde_json::from_str::<Handle>("\"has space\"").is_err());
        let id = InstanceId::minted(42);
        assert_eq!(id.to_string(), "inst-42");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"inst-42\"");
    }
}
