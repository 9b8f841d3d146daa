//! The tools `aegis mcp` offers, each a thin call of the daemon's API through the client. Their
//! descriptions and parameter documentation are what the model reads, so they say when to use
//! a tool and what it returns.

use std::collections::BTreeMap;

use aegis_client::{Client, InstanceAction, LogsQuery, WriteOptions};
use aegis_proto::api::{CreateInstance, ExecEvent, ExecRequest, ExposeRequest, LogStream};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

/// Bytes of stdout, and of stderr, a tool returns; the rest is cut with a note.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Bytes of a file `read_file` returns.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Log lines `read_logs` returns by default.
const DEFAULT_LOG_LINES: u64 = 200;

/// A tool's answer: JSON text on success, the daemon's message (with its context) as a tool
/// error otherwise.
type Answer = Result<String, String>;

fn json(value: &impl serde::Serialize) -> Answer {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

fn failed(what: &str, e: impl Into<anyhow::Error>) -> String {
    format!("{what}: {:#}", e.into())
}

/// The MCP server's state: a client of aegisd.
#[derive(Clone)]
pub struct Sandboxes {
    client: Client,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// OCI image reference (e.g. `python:3.12-slim`); the default Debian image when absent.
    pub image: Option<String>,
    /// Kit to start from (a preset installed with `aegis kit install`).
    pub kit: Option<String>,
    /// A unique name to refer to the instance by, instead of its id.
    pub name: Option<String>,
    /// Guest memory in MiB.
    pub memory_mb: Option<u32>,
    /// Guest ports to reach from this machine; each gets a URL (see `expose_port`).
    #[serde(default)]
    pub expose: Vec<u16>,
    /// Outbound network: `all` (default) or `none`.
    pub egress: Option<String>,
    /// The instance's main process; by default it idles, and commands run with `run_command`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables for every process in the instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceParams {
    /// The instance's name or id.
    pub instance: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// The instance's name or id.
    pub instance: String,
    /// A shell command line, run with `sh -c`.
    pub command: String,
    /// Text given to the command's stdin.
    pub stdin: Option<String>,
    /// Kill the command after this many seconds.
    pub timeout_secs: Option<u64>,
    /// Working directory in the guest.
    pub workdir: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartParams {
    /// The instance's name or id.
    pub instance: String,
    /// A shell command line, run with `sh -c` in the background.
    pub command: String,
    /// Working directory in the guest.
    pub workdir: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessParams {
    /// The instance's name or id.
    pub instance: String,
    /// The process's exec id, as `start_process` returned it.
    pub exec_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileParams {
    /// The instance's name or id.
    pub instance: String,
    /// Absolute path in the guest.
    pub path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileParams {
    /// The instance's name or id.
    pub instance: String,
    /// Absolute path in the guest; missing parent directories are created.
    pub path: String,
    /// The file's text.
    pub content: String,
    /// Permission bits in octal, e.g. `0755` for a script.
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesParams {
    /// The instance's name or id.
    pub instance: String,
    /// Absolute path of a directory in the guest.
    pub path: String,
    /// Levels to descend, 1 (the directory's entries) to 16.
    pub depth: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// The instance's name or id.
    pub instance: String,
    /// How many of the last lines (200 when absent).
    pub tail: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeParams {
    /// The instance's name or id.
    pub instance: String,
    /// The guest port a server listens on.
    pub port: u16,
    /// `http` (default) or `tcp`.
    pub protocol: Option<String>,
}

#[tool_router]
impl Sandboxes {
    pub fn new(client: Client) -> Sandboxes {
        Sandboxes {
            client,
            tool_router: Sandboxes::tool_router(),
        }
    }

    #[tool(
        description = "Create a sandbox: a new microVM instance. It idles until used, sleeps when \
                       unused and wakes on the next call. Returns its id, name, state and URLs."
    )]
    async fn create_instance(&self, Parameters(p): Parameters<CreateParams>) -> Answer {
        let idle = p.command.is_empty() && p.kit.is_none();
        let body = CreateInstance {
            handle: p.name,
            command: if idle {
                vec!["sleep".to_owned(), "infinity".to_owned()]
            } else {
                p.command
            },
            image_ref: p.image,
            kit: p.kit,
            memory_mb: p.memory_mb,
            exposes: p
                .expose
                .into_iter()
                .map(|port| ExposeRequest {
                    port,
                    public_port: None,
                    protocol: Some("http".to_owned()),
                })
                .collect(),
            egress: p.egress,
            env: p.env,
            ..CreateInstance::default()
        };
        let created = self
            .client
            .create_instance(&body)
            .await
            .map_err(|e| failed("cannot create the instance", e))?;
        json(&created.instance)
    }

    #[tool(description = "List the sandboxes (instances): id, name, state, image, URLs.")]
    async fn list_instances(&self) -> Answer {
        let list = self
            .client
            .list_instances(None)
            .await
            .map_err(|e| failed("cannot list the instances", e))?;
        json(&list)
    }

    #[tool(description = "Everything about one sandbox: state, image, memory, URLs, workspace.")]
    async fn instance_info(&self, Parameters(p): Parameters<InstanceParams>) -> Answer {
        let info = self
            .client
            .instance(&p.instance)
            .await
            .map_err(|e| failed(&format!("no instance {:?}", p.instance), e))?;
        json(&info)
    }

    #[tool(
        description = "Stop a sandbox (its state is kept in a snapshot; the next call wakes it)."
    )]
    async fn stop_instance(&self, Parameters(p): Parameters<InstanceParams>) -> Answer {
        let stopped = self
            .client
            .instance_action(&p.instance, InstanceAction::Stop)
            .await
            .map_err(|e| failed(&format!("cannot stop {:?}", p.instance), e))?;
        json(&stopped)
    }

    #[tool(description = "Delete a sandbox with its disk and logs.")]
    async fn delete_instance(&self, Parameters(p): Parameters<InstanceParams>) -> Answer {
        let deleted = self
            .client
            .delete_instance(&p.instance)
            .await
            .map_err(|e| failed(&format!("cannot delete {:?}", p.instance), e))?;
        json(&deleted)
    }

    #[tool(
        description = "Run a shell command in a sandbox and wait for it. Returns exit_code, \
                       stdout and stderr (each cut after 64 KiB, with a note saying so)."
    )]
    async fn run_command(&self, Parameters(p): Parameters<RunParams>) -> Answer {
        let request = ExecRequest {
            command: shell(&p.command),
            env: p.env,
            workdir: p.workdir,
            timeout_secs: p.timeout_secs,
            ..ExecRequest::default()
        };
        let cannot = |e| failed(&format!("cannot run the command in {:?}", p.instance), e);
        let mut events = match p.stdin {
            None => self
                .client
                .exec(&p.instance, &request)
                .await
                .map_err(cannot)?,
            Some(text) => {
                let (events, mut input) = self
                    .client
                    .exec_with_stdin(&p.instance, &request)
                    .await
                    .map_err(cannot)?;
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = input.write_all(text.as_bytes()).await;
                    let _ = input.shutdown().await;
                });
                events
            }
        };
        let mut stdout = Capped::default();
        let mut stderr = Capped::default();
        while let Some(event) = events.next().await {
            match event.map_err(|e| failed("the command's output broke off", e))? {
                ExecEvent::Started { .. } => {}
                ExecEvent::Output(entry) => {
                    let sink = match entry.stream {
                        LogStream::Stdout => &mut stdout,
                        LogStream::Stderr => &mut stderr,
                    };
                    sink.push(&entry.line, !entry.partial);
                }
                ExecEvent::Done {
                    exit_code,
                    timed_out,
                    exec_id,
                    ..
                } => {
                    return json(&serde_json::json!({
                        "exit_code": exit_code,
                        "timed_out": timed_out,
                        "stdout": stdout.finish(&exec_id),
                        "stderr": stderr.finish(&exec_id),
                    }));
                }
                ExecEvent::Error { error } => return Err(format!("the command failed: {error}")),
            }
        }
        Err("the command's output ended without an exit code".to_owned())
    }

    #[tool(
        description = "Start a long-running shell command (a server, a build) in the background. \
                       Returns its exec_id for read_process_output."
    )]
    async fn start_process(&self, Parameters(p): Parameters<StartParams>) -> Answer {
        let request = ExecRequest {
            command: shell(&p.command),
            env: p.env,
            workdir: p.workdir,
            ..ExecRequest::default()
        };
        let info = self
            .client
            .exec_detached(&p.instance, &request)
            .await
            .map_err(|e| failed(&format!("cannot start the command in {:?}", p.instance), e))?;
        json(&info)
    }

    #[tool(
        description = "A background process's state (running, exited with exit_code) and its \
                       output so far (the last 64 KiB)."
    )]
    async fn read_process_output(&self, Parameters(p): Parameters<ProcessParams>) -> Answer {
        let info = self
            .client
            .exec_info(&p.instance, &p.exec_id)
            .await
            .map_err(|e| failed(&format!("no process {:?}", p.exec_id), e))?;
        let query = LogsQuery {
            exec_id: Some(p.exec_id.clone()),
            ..LogsQuery::default()
        };
        let output = self.log_text(&p.instance, &query).await?;
        json(&serde_json::json!({
            "process": info,
            "output": output.finish(&p.exec_id),
        }))
    }

    #[tool(description = "Read a text file from a sandbox (the first 256 KiB).")]
    async fn read_file(&self, Parameters(p): Parameters<ReadFileParams>) -> Answer {
        let cannot = |e| failed(&format!("cannot read {} in {:?}", p.path, p.instance), e);
        let mut download = self
            .client
            .read_file(&p.instance, &p.path, None, Some(MAX_FILE_BYTES + 1))
            .await
            .map_err(cannot)?;
        // The ranged read already stops one byte past the limit, which tells a cut file.
        let mut bytes = Vec::new();
        download
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| failed(&format!("cannot read {}", p.path), e))?;
        let cut = bytes.len() as u64 > MAX_FILE_BYTES;
        bytes.truncate(usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX));
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if cut {
            text.push_str(&format!(
                "\n[cut after {MAX_FILE_BYTES} bytes: copy it out with `aegis cp`]"
            ));
        }
        Ok(text)
    }

    #[tool(
        description = "Write a text file in a sandbox, replacing it atomically and creating \
                       missing directories."
    )]
    async fn write_file(&self, Parameters(p): Parameters<WriteFileParams>) -> Answer {
        let options = WriteOptions {
            parents: true,
            mode: p.mode,
            owner: None,
        };
        let content = std::io::Cursor::new(p.content.into_bytes());
        let info = self
            .client
            .write_file(&p.instance, &p.path, content, &options)
            .await
            .map_err(|e| failed(&format!("cannot write {} in {:?}", p.path, p.instance), e))?;
        json(&info)
    }

    #[tool(
        description = "List a directory in a sandbox: name, kind, size, mode, owner, \
                       modification time."
    )]
    async fn list_files(&self, Parameters(p): Parameters<ListFilesParams>) -> Answer {
        let list = self
            .client
            .list_files(&p.instance, &p.path, p.depth.unwrap_or(1))
            .await
            .map_err(|e| failed(&format!("cannot list {} in {:?}", p.path, p.instance), e))?;
        json(&list)
    }

    #[tool(
        description = "The last lines of a sandbox's log: its main process, commands and system \
                       events."
    )]
    async fn read_logs(&self, Parameters(p): Parameters<LogsParams>) -> Answer {
        let query = LogsQuery {
            tail: Some(p.tail.unwrap_or(DEFAULT_LOG_LINES)),
            ..LogsQuery::default()
        };
        Ok(self.log_text(&p.instance, &query).await?.finish(""))
    }

    #[tool(
        description = "Make a port a server listens on in a sandbox reachable from this \
                       machine. Returns the URL (the sandbox wakes when it is visited)."
    )]
    async fn expose_port(&self, Parameters(p): Parameters<ExposeParams>) -> Answer {
        let body = ExposeRequest {
            port: p.port,
            public_port: None,
            protocol: Some(p.protocol.unwrap_or_else(|| "http".to_owned())),
        };
        let endpoint = self.client.expose(&p.instance, &body).await.map_err(|e| {
            failed(
                &format!("cannot expose port {} of {:?}", p.port, p.instance),
                e,
            )
        })?;
        json(&endpoint)
    }
}

