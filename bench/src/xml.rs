//! A tiny incremental splitter for the server's XML stream, plus byte-level helpers to
//! pick names, attributes and child text out of one top-level element.
//!
//! The server under test is trusted, so this is not a validating parser: it only tracks
//! tag boundaries, attribute quoting, comments/CDATA and nesting depth, which is enough
//! to cut the stream into `<stream:stream>` header, top-level elements and stream end,
//! whatever way the bytes were split across reads.

use std::io;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest top-level element accepted; beyond that the connection is failed rather than
/// letting one stream grow the buffer without bound.
const MAX_ELEMENT: usize = 4 << 20;
const READ_CHUNK: usize = 16 << 10;

/// One unit cut out of the stream. Ranges index [`Splitter::bytes`] and stay valid
/// until the next [`Splitter::fill`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The opening `<stream:stream ...>` tag.
    Header(Range<usize>),
    /// A complete child of the stream root.
    Element(Range<usize>),
    /// `</stream:stream>`.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Character data between tags.
    Text,
    /// Just after `<`, kind not known yet.
    Lt,
    /// Inside a start or end tag; `quote` is the open attribute quote, if any.
    Tag { end_tag: bool, quote: u8, prev: u8 },
    /// Inside `<?...?>`.
    Pi { prev: u8 },
    /// After `<!`: comment, CDATA or declaration; `term` is how far into its
    /// terminator (`-->` / `]]>` / `>`) we have matched.
    Bang { kind: u8, matched: u8, seen: u8 },
}

pub struct Splitter {
    buf: Vec<u8>,
    /// First byte not yet handed out in a frame.
    start: usize,
    /// End of valid data.
    end: usize,
    /// Next byte to scan.
    pos: usize,
    state: State,
    depth: usize,
    /// Start of the `<` of the current tag.
    tag_start: usize,
    /// Start of the top-level element being collected.
    elem_start: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Self::new()
    }
}

impl Splitter {
    pub fn new() -> Self {
        Self::with_capacity(READ_CHUNK)
    }

    /// A splitter whose buffer starts at `cap` bytes and grows as [`push`](Self::push)
    /// needs (the relay keeps idle connections small with a 0 here).
    pub fn with_capacity(cap: usize) -> Self {
        Splitter {
            buf: vec![0; cap],
            start: 0,
            end: 0,
            pos: 0,
            state: State::Text,
            depth: 0,
            tag_start: 0,
            elem_start: 0,
        }
    }

