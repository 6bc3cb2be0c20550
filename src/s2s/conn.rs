//! One server-to-server connection's transport and parser (the c2s `Connection` pattern,
//! with `jabber:server` stream headers and the dialback prefix).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::io::MaybeTls;
use crate::stream::{STREAM_CLOSE, StreamError, StreamErrorCondition};
use crate::xml::escape::escape_attr;
use crate::xml::{Element, ParserLimits, StreamEvent, StreamParser, XmlError, ns};

pub const DIALBACK: &str = "jabber:server:dialback";
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

const READ_CHUNK: usize = 4096;

/// Why a connection ends.
#[derive(Debug)]
pub enum Ending {
    /// Send this stream error, then close.
    Error(StreamError),
    /// The peer closed its stream; answer with our close.
    PeerClosed,
    /// We close normally (idle, done).
    Close,
    /// The socket is gone; nothing more can be sent.
    Gone,
}

impl From<StreamErrorCondition> for Ending {
    fn from(c: StreamErrorCondition) -> Self {
        Ending::Error(StreamError::new(c))
    }
}

pub fn xml_ending(e: XmlError) -> Ending {
    Ending::Error(StreamError::with_text(
        StreamErrorCondition::from_xml_error(&e),
        e.to_string(),
    ))
}

pub struct Conn {
    pub io: MaybeTls,
    pub parser: StreamParser,
    out: Vec<u8>,
    read_buf: Box<[u8]>,
    /// Our stream header was sent for the current stream (an error needs one first).
    pub header_sent: bool,
}

impl Conn {
    pub fn new(io: MaybeTls, limits: ParserLimits) -> Self {
        Conn {
            io,
            parser: StreamParser::new(limits),
            out: Vec::with_capacity(1024),
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            header_sent: false,
        }
    }

    /// The next event, reading from the socket as needed.
    pub async fn next_event(&mut self) -> Result<StreamEvent, Ending> {
        loop {
            if let Some(ev) = self.parser.next_event().map_err(xml_ending)? {
                return Ok(ev);
            }
            self.read_some().await?;
        }
    }

    /// The next element (stanza or stream-level), refusing a close or a new header.
    pub async fn next_element(&mut self) -> Result<Element, Ending> {
        match self.next_event().await? {
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Close => Err(Ending::PeerClosed),
            StreamEvent::Open(_) => Err(StreamErrorCondition::NotWellFormed.into()),
        }
    }

    /// Reads once and feeds the parser. Cancel-safe.
    pub async fn read_some(&mut self) -> Result<(), Ending> {
        let n = self
            .io
            .read(&mut self.read_buf)
            .await
            .map_err(|_| Ending::Gone)?;
        if n == 0 {
            return Err(Ending::Gone);
        }
        self.parser.feed(&self.read_buf[..n]).map_err(xml_ending)
    }

    pub fn queue(&mut self, el: &Element) {
        // Stanzas are kept in jabber:client internally; written with that as the parent
        // namespace they inherit the stream's jabber:server default.
        el.write_to(&mut self.out, ns::CLIENT);
    }

    pub async fn flush(&mut self) -> Result<(), Ending> {
        if self.out.is_empty() {
            return Ok(());
        }
        let res = self.io.write_all(&self.out).await;
        self.out.clear();
        res.map_err(|_| Ending::Gone)?;
        self.io.flush().await.map_err(|_| Ending::Gone)
    }

    pub async fn send(&mut self, el: &Element) -> Result<(), Ending> {
        self.queue(el);
        self.flush().await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Ending> {
        self.out.extend_from_slice(bytes);
        self.flush().await
    }

    /// Ends the connection as `ending` says, best effort and bounded in time.
    pub async fn finish(&mut self, ending: Ending, from: &str) {
        let bytes = match &ending {
            Ending::Gone => return,
            Ending::PeerClosed | Ending::Close => STREAM_CLOSE.to_vec(),
            Ending::Error(err) => {
                tracing::debug!(
                    condition = err.condition.name(),
                    "closing with stream error"
                );
                let mut out = Vec::new();
                if !self.header_sent {
                    out.extend(response_header(from, None, &crate::stream::random_id()));
                }
                err.to_element().write_to(&mut out, ns::CLIENT);
                out.extend_from_slice(STREAM_CLOSE);
                out
            }
        };
        let io = &mut self.io;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            io.write_all(&bytes).await?;
            io.flush().await?;
            io.shutdown().await
        })
        .await;
        // Read (and discard) what the peer still sends for a moment, so closing with unread
        // input does not reset the connection before our last bytes are read.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut drained = 0usize;
            while drained < 1 << 20 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
}

/// The receiving side's stream header.
pub fn response_header(from: &str, to: Option<&str>, id: &str) -> Vec<u8> {
    crate::stream::response_header(ns::SERVER, from, to, id, &[("db", DIALBACK)])
}

/// The initiating side's stream header (no id; RFC 6120 §4.7).
pub fn initial_header(from: &str, to: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
          xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
          version='1.0' from='",
    );
    escape_attr(from, &mut out);
    out.extend_from_slice(b"' to='");
    escape_attr(to, &mut out);
    out.extend_from_slice(b"'>");
    out
}

/// Limits for s2s parsers: the configured ones.
pub fn limits(cfg: &crate::config::Config) -> ParserLimits {
    ParserLimits {
        max_stanza_bytes: cfg.limits.max_stanza_bytes,
        max_depth: cfg.limits.max_depth,
        max_attributes: cfg.limits.max_attributes,
    }
}
