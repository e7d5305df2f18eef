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
//! 4. The old agent lets go of its instances, stops accepting, answers its
//!    remaining requests with `connection: close` and exits when its
//!    clients have moved (at most [`HANDOVER_DRAIN`]). It neither unlocks
//!    the data directory nor removes the socket: both are the new agent's.
//!
//! The kernel keeps one accept queue per listening socket, shared by both
//! processes, so a client connecting at any moment is accepted by one of
//! them.

use std::collections::BTreeMap;
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
use tandem_core::protocol::{Request, RequestCounts, SOCKET_FILE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

use crate::supervisor::{SavedService, Supervisor};

/// How long an agent that handed over keeps serving the client
/// connections it had (then it exits and cuts what is left).
pub const HANDOVER_DRAIN: Duration = Duration::from_secs(30);
/// How long the old agent waits for the new one to say it took over.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 128;
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
}

/// What a new agent got from the old one.
pub struct Taken {
    pub sockets: Sockets,
    pub offer: Offer,
    pub link: Link,
}

/// The connection to the old agent, to say `adopted` on.
pub struct Link(UnixStream);

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

/// The old agent's side, on the connection the request came on. `Ok(true)`
/// when the new agent took over (the caller then winds down).
pub async fn give(
    mut link: UnixStream,
    supervisor: &Supervisor,
    sockets: &Sockets,
    changing: &tokio::sync::RwLock<()>,
) -> std::io::Result<bool> {
    let begun = {
        let _no_changes = changing.write().await;
        supervisor.begin_handover().await
    };
    let offer = match begun {
        Ok(got) => got,
        Err(why) => {
            let refusal = tandem_core::protocol::Response::Error { message: why };
            let mut line = serde_json::to_vec(&refusal).unwrap_or_default();
            line.push(b'\n');
            link.write_all(&line).await?;
            return Ok(false);
        }
    };
    let sent = async {
        let doc = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
        link.write_all(b"OFFER").await?;
        link.write_all(&(doc.len() as u64).to_be_bytes()).await?;
        link.write_all(&doc).await?;
        let fds = [
            sockets.lock.as_fd(),
            sockets.proxy.as_fd(),
            sockets.control.as_fd(),
        ];
        send_fds(&link, &fds).await?;
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
    }
    Ok(taken)
}

/// The new agent's side: asks the agent of `data_dir` to hand over.
pub async fn take(data_dir: &Path) -> Result<Taken, HandoverError> {
    let path = data_dir.join(SOCKET_FILE);
    let mut link = UnixStream::connect(&path)
        .await
        .map_err(|source| HandoverError::NoAgent {
            path: path.display().to_string(),
            source,
        })?;
    let mut line = serde_json::to_vec(&Request::Handover).map_err(std::io::Error::other)?;
    line.push(b'\n');
    link.write_all(&line).await?;

    // Everything is read with recvmsg: a plain read would drop descriptors.
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut offer: Option<Offer> = None;
    loop {
        if offer.is_none() && bytes.len() >= 5 {
            if &bytes[..5] != b"OFFER" {
                let text = String::from_utf8_lossy(&bytes);
                if !text.contains('\n') {
                    recv(&link, &mut bytes, &mut fds).await?;
                    continue;
                }
                let why = match serde_json::from_str(text.trim()) {
                    Ok(tandem_core::protocol::Response::Error { message }) => message,
                    _ => text.trim().to_owned(),
                };
                return Err(HandoverError::Refused(why));
            }
            if bytes.len() >= 13 {
                let len = u64::from_be_bytes(bytes[5..13].try_into().unwrap_or_default()) as usize;
                if bytes.len() >= 13 + len {
                    let doc = &bytes[13..13 + len];
                    offer = Some(serde_json::from_slice(doc).map_err(std::io::Error::other)?);
                    bytes.drain(..13 + len);
                }
            }
        }
        if offer.is_some() && fds.len() >= 3 {
            break;
        }
        if recv(&link, &mut bytes, &mut fds).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the running agent closed the connection mid-handover",
            )
            .into());
        }
    }
    let offer = offer.expect("the loop ends with an offer");
    let mut fds = fds.into_iter();
    let mut next = || {
        fds.next()
            .ok_or_else(|| std::io::Error::other("a descriptor is missing"))
    };
    let sockets = Sockets {
        lock: next()?,
        proxy: next()?,
        control: next()?,
    };
    Ok(Taken {
        sockets,
        offer,
        link: Link(link),
    })
}

