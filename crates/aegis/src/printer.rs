//! Writes log entries (and exec output) to stdout or stderr by their stream, keeping a process's
//! own line breaks: an entry marked `partial` ends without a newline.

use std::io::Write;

use aegis_proto::api::{LogEntry, LogSource, LogStream};

use crate::term::{painted, Paint, Term};

/// Which entries are shown, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Only the primary process's output, unchanged (`aegis run`).
    ServerOnly,
    /// Every entry; `system` lines prefixed with `[aegis]` and exec lines with `[exec <id>]`, so
    /// the sources can be told apart (`aegis logs`).
    Labelled,
    /// Every entry unchanged (`aegis exec`, `aegis logs --exec`).
    Unchanged,
}

/// Prints entries; remembers per output stream whether the last text ended mid-line.
#[derive(Debug)]
pub struct LogPrinter {
    show: Show,
    term: Term,
    mid_line: [bool; 2],
}

impl LogPrinter {
    /// A printer for `show`.
    pub fn new(show: Show, term: Term) -> LogPrinter {
        LogPrinter {
            show,
            term,
            mid_line: [false; 2],
        }
    }

    /// Writes one entry to stdout or stderr.
    ///
    /// # Errors
    /// When writing fails (a closed pipe included).
    pub fn print(&mut self, entry: &LogEntry) -> std::io::Result<()> {
        let Some(text) = self.render(entry) else {
            return Ok(());
        };
        match entry.stream {
            LogStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()
            }
            LogStream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(text.as_bytes())?;
                err.flush()
            }
        }
    }

    /// The text to write for `entry`, or `None` when it is not shown.
    fn render(&mut self, entry: &LogEntry) -> Option<String> {
        let index = match entry.stream {
            LogStream::Stdout => 0,
            LogStream::Stderr => 1,
        };
        let colour = match entry.stream {
            LogStream::Stdout => self.term.out_colour,
            LogStream::Stderr => self.term.err_colour,
        };
        let prefix = match (self.show, entry.source) {
            (Show::ServerOnly, LogSource::Server) => None,
            (Show::ServerOnly, LogSource::Exec | LogSource::System | LogSource::Daemon) => {
                return None
            }
            (Show::Unchanged, _) | (Show::Labelled, LogSource::Server) => None,
            (Show::Labelled, LogSource::System) => Some("[aegis] ".to_owned()),
            (Show::Labelled, LogSource::Exec) => Some(match &entry.exec_id {
                Some(id) => format!("[exec {id}] "),
                None => "[exec] ".to_owned(),
            }),
            (Show::Labelled, LogSource::Daemon) => Some(match &entry.daemon {
                Some(name) => format!("[daemon {name}] "),
                None => "[daemon] ".to_owned(),
            }),
        };
        let mut text = String::with_capacity(entry.line.len() + 16);
        if let Some(prefix) = prefix.filter(|_| !self.mid_line[index]) {
            let paint = if entry.source == LogSource::System {
                Paint::Dim
            } else {
                Paint::Cyan
            };
            text.push_str(&painted(colour, paint, &prefix));
        }
        text.push_str(&entry.line);
        if !entry.partial {
            text.push('\n');
        }
        self.mid_line[index] = entry.partial;
        Some(text)
    }
}

/// `value` as pretty JSON followed by a newline.
///
/// # Errors
/// When writing fails.
pub fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    writeln!(out, "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(source: LogSource, line: &str, partial: bool) -> LogEntry {
        LogEntry {
            ts: "2024-05-01T10:00:00Z".to_owned(),
            stream: LogStream::Stdout,
            line: line.to_owned(),
            source,
            instance_id: "inst-1".to_owned(),
            exec_id: (source == LogSource::Exec).then(|| "exec-7".to_owned()),
            daemon: None,
            partial,
        }
    }

    fn plain() -> Term {
        Term {
            out_colour: false,
            err_colour: false,
            out_tty: false,
        }
    }

    #[test]
    fn server_only_keeps_partial_lines() {
        let mut p = LogPrinter::new(Show::ServerOnly, plain());
        assert_eq!(
            p.render(&entry(LogSource::Server, "a", false)).as_deref(),
            Some("a\n")
        );
        assert_eq!(
            p.render(&entry(LogSource::Server, "b", true)).as_deref(),
            Some("b")
        );
        assert_eq!(p.render(&entry(LogSource::System, "booted", false)), None);
        assert_eq!(p.render(&entry(LogSource::Exec, "x", false)), None);
    }

    #[test]
    fn labelled_prefixes_at_line_starts_only() {
        let mut p = LogPrinter::new(Show::Labelled, plain());
        let out: Vec<String> = [
            entry(LogSource::System, "process exited (code=0)", false),
            entry(LogSource::Exec, "part", true),
            entry(LogSource::Exec, "rest", false),
            entry(LogSource::Server, "srv", false),
        ]
        .iter()
        .filter_map(|e| p.render(e))
        .collect();
        assert_eq!(
            out.concat(),
            "[aegis] process exited (code=0)\n[exec exec-7] partrest\nsrv\n"
        );
    }
}
