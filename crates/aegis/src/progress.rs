//! Progress of image pulls and imports, from the daemon's stream of [`ImageEvent`]s: one
//! `indicatif` bar per layer (bytes received) and a spinner for the other steps when stderr is
//! a terminal, one plain line per step otherwise. `--json` copies the events to stdout as they
//! come instead. The final `Done` or `Error` event decides the outcome.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use aegis_client::NdjsonStream;
use aegis_proto::api::{ImageEvent, ImageSummary};

use crate::report::Hinted;
use crate::term::{Paint, Term};

/// How often a spinner turns while a step without byte counts runs (resolving, unpacking).
const SPINNER_TICK: Duration = Duration::from_millis(120);
/// Width of a layer's bar, in cells.
const BAR_WIDTH: usize = 30;

/// How the events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars on a terminal, plain lines otherwise (decided from stderr).
    Human,
    /// Each event as one JSON line on stdout (`--json`).
    Json,
}

/// What a finished pull or import produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The images now stored.
    pub images: Vec<ImageSummary>,
    /// True when nothing had to be downloaded.
    pub cached: bool,
}

/// Reads `stream` to its end, showing progress; `what` names the operation in errors
/// (`pull of docker.io/library/alpine:3`).
///
/// # Errors
/// The daemon's `Error` event (with its hint), a broken stream, or a stream that ends without
/// a final event.
pub async fn follow(
    mut stream: NdjsonStream<ImageEvent>,
    display: Display,
    term: Term,
    what: &str,
) -> anyhow::Result<Finished> {
    let mut view = match display {
        Display::Json => None,
        Display::Human if std::io::stderr().is_terminal() => {
            Some(View::Bars(Box::new(Bars::new(term.err_colour))))
        }
        Display::Human => Some(View::Lines),
    };
    let outcome = loop {
        let Some(raw) = stream.next_raw().await else {
            break Err(Hinted {
                message: format!(
                    "the daemon ended the {what} stream without saying how it finished"
                ),
                hint: "check the daemon log ($AEGIS_HOME/aegisd.log)".to_owned(),
            }
            .into());
        };
        let raw = match raw.with_context(|| format!("lost the progress of the {what}")) {
            Ok(raw) => raw,
            Err(e) => break Err(e),
        };
        if view.is_none() {
            let mut out = std::io::stdout().lock();
            out.write_all(&raw)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        let event: ImageEvent = serde_json::from_slice(&raw)
            .with_context(|| format!("cannot decode a progress event of the {what}"))?;
        match event {
            ImageEvent::Done { images, cached } => break Ok(Finished { images, cached }),
            ImageEvent::Error { error, hint } => {
                break Err(match hint {
                    Some(hint) => Hinted {
                        message: error,
                        hint,
                    }
                    .into(),
                    None => anyhow::Error::msg(error),
                })
            }
            step => {
                if let Some(view) = view.as_mut() {
                    view.show(&step, term)?;
                }
            }
        }
    };
    if let Some(View::Bars(bars)) = view.as_mut() {
        bars.clear();
    }
    outcome
}

/// A digest as shown: the first 12 hex digits.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.get(..12).unwrap_or(hex)
}

enum View {
    Bars(Box<Bars>),
    Lines,
}

impl View {
    fn show(&mut self, event: &ImageEvent, term: Term) -> std::io::Result<()> {
        match self {
            View::Bars(bars) => {
                bars.show(event);
                Ok(())
            }
            View::Lines => match line(event) {
                Some(text) => writeln!(std::io::stderr(), "{} {text}", term.err(Paint::Dim, "==>")),
                None => Ok(()),
            },
        }
    }
}

/// The plain line for a step; `None` for byte counts, which would flood a log.
fn line(event: &ImageEvent) -> Option<String> {
    Some(match event {
        ImageEvent::Resolving { reference } => format!("resolving {reference}"),
        ImageEvent::LayerStart { digest, size } => format!(
            "layer {}: downloading {}",
            short_digest(digest),
            HumanBytes(*size)
        ),
        ImageEvent::LayerProgress { .. } => return None,
        ImageEvent::LayerDone { digest } => format!("layer {}: done", short_digest(digest)),
        ImageEvent::LayerCached { digest, size } => format!(
            "layer {}: already stored ({})",
            short_digest(digest),
            HumanBytes(*size)
        ),
        ImageEvent::Unpacking { digest } => format!(
            "unpacking {} into its root filesystem",
            short_digest(digest)
        ),
        ImageEvent::Done { .. } | ImageEvent::Error { .. } => return None,
    })
}

