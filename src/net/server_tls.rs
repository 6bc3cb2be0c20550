//! The server side of TLS, on rustls's unbuffered API.
//!
//! rustls's buffered connection keeps a 4 KiB read buffer for every connection that has
//! read once, so an idle session paid for it all day. Here received ciphertext goes into a
//! buffer per worker thread, borrowed only during a poll; a connection keeps bytes of its
//! own only while a record is cut in half by the network or the socket does not take what
//! we wrote. The unbuffered API does not export keying material, so the `tls-exporter`
//! channel binding (RFC 9266) is derived here from the exporter secret rustls hands its
//! key log, and the SNI is noted when the certificate resolver sees it; both callbacks run
//! synchronously inside `process_tls_records`, which is what makes a per-thread note safe.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::crypto::tls13::{HkdfExpander, OkmBlock};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls::{CommonState, KeyLog, ProtocolVersion, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// RFC 9266 §2.
pub(crate) const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";
/// The key log label of the TLS 1.3 exporter secret (NSS key log format).
const EXPORTER_SECRET: &str = "EXPORTER_SECRET";
/// The per-thread buffer's size: several records per read, a large write per call.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Plaintext taken per write: its ciphertext (plus record overhead) fits the buffer.
const MAX_PLAINTEXT_PER_WRITE: usize = 48 * 1024;
/// Bytes read per call. A record is at most 2^14 + 256 bytes plus its 5-byte header.
const READ_BYTES: usize = 18 * 1024;
/// Ciphertext a connection may hold unprocessed: rustls joins handshake messages of up to
/// 64 KiB across records; nothing legitimate needs more.
const MAX_INCOMING: usize = 80 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// What the resolver and the key log saw during the current `process_tls_records`.
    static NOTED: RefCell<Noted> = const { RefCell::new(Noted { sni: None, exporter_secret: None }) };
}

#[derive(Default)]
struct Noted {
    sni: Option<Box<str>>,
    exporter_secret: Option<Box<[u8]>>,
}

/// Runs `f` with the per-thread buffer, at least `min` bytes long.
fn with_scratch<T>(min: usize, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < min.max(SCRATCH_BYTES) {
                scratch.resize(min.max(SCRATCH_BYTES), 0);
            }
            f(&mut scratch)
        }
        // Only through reentrancy, which the I/O traits never do; stay correct anyway.
        Err(_) => f(&mut vec![0; min.max(SCRATCH_BYTES)]),
    })
}

/// Called by the certificate resolver on every ClientHello (resumed ones included).
pub(crate) fn note_sni(sni: Option<&str>) {
    NOTED.with(|n| n.borrow_mut().sni = sni.map(Into::into));
}

/// Gives rustls's TLS 1.3 exporter secret to the connection being processed.
#[derive(Debug)]
pub(crate) struct ExporterSecretLog;

