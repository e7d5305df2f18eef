//! Upgrading the agent in place: a new agent process (`tandem agent
//! --takeover`) takes over from the running one without a connection
//! refused or an instance restarted.
//!
//! 1. The new agent connects to the control socket and sends
//!    `Request::Handover`.
//! 2. The old one stops starting instances and reading their output
//!    ([`Supervisor::begin_handover`]) and answers with an [`Offer`] (a
//!    length-prefixed JSON document) followed by file descriptors passed
//!    with `SCM_RIGHTS`: the data-directory lock, the proxy's listening
//!    socket and the control socket.
//! 3. The new agent adopts the instances (watching them through pidfds,
//!    opening their output FIFOs by path, as after an agent died),
//!    publishes the same routes, starts accepting on the same sockets and
//!    answers `adopted`. Until then the old agent still serves everything;
//!    if the new one fails first, the old one goes on as before.
//! 4. The old agent lets go of its instances, stops accepting and hands
//!    its client connections off ([`Proxy::hand_off`]): each HTTP/1.1
//!    connection between two requests and each tunnel goes, as its
//!    descriptors, over the same connection to the new agent, which serves
//!    it on ([`send_connections`], [`receive_connections`]); the clients
//!    notice nothing. HTTP/2 clients get a GOAWAY and connections on the
//!    general path `connection: close`. When none is left (at most
//!    [`HANDOVER_DRAIN`]), it sends what it counted after its offer
//!    ([`send_counts`]), which the new agent adds to its counters: every
//!    request is counted once, by one agent or the other. Then it exits.
//!    It neither unlocks the data directory nor removes the socket: both
//!    are the new agent's.
//!
//! `tandem upgrade-agent` does not start the new agent itself: it asks the
//! running one to ([`start_successor`]), so that the new agent is the old
//! one's child, with its environment and control group.
//!
//! The kernel keeps one accept queue per listening socket, shared by both
//! processes, so a client connecting at any moment is accepted by one of
//! them.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tandem_core::protocol::{Request, RequestCounts, Response, SOCKET_FILE, UPGRADE_TIMEOUT};
use tandem_proxy::{Moved, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::supervisor::{Counters, Phase, SavedService, Supervisor, WireCounts};

/// How long an agent that handed over keeps serving the client
/// connections it had (then it exits and cuts what is left).
pub const HANDOVER_DRAIN: Duration = Duration::from_secs(30);
/// How long the old agent waits for the new one to say it took over.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The new agent's answer once it serves.
const ADOPTED: &str = "adopted";

/// What an agent hands over besides descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offer {
    pub services: BTreeMap<String, SavedService>,
    /// Each service route's request counters, so that they go on rather
    /// than start again from zero.
    pub route_counts: BTreeMap<String, RequestCounts>,
    /// Running instances.
    pub instances: Vec<Offered>,
}

/// A running instance as handed over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Offered {
    pub service: String,
    pub release: String,
    pub id: String,
    pub pid: u32,
    pub port: u16,
    pub ready_at_ms: Option<u64>,
    pub restarts: u32,
    /// Its request counters.
    pub counts: RequestCounts,
}

/// The descriptors an agent serves with.
pub struct Sockets {
    pub lock: OwnedFd,
    pub proxy: OwnedFd,
    pub control: OwnedFd,
    /// The HTTPS listening socket, when the agent serves HTTPS; passed
    /// fourth, after the others.
    pub tls: Option<OwnedFd>,
}

/// What a new agent got from the old one.
pub struct Taken {
    pub sockets: Sockets,
    pub offer: Offer,
    pub link: Link,
}

/// The connection to the old agent, to say `adopted` on and to receive
/// client connections on.
pub struct Link(UnixStream, Frames);

/// What crosses the link after the handover: a client connection,
/// besides its descriptors (the client's socket, then for a tunnel the
/// upstream's), and last the old agent's counts after its offer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Carried {
    Client {
        read: Vec<u8>,
    },
    Tunnel {
        from_client: bool,
        from_upstream: bool,
    },
    Counts {
        routes: WireCounts,
        instances: WireCounts,
    },
}

/// The old agent's side once the new one took over.
#[derive(Debug)]
pub struct Given {
    /// To send client connections and counts on.
    pub link: UnixStream,
    /// The counters as offered: what was counted later is sent at the end.
    pub offered: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("no agent to take over from at {path}: {source}")]
    NoAgent {
        path: String,
        source: std::io::Error,
    },
    #[error("the running agent refused the handover: {0}")]
    Refused(String),
    #[error("handover failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The old agent's side, on the connection the request came on. The
