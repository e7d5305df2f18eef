//! The agent's unix socket: newline-delimited JSON requests and responses
//! (see `tandem_core::protocol`), one task per connection.

use std::sync::Arc;
use std::time::Duration;

use tandem_core::protocol::{HANDOVER_REFUSAL, PROTOCOL_VERSION, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::handover::{self, Sockets};
use crate::supervisor::{self, Phase, Supervisor};

/// What the socket needs besides the supervisor.
#[derive(Clone)]
pub struct Context {
    pub supervisor: Supervisor,
    pub proxy_addr: String,
    pub started_at_ms: u64,
    /// A `Shutdown` request, or a handover, sends here; the agent's main
    /// loop exits.
    pub shutdown: mpsc::Sender<Stop>,
    /// What a handover passes on.
    pub sockets: Arc<Sockets>,
    /// Held (read) by every request that changes instances or routes, for
    /// as long as it runs; a handover takes it (write) to switch phase, so
    /// it waits for those in flight and later ones see the new phase.
    pub changing: Arc<tokio::sync::RwLock<()>>,
    /// True once no earlier agent is passing client connections to this
    /// one any more: a handover of its own waits for that, or what still
    /// came from the earlier agent would have nowhere to go.
    pub settled: tokio::sync::watch::Receiver<bool>,
    /// The certificates served over HTTPS.
    pub certs: Arc<crate::certs::CertStore>,
    /// What a connection must start with (`Request::Auth`).
    pub key: Arc<str>,
}

/// How the agent ends.
#[derive(Debug)]
pub enum Stop {
    /// Instances stopped, then the agent.
    Everything,
    /// The agent only; instances are killed by the next agent's restore.
    AgentOnly,
    /// Another agent took over: pass client connections and the last
    /// counts on to it over the link, keep the lock and the socket.
    HandedOver(handover::Given),
}

pub async fn serve(listener: UnixListener, ctx: Context) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, ctx).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, ctx: Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // Nothing before the key, and the key soon and short: whoever cannot
    // give it holds neither memory nor a task for long.
    let mut first = Vec::new();
    let mut limited = (&mut reader).take(KEY_LINE_MAX);
    let read_key = limited.read_until(b'\n', &mut first);
    let ok = match tokio::time::timeout(KEY_WITHIN, read_key).await {
        Ok(Ok(_)) => matches!(
            serde_json::from_slice::<Request>(&first),
            Ok(Request::Auth { key })
                if bool::from(subtle::ConstantTimeEq::ct_eq(key.as_bytes(), ctx.key.as_bytes()))
        ),
        _ => false,
    };
    let response = if ok {
        Response::Ok
    } else {
        tracing::warn!("a control connection without the agent's key; refused");
        Response::Error {
            message: "refused: a connection to the agent starts with its key (keys/agent.key in the data directory)".into(),
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    if !ok {
        return Ok(());
    }
    let mut lines = reader.lines();
    while let Some(line) = lines.next_line().await? {
        let request = serde_json::from_str::<Request>(&line);
        let response = match request {
            Ok(req @ (Request::ProxyListener | Request::Handover)) => {
                // These go on with descriptors. Nothing follows such a
                // request until it is answered, so the reader holds no bytes.
                let stream = lines
                    .into_inner()
                    .into_inner()
                    .reunite(write)
                    .map_err(std::io::Error::other)?;
                if req == Request::ProxyListener {
                    return handover::lend_listener(stream, &ctx.sockets).await;
                }
                let mut settled = ctx.settled.clone();
                let waited = tokio::time::timeout(
                    handover::HANDOVER_DRAIN + Duration::from_secs(10),
                    settled.wait_for(|done| *done),
                );
                if !matches!(waited.await, Ok(Ok(_))) {
                    tracing::warn!(
                        "still taking connections over from the earlier agent; handing over anyway"
                    );
                }
                let given = handover::give(stream, &ctx.supervisor, &ctx.sockets, &ctx.changing);
                if let Some(given) = given.await? {
                    let _ = ctx.shutdown.send(Stop::HandedOver(given)).await;
                }
                return Ok(());
            }
            Ok(req) => {
                let _changing = if changes(&req) {
                    Some(ctx.changing.read().await)
                } else {
                    None
                };
                match refusal(&req, ctx.supervisor.phase()) {
                    Some(message) => Response::Error { message },
                    None => dispatch(req, &ctx).await,
                }
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&response)
            .unwrap_or_else(|_| b"{\"result\":\"error\",\"message\":\"unencodable\"}".to_vec());
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

/// The longest first line (the key) the agent reads.
const KEY_LINE_MAX: u64 = 4096;
/// How long a connection has to give the key.
const KEY_WITHIN: Duration = Duration::from_secs(5);

/// Whether `req` changes instances or routes.
fn changes(req: &Request) -> bool {
    !matches!(
        req,
        Request::Auth { .. }
            | Request::Hello
            | Request::Status
            | Request::Logs { .. }
            | Request::Metrics
            | Request::WaitReady { .. }
            | Request::Certificates
            // It waits for a handover, which waits for what changes.
            | Request::Upgrade { .. }
    )
}

/// Why `req` cannot be taken during or after a handover: what would
/// change instances or routes waits for the agent that owns them.
fn refusal(req: &Request, phase: Phase) -> Option<String> {
    match phase {
        Phase::Serving => None,
        Phase::Offering if changes(req) => Some(format!(
            "{HANDOVER_REFUSAL}: offered to a new agent; ask again in a moment"
        )),
        Phase::Offering => None,
        Phase::HandedOver => Some(supervisor::handed_over()),
    }
}

async fn dispatch(req: Request, ctx: &Context) -> Response {
    let sup = &ctx.supervisor;
    match req {
        Request::Auth { .. } => Response::Ok,
        Request::Hello => Response::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
            proxy_addr: ctx.proxy_addr.clone(),
            started_at_ms: ctx.started_at_ms,
        },
        Request::Status => Response::Status {
            status: sup.status(&ctx.proxy_addr),
        },
        Request::StartGroup { group } => {
            if let Err(e) = std::fs::metadata(&group.dir) {
                return Response::Error {
                    message: format!("release directory {}: {e}", group.dir),
                };
            }
            Response::Started {
                instances: sup.start_group(*group),
            }
        }
        Request::WaitReady {
            service,
            release,
            timeout_ms,
        } => {
            sup.wait_ready(&service, &release, Duration::from_millis(timeout_ms))
                .await
        }
        Request::Activate {
            service,
            release,
            route,
        } => sup.activate(&service, &release, route),
        Request::StopGroup {
            service,
            release,
            drain_timeout_ms,
        } => {
            sup.stop_group(&service, &release, Duration::from_millis(drain_timeout_ms))
                .await
        }
        Request::Logs {
            service,
            release,
            lines,
            after,
        } => {
            // File reads (a tail reads up to a whole 10 MiB log) stay off
            // the threads that serve traffic.
            let sup = sup.clone();
            let read = tokio::task::spawn_blocking(move || {
                sup.logs(&service, release.as_deref(), lines, &after)
            });
            match read.await {
                Ok(lines) => Response::Logs { lines },
                Err(e) => Response::Error {
                    message: format!("reading the logs failed: {e}"),
                },
            }
        }
        Request::Metrics => Response::Metrics {
            text: sup.metrics_text(),
        },
        Request::Maintenance {
            service,
            on,
            retry_after_s,
        } => sup.maintenance(&service, on, retry_after_s),
        Request::Shutdown { stop_instances } => {
            let stop = if stop_instances {
                Stop::Everything
            } else {
                Stop::AgentOnly
            };
            let _ = ctx.shutdown.send(stop).await;
            Response::Ok
        }
        Request::Upgrade { exe } => handover::start_successor(sup, &exe).await,
        Request::SetCertificate {
            host,
            chain_pem,
            key_pem,
        } => {
            let certs = Arc::clone(&ctx.certs);
            let installed =
                tokio::task::spawn_blocking(move || certs.install(&host, &chain_pem, &key_pem.0));
            match installed.await {
                Ok(Ok(())) => Response::Ok,
                Ok(Err(message)) => Response::Error { message },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            }
        }
        Request::Certificates => Response::Certificates {
            certificates: ctx.certs.list(),
        },
        Request::AcmeChallenge {
            token,
            key_authorization,
        } => {
            sup.proxy()
                .set_challenge(&token, key_authorization.as_deref());
            Response::Ok
        }
        Request::Handover | Request::ProxyListener => Response::Error {
            message: "answered on its own connection, with descriptors".into(),
        },
    }
}
