//! Byte-level framing of an XMPP stream.
//!
//! The framer finds the stream header, each complete top-level stanza and the stream end
//! without building anything, so the parser only ever sees complete units of bounded
//! size. Scanning resumes where it stopped on the previous call (total work is linear in
//! the input), consumed bytes are dropped on the next [`Framer::feed`], and the size and
//! depth limits are enforced while bytes arrive rather than once a stanza is complete.
//!
//! Markup that restricted XML forbids (comments, processing instructions, DOCTYPE and
//! other declarations) is rejected here, before the parser could ever see it.

use super::parser::XmlError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Everything from the start of the stream through the `>` of the root start tag
    /// (optional XML declaration and whitespace included).
    Header,
    /// One complete depth-1 element.
    Stanza,
    /// The end tag of the root element.
    Close,
}

/// A complete unit, as a byte range of the framer's buffer. The range stays valid until
/// the next [`Framer::feed`] or [`Framer::reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Character data between markup.
    Text,
    /// Just after `<`, waiting for the byte that tells which markup this is.
    TagOpen,
    /// Inside a start tag, outside attribute values.
    StartTag,
    /// Inside an attribute value delimited by the given quote.
    AttrValue(u8),
    /// Right after an attribute value: XML requires whitespace or the end of the tag.
    AfterValue,
    EndTag,
    /// After `<!`, waiting for enough bytes to classify it.
    Bang,
    /// After `<?`, waiting for enough bytes to tell the XML declaration from a PI.
    Pi,
    /// Inside the XML declaration.
    Decl,
    Cdata,
    /// The root element was closed; everything else is ignored.
    Closed,
}