impl Link {
    /// Tells the old agent that this one serves now.
    pub async fn confirm(mut self) -> std::io::Result<()> {
        self.0.write_all(format!("{ADOPTED}\n").as_bytes()).await?;
        self.0.flush().await
    }
}

/// The agent's side of `ProxyListener`: a copy of the listening socket.
pub async fn lend_listener(mut link: UnixStream, sockets: &Sockets) -> std::io::Result<()> {
    link.write_all(LISTENER.as_bytes()).await?;
    send_fds(&link, &[sockets.proxy.as_fd()]).await
}

/// Asks the agent of `data_dir` for a copy of its proxy's listening socket.
pub async fn borrow_listener(data_dir: &Path) -> std::io::Result<OwnedFd> {
    let mut link = UnixStream::connect(data_dir.join(SOCKET_FILE)).await?;
    let mut line = serde_json::to_vec(&Request::ProxyListener).map_err(std::io::Error::other)?;
    line.push(b'\n');
    link.write_all(&line).await?;
    let (mut bytes, mut fds) = (Vec::new(), Vec::new());
    while fds.is_empty() {
        if recv(&link, &mut bytes, &mut fds).await? == 0 || bytes.contains(&b'\n') {
            let said = String::from_utf8_lossy(&bytes);
            return Err(std::io::Error::other(format!(
                "the agent lent no listener: {}",
                said.trim()
            )));
        }
    }
    if !bytes.starts_with(LISTENER.as_bytes()) {
        return Err(std::io::Error::other(
            "the agent's answer is not a listener",
        ));
    }
    Ok(fds.swap_remove(0))
}

/// What precedes a lent listener.
const LISTENER: &str = "LISTENER";

async fn send_fds(link: &UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(chunk.len()))];
        loop {
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(chunk));
            let sent = link
                .async_io(Interest::WRITABLE, || {
                    rustix::net::sendmsg(
                        link,
                        &[IoSlice::new(b"F")],
                        &mut control,
                        SendFlags::empty(),
                    )
                    .map_err(std::io::Error::from)
                })
                .await?;
            if sent == 1 {
                break;
            }
        }
    }
    Ok(())
}

/// One `recvmsg`: bytes onto `bytes`, descriptors onto `fds`.
async fn recv(
    link: &UnixStream,
    bytes: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut buf = vec![0u8; 64 * 1024];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let n = link
        .async_io(Interest::READABLE, || {
            rustix::net::recvmsg(
                link,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map(|m| m.bytes)
            .map_err(std::io::Error::from)
        })
        .await?;
    bytes.extend_from_slice(&buf[..n]);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_descriptors_cross_in_several_messages_and_stay_usable() {
        use std::io::{Read, Write};
        let (a, b) = UnixStream::pair().expect("socketpair");
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        // More than two messages' worth, as 150 instances' pipes would be.
        let count = 2 * FDS_PER_MESSAGE + 44;
        let sent: Vec<OwnedFd> = (0..count)
            .map(|_| writer.try_clone().expect("dup").into())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = sent.iter().map(AsFd::as_fd).collect();
        let sending = async {
            send_fds(&a, &borrowed).await.expect("send");
        };
        let receiving = async {
            let (mut bytes, mut fds) = (Vec::new(), Vec::new());
            while fds.len() < count {
                assert!(recv(&b, &mut bytes, &mut fds).await.expect("recv") > 0);
            }
            (bytes, fds)
        };
        let ((), (bytes, fds)) = tokio::join!(sending, receiving);
        assert_eq!(fds.len(), count);
        assert_eq!(
            bytes.len(),
            count.div_ceil(FDS_PER_MESSAGE),
            "one byte a message"
        );
        drop(sent);
        // The last one received still writes into the same pipe.
        let mut last = std::fs::File::from(fds.into_iter().last().expect("an fd"));
        last.write_all(b"x")
            .expect("write through a received descriptor");
        drop(last);
        drop(writer);
        let mut buf = [0u8; 16];
        let n = reader.read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"x");
    }
}