    /// Forgets everything (after STARTTLS or SASL success the stream restarts).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.pos = 0;
        self.state = State::Text;
        self.depth = 0;
    }

    pub fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    #[cfg(test)]
    /// True when unconsumed bytes are buffered (a partial or not yet split frame).
    pub fn has_pending(&self) -> bool {
        self.start < self.end
    }

    /// Appends raw bytes (used by tests and by callers that already hold data).
    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        self.make_room(data.len())?;
        self.buf[self.end..self.end + data.len()].copy_from_slice(data);
        self.end += data.len();
        Ok(())
    }

    /// Releases a buffer grown past `keep` bytes once nothing is pending in it, so a
    /// burst does not pin memory on an idle connection.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.start == self.end && self.pos == self.end && self.buf.len() > keep {
            self.start = 0;
            self.end = 0;
            self.pos = 0;
            self.buf = vec![0; keep];
        }
    }

    /// Reads once from `r` into the buffer; returns the byte count (0 = EOF).
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        self.make_room(READ_CHUNK / 2)?;
        let n = r.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Makes at least `want` free bytes at the end, compacting first and growing the
    /// buffer only when a single element needs it.
    fn make_room(&mut self, want: usize) -> io::Result<()> {
        if self.start == self.end && self.pos == self.end {
            // Nothing pending: restart at the front for free.
            self.start = 0;
            self.end = 0;
            self.pos = 0;
        } else if self.start > 0 && self.buf.len() - self.end < want {
            let shift = self.start;
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= shift;
            self.pos -= shift;
            self.start = 0;
            self.tag_start = self.tag_start.saturating_sub(shift);
            self.elem_start = self.elem_start.saturating_sub(shift);
        }
        if self.buf.len() - self.end < want {
            let need = self.end + want;
            if need > MAX_ELEMENT + READ_CHUNK {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "element larger than the splitter's limit",
                ));
            }
            self.buf.resize(need.max(self.buf.len() * 2), 0);
        }
        Ok(())
    }

    /// Scans buffered bytes for the next complete frame.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        while self.pos < self.end {
            let i = self.pos;
            let c = self.buf[i];
            self.pos += 1;
            match self.state {
                State::Text => {
                    if c == b'<' {
                        self.tag_start = i;
                        self.state = State::Lt;
                    } else if self.depth <= 1 {
                        // Whitespace keepalives between stanzas: drop them.
                        self.start = self.pos;
                    } else if let Some(off) = memchr_lt(&self.buf[self.pos..self.end]) {
                        // Skip ahead over text inside an element.
                        self.pos += off;
                    } else {
                        self.pos = self.end;
                    }
                }
                State::Lt => {
                    self.state = match c {
                        b'/' => State::Tag {
                            end_tag: true,
                            quote: 0,
                            prev: c,
                        },
                        b'?' => State::Pi { prev: c },
                        b'!' => State::Bang {
                            kind: 0,
                            matched: 0,
                            seen: 0,
                        },
                        _ => {
                            if self.depth == 1 {
                                self.elem_start = self.tag_start;
                            }
                            State::Tag {
                                end_tag: false,
                                quote: 0,
                                prev: c,
                            }
                        }
                    };
                }
                State::Tag {
                    end_tag,
                    quote,
                    prev,
                } => {
                    if quote != 0 {
                        if c == quote {
                            self.state = State::Tag {
                                end_tag,
                                quote: 0,
                                prev: c,
                            };
                        }
                    } else if c == b'"' || c == b'\'' {
                        self.state = State::Tag {
                            end_tag,
                            quote: c,
                            prev: c,
                        };
                    } else if c == b'>' {
                        self.state = State::Text;
                        if let Some(f) = self.tag_done(end_tag, prev == b'/')? {
                            return Ok(Some(f));
                        }
                    } else {
                        self.state = State::Tag {
                            end_tag,
                            quote: 0,
                            prev: c,
                        };
                    }
                }
                State::Pi { prev } => {
                    if c == b'>' && prev == b'?' {
                        self.state = State::Text;
                        if self.depth <= 1 {
                            self.start = self.pos;
                        }
                    } else {
                        self.state = State::Pi { prev: c };
                    }
                }
                State::Bang {
                    kind,
                    matched,
                    seen,
                } => {
                    self.state = self.bang_step(kind, matched, seen, c);
                    if self.state == State::Text && self.depth <= 1 {
                        self.start = self.pos;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Decides, from the first bytes after `<!`, which terminator to look for, then
    /// matches it.
    fn bang_step(&self, kind: u8, matched: u8, seen: u8, c: u8) -> State {
        // kind: 0 = undecided, b'-' = comment, b'[' = CDATA, b'd' = declaration.
        match kind {
            0 => {
                let k = match c {
                    b'-' => b'-',
                    b'[' => b'[',
                    _ => b'd',
                };
                if k == b'd' && c == b'>' {
                    return State::Text;
                }
                State::Bang {
                    kind: k,
                    matched: 0,
                    seen: 1,
                }
            }
            b'-' => {
                // Comment body starts after "<!--"; terminator "-->".
                if seen < 2 {
                    return State::Bang {
                        kind,
                        matched: 0,
                        seen: seen + 1,
                    };
                }
                match (matched, c) {
                    (_, b'>') if matched >= 2 => State::Text,
                    (_, b'-') => State::Bang {
                        kind,
                        matched: (matched + 1).min(2),
                        seen,
                    },
                    _ => State::Bang {
                        kind,
                        matched: 0,
                        seen,
                    },
                }
            }
            b'[' => {
                // "<![CDATA[" is 7 bytes after "<!"; terminator "]]>".
                if seen < 7 {
                    return State::Bang {
                        kind,
                        matched: 0,
                        seen: seen + 1,
                    };
                }
                match c {
                    b'>' if matched >= 2 => State::Text,
                    b']' => State::Bang {
                        kind,
                        matched: (matched + 1).min(2),
                        seen,
                    },
                    _ => State::Bang {
                        kind,
                        matched: 0,
                        seen,
                    },
                }
            }
            _ => {
                if c == b'>' {
                    State::Text
                } else {
                    State::Bang {
                        kind,
                        matched,
                        seen,
                    }
                }
            }
        }
    }

    fn tag_done(&mut self, end_tag: bool, empty: bool) -> io::Result<Option<Frame>> {
        let tag_end = self.pos;
        if end_tag {
            if self.depth == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "end tag outside the stream",
                ));
            }
            self.depth -= 1;
            match self.depth {
                0 => {
                    self.start = tag_end;
                    Ok(Some(Frame::Close))
                }
                1 => {
                    self.start = tag_end;
                    Ok(Some(Frame::Element(self.elem_start..tag_end)))
                }
                _ => Ok(None),
            }
        } else if empty {
            if self.depth == 1 {
                self.start = tag_end;
                Ok(Some(Frame::Element(self.tag_start..tag_end)))
            } else {
                Ok(None)
            }
        } else {
            self.depth += 1;
            if self.depth == 1 {
                self.start = tag_end;
                Ok(Some(Frame::Header(self.tag_start..tag_end)))
            } else {
                Ok(None)
            }
        }
    }
}