/// connection back when the new agent took over (the caller then winds
/// down and sends its client connections and counts on it).
pub async fn give(
    mut link: UnixStream,
    supervisor: &Supervisor,
    sockets: &Sockets,
    changing: &tokio::sync::RwLock<()>,
) -> std::io::Result<Option<Given>> {
    let begun = {
        let _no_changes = changing.write().await;
        supervisor.begin_handover().await
    };
    let offer = match begun {
        Ok(offer) => offer,
        Err(why) => {
            let refusal = Response::Error { message: why };
            let mut line = serde_json::to_vec(&refusal).unwrap_or_default();
            line.push(b'\n');
            link.write_all(&line).await?;
            return Ok(None);
        }
    };
    let offered = Counters::offered(&offer);
    let sent = async {
        let doc = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        let mut fds = vec![
            sockets.lock.as_fd(),
            sockets.proxy.as_fd(),
            sockets.control.as_fd(),
        ];
        fds.extend(sockets.tls.as_ref().map(|tls| tls.as_fd()));
        answer_with_fds(&mut link, &doc, &fds).await?;
        // Nothing but the answer comes before we send again, so the reader
        // holds no bytes beyond it when dropped.
        let mut answer = String::new();
        let mut reader = BufReader::new(&mut link);
        match tokio::time::timeout(ADOPT_TIMEOUT, reader.read_line(&mut answer)).await {
            Ok(Ok(_)) => Ok(answer.trim() == ADOPTED),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }
    .await;
    let taken = matches!(sent, Ok(true));
    supervisor.end_handover(taken);
    if !taken {
        tracing::warn!(error = ?sent.err(), "the new agent did not take over; serving on");
        return Ok(None);
    }
    Ok(Some(Given { link, offered }))
}

/// `Request::Upgrade`: starts `exe agent --takeover` for this agent's data
/// directory as a child of this agent, so that it inherits what this agent
/// has (environment, working directory, limits, output, control group,
/// and so what instances it starts get) rather than what the caller has;
/// then waits until it took over, exited, or `UPGRADE_TIMEOUT` passed
/// (then it is killed).
pub async fn start_successor(supervisor: &Supervisor, exe: &str) -> Response {
    use std::os::unix::process::CommandExt;
    if supervisor.phase() != Phase::Serving {
        return Response::Error {
            message: "this agent is handing over already".into(),
        };
    }
    let mut command = std::process::Command::new(exe);
    command
        .arg("agent")
        .arg("--data-dir")
        .arg(supervisor.data_dir())
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        // Its own group: a signal meant for this agent's is not for it.
        .process_group(0);
    // Descriptors passed to this agent at its start are not its
    // successor's: it takes everything over.
    for var in crate::PASSED_SOCKET_VARS {
        command.env_remove(var);
    }
    let mut child = match tokio::process::Command::from(command).spawn() {
        Ok(child) => child,
        Err(e) => {
            return Response::Error {
                message: format!("cannot start the new agent {exe}: {e}"),
            };
        }
    };
    let pid = child.id().unwrap_or_default();
    tracing::info!(pid, exe, "started a new agent to take over");
    let mut phases = supervisor.phases();
    tokio::select! {
        status = child.wait() => Response::Error {
            message: format!(
                "the new agent {exe} (pid {pid}) exited before it took over ({}); its output is with this agent's",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
            ),
        },
        _ = phases.wait_for(|p| *p == Phase::HandedOver) => Response::Upgraded { pid },
        () = tokio::time::sleep(UPGRADE_TIMEOUT) => {
            let _ = child.start_kill();
            Response::Error {
                message: format!(
                    "the new agent {exe} (pid {pid}) did not take over within {} s; killed it",
                    UPGRADE_TIMEOUT.as_secs()
                ),
            }
        }
    }
}

/// The old agent's side after the handover: sends each connection its
/// proxy hands off to the new agent, until the channel ends; then the link
/// back, for the counts. A connection that cannot be sent is closed.
pub async fn send_connections(
    mut link: UnixStream,
    mut moved: mpsc::UnboundedReceiver<Moved>,
) -> UnixStream {
    let (mut sent, mut lost) = (0u64, 0u64);
    while let Some(m) = moved.recv().await {
        let (carried, fds): (Carried, Vec<OwnedFd>) = match m {
            Moved::Client { stream, read } => (Carried::Client { read }, vec![stream.into()]),
            Moved::Tunnel {
                client,
                upstream,
                from_client,
                from_upstream,
            } => (
                Carried::Tunnel {
                    from_client,
                    from_upstream,
                },
                vec![client.into(), upstream.into()],
            ),
        };
        let doc = serde_json::to_vec(&carried).unwrap_or_default();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
        match answer_with_fds(&mut link, &doc, &borrowed).await {
            Ok(()) => sent += 1,
            Err(e) => {
                lost += 1;
                tracing::warn!(error = %e, "could not pass a client connection on; closed it");
            }
        }
    }
    tracing::info!(sent, lost, "client connections passed to the new agent");
    link
}

/// The old agent's last word: what it counted after its offer (`counted`,
/// the difference), for the new agent to add.
pub async fn send_counts(link: &mut UnixStream, counted: &Counters) -> std::io::Result<()> {
    let (routes, instances) = counted.to_wire();
    let doc = serde_json::to_vec(&Carried::Counts { routes, instances })
        .map_err(std::io::Error::other)?;
    answer_with_fds(link, &doc, &[]).await
}

/// The new agent's side: serves each connection the old agent passes on,
/// and adds the counts it sends last, until it closes the link.
pub async fn receive_connections(link: Link, proxy: Proxy, supervisor: Supervisor) {
    let Link(link, mut frames) = link;
    let mut received = 0u64;
    loop {
        let (doc, fds) = match frames.next(&link).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "receiving client connections from the old agent failed");
                break;
            }
        };
        let carried = match serde_json::from_slice(&doc) {
            Ok(carried) => carried,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable client connection from the old agent");
                continue;
            }
        };
        let mut fds = fds.into_iter().map(std::net::TcpStream::from);
        let moved = match carried {
            Carried::Counts { routes, instances } => {
                let counted = Counters::from_wire(&routes, &instances);
                let requests: u64 = counted.routes.values().map(|s| s.total()).sum();
                supervisor.add_counters(&counted);
                tracing::info!(
                    requests,
                    "requests the old agent served after its offer counted"
                );
                continue;
            }
            Carried::Client { read } => fds.next().map(|stream| Moved::Client { stream, read }),
            Carried::Tunnel {
                from_client,
                from_upstream,
            } => fds
                .next()
                .zip(fds.next())
                .map(|(client, upstream)| Moved::Tunnel {
                    client,
                    upstream,
                    from_client,
                    from_upstream,
                }),
        };
        match moved {
            Some(m) => {
                received += 1;
                proxy.adopt(m);
            }
            None => tracing::warn!("a client connection came without its sockets; closed it"),
        }
    }
    tracing::info!(received, "client connections taken over from the old agent");
}

