//! Connection tracking, so that [`super::FakeRegistry::shutdown`] also kills keep-alive
//! connections (`axum::serve` spawns connection tasks that outlive the accept loop).

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub(super) struct Conns {
    pub(super) inner: Mutex<ConnsInner>,
}

#[derive(Default)]
pub(super) struct ConnsInner {
    pub(super) killed: bool,
    pub(super) next_id: u64,
    // Duplicated handles of the live sockets; shutting one down shuts the
    // socket down for the connection task too.
    pub(super) live: HashMap<u64, std::net::TcpStream>,
    // A duplicate of the listening socket (see `dup_listener`).
    pub(super) listener: Option<std::net::TcpStream>,
}

/// Duplicate the listening socket so that `shutdown()` can stop it from
/// accepting synchronously: on Linux, shutdown(2) on a listening socket makes
/// further connection attempts be refused at once, without waiting for the
/// aborted accept task to drop its listener. std only exposes `shutdown` on
/// `TcpStream`, so the duplicate descriptor is held as one (safe conversion
/// through `OwnedFd`); it is never read or written.
#[cfg(unix)]
pub(super) fn dup_listener(l: TcpListener) -> (TcpListener, Option<std::net::TcpStream>) {
    let std_l = match l.into_std() {
        Ok(s) => s,
        Err(e) => panic!("fake registry: into_std: {e}"),
    };
    let dup = std_l
        .try_clone()
        .ok()
        .map(|d| std::net::TcpStream::from(std::os::fd::OwnedFd::from(d)));
    let l = TcpListener::from_std(std_l).expect("fake registry: from_std");
    (l, dup)
}

#[cfg(not(unix))]
pub(super) fn dup_listener(l: TcpListener) -> (TcpListener, Option<std::net::TcpStream>) {
    (l, None)
}

impl Conns {
    pub(super) fn lock(&self) -> MutexGuard<'_, ConnsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn kill_all(&self) {
        let mut g = self.lock();
        g.killed = true;
        if let Some(l) = g.listener.take() {
            let _ = l.shutdown(Shutdown::Both);
        }
        for (_, s) in g.live.drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub(super) fn register(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let dup = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let mut g = self.lock();
        if g.killed {
            let _ = dup.shutdown(Shutdown::Both);
            return Err(io::Error::other("fake registry is shut down"));
        }
        let id = g.next_id;
        g.next_id += 1;
        g.live.insert(id, dup);
        Ok(TrackedStream {
            stream,
            _guard: ConnGuard {
                conns: self.clone(),
                id,
            },
        })
    }
}

pub(super) struct ConnGuard {
    pub(super) conns: Arc<Conns>,
    pub(super) id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.conns.lock().live.remove(&self.id);
    }
}

pub(super) struct TrackedStream {
    pub(super) stream: TcpStream,
    pub(super) _guard: ConnGuard,
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

pub(super) struct KillableListener {
    pub(super) inner: TcpListener,
    pub(super) conns: Arc<Conns>,
}

impl axum::serve::Listener for KillableListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Ok(tracked) = self.conns.register(stream) {
                        return (tracked, addr);
                    }
                }
                // e.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
