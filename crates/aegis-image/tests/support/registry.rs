//! A real `docker-registry` (Debian's package of distribution) on a free loopback port, with a
//! minimal HTTP/1.0 client implementing the distribution push flow.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_testkit::free_port;
use base64::Engine as _;

use super::image::{sha256, TestImage, MEDIA_MANIFEST};

/// How long the registry may take to answer `/v2/` after starting.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);
/// Hard timeout for each test HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running registry, killed and reaped on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A registry requiring HTTP basic auth with `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Self {
        Self::spawn(Some((user.to_owned(), password.to_owned())))
    }

    fn spawn(credentials: Option<(String, String)>) -> Self {
        let binary = aegis_testkit::tool("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: aegis-test-secret\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash_with_result(password, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoA);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: aegis-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
            0,
        )
        .spawn()
        .unwrap();
        let registry = Self {
            child,
            dir,
            port,
            credentials,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match http(self.port, "GET", "/v2/", &[], b"") {
                Ok(response) if response.status == 200 || response.status == 401 => return,
                Ok(response) => last = format!("status {}", response.status),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not answer /v2/ within {STARTUP_DEADLINE:?} (last: {last}); log:\n{}",
            self.log()
        );
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the registry printed, including its access log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Requests whose request line starts with `method path_prefix`.
    pub fn count_requests(&self, method: &str, path_prefix: &str) -> usize {
        let needle = format!("\"{method} {path_prefix}");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Where the registry keeps the blob `digest` (`sha256:…`).
    pub fn stored_blob(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn auth_header(&self) -> Vec<(String, String)> {
        self.credentials
            .iter()
            .map(|(u, p)| {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                ("Authorization".to_owned(), format!("Basic {token}"))
            })
            .collect()
    }

    /// Pushes a blob with the monolithic upload flow: POST an upload, PUT it with `?digest=`.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let headers = self.auth_header();
        let started = http(
            self.port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &headers,
            b"",
        )
        .unwrap();
        assert_eq!(
            started.status,
            202,
            "POST upload: {started:?}\n{}",
            self.log()
        );
        let location = started.header("location").expect("upload location");
        let location = strip_origin(location);
        let sep = if location.contains('?') { '&' } else { '?' };
        let mut put_headers = headers.clone();
        put_headers.push(("Content-Type".into(), "application/octet-stream".into()));
        let done = http(
            self.port,
            "PUT",
            &format!("{location}{sep}digest={digest}"),
            &put_headers,
            bytes,
        )
        .unwrap();
        assert_eq!(done.status, 201, "PUT blob: {done:?}\n{}", self.log());
        digest
    }

    /// Pushes a manifest (or index) under `reference` (a tag or a digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, bytes: &[u8], media_type: &str) {
        let mut headers = self.auth_header();
        headers.push(("Content-Type".into(), media_type.into()));
        let done = http(
            self.port,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            bytes,
        )
        .unwrap();
        assert_eq!(done.status, 201, "PUT manifest: {done:?}\n{}", self.log());
    }

    /// Pushes every blob of `image` and its manifest under `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) {
        for layer in &image.layers {
            self.push_blob(repo, &layer.bytes);
        }
        self.push_blob(repo, &image.config_bytes());
        self.push_manifest(repo, tag, &image.manifest_bytes(), MEDIA_MANIFEST);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http://127.0.0.1:5000/v2/x?y` → `/v2/x?y`.
fn strip_origin(location: &str) -> String {
    match location.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map_or("/".to_owned(), |i| rest[i..].to_owned()),
        None => location.to_owned(),
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request to `127.0.0.1:port` (the server closes the connection after answering,
/// so the response is read to the end; no chunked encoding).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Writes a docker config with `user:password` for `registry`, returning its path.
pub fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("docker-config.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}
