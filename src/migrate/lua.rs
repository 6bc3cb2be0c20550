//! A bounded parser for the Lua subset Prosody's `internal` storage writes: `return <value>;`
//! (`.dat` files) and a series of `item(<value>);` (`.list` files). Values are strings
//! (with escapes), numbers, booleans, nil and tables. No interpreter: anything else is an
//! error. Depth is limited, and the input is a byte slice the caller read with a size limit.

use std::fmt;

/// A Lua value. Strings are bytes (Lua strings are), decoded by the caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Num(f64),
    Str(Vec<u8>),
    Table(Table),
}

/// A table: positional entries (`{ a; b }`) and keyed ones (`["k"] = v`), in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub array: Vec<Value>,
    pub map: Vec<(Value, Value)>,
}

impl Table {
    /// The value under string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key.as_bytes()))
            .map(|(_, v)| v)
    }
    pub fn str(&self, key: &str) -> Option<String> {
        self.get(key).and_then(Value::as_string)
    }
    pub fn num(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(Value::Num(n)) => Some(*n),
            _ => None,
        }
    }
    pub fn table(&self, key: &str) -> Option<&Table> {
        match self.get(key) {
            Some(Value::Table(t)) => Some(t),
            _ => None,
        }
    }
}

impl Value {
    /// A string value as UTF-8 (`None` for other types or invalid UTF-8).
    pub fn as_string(&self) -> Option<String> {
        match self {
            Value::Str(s) => String::from_utf8(s.clone()).ok(),
            _ => None,
        }
    }
    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaError {
    pub offset: usize,
    pub msg: &'static str,
}

impl fmt::Display for LuaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.msg, self.offset)
    }
}

impl std::error::Error for LuaError {}

