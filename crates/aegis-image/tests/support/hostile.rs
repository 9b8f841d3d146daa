//! A hostile registry: a loopback HTTP/1.1 server answering the distribution API as a broken or
//! malicious registry would — bodies larger than announced, endless bodies, bodies dripping one
//! byte at a time. The real registry cannot be made to misbehave like this.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked connection threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// What a route answers with.
#[derive(Clone)]
pub enum Body {
    /// These bytes, with their `Content-Length`.
    Bytes(Vec<u8>),
    /// `Content-Length: claimed`, then only `sent`; the connection then stays open, silent.
    Claims { claimed: u64, sent: Vec<u8> },
    /// A chunked body of `total` zero bytes, as fast as the client reads.
    Endless { total: u64 },
    /// These bytes with their `Content-Length`, one byte per `interval`.
    Drip { bytes: Vec<u8>, interval: Duration },
}

type Routes = Arc<Mutex<HashMap<String, (String, Body)>>>;

/// A running hostile registry; its threads are stopped and joined on drop.
pub struct HostileRegistry {
    port: u16,
    routes: Routes,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl HostileRegistry {
    /// Starts the server. `GET /v2/` answers 200 without an auth challenge; other paths answer
    /// what [`HostileRegistry::route`] set, or 404 with a distribution error body.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Routes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (routes, stop, connections) = (
                Arc::clone(&routes),
                Arc::clone(&stop),
                Arc::clone(&connections),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (routes, stop) = (Arc::clone(&routes), Arc::clone(&stop));
                    let handle = std::thread::spawn(move || serve(stream, &routes, &stop));
                    connections.lock().unwrap().push(handle);
                }
            })
        };
        Self {
            port,
            routes,
            stop,
            accept: Some(accept),
            connections,
        }
    }

    /// `127.0.0.1:PORT`, for image references (loopback: plain HTTP).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Answers `GET path` with `body` of `content_type`.
    pub fn route(&self, path: &str, content_type: &str, body: Body) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (content_type.to_owned(), body));
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for handle in self.connections.lock().unwrap().drain(..) {
            let _ = handle.join();
        }
    }
}

/// Serves requests on one connection until the client leaves or the server stops.
fn serve(mut stream: TcpStream, routes: &Routes, stop: &AtomicBool) {
    stream.set_read_timeout(Some(POLL)).unwrap();
    stream.set_write_timeout(Some(POLL)).unwrap();
    loop {
        let Some(path) = read_request(&mut stream, stop) else {
            return;
        };
        let route = routes.lock().unwrap().get(&path).cloned();
        let (content_type, body) = match (path.as_str(), route) {
            ("/v2/", _) => ("application/json".to_owned(), Body::Bytes(b"{}".to_vec())),
            (_, Some(route)) => route,
            (_, None) => {
                let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#;
                let head = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if write_all(&mut stream, head.as_bytes(), stop)
                    && write_all(&mut stream, body, stop)
                {
                    continue;
                }
                return;
            }
        };
        let length = match &body {
            Body::Bytes(bytes) | Body::Drip { bytes, .. } => {
                format!("Content-Length: {}\r\n", bytes.len())
            }
            Body::Claims { claimed, .. } => format!("Content-Length: {claimed}\r\n"),
            Body::Endless { .. } => "Transfer-Encoding: chunked\r\n".to_owned(),
        };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{length}\r\n");
        if !write_all(&mut stream, head.as_bytes(), stop) {
            return;
        }
        match body {
            Body::Bytes(bytes) => {
                if !write_all(&mut stream, &bytes, stop) {
                    return;
                }
            }
            Body::Claims { sent, .. } => {
                let _ = write_all(&mut stream, &sent, stop);
                // Hold the connection until the client gives up on it.
                wait_for_close(&mut stream, stop);
                return;
            }
            Body::Endless { total } => {
                let chunk = vec![0u8; 64 << 10];
                let mut sent = 0u64;
                while sent < total {
                    let head = format!("{:x}\r\n", chunk.len());
                    if !(write_all(&mut stream, head.as_bytes(), stop)
                        && write_all(&mut stream, &chunk, stop)
                        && write_all(&mut stream, b"\r\n", stop))
                    {
                        return;
                    }
                    sent += chunk.len() as u64;
                }
                if !write_all(&mut stream, b"0\r\n\r\n", stop) {
                    return;
                }
            }
            Body::Drip { bytes, interval } => {
                for byte in bytes {
                    let next = Instant::now() + interval;
                    while Instant::now() < next {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(POLL.min(interval));
                    }
                    if !write_all(&mut stream, &[byte], stop) {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads one request head and returns its path; `None` when the client left or the server
/// stops.
fn read_request(stream: &mut TcpStream, stop: &AtomicBool) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match stream.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => head.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1)?;
    // Query strings (`?ns=`) are not routed on.
    Some(path.split('?').next().unwrap_or(path).to_owned())
}

/// Writes `bytes`, retrying on timeouts until done, the client leaves (false) or the server
/// stops (false).
fn write_all(stream: &mut TcpStream, mut bytes: &[u8], stop: &AtomicBool) -> bool {
    while !bytes.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match stream.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    true
}

fn wait_for_close(stream: &mut TcpStream, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
