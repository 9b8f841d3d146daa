//! `aegis secret set KEY [VALUE]`. Without VALUE the value is read from stdin (everything up to
//! EOF, less one trailing newline), or from a hidden prompt when stdin is a terminal, so it
//! need not appear in shell history or in the process list.

use std::io::{IsTerminal, Read, Write};

use anyhow::Context;

use crate::args::parse_secret_key;
use crate::exit::Exit;
use crate::report::Hinted;
use crate::Ctx;

/// Largest value read from stdin. The daemon's own bound is lower and says so; this only keeps
/// a mistaken `aegis secret set K < big-file` from reading without end.
const MAX_STDIN_BYTES: u64 = 1024 * 1024;

/// `aegis secret set`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the secret, which is also the environment variable it becomes
    #[arg(value_name = "KEY", value_parser = parse_secret_key)]
    pub key: String,
    /// The value; read from stdin (or a hidden prompt on a terminal) when omitted, which keeps
    /// it out of shell history
    #[arg(value_name = "VALUE")]
    pub value: Option<String>,
}

/// Runs `aegis secret set`.
pub async fn run(args: Args, ctx: &Ctx) -> anyhow::Result<Exit> {
    let value = match args.value {
        Some(value) => value,
        None => read_value(&args.key)?,
    };
    let set = ctx
        .client
        .set_secret(&args.key, &value)
        .await
        .with_context(|| format!("cannot set secret {}", args.key))?;
    drop(value);
    let mut out = std::io::stdout();
    if set.created {
        writeln!(out, "secret {} created", set.secret.name)?;
    } else {
        writeln!(
            out,
            "secret {} updated; running instances get the new value when they restart",
            set.secret.name
        )?;
    }
    Ok(Exit::Success)
}

fn read_value(key: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let value = rpassword::prompt_password(format!("value of {key} (hidden): "))
            .context("cannot read the value from the terminal")?;
        return non_empty(value, key, "the prompt");
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the value from stdin")?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(Hinted {
            message: format!("the value on stdin is longer than {MAX_STDIN_BYTES} bytes"),
            hint: "secrets are environment variables; store large files elsewhere".to_owned(),
        }
        .into());
    }
    let text = String::from_utf8(bytes).map_err(|_| Hinted {
        message: "the value on stdin is not UTF-8 text".to_owned(),
        hint: "encode binary values, e.g. with `base64`".to_owned(),
    })?;
    non_empty(strip_newline(text), key, "stdin")
}

/// Drops one trailing newline (`echo value | aegis secret set K` means `value`).
fn strip_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

fn non_empty(value: String, key: &str, source: &str) -> anyhow::Result<String> {
    if value.is_empty() {
        return Err(Hinted {
            message: format!("no value for {key} on {source}"),
            hint: format!(
                "pipe it in (`printf %s \"$VALUE\" | aegis secret set {key}`), or pass an empty \
                 value explicitly: `aegis secret set {key} ''`"
            ),
        }
        .into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_dropped() {
        assert_eq!(strip_newline("v\n".into()), "v");
        assert_eq!(strip_newline("v\r\n".into()), "v");
        assert_eq!(strip_newline("v\n\n".into()), "v\n");
        assert_eq!(strip_newline("v".into()), "v");
        assert_eq!(strip_newline("a\nb".into()), "a\nb");
    }

    #[test]
    fn empty_values_need_saying_so() {
        let err = non_empty(String::new(), "K", "stdin").unwrap_err();
        assert_eq!(err.to_string(), "no value for K on stdin");
        assert_eq!(non_empty("x".into(), "K", "stdin").unwrap(), "x");
    }
}
