//! A test client for `aegis-harness --stdio`: spawns the built binary, sends JSON-RPC requests
//! on its stdin and reads typed frames from its stdout, with a deadline on every wait.
//!
//! Frames that arrive while a test waits for something else are kept, so tests can wait for a
//! response and then collect a process's output regardless of how the two interleaved.

#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_proto::control::{
    ActivityParams, ExecId, Frame, HealthResult, Notification, NotificationFrame, RequestId,
    ResponseFrame, Stream,
};
use serde_json::{json, Value};

/// Generous for a loaded CI machine; a healthy harness answers in milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

/// One frame from the harness.
#[derive(Debug, Clone)]
pub enum Received {
    Response(ResponseFrame),
    Notification(Notification),
}

/// A running `aegis-harness --stdio`.
pub struct Harness {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<Result<Received, String>>,
    buffered: VecDeque<Received>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
}

/// Everything one process produced.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// stdout chunks as (data, eol).
    pub stdout: Vec<(String, bool)>,
    /// stderr chunks as (data, eol).
    pub stderr: Vec<(String, bool)>,
    /// Exit code (128 + signal for signal deaths).
    pub code: i32,
    /// The killing signal, if any.
    pub signal: Option<i32>,
}

impl Finished {
    /// stdout joined back into lines (a final partial line included).
    pub fn stdout_lines(&self) -> Vec<String> {
        join_lines(&self.stdout)
    }

    /// stderr joined back into lines.
    pub fn stderr_lines(&self) -> Vec<String> {
        join_lines(&self.stderr)
    }
}

fn join_lines(chunks: &[(String, bool)]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut open = false;
    for (data, eol) in chunks {
        current.push_str(data);
        open = true;
        if *eol {
            lines.push(std::mem::take(&mut current));
            open = false;
        }
    }
    if open {
        lines.push(current);
    }
    lines
}

impl Harness {
    /// Starts the harness built by cargo for this test run.
    pub fn start() -> Harness {
        Harness::start_with_env(&[])
    }

