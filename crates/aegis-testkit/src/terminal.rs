//! A shell script run on a pseudo-terminal of its own (`script(1)` from util-linux), typed into
//! and read back as a person at a terminal would: for the CLI's terminal sessions.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A script running on its own terminal; dropping it kills it.
#[derive(Debug)]
pub struct TerminalSession {
    child: Child,
    input: Option<ChildStdin>,
    output: Arc<Mutex<Vec<u8>>>,
    /// How much of the output [`TerminalSession::expect`] has consumed.
    seen: usize,
    reader: Option<JoinHandle<()>>,
}

impl TerminalSession {
    /// Runs `script` (`sh` syntax) with `command`'s environment on a new terminal.
    ///
    /// # Panics
    /// When `script(1)` cannot be started.
    pub fn start(script: &str, env: &Command) -> TerminalSession {
        let mut command = Command::new(crate::tool("script"));
        // -q: no banner; -f: flush as it comes; -e: its exit status is the script's.
        command
            .args(["-qfec", script, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start script(1): {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("stdout was piped");
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&buf[..n]);
            }
        });
        TerminalSession {
            input: child.stdin.take(),
            child,
            output,
            seen: 0,
            reader: Some(reader),
        }
    }

    /// Types `keys`.
    ///
    /// # Panics
    /// When the terminal is gone.
    pub fn send(&mut self, keys: &[u8]) {
        let input = self.input.as_mut().expect("the input was closed");
        input
            .write_all(keys)
            .and_then(|()| input.flush())
            .unwrap_or_else(|e| panic!("cannot type into the terminal: {e}\n{}", self.all()));
    }

    /// Waits until `text` appears in the output after what an earlier call consumed, and
    /// consumes the output up to its end; returns what came before it.
    ///
    /// # Panics
    /// When it does not appear within `within`, with everything the terminal showed.
    pub fn expect(&mut self, text: &str, within: Duration) -> String {
        self.wait_for(text, within).unwrap_or_else(|| {
            panic!(
                "the terminal did not show {text:?} within {within:?}; it showed:\n{}",
                self.all()
            )
        })
    }

    /// [`TerminalSession::expect`] that gives `None` instead of panicking.
    pub fn wait_for(&mut self, text: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            {
                let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
                let fresh = String::from_utf8_lossy(&output[self.seen..]).into_owned();
                if let Some(at) = fresh.find(text) {
                    let before = fresh[..at].to_owned();
                    // Lossy decoding can change lengths only where the output is not UTF-8,
                    // which a shell's is.
                    self.seen += at + text.len();
                    return Some(before);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the terminal showed so far.
    pub fn all(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// The terminal device of the first process under the session whose command line contains
    /// `needle` (for example to resize it with `stty -F`).
    ///
    /// # Panics
    /// When there is none within `within`.
    pub fn tty_of(&self, needle: &str, within: Duration) -> PathBuf {
        let root = self.child.id();
        crate::wait_until(within, &format!("a process running {needle:?}"), || {
            descendants(root)
                .into_iter()
                .find(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(needle)
                    })
                })
                .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/fd/0")).ok())
                .filter(|tty| tty.starts_with("/dev/pts"))
                .ok_or_else(|| "not yet".to_owned())
        })
    }

    /// Closes the input and waits for the script to end.
    ///
    /// # Panics
    /// When it does not end within `within` (it is killed then).
    pub fn finish(&mut self, within: Duration) -> ExitStatus {
        self.input = None;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for script(1)") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal session did not end within {within:?}; it showed:\n{}",
                    self.all()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TerminalSession {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every process under `root`, found through `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the fields after it count.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
