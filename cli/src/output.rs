//! Output of events: JSON lines (hand-written: this is the hot path of a tracer) and aligned
//! table columns, with lossless escaping of bytes that are not UTF-8.

use std::fmt::Write as _;
use std::io::{self, Write};

/// Appends `bytes` to `out` as the inside of a JSON string. Valid UTF-8 is kept as is (with
/// JSON's escapes); each byte that is not part of valid UTF-8 becomes `\xNN` (a literal
/// backslash, `x` and two hex digits). Returns whether any such byte was found.
pub fn json_escape_bytes(out: &mut String, bytes: &[u8]) -> bool {
    let mut lossy = false;
    for chunk in bytes.utf8_chunks() {
        json_escape_str(out, chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\\\x{b:02x}");
            lossy = true;
        }
    }
    lossy
}

/// Appends `s` to `out` as the inside of a JSON string.
pub fn json_escape_str(out: &mut String, s: &str) {
    // Runs of characters that need no escape (nearly all of them) are copied whole.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
}

/// Bytes for a table column: printable text as is, anything else (control characters, bytes
/// that are not UTF-8) as `\xNN`, so a hostile name cannot move the terminal's cursor.
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The `-T` column of the tracers' tables: seconds since the first event, when asked for.
#[derive(Debug)]
pub struct TimeColumn {
    shown: bool,
    first_ts: Option<u64>,
}

impl TimeColumn {
    pub fn new(shown: bool) -> Self {
        TimeColumn { shown, first_ts: None }
    }

    /// The column's title, before the table's others.
    pub fn title(&self, out: &mut impl Write) -> io::Result<()> {
        if self.shown {
            write!(out, "{:<9} ", "TIME(s)")?;
        }
        Ok(())
    }

    /// The cell of an event stamped `ts_ns` (bpf_ktime_get_ns), before the row's others.
    pub fn cell(&mut self, out: &mut impl Write, ts_ns: u64) -> io::Result<()> {
        if self.shown {
            let start = *self.first_ts.get_or_insert(ts_ns);
            write!(out, "{:<9.3} ", ts_ns.saturating_sub(start) as f64 / 1e9)?;
        }
        Ok(())
    }
}

/// Appends `text` left-aligned in a column of `width` characters (`{:<width}` without the
/// formatting machinery: tables of a syscall storm print a million rows a second).
pub fn cell_left(out: &mut String, text: &str, width: usize) {
    out.push_str(text);
    pad(out, text, width);
}

/// Appends `text` right-aligned in a column of `width` characters (`{:>width}`).
pub fn cell_right(out: &mut String, text: &str, width: usize) {
    pad(out, text, width);
    out.push_str(text);
}

fn pad(out: &mut String, text: &str, width: usize) {
    let len = if text.is_ascii() { text.len() } else { text.chars().count() };
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
}

/// The bytes of a NUL-terminated C string field (`comm`).
pub fn c_str(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Builds one JSON object on a line: `{"type":"exec","pid":1,...}`.
#[derive(Debug)]
pub struct JsonLine {
    buf: String,
}

thread_local! {
    /// The buffer of the last line written, reused by the next: one allocation per thread,
    /// not one per event.
    static SPARE: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

impl JsonLine {
    pub fn new(kind: &str) -> Self {
        let mut buf = SPARE.take();
        buf.clear();
        buf.push_str("{\"type\":\"");
        json_escape_str(&mut buf, kind);
        buf.push('"');
        JsonLine { buf }
    }

    fn key(&mut self, key: &str) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    pub fn num(mut self, key: &str, value: impl itoa::Integer) -> Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn float(mut self, key: &str, value: f64) -> Self {
        self.key(key);
        if value.is_finite() {
            let _ = write!(self.buf, "{value:.3}");
        } else {
            self.buf.push_str("null");
        }
        self
    }

    /// `null` for `None`.
    pub fn opt_float(self, key: &str, value: Option<f64>) -> Self {
        self.float(key, value.unwrap_or(f64::NAN))
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        self.buf.push('"');
        json_escape_str(&mut self.buf, value);
        self.buf.push('"');
        self
    }

    /// A byte string: `key` is the text (see [`json_escape_bytes`]); when the bytes are not
    /// UTF-8, `key_hex` carries them exactly.
    pub fn bytes(mut self, key: &str, value: &[u8]) -> Self {
        self.key(key);
        self.buf.push('"');
        let lossy = json_escape_bytes(&mut self.buf, value);
        self.buf.push('"');
        if lossy {
            self.buf.push_str(",\"");
            self.buf.push_str(key);
            self.buf.push_str("_hex\":\"");
            self.buf.push_str(&hex(value));
            self.buf.push('"');
        }
        self
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }

    pub fn write_to(self, out: &mut impl Write) -> io::Result<()> {
        let mut line = self.finish();
        line.push('\n');
        let written = out.write_all(line.as_bytes());
        Self::recycle(line);
        written
    }

    /// Gives a finished line's buffer back for the next line to reuse.
    pub fn recycle(line: String) {
        SPARE.set(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_column_counts_from_the_first_event_when_shown() {
        let mut out = Vec::new();
        let mut time = TimeColumn::new(true);
        time.title(&mut out).unwrap();
        time.cell(&mut out, 5_000_000_000).unwrap();
        time.cell(&mut out, 6_250_000_000).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "TIME(s)   0.000     1.250     ");
        let mut out = Vec::new();
        let mut hidden = TimeColumn::new(false);
        hidden.title(&mut out).unwrap();
        hidden.cell(&mut out, 1).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn json_lines_escape_and_keep_non_utf8_bytes() {
        let line = JsonLine::new("open").num("pid", 7).bytes("filename", b"a\"b\\c\n\xff\xfe").finish();
        assert_eq!(
            line,
            r#"{"type":"open","pid":7,"filename":"a\"b\\c\n\\xff\\xfe","filename_hex":"6122625c630afffe"}"#
        );
        let controls = JsonLine::new("x").str("s", "a\tb\u{1}c\u{1f}").finish();
        assert_eq!(controls, r#"{"type":"x","s":"a\tb\u0001c\u001f"}"#);
        let plain = JsonLine::new("x").bytes("f", "é/ok".as_bytes()).finish();
        assert_eq!(plain, r#"{"type":"x","f":"é/ok"}"#);
    }

    #[test]
    fn cells_pad_like_format() {
        let mut row = String::new();
        cell_left(&mut row, "bash", 6);
        cell_right(&mut row, "42", 4);
        cell_left(&mut row, "é", 3);
        cell_right(&mut row, "toolongvalue", 4);
        assert_eq!(row, format!("{:<6}{:>4}{:<3}{:>4}", "bash", "42", "é", "toolongvalue"));
    }

    #[test]
    fn table_text_escapes_controls() {
        assert_eq!(display_bytes(b"ab\x1b[2Jc\xff"), "ab\\x1b[2Jc\\xff");
        assert_eq!(c_str(b"bash\0\0junk"), b"bash");
    }
}
