//! Accepted connections that cannot hold a port for nothing: at most
//! `max_connections` at once per listener (one more is closed as soon as
//! accepted), the client's first bytes (the HTTP/2 preface, an HTTP/1
//! request line) due within `handshake`, and optionally closed after `idle`
//! without a byte from the client. Idle HTTP/2 connections past the
//! handshake are the keepalive pings' business (a peer that does not answer
//! them is closed).
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// How long a new connection has to send its first `handshake_bytes`.
    pub handshake: Duration,
    pub handshake_bytes: usize,
    /// Closed after this long without a byte from the client; `None`: never.
    pub idle: Option<Duration>,
}

/// The HTTP/2 connection preface is 24 bytes.
pub const HTTP2_PREFACE: usize = 24;
/// The shortest HTTP/1.1 request line, `GET / HTTP/1.1\r\n`.
pub const HTTP1_REQUEST_LINE: usize = 16;

/// A listener that hands out [`Guarded`] connections.
pub struct GuardedListener {
    listener: TcpListener,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl GuardedListener {
    pub fn new(listener: TcpListener, limits: Limits) -> Self {
        Self {
            listener,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the cap; others are closed as they come.
    pub async fn accept(&self) -> io::Result<Guarded> {
        loop {
            let (stream, peer) = self.listener.accept().await?;
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = self.limits.max_connections, "connection refused: at the connection cap");
                continue;
            };
            // Nagle off: a response written in two parts (headers, then
            // trailers) would otherwise wait for the client's delayed ACK.
            stream.set_nodelay(true)?;
            return Ok(Guarded::new(stream, slot, self.limits));
        }
    }

    /// Accepted connections as a stream (for tonic's `serve_with_incoming`).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = io::Result<Guarded>> {
        futures_util::stream::unfold(self, |listener| async move {
            let next = listener.accept().await;
            Some((next, listener))
        })
    }
}

/// A connection holding one of its listener's slots until dropped.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    limits: Limits,
    /// Bytes read so far, counted up to the handshake's.
    read: usize,
    /// When the handshake or the idle time runs out.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, limits: Limits) -> Self {
        Self {
            stream,
            _slot: slot,
            limits,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(limits.handshake))),
        }
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let got = buf.filled().len() - before;
                if got > 0 {
                    this.read = this.read.saturating_add(got);
                    if this.read >= this.limits.handshake_bytes {
                        // Past the handshake: the idle clock, reset by each read.
                        match (this.limits.idle, &mut this.deadline) {
                            (None, deadline) => *deadline = None,
                            (Some(idle), Some(d)) => d.as_mut().reset(Instant::now() + idle),
                            (Some(idle), deadline @ None) => {
                                *deadline = Some(Box::pin(tokio::time::sleep(idle)))
                            }
                        }
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    ready!(deadline.as_mut().poll(cx));
                    let what = if this.read < this.limits.handshake_bytes {
                        "no request within the handshake timeout"
                    } else {
                        "idle for too long"
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    // Not vectored: h2 then copies DATA frames of up to 1 KiB into its write
    // buffer (instead of 256 bytes), so the answers of many calls (a Verify
    // answer is some 470 bytes) leave in one write rather than one each.
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match GuardedListener::accept(self).await {
                Ok(conn) => match conn.peer_addr() {
                    Ok(peer) => return (conn, peer),
                    Err(_) => continue,
                },
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        GuardedListener::local_addr(self)
    }
}