fn memchr_lt(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'<')
}

/// The qualified name of an element's start tag (`message`, `stream:features`, ...).
pub fn name(el: &[u8]) -> &[u8] {
    let rest = el.strip_prefix(b"<").unwrap_or(el);
    let end = rest
        .iter()
        .position(|&c| {
            c == b' ' || c == b'>' || c == b'/' || c == b'\t' || c == b'\n' || c == b'\r'
        })
        .unwrap_or(rest.len());
    &rest[..end]
}

/// The local part of [`name`] (after any prefix).
pub fn local_name(el: &[u8]) -> &[u8] {
    let n = name(el);
    match n.iter().position(|&c| c == b':') {
        Some(i) => &n[i + 1..],
        None => n,
    }
}

/// Value of attribute `key` on the element's start tag (raw, not unescaped).
pub fn attr<'a>(el: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut i = name(el).len() + 1;
    loop {
        while i < el.len() && el[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= el.len() || el[i] == b'>' || el[i] == b'/' {
            return None;
        }
        let name_start = i;
        while i < el.len() && el[i] != b'=' && !el[i].is_ascii_whitespace() {
            i += 1;
        }
        let attr_name = &el[name_start..i];
        while i < el.len() && el[i] != b'"' && el[i] != b'\'' {
            i += 1;
        }
        if i >= el.len() {
            return None;
        }
        let q = el[i];
        let vstart = i + 1;
        let vlen = el[vstart..].iter().position(|&c| c == q)?;
        if attr_name == key {
            return Some(&el[vstart..vstart + vlen]);
        }
        i = vstart + vlen + 1;
    }
}

/// Offset of the first `<name` start tag (exact name, followed by space, `>` or `/`)
/// at or after `from`.
pub fn find_tag(el: &[u8], tag: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < el.len() {
        let off = memchr_lt(&el[i..])?;
        let at = i + off;
        let after = at + 1 + tag.len();
        if el.len() > after && &el[at + 1..after] == tag {
            let c = el[after];
            if c == b' ' || c == b'>' || c == b'/' || c.is_ascii_whitespace() {
                return Some(at);
            }
        }
        i = at + 1;
    }
    None
}

/// Text content of the first `<tag>` descendant (raw, up to the next `<`); `Some(b"")`
/// for an empty element.
pub fn child_text<'a>(el: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    let at = find_tag(el, tag, 1)?;
    let gt = at + el[at..].iter().position(|&c| c == b'>')?;
    if el[gt - 1] == b'/' {
        return Some(b"");
    }
    let body = &el[gt + 1..];
    let end = memchr_lt(body).unwrap_or(body.len());
    Some(&body[..end])
}

/// True when the element contains a `<tag` start tag anywhere below its root.
pub fn has_child(el: &[u8], tag: &[u8]) -> bool {
    find_tag(el, tag, 1).is_some()
}