/// Bars on stderr: a spinner line for the current step, one bar per layer below it.
struct Bars {
    multi: MultiProgress,
    step: ProgressBar,
    layers: HashMap<String, ProgressBar>,
    layer_style: ProgressStyle,
    done_style: ProgressStyle,
}

impl Bars {
    fn new(colour: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let (spinner, bar) = if colour {
            (
                "{spinner:.cyan} {msg}",
                format!("{{prefix}} [{{bar:{BAR_WIDTH}.cyan/blue}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"),
            )
        } else {
            (
                "{spinner} {msg}",
                format!(
                    "{{prefix}} [{{bar:{BAR_WIDTH}}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
                ),
            )
        };
        let step = multi.add(ProgressBar::new_spinner());
        step.set_style(
            ProgressStyle::with_template(spinner).expect("the spinner template is valid"),
        );
        step.enable_steady_tick(SPINNER_TICK);
        Bars {
            multi,
            step,
            layers: HashMap::new(),
            layer_style: ProgressStyle::with_template(&bar)
                .expect("the bar template is valid")
                .progress_chars("=> "),
            done_style: ProgressStyle::with_template("{prefix} {msg}")
                .expect("the done template is valid"),
        }
    }

    fn layer(&mut self, digest: &str, size: u64) -> &ProgressBar {
        let (multi, style) = (&self.multi, &self.layer_style);
        self.layers.entry(digest.to_owned()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(size));
            bar.set_style(style.clone());
            bar.set_prefix(short_digest(digest).to_owned());
            bar
        })
    }

    fn show(&mut self, event: &ImageEvent) {
        match event {
            ImageEvent::Resolving { reference } => {
                self.step.set_message(format!("resolving {reference}"));
            }
            ImageEvent::LayerStart { digest, size } => {
                self.step.set_message("downloading layers");
                self.layer(digest, *size);
            }
            ImageEvent::LayerProgress { digest, bytes } => {
                self.layer(digest, 0).set_position(*bytes);
            }
            ImageEvent::LayerDone { digest } => {
                let done = self.done_style.clone();
                let bar = self.layer(digest, 0);
                let total = bar.length().unwrap_or(bar.position());
                bar.set_style(done);
                bar.finish_with_message(format!("done ({})", HumanBytes(total)));
            }
            ImageEvent::LayerCached { digest, size } => {
                let done = self.done_style.clone();
                let bar = self.layer(digest, *size);
                bar.set_style(done);
                bar.finish_with_message(format!("already stored ({})", HumanBytes(*size)));
            }
            ImageEvent::Unpacking { digest } => {
                self.step.set_message(format!(
                    "unpacking {} into its root filesystem",
                    short_digest(digest)
                ));
            }
            ImageEvent::Done { .. } | ImageEvent::Error { .. } => {}
        }
    }

    /// Removes every bar from the terminal, so the summary stands alone.
    fn clear(&mut self) {
        self.step.finish_and_clear();
        for bar in self.layers.values() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_shortened() {
        assert_eq!(
            short_digest("sha256:0123456789abcdef0123456789abcdef"),
            "0123456789ab"
        );
        assert_eq!(short_digest("abc"), "abc");
    }

    #[test]
    fn plain_lines() {
        let digest = "sha256:aaaabbbbccccdddd".to_owned();
        let rows = [
            (
                ImageEvent::Resolving {
                    reference: "127.0.0.1:5000/a:v1".to_owned(),
                },
                Some("resolving 127.0.0.1:5000/a:v1"),
            ),
            (
                ImageEvent::LayerStart {
                    digest: digest.clone(),
                    size: 3 << 20,
                },
                Some("layer aaaabbbbcccc: downloading 3.00 MiB"),
            ),
            (
                ImageEvent::LayerProgress {
                    digest: digest.clone(),
                    bytes: 1,
                },
                None,
            ),
            (
                ImageEvent::LayerDone {
                    digest: digest.clone(),
                },
                Some("layer aaaabbbbcccc: done"),
            ),
            (
                ImageEvent::LayerCached {
                    digest: digest.clone(),
                    size: 2048,
                },
                Some("layer aaaabbbbcccc: already stored (2.00 KiB)"),
            ),
            (
                ImageEvent::Unpacking { digest },
                Some("unpacking aaaabbbbcccc into its root filesystem"),
            ),
        ];
        for (event, want) in rows {
            assert_eq!(line(&event).as_deref(), want, "{event:?}");
        }
    }
}