/// The new agent's side: asks the agent of `data_dir` to hand over.
pub async fn take(data_dir: &Path) -> Result<Taken, HandoverError> {
    let (link, frames, doc, fds) = ask_for_fds(data_dir, &Request::Handover, 3).await?;
    let offer = serde_json::from_slice(&doc).map_err(std::io::Error::other)?;
    let mut fds = fds.into_iter();
    let (Some(lock), Some(proxy), Some(control), tls, None) =
        (fds.next(), fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(std::io::Error::other("expected three or four descriptors").into());
    };
    Ok(Taken {
        sockets: Sockets {
            lock,
            proxy,
            control,
            tls,
        },
        offer,
        link: Link(link, frames),
    })
}

impl Link {
    /// Tells the old agent that this one serves now.
    pub async fn confirm(&mut self) -> std::io::Result<()> {
        self.0.write_all(format!("{ADOPTED}\n").as_bytes()).await?;
        self.0.flush().await
    }
}

/// The agent's side of `ProxyListener`: a copy of the listening socket.
pub async fn lend_listener(mut link: UnixStream, sockets: &Sockets) -> std::io::Result<()> {
    answer_with_fds(&mut link, b"", &[sockets.proxy.as_fd()]).await
}

/// Asks the agent of `data_dir` for a copy of its proxy's listening socket.
pub async fn borrow_listener(data_dir: &Path) -> Result<OwnedFd, HandoverError> {
    let (_, _, _, mut fds) = ask_for_fds(data_dir, &Request::ProxyListener, 1).await?;
    Ok(fds.swap_remove(0))
}

/// How a frame, an answer that offers descriptors or a client connection
/// passed on, starts: then the length of a document (8 bytes, big-endian),
/// the document, and one byte sent with the descriptors ([`NO_FDS`] when
/// there are none). A refusal is a `Response::Error` line instead.
const WITH_FDS: &[u8] = b"OFFER";
/// The last byte of a frame that carries no descriptors.
const NO_FDS: u8 = b'N';
/// The most descriptors a frame carries (the handover's three).
const MAX_FDS: usize = 3;

