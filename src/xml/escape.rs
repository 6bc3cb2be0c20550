//! Escaping for text and attribute values. Every byte the server writes passes through here.

/// Bytes that text content must not contain literally. A literal CR would be normalized to
/// LF by the reader.
const TEXT_SPECIAL: [bool; 256] = byte_set(b"<>&\r");
/// Bytes that attribute values must not contain literally. Literal whitespace in
/// attributes is normalized by parsers; escaping keeps it exact.
const ATTR_SPECIAL: [bool; 256] = byte_set(b"<>&'\"\n\r\t");

/// A lookup table: one load per byte while scanning, where a `match` compiles into a chain
/// of comparisons (serializing stanzas was a tenth of the server's instructions).
const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        set[bytes[i] as usize] = true;
        i += 1;
    }
    set
}

fn replacement(b: u8) -> &'static [u8] {
    match b {
        b'<' => b"&lt;",
        b'>' => b"&gt;",
        b'&' => b"&amp;",
        b'\'' => b"&apos;",
        b'"' => b"&quot;",
        b'\n' => b"&#xA;",
        b'\r' => b"&#xD;",
        b'\t' => b"&#x9;",
        // Only bytes of the sets above reach here.
        _ => b"",
    }
}

fn escape(s: &str, special: &[bool; 256], out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len());
    let mut start = 0;
    while let Some(offset) = bytes[start..].iter().position(|&b| special[usize::from(b)]) {
        let at = start + offset;
        out.extend_from_slice(&bytes[start..at]);
        out.extend_from_slice(replacement(bytes[at]));
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

pub fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape(s, &TEXT_SPECIAL, out)
}

pub fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape(s, &ATTR_SPECIAL, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        let mut out = Vec::new();
        escape_text(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn attr(s: &str) -> String {
        let mut out = Vec::new();
        escape_attr(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_escapes_markup_and_cr_only() {
        assert_eq!(text("plain ünïcode"), "plain ünïcode");
        assert_eq!(text("a<b>&c\r\n'\"\t"), "a&lt;b&gt;&amp;c&#xD;\n'\"\t");
        assert_eq!(text("<<"), "&lt;&lt;");
        assert_eq!(text(""), "");
    }

    #[test]
    fn attributes_escape_quotes_and_whitespace() {
        assert_eq!(attr("x'y\"z"), "x&apos;y&quot;z");
        assert_eq!(attr("a\nb\rc\td&<>"), "a&#xA;b&#xD;c&#x9;d&amp;&lt;&gt;");
        assert_eq!(attr("ok"), "ok");
    }
}