/// Every start tag `<tag ...>` below the root, as slices starting at that tag (for
/// [`attr`]).
pub fn each_tag<'a>(el: &'a [u8], tag: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut from = 1;
    std::iter::from_fn(move || {
        let at = find_tag(el, tag, from)?;
        from = at + 1;
        Some(&el[at..])
    })
}

/// The whole element whose start tag begins at `at`, through its end tag (nested
/// elements of the same name are counted); `None` when it is not complete.
pub fn element_at(el: &[u8], at: usize) -> Option<&[u8]> {
    let tag = name(el.get(at..)?);
    if tag.is_empty() {
        return None;
    }
    let boundary =
        |c: Option<&u8>| matches!(c, Some(&c) if c == b'>' || c == b'/' || c.is_ascii_whitespace());
    let mut depth = 0usize;
    let mut i = at;
    loop {
        let lt = i + memchr_lt(&el[i..])?;
        let rest = &el[lt + 1..];
        let gt = lt + el[lt..].iter().position(|&c| c == b'>')?;
        if let Some(r) = rest.strip_prefix(b"/")
            && r.starts_with(tag)
            && boundary(r.get(tag.len()))
        {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(&el[at..=gt]);
            }
        } else if rest.starts_with(tag) && boundary(rest.get(tag.len())) {
            if el[gt - 1] != b'/' {
                depth += 1;
            } else if depth == 0 {
                return Some(&el[at..=gt]);
            }
        }
        i = gt + 1;
    }
}

