//! A best-effort map from field paths to where they are written in the
//! RON source, used to put a line and column on every error.
//!
//! RON's own errors carry a position but no field path; validation errors
//! carry a field path but no position. This module scans the source text
//! once (a small tokenizer and a structural walk, independent of the
//! schema) and records, for each struct field and list element, its path
//! (`interfaces[1].addresses[0]`) and its span. It never fails: on text it
//! cannot follow it just stops recording.

/// A line and column, both 1-based; the column counts characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The line, starting at 1.
    pub line: usize,
    /// The column in characters, starting at 1.
    pub column: usize,
}

/// One recorded field or element.
#[derive(Debug)]
struct Entry {
    path: String,
    /// Byte offset to report: the field name, or the element itself.
    at: usize,
    /// Byte span covered (field name through the end of its value).
    start: usize,
    end: usize,
}

/// Field paths of a source text and where they are.
#[derive(Debug)]
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    entries: Vec<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok<'a> {
    Ident(&'a str),
    Punct(u8),
    /// String, char, number: anything that is a value on its own.
    Scalar,
}

/// Nesting deeper than this is not followed (RON itself stops at 128).
const MAX_DEPTH: usize = 128;

fn tokenize(text: &str) -> Vec<(Tok<'_>, usize, usize)> {
    let b = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'"' || (c == b'b' && b.get(i + 1) == Some(&b'"')) {
            i += if c == b'b' { 2 } else { 1 };
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            toks.push((Tok::Scalar, start, i.min(b.len())));
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'"') | Some(b'#')) && {
            let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
            b.get(i + 1 + hashes) == Some(&b'"')
        } {
            // Raw string r#"..."#.
            let hashes = b[i + 1..].iter().take_while(|&&h| h == b'#').count();
            i += 2 + hashes;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == b'"'
                    && b[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == b'#')
                        .count()
                        == hashes
                {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            toks.push((Tok::Scalar, start, i.min(b.len())));
        } else if c == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            toks.push((Tok::Scalar, start, i.min(b.len())));
        } else if c.is_ascii_digit() || ((c == b'-' || c == b'+' || c == b'.') && i + 1 < b.len()) {
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'+' | b'-'))
            {
                // A sign is only part of a number right after an exponent.
                if matches!(b[i], b'+' | b'-') && !matches!(b[i - 1], b'e' | b'E') {
                    break;
                }
                i += 1;
            }
            toks.push((Tok::Scalar, start, i));
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            if c == b'r' && b.get(i + 1) == Some(&b'#') {
                i += 2;
            }
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            let ident = text.get(start..i).unwrap_or("");
            toks.push((Tok::Ident(ident.trim_start_matches("r#")), start, i));
        } else {
            i += 1;
            toks.push((Tok::Punct(c), start, i));
        }
    }
    toks
}

struct Walker<'a, 't> {
    text: &'a str,
    toks: &'t [(Tok<'a>, usize, usize)],
    pos: usize,
    entries: Vec<Entry>,
}

