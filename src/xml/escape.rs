//! Escaping for text and attribute values. Every byte the server writes passes through here.

/// Whether a byte must be escaped: `<`, `>`, `&` and CR in text (a literal CR would be
/// normalized to LF by the reader); in attribute values also the quotes and the
/// whitespace that parsers normalize, so that values come out exact.
#[inline(always)]
const fn is_special<const ATTR: bool>(b: u8) -> bool {
    let text = matches!(b, b'<' | b'>' | b'&' | b'\r');
    text || (ATTR && matches!(b, b'\'' | b'"' | b'\n' | b'\t'))
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
        // Only bytes `is_special` accepts reach here.
        _ => b"",
    }
}

/// Copies `bytes` to `out`, replacing the bytes at `specials` (ascending positions).
fn escape_at(bytes: &[u8], specials: impl Iterator<Item = usize>, out: &mut Vec<u8>) {
    out.reserve(bytes.len());
    let mut copied = 0;
    for at in specials {
        out.extend_from_slice(&bytes[copied..at]);
        out.extend_from_slice(replacement(bytes[at]));
        copied = at + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
}

pub fn escape_text(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    // Text is most of what the server writes (message bodies): memchr finds markup
    // characters a vector at a time, where a scan byte by byte cost about 5
    // instructions a byte. CR is rare in text, so it only needs a check of its own.
    if memchr::memchr(b'\r', bytes).is_none() {
        escape_at(bytes, memchr::memchr3_iter(b'<', b'>', b'&', bytes), out);
    } else {
        escape_at(bytes, special_positions::<false>(bytes), out);
    }
}

pub fn escape_attr(s: &str, out: &mut Vec<u8>) {
    // Attribute values are short (ids, JIDs, types) and rarely hold anything special:
    // one table lookup a byte finds out, and the value is then copied whole.
    let bytes = s.as_bytes();
    match bytes.iter().position(|b| ATTR_SPECIAL[usize::from(*b)]) {
        None => out.extend_from_slice(bytes),
        Some(first) => {
            out.extend_from_slice(&bytes[..first]);
            let rest = &bytes[first..];
            escape_at(rest, special_positions::<true>(rest), out);
        }
    }
}

/// `is_special::<true>` as a table.
const ATTR_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_special::<true>(b as u8);
        b += 1;
    }
    table
};

fn special_positions<const ATTR: bool>(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| is_special::<ATTR>(**b))
        .map(|(i, _)| i)
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

    /// Escaping undone by the reader's rules gives the input back, at every length and
    /// position (chunk boundaries included), with nothing special left in the output.
    #[test]
    fn every_position_and_length_round_trips() {
        let alphabet = [
            "a", "<", ">", "&", "'", "\"", "\n", "\r", "\t", "é", "😀", " ",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..70 {
            for _ in 0..20 {
                let mut s = String::new();
                for _ in 0..len {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    s.push_str(alphabet[(state % alphabet.len() as u64) as usize]);
                }
                let unescape = |e: &str| {
                    e.replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&apos;", "'")
                        .replace("&quot;", "\"")
                        .replace("&#xA;", "\n")
                        .replace("&#xD;", "\r")
                        .replace("&#x9;", "\t")
                        .replace("&amp;", "&")
                };
                let (t, a) = (text(&s), attr(&s));
                assert_eq!(unescape(&t), s);
                assert_eq!(unescape(&a), s);
                assert!(!t.contains(['<', '>', '\r']), "{t:?}");
                assert!(
                    !a.contains(['<', '>', '\r', '\n', '\t', '\'', '"']),
                    "{a:?}"
                );
                assert_eq!(t.matches('&').count(), t.matches(';').count());
            }
        }
    }
}