/// What may follow `<!`. Only CDATA sections are allowed in restricted XML.
const BANG_FORMS: [(&[u8], BangKind); 7] = [
    (b"--", BangKind::Comment),
    (b"[CDATA[", BangKind::Cdata),
    (b"DOCTYPE", BangKind::Declaration),
    (b"ENTITY", BangKind::Declaration),
    (b"ELEMENT", BangKind::Declaration),
    (b"ATTLIST", BangKind::Declaration),
    (b"NOTATION", BangKind::Declaration),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BangKind {
    Comment,
    Cdata,
    Declaration,
}

/// Buffers above this capacity are released once empty, so idle connections do not keep
/// the memory of their largest stanza.
const SHRINK_ABOVE: usize = 16 * 1024;
const SHRINK_TO: usize = 4 * 1024;

pub struct Framer {
    buf: Vec<u8>,
    /// Bytes before this offset have been handed out or skipped.
    start: usize,
    /// Next byte to scan.
    pos: usize,
    /// Start of the unit being framed (the stream start while before the header).
    frame_start: usize,
    /// Offset of the `<` of the markup being scanned.
    markup_start: usize,
    /// Open elements, the stream root included.
    depth: usize,
    state: State,
    seen_decl: bool,
    max_bytes: usize,
    max_depth: usize,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// C0 controls other than tab, LF and CR are not XML 1.0 characters, not even escaped.
#[inline]
fn is_bad_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

/// The first position of `a`, `b` or a control character XML forbids. Text and
/// attribute values are most of the bytes scanned, so eight are tested at once with word
/// arithmetic (a word holding none of them is skipped whole) and only a word that may
/// hold one is looked at byte by byte.
fn find_stop(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `w` is below `n` (exact for n <= 0x80).
    let has_below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS != 0;
    let has_byte = |w: u64, x: u8| has_below(w ^ (ONES * u64::from(x)), 1);
    let stops = |x: u8| x == a || x == b || is_bad_control(x);
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_ne_bytes(word);
        // Tab, LF and CR are below 0x20 too: such a word is checked byte by byte.
        if (has_below(w, 0x20) || has_byte(w, a) || has_byte(w, b))
            && let Some(i) = chunk.iter().position(|&x| stops(x))
        {
            return Some(offset + i);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&x| stops(x))
        .map(|i| offset + i)
}

fn control_error() -> XmlError {
    XmlError::NotWellFormed("control character not allowed in XML".into())
}

impl Framer {
    pub fn new(max_bytes: usize, max_depth: usize) -> Self {
        Framer {
            buf: Vec::new(),
            start: 0,
            pos: 0,
            frame_start: 0,
            markup_start: 0,
            depth: 0,
            state: State::Text,
            seen_decl: false,
            max_bytes,
            max_depth,
        }
    }

    /// Back to the state of a fresh stream; buffered bytes are discarded.
    pub fn reset(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf.shrink_to(SHRINK_TO);
        }
        *self = Framer {
            buf: std::mem::take(&mut self.buf),
            ..Framer::new(self.max_bytes, self.max_depth)
        };
    }

    /// Bytes received and not yet handed out or skipped.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn bytes(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.start..frame.end]
    }

    /// Appends input, first dropping what earlier frames consumed.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), XmlError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.start > 0 {
            let n = self.start;
            self.buf.drain(..n);
            self.pos -= n;
            self.frame_start -= n;
            // Stale outside markup; only meaningful (and then >= start) inside it.
            self.markup_start = self.markup_start.saturating_sub(n);
            self.start = 0;
            if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
                self.buf.shrink_to(SHRINK_TO);
            }
        }
        // Callers drain frames before feeding again, so what is left is part of one
        // unfinished unit that was already checked against the limit. More than that
        // means the caller is not draining: refuse rather than grow without bound.
        if self.buf.len() > self.max_bytes {
            return Err(XmlError::PolicyViolation(format!(
                "more than {} bytes of unprocessed input",
                self.max_bytes
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn too_big(&self) -> XmlError {
        XmlError::PolicyViolation(format!("stanza larger than {} bytes", self.max_bytes))
    }

    /// Finishes the unit ending at `end` (exclusive).
    fn emit(&mut self, kind: FrameKind, end: usize) -> Result<Option<Frame>, XmlError> {
        if end - self.frame_start > self.max_bytes {
            return Err(self.too_big());
        }
        let frame = Frame {
            kind,
            start: self.frame_start,
            end,
        };
        self.start = end;
        self.frame_start = end;
        Ok(Some(frame))
    }

    /// Scans buffered bytes up to the next complete unit. `Ok(None)` means more input is
    /// needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, XmlError> {
        let len = self.buf.len();
        while self.pos < len {
            match self.state {
                State::Closed => {
                    self.pos = len;
                    self.start = len;
                    return Ok(None);
                }
                State::Text if self.depth >= 2 => {
                    // Stanza content: the bulk of the traffic, so scan in one pass.
                    let rest = &self.buf[self.pos..];
                    match find_stop(rest, b'<', b'<') {
                        None => self.pos = len,
                        Some(i) => {
                            self.pos += i;
                            if self.buf[self.pos] != b'<' {
                                return Err(control_error());
                            }
                            self.markup_start = self.pos;
                            self.pos += 1;
                            self.state = State::TagOpen;
                        }
                    }
                }
                State::Text => {
                    // Before the header or between stanzas: whitespace only.
                    let b = self.buf[self.pos];
                    if is_ws(b) {
                        self.pos += 1;
                        if self.depth == 1 {
                            // A keepalive: nothing to keep.
                            self.start = self.pos;
                            self.frame_start = self.pos;
                        }
                    } else if b == b'<' {
                        self.markup_start = self.pos;
                        self.pos += 1;
                        self.state = State::TagOpen;
                    } else if self.depth == 1 {
                        return Err(XmlError::BadFormat("character data between stanzas".into()));
                    } else {
                        return Err(XmlError::NotWellFormed(
                            "character data before the stream header".into(),
                        ));
                    }
                }
                State::TagOpen => match self.buf[self.pos] {
                    b'/' => {
                        self.pos += 1;
                        self.state = State::EndTag;
                    }
                    b'!' => {
                        self.pos += 1;
                        self.state = State::Bang;
                    }
                    b'?' => {
                        self.pos += 1;
                        self.state = State::Pi;
                    }
                    _ => {
                        // The new element sits at stanza depth `self.depth` (the stanza
                        // itself is 1); refuse before buffering any of its content.
                        if self.depth > self.max_depth {
                            return Err(XmlError::PolicyViolation(format!(
                                "elements nested deeper than {}",
                                self.max_depth
                            )));
                        }
                        self.state = State::StartTag;
                    }
                },
                State::StartTag => {
                    let rest = &self.buf[self.pos..];
                    let Some(i) = rest.iter().position(|&b| {
                        matches!(b, b'>' | b'\'' | b'"' | b'<') || is_bad_control(b)
                    }) else {
                        self.pos = len;
                        continue;
                    };
                    self.pos += i;
                    let b = self.buf[self.pos];
                    self.pos += 1;
                    match b {
                        b'\'' | b'"' => self.state = State::AttrValue(b),
                        b'<' => {
                            return Err(XmlError::NotWellFormed("'<' inside a tag".into()));
                        }
                        b'>' => {
                            self.state = State::Text;
                            // A quote is the only other thing that can end a tag, so a
                            // '/' right before '>' always means an empty element.
                            let empty = self.buf[self.pos - 2] == b'/';
                            if let Some(frame) = self.start_tag_done(empty)? {
                                return Ok(Some(frame));
                            }
                        }
                        _ => return Err(control_error()),
                    }
                }
                State::AttrValue(quote) => {
                    let rest = &self.buf[self.pos..];
                    match find_stop(rest, quote, b'<') {
                        None => self.pos = len,
                        Some(i) => {
                            self.pos += i;
                            let b = self.buf[self.pos];
                            self.pos += 1;
                            if b == quote {
                                self.state = State::AfterValue;
                            } else if b == b'<' {
                                return Err(XmlError::NotWellFormed(
                                    "'<' in an attribute value".into(),
                                ));
                            } else {
                                return Err(control_error());
                            }
                        }
                    }
                }
                State::AfterValue => {
                    let b = self.buf[self.pos];
                    if !(is_ws(b) || b == b'/' || b == b'>') {
                        return Err(XmlError::NotWellFormed(
                            "missing whitespace between attributes".into(),
                        ));
                    }
                    self.state = State::StartTag;
                }
                State::EndTag => {
                    let rest = &self.buf[self.pos..];
                    let Some(i) = rest
                        .iter()
                        .position(|&b| b == b'>' || b == b'<' || is_bad_control(b))
                    else {
                        self.pos = len;
                        continue;
                    };
                    self.pos += i;
                    let b = self.buf[self.pos];
                    self.pos += 1;
                    if b != b'>' {
                        return Err(if b == b'<' {
                            XmlError::NotWellFormed("'<' inside a tag".into())
                        } else {
                            control_error()
                        });
                    }
                    self.state = State::Text;
                    match self.depth {
                        0 => {
                            return Err(XmlError::NotWellFormed(
                                "end tag before the stream header".into(),
                            ));
                        }
                        1 => {
                            self.depth = 0;
                            let frame = self.emit(FrameKind::Close, self.pos)?;
                            self.state = State::Closed;
                            return Ok(frame);
                        }
                        2 => {
                            self.depth = 1;
                            return self.emit(FrameKind::Stanza, self.pos);
                        }
                        _ => self.depth -= 1,
                    }
                }
                State::Bang => {
                    let avail = &self.buf[self.markup_start + 2..];
                    let mut may_match = false;
                    let mut found = None;
                    for (form, kind) in BANG_FORMS {
                        if avail.starts_with(form) {
                            found = Some((form.len(), kind));
                            break;
                        }
                        may_match |= form.starts_with(avail);
                    }
                    match found {
                        Some((_, BangKind::Comment)) => {
                            return Err(XmlError::RestrictedXml("comment".into()));
                        }
                        Some((_, BangKind::Declaration)) => {
                            return Err(XmlError::RestrictedXml(
                                "DOCTYPE or markup declaration".into(),
                            ));
                        }
                        Some((n, BangKind::Cdata)) => match self.depth {
                            0 => {
                                return Err(XmlError::NotWellFormed(
                                    "CDATA before the stream header".into(),
                                ));
                            }
                            1 => {
                                return Err(XmlError::BadFormat(
                                    "character data between stanzas".into(),
                                ));
                            }
                            _ => {
                                self.pos = self.markup_start + 2 + n;
                                self.state = State::Cdata;
                            }
                        },
                        None if may_match => self.pos = len,
                        None => {
                            return Err(XmlError::NotWellFormed("invalid '<!' markup".into()));
                        }
                    }
                }
                State::Cdata => {
                    let rest = &self.buf[self.pos..];
                    match rest.iter().position(|&b| b == b'>' || is_bad_control(b)) {
                        None => self.pos = len,
                        Some(i) => {
                            let at = self.pos + i;
                            if self.buf[at] != b'>' {
                                return Err(control_error());
                            }
                            self.pos = at + 1;
                            // "<![CDATA[" is 9 bytes, so "]]>" can end at +11 earliest.
                            if at >= self.markup_start + 11
                                && self.buf[at - 1] == b']'
                                && self.buf[at - 2] == b']'
                            {
                                self.state = State::Text;
                            }
                        }
                    }
                }
                State::Pi => {
                    if self.depth > 0 || self.seen_decl {
                        return Err(XmlError::RestrictedXml("processing instruction".into()));
                    }
                    // Only `<?xml` followed by whitespace, first thing in the stream.
                    let avail = &self.buf[self.markup_start + 2..];
                    if avail.len() < 4 {
                        if b"xml".starts_with(avail) || avail.starts_with(b"xml") {
                            self.pos = len;
                            continue;
                        }
                        return Err(XmlError::RestrictedXml("processing instruction".into()));
                    }
                    if &avail[..3] != b"xml" || !is_ws(avail[3]) {
                        return Err(XmlError::RestrictedXml("processing instruction".into()));
                    }
                    self.seen_decl = true;
                    self.pos = self.markup_start + 6;
                    self.state = State::Decl;
                }
                State::Decl => {
                    let rest = &self.buf[self.pos..];
                    match rest
                        .iter()
                        .position(|&b| b == b'>' || b == b'<' || is_bad_control(b))
                    {
                        None => self.pos = len,
                        Some(i) => {
                            let at = self.pos + i;
                            match self.buf[at] {
                                b'>' => {
                                    self.pos = at + 1;
                                    if self.buf[at - 1] == b'?' {
                                        self.state = State::Text;
                                    }
                                }
                                b'<' => {
                                    return Err(XmlError::NotWellFormed(
                                        "unterminated XML declaration".into(),
                                    ));
                                }
                                _ => return Err(control_error()),
                            }
                        }
                    }
                }
            }
        }
        if self.state != State::Closed && self.pos - self.frame_start > self.max_bytes {
            return Err(self.too_big());
        }
        if self.start == len && len > 0 {
            // Everything was handed out: an idle connection keeps no buffer (the next read
            // allocates one, which costs far less than the stanza it carries).
            self.buf = Vec::new();
            self.start = 0;
            self.pos = 0;
            self.frame_start = 0;
            self.markup_start = 0;
        }
        Ok(None)
    }

    /// Bookkeeping at the `>` of a start tag (the byte before `self.pos`).
    fn start_tag_done(&mut self, empty: bool) -> Result<Option<Frame>, XmlError> {
        match (self.depth, empty) {
            (0, true) => Err(XmlError::NotWellFormed("self-closing stream header".into())),
            (0, false) => {
                self.depth = 1;
                self.emit(FrameKind::Header, self.pos)
            }
            (1, true) => self.emit(FrameKind::Stanza, self.pos),
            (_, true) => Ok(None),
            (_, false) => {
                self.depth += 1;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and collects frames as strings.
    fn frames(input: &[u8], chunk: usize) -> Result<Vec<(FrameKind, String)>, XmlError> {
        let mut f = Framer::new(1 << 16, 64);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            f.feed(piece)?;
            while let Some(fr) = f.next_frame()? {
                out.push((fr.kind, String::from_utf8_lossy(f.bytes(&fr)).into_owned()));
            }
        }
        Ok(out)
    }

    #[test]
    fn find_stop_agrees_with_a_plain_scan() {
        let alphabet = b"ab<>'\"\t\n\r\x00\x01\x1f\x7f\x80\xff ";
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        alphabet[(state % alphabet.len() as u64) as usize]
                    })
                    .collect();
                for (a, b) in [(b'<', b'<'), (b'\'', b'<'), (b'"', b'<')] {
                    let plain = bytes
                        .iter()
                        .position(|&x| x == a || x == b || is_bad_control(x));
                    assert_eq!(find_stop(&bytes, a, b), plain, "{bytes:?} {a} {b}");
                }
            }
        }
    }

    #[test]
    fn an_idle_framer_keeps_no_buffer() {
        let mut f = Framer::new(1 << 16, 64);
        let drain = |f: &mut Framer| {
            let mut got = Vec::new();
            while let Some(fr) = f.next_frame().expect("well-formed") {
                got.push(String::from_utf8_lossy(f.bytes(&fr)).into_owned());
            }
            got
        };
        f.feed(b"<s:stream xmlns:s='x'><a>x</a> ").expect("fed");
        assert_eq!(drain(&mut f), ["<s:stream xmlns:s='x'>", "<a>x</a>"]);
        assert_eq!(f.buf.capacity(), 0, "all handed out: nothing kept");
        f.feed(b"<b>par").expect("fed");
        assert!(drain(&mut f).is_empty());
        assert!(f.buf.capacity() > 0, "a partial stanza stays");
        f.feed(b"t</b>").expect("fed");
        assert_eq!(drain(&mut f), ["<b>part</b>"]);
        assert_eq!(f.buf.capacity(), 0);
    }

    #[test]
    fn splits_header_stanzas_and_close() {
        let input = b"<?xml version='1.0'?>\n<s:stream xmlns:s='x' a='>'>\n \
            <a b='/>' c=\"'\"><![CDATA[</a>]]><b/></a><c/></s:stream> trailing junk";
        let expect = vec![
            (
                FrameKind::Header,
                "<?xml version='1.0'?>\n<s:stream xmlns:s='x' a='>'>".to_string(),
            ),
            (
                FrameKind::Stanza,
                "<a b='/>' c=\"'\"><![CDATA[</a>]]><b/></a>".to_string(),
            ),
            (FrameKind::Stanza, "<c/>".to_string()),
            (FrameKind::Close, "</s:stream>".to_string()),
        ];
        for chunk in 1..input.len() {
            assert_eq!(frames(input, chunk).unwrap(), expect, "chunk {chunk}");
        }
    }

    #[test]
    fn consumed_bytes_are_dropped() {
        let mut f = Framer::new(100, 8);
        f.feed(b"<s>").unwrap();
        assert!(f.next_frame().unwrap().is_some());
        for _ in 0..1000 {
            f.feed(b"<a>x</a>   ").unwrap();
            assert!(f.next_frame().unwrap().is_some());
            assert!(f.next_frame().unwrap().is_none());
        }
        f.feed(b"").unwrap();
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn classifies_bang_and_pi() {
        let err = |s: &[u8]| frames(s, 1).unwrap_err();
        assert!(matches!(err(b"<!-- x -->"), XmlError::RestrictedXml(_)));
        assert!(matches!(err(b"<!DOCTYPE x>"), XmlError::RestrictedXml(_)));
        assert!(matches!(
            err(b"<s><!ENTITY x 'y'>"),
            XmlError::RestrictedXml(_)
        ));
        assert!(matches!(err(b"<s><?pi x?>"), XmlError::RestrictedXml(_)));
        assert!(matches!(err(b"<?xmlfoo?>"), XmlError::RestrictedXml(_)));
        assert!(matches!(
            err(b"<?xml version='1.0'?><?xml version='1.0'?>"),
            XmlError::RestrictedXml(_)
        ));
        assert!(matches!(err(b"<!foo>"), XmlError::NotWellFormed(_)));
        assert!(matches!(err(b"<s><![CDATA[x]]>"), XmlError::BadFormat(_)));
        assert!(matches!(err(b"<s>x"), XmlError::BadFormat(_)));
        assert!(matches!(err(b"x<s>"), XmlError::NotWellFormed(_)));
        assert!(matches!(err(b"<s/>"), XmlError::NotWellFormed(_)));
        assert!(matches!(err(b"</s>"), XmlError::NotWellFormed(_)));
        assert!(matches!(err(b"<s><a b='<'/>"), XmlError::NotWellFormed(_)));
        assert!(matches!(err(b"<s><a>\x01</a>"), XmlError::NotWellFormed(_)));
    }

    #[test]
    fn limits_are_enforced_while_scanning() {
        let mut f = Framer::new(64, 3);
        f.feed(b"<s><a><b><c>").unwrap();
        assert!(f.next_frame().unwrap().is_some());
        assert!(f.next_frame().unwrap().is_none());
        f.feed(b"<d>").unwrap();
        assert!(matches!(f.next_frame(), Err(XmlError::PolicyViolation(_))));

        let mut f = Framer::new(64, 3);
        f.feed(b"<s><a>").unwrap();
        assert!(f.next_frame().unwrap().is_some());
        f.feed(&[b'x'; 70]).unwrap();
        assert!(matches!(f.next_frame(), Err(XmlError::PolicyViolation(_))));
    }
}