async fn answer_with_fds(
    link: &mut UnixStream,
    doc: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    link.write_all(WITH_FDS).await?;
    link.write_all(&(doc.len() as u64).to_be_bytes()).await?;
    link.write_all(doc).await?;
    if fds.is_empty() {
        return link.write_all(&[NO_FDS]).await;
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one answer"));
    }
    // One byte carries them: it is sent whole or not at all.
    link.async_io(Interest::WRITABLE, || {
        rustix::net::sendmsg(
            &*link,
            &[IoSlice::new(b"F")],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(std::io::Error::from)
    })
    .await?;
    Ok(())
}

/// Sends `request` to the agent of `data_dir` and reads an answer with a
/// document and at least `count` descriptors (see [`WITH_FDS`]); the
/// connection and its reader are returned for what may follow.
async fn ask_for_fds(
    data_dir: &Path,
    request: &Request,
    count: usize,
) -> Result<(UnixStream, Frames, Vec<u8>, Vec<OwnedFd>), HandoverError> {
    let path = data_dir.join(SOCKET_FILE);
    let mut link = UnixStream::connect(&path)
        .await
        .map_err(|source| HandoverError::NoAgent {
            path: path.display().to_string(),
            source,
        })?;
    // The key first (see `Request::Auth`); its answer is one plain line,
    // read a byte at a time so that nothing of the frames behind it is.
    let key = tandem_seal::local_key(data_dir, tandem_core::protocol::AGENT_KEY)?;
    let mut line = serde_json::to_vec(&Request::Auth { key }).map_err(std::io::Error::other)?;
    line.push(b'\n');
    link.write_all(&line).await?;
    let mut answer = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if tokio::io::AsyncReadExt::read(&mut link, &mut byte).await? == 0 || byte[0] == b'\n' {
            break;
        }
        answer.push(byte[0]);
    }
    match serde_json::from_slice::<Response>(&answer) {
        Ok(Response::Ok) => {}
        // An agent older than keys answers `bad request`, then serves on.
        Ok(Response::Error { message }) if message.starts_with("bad request") => {}
        other => {
            return Err(std::io::Error::other(format!(
                "the running agent did not take our key: {other:?}"
            ))
            .into());
        }
    }
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    link.write_all(&line).await?;
    let mut frames = Frames::default();
    match frames.next(&link).await? {
        Some((doc, fds)) if fds.len() >= count => Ok((link, frames, doc, fds)),
        Some((_, fds)) => Err(std::io::Error::other(format!(
            "expected {count} descriptors, got {}",
            fds.len()
        ))
        .into()),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the running agent closed the connection before answering in full",
        )
        .into()),
    }
}

/// Reads frames (see [`WITH_FDS`]) off one connection. Everything is read
/// with `recvmsg`, since a plain read would drop descriptors. The kernel
/// returns at most one message's descriptors per `recvmsg`, together with
/// the byte they were sent with, so each batch belongs to the next frame
/// to end.
#[derive(Debug, Default)]
struct Frames {
    /// Received, not yet taken as a frame.
    bytes: Vec<u8>,
    /// The descriptors received, one batch per message that carried some.
    batches: VecDeque<Vec<OwnedFd>>,
    /// What one `recvmsg` reads into, made once.
    scratch: Vec<u8>,
}

impl Frames {
    /// The next frame's document and descriptors; `None` when the
    /// connection ends between frames.
    async fn next(
        &mut self,
        link: &UnixStream,
    ) -> Result<Option<(Vec<u8>, Vec<OwnedFd>)>, HandoverError> {
        let head = WITH_FDS.len() + 8;
        loop {
            if self.bytes.len() >= WITH_FDS.len() && !self.bytes.starts_with(WITH_FDS) {
                if self.bytes.contains(&b'\n') {
                    return Err(refused(&self.bytes));
                }
            } else if self.bytes.len() >= head {
                let len = u64::from_be_bytes(
                    self.bytes[WITH_FDS.len()..head]
                        .try_into()
                        .unwrap_or_default(),
                );
                let doc_end = head.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
                // The frame ends with the byte that carried the descriptors.
                if self.bytes.len() > doc_end {
                    let doc = self.bytes[head..doc_end].to_vec();
                    let fds = if self.bytes[doc_end] == NO_FDS {
                        Vec::new()
                    } else {
                        self.batches.pop_front().unwrap_or_default()
                    };
                    self.bytes.drain(..=doc_end);
                    return Ok(Some((doc, fds)));
                }
            }
            if self.recv(link).await? == 0 {
                if self.bytes.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a frame",
                )
                .into());
            }
        }
    }

    /// One `recvmsg`: bytes onto `bytes`, the descriptors that came with
    /// them (one batch at most) onto `batches`.
    async fn recv(&mut self, link: &UnixStream) -> std::io::Result<usize> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; 64 * 1024];
        }
        let buf = &mut self.scratch;
        let n = link
            .async_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    link,
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map(|m| m.bytes)
                .map_err(std::io::Error::from)
            })
            .await?;
        self.bytes.extend_from_slice(&self.scratch[..n]);
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                self.batches.push_back(received.collect());
            }
        }
        Ok(n)
    }
}