/// Table nesting deeper than this is refused (Prosody's stanzas are far shallower).
pub const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// Parses a `.dat` file: `return <value>;` (an empty file is `nil`).
pub fn parse_dat(input: &[u8]) -> Result<Value, LuaError> {
    let mut p = Parser { s: input, pos: 0 };
    p.skip_ws()?;
    if p.at_end() {
        return Ok(Value::Nil);
    }
    p.keyword(b"return")?;
    let v = p.value(0)?;
    p.skip_ws()?;
    p.eat(b';');
    p.skip_ws()?;
    if !p.at_end() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

/// Parses a `.list` file: `item(<value>);` repeated.
pub fn parse_list(input: &[u8]) -> Result<Vec<Value>, LuaError> {
    let mut p = Parser { s: input, pos: 0 };
    let mut out = Vec::new();
    loop {
        p.skip_ws()?;
        if p.at_end() {
            return Ok(out);
        }
        p.keyword(b"item")?;
        p.skip_ws()?;
        p.expect(b'(')?;
        out.push(p.value(0)?);
        p.skip_ws()?;
        p.expect(b')')?;
        p.skip_ws()?;
        p.eat(b';');
    }
}

impl Parser<'_> {
    fn err(&self, msg: &'static str) -> LuaError {
        LuaError {
            offset: self.pos,
            msg,
        }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, b: u8) -> Result<(), LuaError> {
        if self.eat(b) {
            Ok(())
        } else if self.at_end() {
            Err(self.err("unexpected end of file (truncated?)"))
        } else {
            Err(self.err("unexpected character"))
        }
    }
    fn keyword(&mut self, kw: &[u8]) -> Result<(), LuaError> {
        if self.s[self.pos..].starts_with(kw) {
            self.pos += kw.len();
            Ok(())
        } else {
            Err(self.err("expected `return` or `item(`"))
        }
    }
    /// Whitespace and `--` line comments.
    fn skip_ws(&mut self) -> Result<(), LuaError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'-') if self.s.get(self.pos + 1) == Some(&b'-') => {
                    if self.s.get(self.pos + 2) == Some(&b'[') {
                        return Err(self.err("long comments are not supported"));
                    }
                    while let Some(c) = self.peek() {
                        self.pos += 1;
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, LuaError> {
        self.skip_ws()?;
        match self.peek() {
            None => Err(self.err("unexpected end of file (truncated?)")),
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("tables nested too deeply"));
                }
                self.pos += 1;
                self.table(depth + 1).map(Value::Table)
            }
            Some(q @ (b'"' | b'\'')) => {
                self.pos += 1;
                self.string(q).map(Value::Str)
            }
            Some(b'-' | b'0'..=b'9' | b'.') => self.number(),
            Some(b't') if self.s[self.pos..].starts_with(b"true") => {
                self.pos += 4;
                Ok(Value::Bool(true))
            }
            Some(b'f') if self.s[self.pos..].starts_with(b"false") => {
                self.pos += 5;
                Ok(Value::Bool(false))
            }
            Some(b'n') if self.s[self.pos..].starts_with(b"nil") => {
                self.pos += 3;
                Ok(Value::Nil)
            }
            Some(_) => Err(self.err("unsupported Lua syntax")),
        }
    }

    fn table(&mut self, depth: usize) -> Result<Table, LuaError> {
        let mut t = Table::default();
        loop {
            self.skip_ws()?;
            match self.peek() {
                None => return Err(self.err("unexpected end of file (truncated?)")),
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(t);
                }
                Some(b'[') if self.s.get(self.pos + 1) != Some(&b'[') => {
                    self.pos += 1;
                    let k = self.value(depth)?;
                    self.skip_ws()?;
                    self.expect(b']')?;
                    self.skip_ws()?;
                    self.expect(b'=')?;
                    let v = self.value(depth)?;
                    t.map.push((k, v));
                }
                Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                    // `name = value`, unless it is a keyword value (true/false/nil).
                    let start = self.pos;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
                    {
                        self.pos += 1;
                    }
                    let name = self.s[start..self.pos].to_vec();
                    self.skip_ws()?;
                    if self.eat(b'=') {
                        let v = self.value(depth)?;
                        t.map.push((Value::Str(name), v));
                    } else {
                        self.pos = start;
                        t.array.push(self.value(depth)?);
                    }
                }
                Some(_) => t.array.push(self.value(depth)?),
            }
            self.skip_ws()?;
            if !(self.eat(b';') || self.eat(b',')) {
                self.skip_ws()?;
                if self.peek() != Some(b'}') {
                    return Err(if self.at_end() {
                        self.err("unexpected end of file (truncated?)")
                    } else {
                        self.err("expected `;`, `,` or `}` in a table")
                    });
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, LuaError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        let parsed = if let Some(hex) = text.strip_prefix("0x") {
            i64::from_str_radix(hex, 16).ok().map(|n| n as f64)
        } else {
            text.parse::<f64>().ok()
        };
        match parsed {
            Some(n) => Ok(Value::Num(n)),
            None => {
                self.pos = start;
                Err(self.err("malformed number"))
            }
        }
    }

    /// A short string after its opening quote.
    fn string(&mut self, quote: u8) -> Result<Vec<u8>, LuaError> {
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string (truncated?)"));
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                b'\n' => return Err(self.err("newline in a string")),
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string (truncated?)"));
                    };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'a' => out.push(7),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'v' => out.push(11),
                        b'\\' | b'"' | b'\'' => out.push(e),
                        b'\n' => out.push(b'\n'),
                        b'0'..=b'9' => {
                            let mut n = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.peek() {
                                    Some(d @ b'0'..=b'9') => {
                                        self.pos += 1;
                                        n = n * 10 + u32::from(d - b'0');
                                    }
                                    _ => break,
                                }
                            }
                            let b = u8::try_from(n).map_err(|_| self.err("escape above 255"))?;
                            out.push(b);
                        }
                        b'x' => {
                            let hex = self
                                .s
                                .get(self.pos..self.pos + 2)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.err("malformed \\x escape"))?;
                            self.pos += 2;
                            out.push(hex);
                        }
                        b'z' => {
                            while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                                self.pos += 1;
                            }
                        }
                        b'u' => {
                            self.expect(b'{')?;
                            let start = self.pos;
                            while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                self.pos += 1;
                            }
                            let cp = std::str::from_utf8(&self.s[start..self.pos])
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.err("malformed \\u escape"))?;
                            self.expect(b'}')?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(cp.encode_utf8(&mut buf).as_bytes());
                        }
                        _ => return Err(self.err("unknown escape in a string")),
                    }
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_prosody_writes() {
        let v = parse_dat(
            br#"return {
	[false] = { ["pending"] = {}; ["version"] = 1; };
	["olga@prosody.example"] = {
		["groups"] = { ["Work"] = true; };
		["name"] = "Olga \"O\" \195\169";
		n = -1.5e3, x = 0x1f;
	};
};"#,
        )
        .unwrap();
        let t = v.as_table().unwrap();
        assert_eq!(t.map.len(), 2);
        assert_eq!(t.map[0].0, Value::Bool(false));
        let item = t.table("olga@prosody.example").unwrap();
        assert_eq!(item.str("name").unwrap(), "Olga \"O\" é");
        assert_eq!(item.num("n"), Some(-1500.0));
        assert_eq!(item.num("x"), Some(31.0));
        let list = parse_list(b"item({ \"a\"; [\"when\"] = 5; });\nitem({});").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(parse_dat(b"").unwrap(), Value::Nil);
    }

    #[test]
    fn hostile_input_is_an_error() {
        for bad in [
            &b"return { [\"a\"] = \"b\""[..],
            b"return \"abc",
            b"return os.execute('x')",
            b"return {} extra",
            b"return \"\\999\"",
            b"return 1e",
            b"item({}",
            b"return [[long]]",
            b"return { \"a\" \"b\" }",
        ] {
            assert!(
                parse_dat(bad).is_err() || parse_list(bad).is_err(),
                "{bad:?}"
            );
        }
        let deep = format!("return {}{}", "{".repeat(10_000), "}".repeat(10_000));
        assert_eq!(
            parse_dat(deep.as_bytes()).unwrap_err().msg,
            "tables nested too deeply"
        );
    }
}
