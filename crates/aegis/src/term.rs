//! Terminal styling: colour only when the stream is a terminal and `NO_COLOR` is unset or empty.

use std::io::IsTerminal;

/// Colours used by the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Errors, failing checks.
    Red,
    /// Passing checks, running instances.
    Green,
    /// Warnings, paused instances.
    Yellow,
    /// Hints.
    Cyan,
    /// Secondary text (system log lines, stopped instances).
    Dim,
    /// Headings.
    Bold,
}

impl Paint {
    fn sgr(self) -> &'static str {
        match self {
            Paint::Red => "1;31",
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Cyan => "36",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }
}

/// Whether stdout and stderr get colour, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// Colour on stdout.
    pub out_colour: bool,
    /// Colour on stderr.
    pub err_colour: bool,
    /// stdout is a terminal (also decides ✓/✗ versus ok/FAIL in `aegis doctor`).
    pub out_tty: bool,
}

impl Term {
    /// Reads the terminal state and `NO_COLOR`.
    pub fn detect() -> Term {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let out_tty = std::io::stdout().is_terminal();
        Term {
            out_colour: out_tty && !no_colour,
            err_colour: std::io::stderr().is_terminal() && !no_colour,
            out_tty,
        }
    }

    /// `text` painted for stdout.
    pub fn out(&self, paint: Paint, text: &str) -> String {
        painted(self.out_colour, paint, text)
    }

    /// `text` painted for stderr.
    pub fn err(&self, paint: Paint, text: &str) -> String {
        painted(self.err_colour, paint, text)
    }
}

/// `text` wrapped in the colour codes of `paint` when `colour` is on.
pub fn painted(colour: bool, paint: Paint, text: &str) -> String {
    if colour {
        format!("\x1b[{}m{text}\x1b[0m", paint.sgr())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paints_only_with_colour() {
        let plain = Term {
            out_colour: false,
            err_colour: true,
            out_tty: false,
        };
        assert_eq!(plain.out(Paint::Red, "x"), "x");
        assert_eq!(plain.err(Paint::Red, "x"), "\x1b[1;31mx\x1b[0m");
    }
}