impl<'a> Walker<'a, '_> {
    fn peek(&self, k: usize) -> Option<Tok<'a>> {
        self.toks.get(self.pos + k).map(|t| t.0)
    }
    fn start(&self) -> usize {
        self.toks.get(self.pos).map_or(usize::MAX, |t| t.1)
    }
    fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|p| self.toks.get(p))
            .map_or(0, |t| t.2)
    }
    /// The end of a value just walked; a value the walk could not finish
    /// extends to the end of the text, so that an error inside it is
    /// attributed to it.
    fn end_after(&self, walked: Option<()>) -> usize {
        match walked {
            Some(()) => self.prev_end(),
            None => usize::MAX,
        }
    }
    fn eat(&mut self, p: u8) -> bool {
        if self.peek(0) == Some(Tok::Punct(p)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Walks one value; `None` when the text cannot be followed.
    fn value(&mut self, path: &str, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek(0)? {
            Tok::Scalar => {
                self.pos += 1;
                Some(())
            }
            Tok::Ident(_) => {
                self.pos += 1;
                if self.peek(0) == Some(Tok::Punct(b'(')) {
                    self.pos += 1;
                    self.parens(path, depth)
                } else {
                    Some(())
                }
            }
            Tok::Punct(b'(') => {
                self.pos += 1;
                self.parens(path, depth)
            }
            Tok::Punct(b'[') => {
                self.pos += 1;
                let mut index = 0;
                while !self.eat(b']') {
                    let child = format!("{path}[{index}]");
                    self.element(child, depth)?;
                    index += 1;
                    if !self.eat(b',') {
                        self.eat(b']').then_some(())?;
                        break;
                    }
                }
                Some(())
            }
            Tok::Punct(b'{') => {
                self.pos += 1;
                while !self.eat(b'}') {
                    let key_start = self.pos;
                    self.value("", depth + 1)?;
                    let key = match (self.toks.get(key_start), self.toks.get(self.pos - 1)) {
                        (Some(first), Some(last)) => self.text.get(first.1..last.2).unwrap_or(""),
                        _ => "",
                    };
                    self.eat(b':').then_some(())?;
                    self.element(format!("{path}[{}]", key.trim_matches('"')), depth)?;
                    if !self.eat(b',') {
                        self.eat(b'}').then_some(())?;
                        break;
                    }
                }
                Some(())
            }
            Tok::Punct(b'-') | Tok::Punct(b'+') => {
                self.pos += 1;
                self.value(path, depth)
            }
            Tok::Punct(_) => None,
        }
    }

    /// Walks a list element or map value, recording it under `path`.
    fn element(&mut self, path: String, depth: usize) -> Option<()> {
        let start = self.start();
        let index = self.entries.len();
        self.entries.push(Entry {
            path: path.clone(),
            at: start,
            start,
            end: start,
        });
        let r = self.value(&path, depth + 1);
        self.entries[index].end = self.end_after(r);
        r
    }

    /// Walks the inside of `( ... )` after the opening parenthesis: struct
    /// fields (`name: value`) or tuple elements, which keep the parent's
    /// path (`Some(x)`, `Pci("...")`).
    fn parens(&mut self, path: &str, depth: usize) -> Option<()> {
        let is_struct = matches!(
            (self.peek(0), self.peek(1)),
            (Some(Tok::Ident(_)), Some(Tok::Punct(b':')))
        );
        while !self.eat(b')') {
            if is_struct {
                let Some(Tok::Ident(name)) = self.peek(0) else {
                    return None;
                };
                let start = self.start();
                self.pos += 1;
                self.eat(b':').then_some(())?;
                let child = if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                let index = self.entries.len();
                self.entries.push(Entry {
                    path: child.clone(),
                    at: start,
                    start,
                    end: start,
                });
                let r = self.value(&child, depth + 1);
                self.entries[index].end = self.end_after(r);
                r?;
            } else {
                self.value(path, depth + 1)?;
            }
            if !self.eat(b',') {
                self.eat(b')').then_some(())?;
                break;
            }
        }
        Some(())
    }
}

impl<'a> SourceMap<'a> {
    /// Scans `text`; never fails.
    pub(crate) fn new(text: &'a str) -> Self {
        let toks = tokenize(text);
        let mut w = Walker {
            text,
            toks: &toks,
            pos: 0,
            entries: Vec::new(),
        };
        // Skip `#![enable(...)]` attributes.
        while w.peek(0) == Some(Tok::Punct(b'#')) {
            w.pos += 1;
            w.eat(b'!');
            if w.eat(b'[') {
                while !w.eat(b']') && w.peek(0).is_some() {
                    w.pos += 1;
                }
            }
        }
        let root_start = w.start().min(text.len());
        let index = w.entries.len();
        w.entries.push(Entry {
            path: String::new(),
            at: root_start,
            start: root_start,
            end: text.len(),
        });
        let _ = w.value("", 0);
        let entries = {
            let mut e = w.entries;
            e[index].end = text.len();
            e
        };
        SourceMap { text, entries }
    }

    /// The position of byte `offset`.
    pub(crate) fn position(&self, offset: usize) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line,
            column: before[line_start..].chars().count() + 1,
        }
    }

    /// The byte offset of a RON position (RON counts columns in bytes).
    pub(crate) fn offset_of_ron(&self, line: usize, col: usize) -> usize {
        let mut offset = 0;
        for _ in 1..line {
            match self.text[offset..].find('\n') {
                Some(i) => offset += i + 1,
                None => return self.text.len(),
            }
        }
        (offset + col.saturating_sub(1)).min(self.text.len())
    }

    /// Where `path` is written; when it is not (a defaulted field), where
    /// its closest written ancestor is.
    pub(crate) fn locate(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == path) {
                return self.position(e.at);
            }
            if path.is_empty() {
                return Position { line: 1, column: 1 };
            }
            path = parent(path);
        }
    }

    /// Whether `path` is written in the source.
    pub(crate) fn is_written(&self, path: &str) -> bool {
        self.entries.iter().any(|e| e.path == path)
    }

    /// The innermost recorded field or element whose text covers byte
    /// `offset`: its path and where it starts. With `touching`, a value
    /// that ends right at `offset` counts (errors raised after a value was
    /// read); without, only values that go on past it (errors raised at a
    /// closing parenthesis).
    pub(crate) fn entry_at(&self, offset: usize, touching: bool) -> (&str, Position) {
        self.entries
            .iter()
            .filter(|e| e.start <= offset && (offset < e.end || (touching && offset == e.end)))
            .max_by_key(|e| e.start)
            .map_or(("", Position { line: 1, column: 1 }), |e| {
                (e.path.as_str(), self.position(e.at))
            })
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r##"#![enable(implicit_some)]
// comment ( [ "
(
    node: (name: "fw1", serial: "S/*1*/"),
    /* block /* nested */ ) */
    interfaces: [
        (name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),
        (
            name: "out",
            device: Pci("0000:03:00.0"),
            addresses: ["198.18.2.1/24", "198.18.3.1/24"],
            mtu: 1500,
        ),
    ],
    routes: [(destination: "0.0.0.0/0", via: Some("198.18.2.254"), x: -1.5e-3, y: r#"a"b"#)],
)
"##;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn maps_paths_to_positions() {
        let m = SourceMap::new(TEXT);
        assert_eq!(m.locate("node.serial"), at(4, 25));
        assert_eq!(m.locate("interfaces[0].device"), at(7, 22));
        assert_eq!(m.locate("interfaces[1].addresses[1]"), at(11, 42));
        assert_eq!(m.locate("interfaces[1].mtu"), at(12, 13));
        assert_eq!(m.locate("routes[0].via"), at(15, 41));
        assert!(m.is_written("routes[0].y"));
        // Not written: the closest written ancestor.
        assert_eq!(m.locate("interfaces[0].mtu"), at(7, 9));
        assert_eq!(m.locate("eal.no_huge"), at(3, 1));
    }

    #[test]
    fn maps_offsets_to_the_innermost_path() {
        let m = SourceMap::new(TEXT);
        let off = TEXT.find("198.18.3.1").unwrap();
        assert_eq!(m.entry_at(off, true).0, "interfaces[1].addresses[1]");
        let off = TEXT.find("mtu").unwrap() + 2;
        assert_eq!(m.entry_at(off, false).0, "interfaces[1].mtu");
        assert_eq!(m.entry_at(0, false).0, "");
        // At the closing parenthesis of interfaces[1]: touching picks the
        // field that ends there, strict picks the struct.
        let off = TEXT.find("1500,\n        ),").unwrap() + 4;
        assert_eq!(m.entry_at(off, true).0, "interfaces[1].mtu");
        assert_eq!(m.entry_at(off + 10, false).0, "interfaces[1]");
    }

    #[test]
    fn survives_broken_text() {
        for text in [
            "",
            "(",
            "(a: [1, 2",
            "(a: \"unterminated",
            "r#",
            "((((",
            ")",
        ] {
            let m = SourceMap::new(text);
            let _ = m.locate("a[1]");
            let _ = m.entry_at(text.len(), true);
        }
    }
}
