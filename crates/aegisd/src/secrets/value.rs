//! Secret values in memory: [`SecretValue`] (zeroised on drop, never printed) and [`SecretEnv`],
//! the values resolved for one boot.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use super::name::SecretName;

/// Largest value accepted. Linux refuses a single environment string over 128 KiB
/// (`MAX_ARG_STRLEN`) at `execve`; half of that leaves room for the name.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Largest total of injected secrets for one process, counted as JSON-encoded name and value.
/// They travel in one control-channel frame with the command and the image's environment, so
/// this stays well below that frame's bound.
pub const MAX_INJECTED_BYTES: usize = aegis_proto::control::MAX_HOST_FRAME_BYTES / 2;
const _: () = assert!(MAX_VALUE_BYTES < MAX_INJECTED_BYTES);

/// A secret's plaintext. Zeroised when dropped; `Debug` and `Display` print `[redacted]`.
#[derive(Clone, Default)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps `value` (taking ownership, so no copy is left behind).
    pub fn new(value: String) -> SecretValue {
        SecretValue(Zeroizing::new(value))
    }

    /// The plaintext. Callers must not log, print or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Why this value cannot be stored, if it cannot: too long, or holds a NUL byte (which no
    /// environment variable can carry).
    pub fn problem(&self) -> Option<String> {
        if self.0.len() > MAX_VALUE_BYTES {
            Some(format!(
                "the value has {} bytes, more than the {MAX_VALUE_BYTES} allowed",
                self.0.len()
            ))
        } else if self.0.contains('\0') {
            Some("the value contains a NUL byte, which an environment variable cannot hold".into())
        } else {
            None
        }
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The secrets resolved for one boot, by variable name. `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct SecretEnv(BTreeMap<String, SecretValue>);

impl SecretEnv {
    /// An empty set.
    pub fn new() -> SecretEnv {
        SecretEnv::default()
    }

    /// Adds one value.
    pub fn insert(&mut self, name: &SecretName, value: SecretValue) {
        self.0.insert(name.as_str().to_owned(), value);
    }

    /// The names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of secrets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the secrets whose name is in `explicit`: an explicit environment variable wins
    /// over a secret of the same name.
    pub fn without_keys_of<V>(mut self, explicit: &BTreeMap<String, V>) -> SecretEnv {
        self.0.retain(|name, _| !explicit.contains_key(name));
        self
    }

    /// Bytes these values take in a control-channel frame (JSON-encoded names and values).
    pub fn encoded_len(&self) -> usize {
        self.0
            .iter()
            .map(|(k, v)| json_len(k) + json_len(v.expose()) + 2)
            .sum()
    }

    /// Copies every value into `env`, replacing what is there. Callers [`scrub_env`] the map
    /// once it has been sent.
    pub fn inject_into(&self, env: &mut BTreeMap<String, String>) {
        for (name, value) in &self.0 {
            if let Some(old) = env.insert(name.clone(), value.expose().to_owned()) {
                let mut old = old;
                old.zeroize();
            }
        }
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Zeroises and removes every value of a process environment that carried secrets, once it has
/// been sent to the guest.
pub fn scrub_env(env: &mut BTreeMap<String, String>) {
    for value in env.values_mut() {
        value.zeroize();
    }
    env.clear();
}

fn json_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print() {
        let v = SecretValue::new("hunter2".into());
        assert_eq!(format!("{v}"), "[redacted]");
        assert_eq!(format!("{v:?}"), "[redacted]");
        let mut env = SecretEnv::new();
        env.insert(&SecretName::parse("PASSWORD").unwrap(), v);
        assert_eq!(format!("{env:?}"), r#"{"PASSWORD"}"#);
    }

    #[test]
    fn value_problems() {
        assert_eq!(SecretValue::new("ok".into()).problem(), None);
        assert_eq!(SecretValue::new(String::new()).problem(), None);
        assert!(SecretValue::new("a\0b".into())
            .problem()
            .unwrap()
            .contains("NUL"));
        assert!(SecretValue::new("x".repeat(MAX_VALUE_BYTES + 1))
            .problem()
            .unwrap()
            .contains("more than"));
    }

    #[test]
    fn explicit_env_wins_and_injection_replaces_image_env() {
        let mut secrets = SecretEnv::new();
        for (k, v) in [("A", "secret-a"), ("B", "secret-b")] {
            secrets.insert(&SecretName::parse(k).unwrap(), SecretValue::new(v.into()));
        }
        let explicit: BTreeMap<String, String> = [("B".to_owned(), "explicit".to_owned())].into();
        let secrets = secrets.without_keys_of(&explicit);
        assert_eq!(secrets.names().collect::<Vec<_>>(), ["A"]);
        let mut env: BTreeMap<String, String> = [("A".to_owned(), "image".to_owned())].into();
        secrets.inject_into(&mut env);
        env.extend(explicit);
        assert_eq!(env["A"], "secret-a");
        assert_eq!(env["B"], "explicit");
        assert_eq!(
            secrets.encoded_len(),
            "\"A\"".len() + "\"secret-a\"".len() + 2
        );
        scrub_env(&mut env);
        assert!(env.is_empty());
    }
}