    /// Starts the harness with extra environment variables (its `--stdio` test options).
    pub fn start_with_env(env: &[(&str, &str)]) -> Harness {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aegis-harness"))
            .arg("--stdio")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aegis-harness --stdio");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr_sink
                    .lock()
                    .expect("stderr buffer lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let reader = BufReader::with_capacity(1 << 20, stdout);
            for line in reader.split(b'\n') {
                let Ok(line) = line else { break };
                let received = match Frame::parse(&line) {
                    Ok(Frame::Response(r)) => Ok(Received::Response(r)),
                    Ok(Frame::Notification { .. }) => {
                        serde_json::from_slice::<NotificationFrame>(&line)
                            .map(|n| Received::Notification(n.notification))
                            .map_err(|e| {
                                format!("bad notification {e}: {}", String::from_utf8_lossy(&line))
                            })
                    }
                    Ok(Frame::Request(r)) => {
                        Err(format!("unexpected request from the harness: {r:?}"))
                    }
                    Err(e) => Err(format!(
                        "unparsable frame ({e}): {}",
                        String::from_utf8_lossy(&line)
                    )),
                };
                if tx.send(received).is_err() {
                    break;
                }
            }
        });
        Harness {
            child,
            stdin,
            frames,
            buffered: VecDeque::new(),
            stderr,
            next_id: 1,
        }
    }

    /// The harness's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the harness printed on stderr so far (its console lines).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer lock").clone()
    }

    /// Waits for a console line starting with `prefix` and returns the rest of it.
    pub fn console_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let stderr = self.stderr();
            let needle = format!("aegis-harness: {prefix}");
            if let Some(line) = stderr.lines().find(|l| l.starts_with(&needle)) {
                return line[needle.len()..].to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no console line {prefix:?} within {WAIT:?}\nstderr:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next `activity` notification; `None` if none arrives within `timeout`.
    pub fn activity_within(&mut self, timeout: Duration) -> Option<ActivityParams> {
        let found = self.try_take_matching(
            |r| matches!(r, Received::Notification(Notification::Activity(_))),
            timeout,
        )?;
        match found {
            Received::Notification(Notification::Activity(a)) => Some(a),
            other => unreachable!("matched an activity notification, got {other:?}"),
        }
    }

    /// Waits (up to [`WAIT`]) for a heartbeat for which `accept` holds; returns it.
    pub fn activity_until(&mut self, accept: impl Fn(&ActivityParams) -> bool) -> ActivityParams {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.activity_within(left) {
                Some(a) if accept(&a) => return a,
                Some(a) => seen.push(a),
                None => panic!(
                    "no matching heartbeat within {WAIT:?}; seen: {seen:?}\nstderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Sends raw bytes (a newline is not added).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).expect("write to the harness");
        stdin.flush().expect("flush to the harness");
    }

    /// Sends a request and returns its id.
    pub fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = json!({"jsonrpc": "2.0", "id": id, "method": method});
        frame["params"] = params;
        let mut bytes = serde_json::to_vec(&frame).expect("requests serialise");
        bytes.push(b'\n');
        self.send_raw(&bytes);
        id
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, method: &str, params: Value) -> ResponseFrame {
        let id = self.request(method, params);
        self.response(Some(id))
    }

    /// Sends a request that must succeed; returns its result.
    pub fn call_ok(&mut self, method: &str, params: Value) -> Value {
        let shown = params.to_string();
        let response = self.call(method, params);
        match (response.result, response.error) {
            (Some(result), None) => result,
            (_, error) => panic!("{method} {shown} failed: {error:?}\n{}", self.stderr()),
        }
    }

    /// Waits for the response with `id` (`None`: a response with `id: null`).
    pub fn response(&mut self, id: Option<u64>) -> ResponseFrame {
        self.response_for(id.map(RequestId::Number).as_ref())
    }

    /// Waits for the response with any kind of id.
    pub fn response_for(&mut self, wanted: Option<&RequestId>) -> ResponseFrame {
        let found = self.take_matching(|r| match r {
            Received::Response(resp) => resp.id.as_ref() == wanted,
            Received::Notification(_) => false,
        });
        match found {
            Received::Response(r) => r,
            Received::Notification(_) => unreachable!("matched a response"),
        }
    }

    /// Waits for the error response with `id` and returns its code.
    pub fn error_code(&mut self, id: Option<u64>) -> i64 {
        let response = self.response(id);
        match response.error {
            Some(e) => e.code,
            None => panic!("expected an error for id {id:?}, got {response:?}"),
        }
    }

    /// Collects output and the exit of one process (`None`: the primary).
    pub fn finish(&mut self, exec_id: Option<&str>) -> Finished {
        let wanted = exec_id.map(|id| ExecId(id.to_owned()));
        let mut finished = Finished::default();
        loop {
            let frame = self.take_matching(|r| match r {
                Received::Notification(Notification::Output(o)) => o.exec_id == wanted,
                Received::Notification(Notification::Exit(e)) => e.exec_id == wanted,
                Received::Notification(Notification::Activity(_)) | Received::Response(_) => false,
            });
            match frame {
                Received::Notification(Notification::Output(o)) => {
                    let chunk = (o.data, o.eol);
                    match o.stream {
                        Stream::Stdout => finished.stdout.push(chunk),
                        Stream::Stderr => finished.stderr.push(chunk),
                    }
                }
                Received::Notification(Notification::Exit(e)) => {
                    finished.code = e.status.code;
                    finished.signal = e.status.signal;
                    return finished;
                }
                Received::Notification(Notification::Activity(_)) | Received::Response(_) => {
                    unreachable!("matched output or exit")
                }
            }
        }
    }

    /// Waits for the first stdout chunk of an exec (expected to be a whole line) and returns
    /// it; the rest of that exec's frames stay for [`Harness::finish`].
    pub fn first_line(&mut self, exec_id: &str) -> String {
        let wanted = Some(ExecId(exec_id.to_owned()));
        match self.take_matching(|r| {
            matches!(r, Received::Notification(Notification::Output(o))
                if o.exec_id == wanted && o.stream == Stream::Stdout)
        }) {
            Received::Notification(Notification::Output(o)) => {
                assert!(o.eol, "expected a whole line, got {o:?}");
                o.data
            }
            other => unreachable!("matched stdout output, got {other:?}"),
        }
    }

    /// Calls `health` and decodes the result.
    pub fn health(&mut self) -> HealthResult {
        let result = self.call_ok("health", json!({}));
        serde_json::from_value(result).expect("health result decodes")
    }

    /// Closes the harness's stdin (the peer going away).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the harness process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the harness") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the harness did not exit within {WAIT:?}\nstderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn take_matching(&mut self, matches: impl Fn(&Received) -> bool) -> Received {
        match self.try_take_matching(matches, WAIT) {
            Some(frame) => frame,
            None => panic!(
                "no matching frame within {WAIT:?}; frames seen but not taken: {:?}\nstderr:\n{}",
                self.buffered,
                self.stderr()
            ),
        }
    }

    fn try_take_matching(
        &mut self,
        matches: impl Fn(&Received) -> bool,
        timeout: Duration,
    ) -> Option<Received> {
        if let Some(i) = self.buffered.iter().position(&matches) {
            return self.buffered.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frames.recv_timeout(left) {
                Ok(Ok(frame)) if matches(&frame) => return Some(frame),
                Ok(Ok(frame)) => self.buffered.push_back(frame),
                Ok(Err(problem)) => panic!("{problem}\nstderr:\n{}", self.stderr()),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(e) => panic!(
                    "the harness's stdout ended ({e}); frames seen but not taken: {:?}\nstderr:\n{}",
                    self.buffered,
                    self.stderr()
                ),
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Closing stdin makes the harness terminate its processes and exit; kill it if it
        // does not, so no test leaves processes behind.
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// argv helper: `argv(&["sh", "-c", "..."])`.
pub fn argv(args: &[&str]) -> Value {
    json!(args)
}