/// Undoes the five predefined entities (enough for JIDs and SASL data).
pub fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'&' {
            let rest = &raw[i..];
            let (rep, len): (u8, usize) = if rest.starts_with(b"&amp;") {
                (b'&', 5)
            } else if rest.starts_with(b"&lt;") {
                (b'<', 4)
            } else if rest.starts_with(b"&gt;") {
                (b'>', 4)
            } else if rest.starts_with(b"&quot;") {
                (b'"', 6)
            } else if rest.starts_with(b"&apos;") {
                (b'\'', 6)
            } else {
                (b'&', 1)
            };
            out.push(rep);
            i += len;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// Escapes text for an attribute value or character data.
pub fn escape_into(out: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&apos;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_elements() {
        let f =
            b"<f><a x='1'><inline><b><inline><c/></inline></b></inline><m>1</m></a><a/><e/></f>";
        let at = find_tag(f, b"a", 1).unwrap();
        assert_eq!(
            element_at(f, at).unwrap(),
            b"<a x='1'><inline><b><inline><c/></inline></b></inline><m>1</m></a>"
        );
        let a = element_at(f, at).unwrap();
        let inl = find_tag(a, b"inline", 1).unwrap();
        assert_eq!(
            element_at(a, inl).unwrap(),
            b"<inline><b><inline><c/></inline></b></inline>"
        );
        let e = find_tag(f, b"e", 1).unwrap();
        assert_eq!(element_at(f, e).unwrap(), b"<e/>");
        // Cut short: no end tag.
        assert!(element_at(b"<a><b></b>", 0).is_none());
        assert!(element_at(b"<a><b></b>", 99).is_none());
    }

    const STREAM: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='a>b' version='1.0'>\
        <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>\n \
        <message from='a@b/c' to=\"x@y\"><body>1 2 a&lt;b</body><!-- <c> --><x><![CDATA[ </message> ]]></x></message>\
        <presence/>\
        </stream:stream>";

    fn frames(s: &mut Splitter) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(f) = s.next_frame().unwrap() {
            out.push(match f {
                Frame::Header(r) => [b"H:".as_slice(), s.bytes(r)].concat(),
                Frame::Element(r) => s.bytes(r).to_vec(),
                Frame::Close => b"CLOSE".to_vec(),
            });
        }
        out
    }

    fn expected() -> Vec<Vec<u8>> {
        let all = STREAM;
        let find = |needle: &[u8]| all.windows(needle.len()).position(|w| w == needle).unwrap();
        let h0 = find(b"<stream:stream");
        let h1 = find(b"'1.0'><stream:features") + 6;
        let f0 = h1;
        let f1 = find(b"</stream:features>") + 18;
        let m0 = find(b"<message");
        let m1 = find(b"</message><presence") + 10;
        vec![
            [b"H:".as_slice(), &all[h0..h1]].concat(),
            all[f0..f1].to_vec(),
            all[m0..m1].to_vec(),
            b"<presence/>".to_vec(),
            b"CLOSE".to_vec(),
        ]
    }

    #[test]
    fn whole_stream_in_one_read() {
        let mut s = Splitter::new();
        s.push(STREAM).unwrap();
        assert_eq!(frames(&mut s), expected());
        assert!(!s.has_pending());
    }

    #[test]
    fn every_split_point_gives_same_frames() {
        for cut in 0..STREAM.len() {
            let mut s = Splitter::new();
            s.push(&STREAM[..cut]).unwrap();
            let mut got = frames(&mut s);
            s.push(&STREAM[cut..]).unwrap();
            got.extend(frames(&mut s));
            assert_eq!(got, expected(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut s = Splitter::new();
        let mut got = Vec::new();
        for b in STREAM {
            s.push(std::slice::from_ref(b)).unwrap();
            got.extend(frames(&mut s));
        }
        assert_eq!(got, expected());
    }

    #[test]
    fn compaction_keeps_partial_element() {
        let mut s = Splitter::new();
        s.push(b"<stream:stream>").unwrap();
        assert!(matches!(s.next_frame().unwrap(), Some(Frame::Header(_))));
        let msg = format!("<message><body>{}</body></message>", "y".repeat(300));
        // Many complete messages plus a partial one force compaction and growth.
        let mut count = 0;
        for round in 0..200 {
            let half = msg.len() / 2;
            s.push(&msg.as_bytes()[..half]).unwrap();
            assert_eq!(s.next_frame().unwrap(), None, "round {round}");
            s.push(&msg.as_bytes()[half..]).unwrap();
            while let Some(f) = s.next_frame().unwrap() {
                let Frame::Element(r) = f else { panic!() };
                assert_eq!(s.bytes(r), msg.as_bytes());
                count += 1;
            }
            s.make_room(READ_CHUNK / 2).unwrap();
        }
        assert_eq!(count, 200);
        assert!(s.buf.len() <= 4 * READ_CHUNK);
    }

    #[test]
    fn oversized_element_is_refused() {
        let mut s = Splitter::new();
        s.push(b"<stream:stream><message>").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        let mut failed = false;
        for _ in 0..8 {
            if s.push(&chunk).is_err() {
                failed = true;
                break;
            }
            let _ = s.next_frame().unwrap();
        }
        assert!(failed);
    }

    #[test]
    fn helpers() {
        let el = b"<iq type='result' id=\"b1\" xmlns='jabber:client'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u@h/r</jid></bind><empty/></iq>";
        assert_eq!(name(el), b"iq");
        assert_eq!(attr(el, b"type"), Some(&b"result"[..]));
        assert_eq!(attr(el, b"id"), Some(&b"b1"[..]));
        assert_eq!(attr(el, b"from"), None);
        assert_eq!(child_text(el, b"jid"), Some(&b"u@h/r"[..]));
        assert_eq!(child_text(el, b"empty"), Some(&b""[..]));
        assert_eq!(child_text(el, b"ji"), None);
        assert!(has_child(el, b"bind"));
        assert_eq!(local_name(b"<stream:features>"), b"features");
        let roster = b"<iq><query><item jid='a@h' subscription='both'/><item jid='b@h' subscription='to' ask='subscribe'><group>g</group></item></query></iq>";
        let items: Vec<_> = each_tag(roster, b"item")
            .map(|t| (attr(t, b"jid").unwrap(), attr(t, b"subscription").unwrap()))
            .collect();
        assert_eq!(
            items,
            vec![(&b"a@h"[..], &b"both"[..]), (&b"b@h"[..], &b"to"[..])]
        );
        assert_eq!(unescape(b"a&amp;b&lt;&apos;&x"), b"a&b<'&x");
        let mut out = Vec::new();
        escape_into(&mut out, "a<'&");
        assert_eq!(out, b"a&lt;&apos;&amp;");
    }
}