impl Sandboxes {
    /// The log lines `query` selects, as text.
    async fn log_text(&self, instance: &str, query: &LogsQuery) -> Result<Capped, String> {
        let mut lines = self
            .client
            .logs(instance, query)
            .await
            .map_err(|e| failed(&format!("cannot read the logs of {instance:?}"), e))?;
        let mut text = Capped::tail();
        while let Some(entry) = lines.next().await {
            let entry = entry.map_err(|e| failed("the logs broke off", e))?;
            text.push(&entry.line, !entry.partial);
        }
        Ok(text)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Sandboxes {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("aegis", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Aegis sandboxes are microVMs on this machine. Create one with create_instance, \
                 run commands with run_command, keep servers going with start_process and reach \
                 them with expose_port, move text in and out with write_file and read_file, and \
                 delete_instance when done.",
            )
    }
}

/// `sh -c LINE`.
fn shell(line: &str) -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), line.to_owned()]
}

/// Output kept up to [`MAX_OUTPUT_BYTES`]: the first bytes, or with [`Capped::tail`] the last.
#[derive(Debug, Default)]
struct Capped {
    text: String,
    dropped: usize,
    keep_tail: bool,
}

impl Capped {
    fn tail() -> Capped {
        Capped {
            keep_tail: true,
            ..Capped::default()
        }
    }