/// The refusal in `line`, with what to do when the agent is too old to
/// know the request.
fn refused(line: &[u8]) -> HandoverError {
    let text = String::from_utf8_lossy(line);
    let why = match serde_json::from_str(text.trim()) {
        Ok(Response::Error { message }) => message,
        _ => text.trim().to_owned(),
    };
    if why.contains("unknown variant") {
        return HandoverError::Refused(format!(
            "{why}; the running agent is too old to hand over: `tandem down` and `tandem up` replace it (restarting its services)"
        ));
    }
    HandoverError::Refused(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_carries_its_document_and_descriptors_and_a_refusal_says_what_to_do() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = tokio::net::UnixListener::bind(dir.path().join(SOCKET_FILE)).expect("bind");
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let writer = OwnedFd::from(writer);
        let answering = async {
            let (mut first, _) = agent.accept().await.expect("accept");
            first
                .write_all(b"{\"result\":\"ok\"}\n")
                .await
                .expect("key taken");
            answer_with_fds(&mut first, b"{\"a\":1}", &[writer.as_fd()])
                .await
                .expect("answer");
            let (mut second, _) = agent.accept().await.expect("accept");
            second
                .write_all(b"{\"result\":\"ok\"}\n")
                .await
                .expect("key taken");
            // The key and the request, then the refusal (as an old agent).
            let mut asked = Vec::new();
            while asked.iter().filter(|b| **b == b'\n').count() < 2 {
                let mut byte = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut second, &mut byte)
                    .await
                    .expect("read");
                asked.push(byte[0]);
            }
            second
                .write_all(b"{\"result\":\"error\",\"message\":\"bad request: unknown variant `handover`\"}\n")
                .await
                .expect("refuse");
        };
        let asking = async {
            let answered = ask_for_fds(dir.path(), &Request::ProxyListener, 1).await;
            let refused = ask_for_fds(dir.path(), &Request::Handover, 3).await;
            (answered, refused)
        };
        let ((), (answered, refused)) = tokio::join!(answering, asking);
        let (_, _, doc, fds) = answered.expect("answered");
        assert_eq!(doc, b"{\"a\":1}");
        assert_eq!(fds.len(), 1);
        drop(writer);
        // The descriptor that crossed writes into the same pipe.
        let mut passed = std::fs::File::from(fds.into_iter().next().expect("fd"));
        passed.write_all(b"x").expect("write through it");
        drop(passed);
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read");
        assert_eq!(got, "x");
        let refused = refused.expect_err("refused").to_string();
        assert!(refused.contains("too old"), "{refused}");
    }

    #[tokio::test]
    async fn a_frame_without_descriptors_takes_none_from_the_frame_after_it() {
        let (mut sender, receiver) = UnixStream::pair().expect("pair");
        let (_reader, writer) = std::io::pipe().expect("pipe");
        let writer = OwnedFd::from(writer);
        // Sent before anything is read, so one recvmsg may well see both.
        answer_with_fds(&mut sender, b"counts", &[])
            .await
            .expect("first");
        answer_with_fds(&mut sender, b"client", &[writer.as_fd()])
            .await
            .expect("second");
        answer_with_fds(&mut sender, b"end", &[])
            .await
            .expect("third");
        drop(sender);
        let mut frames = Frames::default();
        let mut got = Vec::new();
        while let Some((doc, fds)) = frames.next(&receiver).await.expect("frame") {
            got.push((String::from_utf8(doc).expect("utf-8"), fds.len()));
        }
        assert_eq!(
            got,
            [
                ("counts".into(), 0),
                ("client".into(), 1),
                ("end".into(), 0)
            ]
        );
    }
}
