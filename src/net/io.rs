//! A connection that starts as plain TCP and may be upgraded to TLS in place, as the
//! server (accepted connections) or as the client (outbound s2s).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::server_tls::ServerTls;

pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<ServerTls<TcpStream>>),
    /// TLS where this side is the client (outbound server-to-server).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A client stream the HTTP server carries (WebSocket, BOSH): not bytes on a socket
    /// but stream syntax in and elements out (see `Connection`).
    Link(Box<super::link::Link>),
    /// Transient state while the TLS handshake owns the socket.
    Upgrading,
}

impl MaybeTls {
    /// Runs the server side of a TLS handshake on a plain connection (STARTTLS or Direct
    /// TLS) and returns the established session. Any failure leaves the connection unusable.
    pub async fn accept_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> io::Result<&ServerTls<TcpStream>> {
        let MaybeTls::Plain(tcp) = std::mem::replace(self, MaybeTls::Upgrading) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS is only started on a plain connection",
            ));
        };
        *self = MaybeTls::Tls(Box::new(ServerTls::accept(tcp, config).await?));
        match self {
            MaybeTls::Tls(s) => Ok(s),
            _ => Err(upgrading()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_) | MaybeTls::ClientTls(_))
    }

    /// The certificate chain the peer presented over TLS (leaf first), if any.
    pub fn peer_certificates(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let certs = match self {
            MaybeTls::Tls(s) => s.state().peer_certificates(),
            MaybeTls::ClientTls(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        };
        certs
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default()
    }
}

fn upgrading() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "no socket: the connection is being upgraded or is carried by HTTP",
    )
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Link(_) | MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Link(_) | MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Link(_) | MaybeTls::Upgrading => Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Link(_) | MaybeTls::Upgrading => Poll::Ready(Ok(())),
        }
    }
}

thread_local! {
    /// One read buffer per worker thread instead of one per connection: it is borrowed only
    /// for the duration of a poll, so an idle connection holds no read buffer at all.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

/// Reads once and hands the bytes to `sink` (e.g. the XML parser's `feed`). `Ok(None)` at
/// end of stream. Cancel-safe: no data is held between polls.
pub fn read_with<'a, T>(
    io: &'a mut (impl AsyncRead + Unpin),
    mut sink: impl FnMut(&[u8]) -> T + 'a,
) -> impl std::future::Future<Output = io::Result<Option<T>>> + 'a {
    std::future::poll_fn(move |cx| {
        READ_SCRATCH.with(|cell| {
            let mut fallback;
            let mut guard = cell.try_borrow_mut();
            let buf: &mut [u8] = match guard.as_mut() {
                Ok(b) => &mut b[..],
                // Only reachable through reentrancy, which tokio's I/O never does; stay
                // correct anyway.
                Err(_) => {
                    fallback = vec![0u8; 4096];
                    &mut fallback[..]
                }
            };
            let mut read_buf = ReadBuf::new(buf);
            match Pin::new(&mut *io).poll_read(cx, &mut read_buf) {
                Poll::Ready(Ok(())) if read_buf.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(sink(read_buf.filled())))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
}

/// Writes and flushes all of `buf`, failing with `TimedOut` when the peer accepts nothing
/// for `stall`: a peer that stops reading must not hold the writer (and everything queued
/// behind it) forever. Slow but moving peers are fine, as each write that makes progress
/// restarts the clock.
pub async fn write_all_within(
    io: &mut (impl AsyncWrite + Unpin),
    mut buf: &[u8],
    stall: std::time::Duration,
) -> io::Result<()> {
    // Nearly every write completes at once. Only the rest, with its timers, is boxed:
    // every connection's future holds this one's state while it writes, and many live
    // as long as an idle session.
    while !buf.is_empty() {
        match ready_now(io.write(buf)).await {
            Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => buf = &buf[n..],
            Some(Err(e)) => return Err(e),
            None => return Box::pin(write_all_slowly(io, buf, stall)).await,
        }
    }
    match ready_now(io.flush()).await {
        Some(flushed) => flushed,
        None => Box::pin(write_all_slowly(io, buf, stall)).await,
    }
}

/// [`write_all_within`] once the peer did not take everything at once.
async fn write_all_slowly(
    io: &mut (impl AsyncWrite + Unpin),
    mut buf: &[u8],
    stall: std::time::Duration,
) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading");
    while !buf.is_empty() {
        // Nearly every write completes at once: no clock reading or timer for those.
        let written = match ready_now(io.write(buf)).await {
            Some(written) => written,
            None => tokio::time::timeout(stall, io.write(buf))
                .await
                .map_err(|_| timed_out())?,
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) => return Err(e),
        }
    }
    match ready_now(io.flush()).await {
        Some(flushed) => flushed,
        None => tokio::time::timeout(stall, io.flush())
            .await
            .map_err(|_| timed_out())?,
    }
}

/// Polls `f` once: its output if it is ready, else `None` (`f` is dropped; writes and
/// flushes consume nothing when they are not ready).
async fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let polled = std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await;
    match polled {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_to_a_peer_that_stopped_reading_time_out() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let stall = std::time::Duration::from_secs(3);
        // Fits the pipe: done at once.
        write_all_within(&mut ours, &[1; 64], stall).await.unwrap();
        // Nobody reads the rest.
        let err = write_all_within(&mut ours, &[2; 100], stall)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // A reader that keeps taking some bytes is not cut off.
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 16];
            while got < 64 + 1000 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                got += tokio::io::AsyncReadExt::read(&mut theirs, &mut chunk)
                    .await
                    .unwrap();
            }
        });
        write_all_within(&mut ours, &[3; 1000], stall)
            .await
            .unwrap();
        reader.await.unwrap();
    }
}