impl KeyLog for ExporterSecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == EXPORTER_SECRET {
            NOTED.with(|n| n.borrow_mut().exporter_secret = Some(secret.into()));
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == EXPORTER_SECRET
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The state besides the socket, so the socket and this can be borrowed apart.
struct Session {
    conn: UnbufferedServerConnection,
    /// Ciphertext the socket has not taken yet, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// Plaintext decrypted but not read yet (the reader's buffer was full), from
    /// `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The peer sent close_notify: reads end.
    read_closed: bool,
    close_queued: bool,
    sni: Option<Box<str>>,
    exporter_secret: Option<Box<[u8]>>,
}

impl Session {
    /// Feeds `buf` (received ciphertext) to rustls until it needs more and returns how many
    /// bytes it is done with. Plaintext goes to `out`, what does not fit to
    /// `self.plaintext`; records to send go to `self.outgoing`.
    fn process(&mut self, buf: &mut [u8], mut out: Option<&mut ReadBuf<'_>>) -> io::Result<usize> {
        let mut consumed = 0;
        loop {
            let handshaking = self.conn.is_handshaking();
            if handshaking {
                NOTED.with(|n| *n.borrow_mut() = Noted::default());
            }
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[consumed..]);
            if handshaking {
                let noted = NOTED.with(|n| std::mem::take(&mut *n.borrow_mut()));
                self.sni = noted.sni.or(self.sni.take());
                self.exporter_secret = noted.exporter_secret.or(self.exporter_secret.take());
            }
            let done = match step(
                state.map_err(tls_error)?,
                &mut out,
                &mut self.plaintext,
                &mut self.outgoing,
                &mut discard,
            )? {
                Next::Continue => false,
                Next::PeerClosed | Next::Closed => {
                    self.read_closed = true;
                    true
                }
                Next::NeedData | Next::Write(_) => true,
            };
            consumed += discard;
            if done {
                return Ok(consumed);
            }
        }
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_PER_WRITE`]) into `scratch`; returns
    /// the ciphertext's length. Records rustls wants sent first land in `self.outgoing`.
    fn encrypt(
        &mut self,
        incoming: &mut Vec<u8>,
        plaintext: &[u8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<usize> {
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(incoming);
            let next = step(
                state.map_err(tls_error)?,
                &mut None,
                &mut self.plaintext,
                &mut self.outgoing,
                &mut discard,
            )?;
            let encrypted = match next {
                Next::Write(mut traffic) => Some(match traffic.encrypt(plaintext, scratch) {
                    Ok(n) => Ok(n),
                    Err(EncryptError::InsufficientSize(e)) => {
                        scratch.resize(e.required_size, 0);
                        traffic
                            .encrypt(plaintext, scratch)
                            .map_err(io::Error::other)
                    }
                    Err(e) => Err(io::Error::other(e)),
                }),
                Next::Continue => None,
                Next::PeerClosed => {
                    self.read_closed = true;
                    None
                }
                Next::Closed => Some(Err(io::ErrorKind::BrokenPipe.into())),
                Next::NeedData => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS not established",
                ))),
            };
            incoming.drain(..discard);
            if let Some(encrypted) = encrypted {
                return encrypted;
            }
        }
    }
}

/// What a state of rustls's machine leaves to the caller once [`step`] handled it.
enum Next<'c> {
    /// Handled (records read or queued): ask rustls again.
    Continue,
    /// rustls needs more bytes from the peer.
    NeedData,
    /// Application data may be encrypted (nothing left to process).
    Write(WriteTraffic<'c, ServerConnectionData>),
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides closed.
    Closed,
}

/// Handles what every caller handles alike: decrypted records go to `out` (the rest to
/// `plaintext`), records to send to `outgoing`, extra bytes to discard to `discard`.
fn step<'c>(
    state: ConnectionState<'c, '_, ServerConnectionData>,
    out: &mut Option<&mut ReadBuf<'_>>,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    discard: &mut usize,
) -> io::Result<Next<'c>> {
    Ok(match state {
        ConnectionState::ReadTraffic(mut records) => {
            while let Some(record) = records.next_record() {
                let record = record.map_err(tls_error)?;
                *discard += record.discard;
                deliver(record.payload, out, plaintext);
            }
            Next::Continue
        }
        ConnectionState::EncodeTlsData(mut data) => {
            encode(&mut data, outgoing)?;
            Next::Continue
        }
        // Sent with the next flush, which everyone who gets here does.
        ConnectionState::TransmitTlsData(data) => {
            data.done();
            Next::Continue
        }
        ConnectionState::WriteTraffic(traffic) => Next::Write(traffic),
        ConnectionState::BlockedHandshake => Next::NeedData,
        ConnectionState::PeerClosed => Next::PeerClosed,
        ConnectionState::Closed => Next::Closed,
        // Early data is never accepted (max_early_data_size is 0).
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS state",
            ));
        }
    })
}

/// Writes a handshake or alert record rustls produced at the end of `out`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.resize(start + 1024, 0);
    let written = match data.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(e)) => {
            out.resize(start + e.required_size, 0);
            data.encode(&mut out[start..]).map_err(io::Error::other)?
        }
        Err(e) => return Err(io::Error::other(e)),
    };
    out.truncate(start + written);
    Ok(())
}

fn deliver(payload: &[u8], out: &mut Option<&mut ReadBuf<'_>>, rest: &mut Vec<u8>) {
    let taken = match out {
        Some(out) if rest.is_empty() => {
            let n = payload.len().min(out.remaining());
            out.put_slice(&payload[..n]);
            n
        }
        _ => 0,
    };
    rest.extend_from_slice(&payload[taken..]);
}

/// An established (or establishing) server-side TLS connection over `IO`.
pub struct ServerTls<IO> {
    io: IO,
    /// Received ciphertext not processed yet: part of a record, or handshake messages
    /// rustls is joining. Unallocated between records, the usual case.
    incoming: Vec<u8>,
    session: Session,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTls<IO> {
    /// Runs the server side of a handshake on `io`.
    pub async fn accept(io: IO, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut tls = ServerTls {
            io,
            incoming: Vec::new(),
            session: Session {
                conn,
                outgoing: Vec::new(),
                outgoing_sent: 0,
                plaintext: Vec::new(),
                plaintext_read: 0,
                read_closed: false,
                close_queued: false,
                sni: None,
                exporter_secret: None,
            },
        };
        loop {
            std::future::poll_fn(|cx| tls.poll_send_outgoing(cx)).await?;
            if !tls.session.conn.is_handshaking() {
                break;
            }
            if tls.session.read_closed {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Handshake records go through the same per-thread buffer as the rest;
            // application data the client sent right after its Finished is kept.
            if let Err(e) = std::future::poll_fn(|cx| tls.poll_read_records(cx, None)).await {
                tls.send_alert().await;
                return Err(e);
            }
        }
        Ok(tls)
    }

    /// The connection's TLS parameters: version, ALPN, peer certificates, resumption.
    pub fn state(&self) -> &CommonState {
        &self.session.conn
    }

    /// The name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.session.sni.as_deref()
    }

    /// `tls-exporter` (RFC 9266): 32 bytes of keying material, on TLS 1.3 only.
    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        if self.state().protocol_version() != Some(ProtocolVersion::TLSv1_3) {
            return None;
        }
        let Some(SupportedCipherSuite::Tls13(suite)) = self.state().negotiated_cipher_suite()
        else {
            return None;
        };
        let secret = self.session.exporter_secret.as_deref()?;
        // RFC 8446 §7.5, with an empty context.
        let empty_hash = suite.common.hash_provider.hash(&[]);
        let expander = suite.hkdf_provider.expander_for_okm(&OkmBlock::new(secret));
        let mut derived = vec![0u8; expander.hash_len()];
        expand_label(
            &*expander,
            EXPORTER_LABEL,
            empty_hash.as_ref(),
            &mut derived,
        )?;
        let expander = suite
            .hkdf_provider
            .expander_for_okm(&OkmBlock::new(&derived));
        let mut exporter = vec![0u8; 32];
        expand_label(&*expander, b"exporter", empty_hash.as_ref(), &mut exporter)?;
        Some(exporter)
    }

    /// A failed handshake: rustls has queued an alert; try to send it, once, not waiting.
    async fn send_alert(&mut self) {
        let _ = self.session.process(&mut [], None);
        std::future::poll_fn(|cx| {
            let _ = self.poll_send_outgoing(cx);
            Poll::Ready(())
        })
        .await;
    }

    /// Writes queued ciphertext until the socket takes no more; ready when all is out.
    fn poll_send_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let s = &mut self.session;
        while s.outgoing_sent < s.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &s.outgoing[s.outgoing_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            s.outgoing_sent += n;
        }
        // Free it: an idle connection keeps no buffer.
        s.outgoing = Vec::new();
        s.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads ciphertext into the per-thread buffer (after what this connection held) and
    /// processes it: plaintext into `out` (or kept), records to send queued. Ready with
    /// `read_closed` set at end of stream.
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        out: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        let held = self.incoming.len();
        if held >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        with_scratch(held + READ_BYTES, |scratch| {
            scratch[..held].copy_from_slice(&self.incoming);
            let mut buf = ReadBuf::new(&mut scratch[held..held + READ_BYTES]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                // End of stream without close_notify: the XMPP layer sees it as such.
                self.session.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            let filled = &mut scratch[..held + n];
            let consumed = self.session.process(filled, out)?;
            self.incoming.clear();
            self.incoming.extend_from_slice(&filled[consumed..]);
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            Poll::Ready(Ok(()))
        })
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1).
fn expand_label(
    expander: &dyn HkdfExpander,
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Option<()> {
    let length = u16::try_from(out.len()).ok()?.to_be_bytes();
    let label_len = [u8::try_from(b"tls13 ".len() + label.len()).ok()?];
    let context_len = [u8::try_from(context.len()).ok()?];
    expander
        .expand_slice(
            &[&length, &label_len, b"tls13 ", label, &context_len, context],
            out,
        )
        .ok()
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let s = &mut this.session;
            if s.plaintext_read < s.plaintext.len() {
                let n = (s.plaintext.len() - s.plaintext_read).min(out.remaining());
                out.put_slice(&s.plaintext[s.plaintext_read..s.plaintext_read + n]);
                s.plaintext_read += n;
                if s.plaintext_read == s.plaintext.len() {
                    s.plaintext = Vec::new();
                    s.plaintext_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if s.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Records rustls answered with (a key update) go out with the reads too.
            if let Poll::Ready(Err(e)) = this.poll_send_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            let before = out.filled().len();
            ready!(this.poll_read_records(cx, Some(out)))?;
            if out.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // Only part of a record, or no application data in it: read on.
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the socket did not take yet goes first: a connection buffers at most one
        // write's worth.
        ready!(this.poll_send_outgoing(cx))?;
        let plaintext = &buf[..buf.len().min(MAX_PLAINTEXT_PER_WRITE)];
        let s = &mut this.session;
        let io = &mut this.io;
        let incoming = &mut this.incoming;
        with_scratch(0, |scratch| {
            let len = s.encrypt(incoming, plaintext, scratch)?;
            let ciphertext = &scratch[..len];
            if s.outgoing.is_empty() {
                // Usually the socket takes it all, and nothing is copied.
                let sent = match Pin::new(&mut *io).poll_write(cx, ciphertext) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => 0,
                };
                s.outgoing.extend_from_slice(&ciphertext[sent..]);
            } else {
                s.outgoing.extend_from_slice(ciphertext);
            }
            if s.outgoing.is_empty() {
                s.outgoing = Vec::new();
            }
            Poll::Ready(Ok(plaintext.len()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.session.close_queued {
            this.session.close_queued = true;
            let s = &mut this.session;
            let incoming = &mut this.incoming;
            // Best effort: a connection that failed has no close_notify to give.
            let _ = close_notify(s, incoming);
        }
        ready!(this.poll_send_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Queues close_notify in `s.outgoing`.
fn close_notify(s: &mut Session, incoming: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let UnbufferedStatus { mut discard, state } = s.conn.process_tls_records(incoming);
        let next = step(
            state.map_err(tls_error)?,
            &mut None,
            &mut s.plaintext,
            &mut s.outgoing,
            &mut discard,
        )?;
        match next {
            Next::Write(mut traffic) => {
                let mut alert = [0u8; 64];
                let n = traffic
                    .queue_close_notify(&mut alert)
                    .map_err(io::Error::other)?;
                s.outgoing.extend_from_slice(&alert[..n]);
                return Ok(());
            }
            Next::Continue => {}
            Next::NeedData | Next::PeerClosed | Next::Closed => return Ok(()),
        }
        incoming.drain(..discard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    type Client = tokio_rustls::client::TlsStream<DuplexStream>;

    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let (crt, key) = crate::net::devcert::generate("a.test").unwrap();
        let cert = CertificateDer::from_pem_slice(crt.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.key_log = Arc::new(ExporterSecretLog);
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A handshake over a pipe of `pipe` bytes, so large writes stall and records split.
    async fn pair(pipe: usize) -> (ServerTls<DuplexStream>, Client) {
        let (server, client) = configs();
        let (c, s) = tokio::io::duplex(pipe);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("a.test").unwrap();
        let (s, c) = tokio::join!(ServerTls::accept(s, server), connector.connect(name, c));
        (s.unwrap(), c.unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// Writes `send` and reads `want` bytes at once (neither side may wait for the other
    /// to finish); returns what was read.
    async fn exchange<T: AsyncRead + AsyncWrite + Unpin>(
        io: T,
        send: &[u8],
        want: usize,
    ) -> (Vec<u8>, T) {
        let (mut r, mut w) = tokio::io::split(io);
        let mut got = Vec::new();
        let reader = async {
            let mut chunk = [0u8; 777];
            while got.len() < want {
                let n = r.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
        };
        let writer = async {
            w.write_all(send).await.unwrap();
            w.flush().await.unwrap();
        };
        tokio::join!(reader, writer);
        (got, r.unsplit(w))
    }

    #[tokio::test]
    async fn large_transfers_both_ways_through_a_narrow_pipe() {
        let (s, c) = pair(1000).await;
        let up = pattern(300_000, 1);
        let down = pattern(200_000, 2);
        let (up2, down2) = (up.clone(), down.clone());
        let server = tokio::spawn(async move {
            let (got, mut s) = exchange(s, &down2, up2.len()).await;
            assert_eq!(got, up2);
            // The client closes: end of stream after all data.
            assert_eq!(s.read(&mut [0u8; 16]).await.unwrap(), 0);
            s.shutdown().await.unwrap();
        });
        let (got, mut c) = exchange(c, &up, down.len()).await;
        assert_eq!(got, down);
        c.shutdown().await.unwrap();
        server.await.unwrap();
        // The server's close_notify arrived: a clean end of stream.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffers() {
        let (mut s, mut c) = pair(64 * 1024).await;
        c.write_all(&pattern(40_000, 3)).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 40_000];
        s.read_exact(&mut got).await.unwrap();
        s.write_all(&pattern(50_000, 4)).await.unwrap();
        s.flush().await.unwrap();
        let mut back = vec![0u8; 50_000];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, pattern(50_000, 4));
        assert_eq!(s.incoming.capacity(), 0);
        assert_eq!(s.session.outgoing.capacity(), 0);
        assert_eq!(s.session.plaintext.capacity(), 0);
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered() {
        let (mut s, mut c) = pair(64 * 1024).await;
        for round in 0..3u8 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.write_all(b"ping").await.unwrap();
            c.flush().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping", "round {round}");
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong", "round {round}");
        }
    }

    #[tokio::test]
    async fn garbage_fails_the_handshake_and_the_session() {
        let (server, _) = configs();
        let (mut c, s) = tokio::io::duplex(4096);
        c.write_all(b"<stream:stream to='a.test' xmlns='jabber:client'>")
            .await
            .unwrap();
        assert!(ServerTls::accept(s, server).await.is_err());

        let (mut s, c) = pair(4096).await;
        let mut raw = c.into_inner().0;
        // A record header with a body that fails authentication.
        raw.write_all(&[23, 3, 3, 0, 40]).await.unwrap();
        raw.write_all(&[0x55; 40]).await.unwrap();
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_mid_handshake_is_an_error() {
        let (server, _) = configs();
        let (c, s) = tokio::io::duplex(4096);
        drop(c);
        assert!(ServerTls::accept(s, server).await.is_err());
    }
}
