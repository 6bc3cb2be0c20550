//! One connection, whatever it carries (c2s, s2s inbound or outbound) and whatever carries
//! it (a socket, or the HTTP server's WebSocket and BOSH through a [`Link`]): transport,
//! parser, output buffer, the write deadline and the bounded close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use crate::config::Config;
use crate::net::io::MaybeTls;
use crate::net::link::{Inbound, Outbound};
pub use crate::stream::{Ending, xml_ending};
use crate::stream::{StreamError, StreamErrorCondition, StreamKind};
use crate::xml::{Element, ParserLimits, StreamEvent, StreamParser, ns};

/// The parser limits of every stream, from the configuration.
pub fn parser_limits(cfg: &Config) -> ParserLimits {
    ParserLimits {
        max_stanza_bytes: cfg.limits.max_stanza_bytes,
        max_depth: cfg.limits.max_depth,
        max_attributes: cfg.limits.max_attributes,
    }
}

/// The output buffer, given room for a typical stanza at once when it was released
/// (rather than growing from nothing in many small steps).
fn out_buffer(out: &mut Vec<u8>) -> &mut Vec<u8> {
    if out.capacity() == 0 {
        out.reserve(1024);
    }
    out
}

pub struct Connection {
    pub io: MaybeTls,
    pub parser: StreamParser,
    kind: StreamKind,
    out: Vec<u8>,
    /// Our stream header has been sent for the current stream (errors need one first).
    pub header_sent: bool,
    /// How long a write may make no progress before the peer counts as gone.
    write_timeout: Duration,
}

impl Connection {
    /// A connection with the configured limits.
    pub fn new(io: MaybeTls, kind: StreamKind, cfg: &Config) -> Self {
        Connection {
            io,
            parser: StreamParser::new(parser_limits(cfg)),
            kind,
            out: Vec::new(),
            header_sent: false,
            write_timeout: Duration::from_secs(cfg.limits.write_timeout_secs),
        }
    }

    /// A new stream on the same transport (after TLS or SASL): bytes still buffered
    /// belong to the old one, and our next header opens the new one.
    pub fn restart(&mut self) {
        self.parser.reset();
        self.header_sent = false;
    }

    /// Queues our stream header; `id` is `None` on the initiating side.
    pub fn queue_header(&mut self, from: &str, to: Option<&str>, id: Option<&str>) {
        match &mut self.io {
            MaybeTls::Link(link) => link.queue(Outbound::Header {
                from: from.to_string(),
                id: id.unwrap_or_default().to_string(),
            }),
            _ => out_buffer(&mut self.out).extend_from_slice(&self.kind.header(from, to, id)),
        }
        self.header_sent = true;
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

    /// Reads what is available into the parser; returns how many bytes came. Cancel-safe.
    pub async fn read_some(&mut self) -> Result<usize, Ending> {
        let parser = &mut self.parser;
        if let MaybeTls::Link(link) = &mut self.io {
            return match link.recv().await {
                Some(Inbound::Stream(bytes)) => parser
                    .feed(&bytes)
                    .map(|()| bytes.len())
                    .map_err(xml_ending),
                Some(Inbound::Fault(condition, why)) => {
                    Err(Ending::Error(StreamError::with_text(condition, why)))
                }
                None => Err(Ending::Gone),
            };
        }
        let read =
            crate::net::io::read_with(&mut self.io, |bytes| (bytes.len(), parser.feed(bytes)));
        match read.await {
            Ok(Some((n, fed))) => fed.map(|()| n).map_err(xml_ending),
            Ok(None) | Err(_) => Err(Ending::Gone),
        }
    }

    pub fn queue(&mut self, el: &Element) {
        match &mut self.io {
            // Every message is a complete element that declares its namespaces (RFC 7395
            // §3.3.3, XEP-0206 §7).
            MaybeTls::Link(link) => link.queue(Outbound::Element(standalone(el))),
            // Stanzas are kept in jabber:client internally; written with that as the
            // parent namespace they inherit the stream's default (client or server).
            _ => el.write_to(out_buffer(&mut self.out), ns::CLIENT),
        }
    }

    /// Writes what is queued, within the write deadline.
    pub async fn flush(&mut self) -> Result<(), Ending> {
        if let MaybeTls::Link(link) = &mut self.io {
            // Boxed, as a socket's slow path is (`write_all_within`).
            let flushed = Box::pin(tokio::time::timeout(self.write_timeout, link.flush()));
            return match flushed.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => {
                    debug!("transport stopped taking output; connection lost");
                    Err(Ending::Gone)
                }
            };
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let res =
            crate::net::io::write_all_within(&mut self.io, &self.out, self.write_timeout).await;
        // Released, not cleared: most connections are idle most of the time, and a
        // buffer per flush costs far less than the TLS record it fed.
        self.out = Vec::new();
        res.map_err(|e| {
            debug!(error = %e, "write failed; connection lost");
            Ending::Gone
        })
    }

    pub async fn send(&mut self, el: &Element) -> Result<(), Ending> {
        self.queue(el);
        self.flush().await
    }

    /// Ends the connection as `ending` says, best effort and bounded in time. `domain`
    /// is ours, for a header still owed before an error.
    pub async fn finish(&mut self, ending: Ending, domain: &str) {
        let error = match ending {
            Ending::Gone => return,
            Ending::PeerClosed | Ending::Close => None,
            Ending::Error(err) => {
                debug!(
                    condition = err.condition.name(),
                    "closing with stream error"
                );
                Some(err.to_element())
            }
            Ending::Custom(el) => {
                debug!(error = ?el, "closing with stream error");
                Some(el)
            }
        };
        // Anything still queued (a stream header) goes first.
        if error.is_some() && !self.header_sent {
            self.queue_header(domain, None, Some(&crate::stream::random_id()));
        }
        if let MaybeTls::Link(link) = &mut self.io {
            if let Some(error) = error {
                link.queue(Outbound::StreamError(standalone(&error)));
            }
            link.queue(Outbound::Close);
            let _ = tokio::time::timeout(Duration::from_secs(5), link.flush()).await;
            return;
        }
        if let Some(error) = &error {
            self.queue(error);
        }
        let mut bytes = std::mem::take(&mut self.out);
        bytes.extend_from_slice(crate::stream::STREAM_CLOSE);
        let io = &mut self.io;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            io.write_all(&bytes).await?;
            io.flush().await?;
            io.shutdown().await
        })
        .await;
        // Read (and discard) what the peer still sends for a moment, so closing with
        // unread input does not reset the connection before our last bytes are read.
        // Servers get less time than clients: our own dialback checks and outbound
        // restarts wait for it. On the heap: only a closing connection needs it (a
        // future holds its locals).
        let linger = match self.kind {
            StreamKind::Client => Duration::from_secs(1),
            StreamKind::Server => Duration::from_millis(500),
        };
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(linger, async {
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

/// `el` as a complete document fragment that declares its namespaces (what each message
/// of a web transport carries). Elements hold strings, so the bytes are UTF-8.
fn standalone(el: &Element) -> String {
    let mut xml = Vec::new();
    el.write_standalone(&mut xml);
    String::from_utf8(xml).unwrap_or_default()
}