    fn push(&mut self, line: &str, eol: bool) {
        let mut piece = line.to_owned();
        if eol {
            piece.push('\n');
        }
        if self.keep_tail {
            self.text.push_str(&piece);
            if self.text.len() > MAX_OUTPUT_BYTES {
                let mut cut = self.text.len() - MAX_OUTPUT_BYTES;
                while !self.text.is_char_boundary(cut) {
                    cut += 1;
                }
                self.dropped += cut;
                self.text.drain(..cut);
            }
        } else {
            let room = MAX_OUTPUT_BYTES.saturating_sub(self.text.len());
            if piece.len() <= room {
                self.text.push_str(&piece);
            } else {
                let mut cut = room;
                while !piece.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.text.push_str(&piece[..cut]);
                self.dropped += piece.len() - cut;
            }
        }
    }

    fn finish(mut self, exec_id: &str) -> String {
        if self.dropped > 0 {
            let whole = if exec_id.is_empty() {
                String::new()
            } else {
                format!("; all of it: `aegis logs INSTANCE --exec {exec_id}`")
            };
            let note = format!("[{} bytes cut{whole}]\n", self.dropped);
            if self.keep_tail {
                self.text.insert_str(0, &note);
            } else {
                self.text.push_str(&note);
            }
        }
        self.text
    }
}
