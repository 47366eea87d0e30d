//! Output of events: JSON lines (hand-written: this is the hot path of a tracer) and aligned
//! table columns, with lossless escaping of bytes that are not UTF-8.

use std::fmt::Write as _;
use std::io::{self, Write};

/// Appends `bytes` to `out` as the inside of a JSON string. Valid UTF-8 is kept as is (with
/// JSON's escapes); each byte that is not part of valid UTF-8 becomes `\xNN` (a literal
/// backslash, `x` and two hex digits). Returns whether any such byte was found.
pub fn json_escape_bytes(out: &mut String, bytes: &[u8]) -> bool {
    if let Ok(text) = std::str::from_utf8(bytes) {
        // Nearly every name is UTF-8: one validation, no chunking.
        json_escape_str(out, text);
        return false;
    }
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

/// Bytes for a table column: text a terminal shows as it is, as is; every byte or character a
/// terminal would hide or reinterpret escaped, so that what is printed reads back as exactly
/// one name and a hostile one cannot move the cursor, reorder the line, break it or hide part
/// of itself:
/// - a backslash is `\\` (so a literal `\x0a` in a name cannot pass for an escaped newline);
/// - control characters (C0, DEL, C1) and bytes that are not UTF-8 are `\xNN`, per byte;
/// - characters that are invisible or change the layout are `\u{NNNN}`: bidi controls,
///   line and paragraph separators, zero-width and other format characters (see [`hidden`]).
pub fn display_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else if hidden(c) {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
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

/// Whether a terminal shows `c` as nothing, or lets it change how the rest of the line reads.
pub fn hidden(c: char) -> bool {
    matches!(u32::from(c),
        // bidi: ALM, LRM, RLM, embeddings and overrides (LRE..RLO), isolates (LRI..PDI)
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069
        // line and paragraph separators
        | 0x2028 | 0x2029
        // zero-width and invisible: soft hyphen, Mongolian vowel separator, ZWSP, ZWNJ, ZWJ,
        // word joiner, invisible operators, deprecated format controls, BOM/ZWNBSP
        | 0x00AD | 0x180E | 0x200B..=0x200D | 0x2060..=0x2064 | 0x206A..=0x206F | 0xFEFF
        // blank-looking fillers, interlinear annotations, tag characters
        | 0x115F | 0x1160 | 0x3164 | 0xFFA0 | 0xFFF9..=0xFFFB | 0xE0000..=0xE007F)
}

/// What the tracers' time column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeMode {
    None,
    /// `-T`: the event's wall-clock time, `HH:MM:SS` local time (execsnoop's `-T`).
    Wall {
        realtime_minus_monotonic_ns: i128,
    },
    /// `--elapsed`: seconds since the first event.
    Elapsed,
}

/// The time column of the tracers' tables: `-T` (wall clock) or `--elapsed`.
#[derive(Debug)]
pub struct TimeColumn {
    mode: TimeMode,
    first_ts: Option<u64>,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// `HH:MM:SS` of a CLOCK_REALTIME second, in the local time zone.
fn local_hms(secs: i64) -> String {
    // SAFETY: an all-zero tm is valid output space; localtime_r fills it from `secs`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are to locals alive across the call.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return "??:??:??".into();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

impl TimeColumn {
    /// `wall`: `-T`; `elapsed`: `--elapsed` (`-T` wins when both are given).
    pub fn new(wall: bool, elapsed: bool) -> Self {
        let mode = if wall {
            // Events carry CLOCK_MONOTONIC stamps: the clocks' difference now turns them into
            // wall-clock time (as of now: a clock step during the run shifts later rows).
            TimeMode::Wall {
                realtime_minus_monotonic_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
            }
        } else if elapsed {
            TimeMode::Elapsed
        } else {
            TimeMode::None
        };
        TimeColumn { mode, first_ts: None }
    }

    /// The column's title, before the table's others.
    pub fn title(&self, out: &mut impl Write) -> io::Result<()> {
        match self.mode {
            TimeMode::None => Ok(()),
            TimeMode::Wall { .. } => write!(out, "{:<8} ", "TIME"),
            TimeMode::Elapsed => write!(out, "{:<9} ", "TIME(s)"),
        }
    }

    /// The cell of an event stamped `ts_ns` (bpf_ktime_get_ns), before the row's others.
    pub fn cell(&mut self, out: &mut impl Write, ts_ns: u64) -> io::Result<()> {
        match self.mode {
            TimeMode::None => Ok(()),
            TimeMode::Wall { realtime_minus_monotonic_ns } => {
                let secs = (i128::from(ts_ns) + realtime_minus_monotonic_ns).div_euclid(1_000_000_000);
                write!(out, "{:<8} ", local_hms(secs as i64))
            }
            TimeMode::Elapsed => {
                let start = *self.first_ts.get_or_insert(ts_ns);
                write!(out, "{:<9.3} ", ts_ns.saturating_sub(start) as f64 / 1e9)
            }
        }
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
    let mut left = width.saturating_sub(len);
    // A slice at a time: `extend` of a `char` iterator pushes them one by one.
    const SPACES: &str = "                                ";
    while left > 0 {
        let n = left.min(SPACES.len());
        out.push_str(&SPACES[..n]);
        left -= n;
    }
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

// The builders are inlined into each tracer's format, where every key is a constant: its copy
// is then a few stores, not a call to memcpy (a tenth of a tracer's CPU per event).
impl JsonLine {
    #[inline]
    pub fn new(kind: &str) -> Self {
        let mut buf = SPARE.take();
        buf.clear();
        buf.push_str("{\"type\":\"");
        json_escape_str(&mut buf, kind);
        buf.push('"');
        JsonLine { buf }
    }

    /// The opening every line of one kind (and stream) shares, escaped once:
    /// `{"type":"KIND"` then `,"stream":"NAME"`. Lines begin with it in [`opened`](Self::opened).
    pub fn opening(kind: &str, stream: Option<&str>) -> String {
        let line = JsonLine::new(kind);
        match stream {
            Some(name) => line.str("stream", name),
            None => line,
        }
        .buf
    }

    /// A line that begins with `opening` (made by [`opening`](Self::opening)): the same line as
    /// `new(kind)` (and `.str("stream", name)`), without escaping them again for every event.
    #[inline]
    pub fn opened(opening: &str) -> Self {
        let mut buf = SPARE.take();
        buf.clear();
        buf.push_str(opening);
        JsonLine { buf }
    }

    #[inline(always)]
    fn key(&mut self, key: &str) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("\":");
    }

    #[inline(always)]
    pub fn num(mut self, key: &str, value: impl itoa::Integer) -> Self {
        self.key(key);
        self.buf.push_str(itoa::Buffer::new().format(value));
        self
    }

    #[inline(always)]
    pub fn null(mut self, key: &str) -> Self {
        self.key(key);
        self.buf.push_str("null");
        self
    }

    /// Appends what `write` writes: fields already in JSON (`,"key":value...`).
    #[inline]
    pub fn raw(mut self, write: impl FnOnce(&mut String)) -> Self {
        write(&mut self.buf);
        self
    }

    #[inline(always)]
    pub fn boolean(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    #[inline]
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
    #[inline]
    pub fn opt_float(self, key: &str, value: Option<f64>) -> Self {
        self.float(key, value.unwrap_or(f64::NAN))
    }

    #[inline(always)]
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        self.buf.push('"');
        json_escape_str(&mut self.buf, value);
        self.buf.push('"');
        self
    }

    /// A byte string: `key` is the text (see [`json_escape_bytes`]); when the bytes are not
    /// UTF-8, `key_hex` carries them exactly.
    #[inline(always)]
    pub fn bytes(mut self, key: &str, value: &[u8]) -> Self {
        self.key(key);
        self.buf.push('"');
        let lossy = json_escape_bytes(&mut self.buf, value);
        self.buf.push('"');
        if lossy {
            self.hex_field(key, value);
        }
        self
    }

    /// `,"key_hex":"..."`: rare (bytes that are not UTF-8), so kept out of the inlined
    /// [`bytes`](Self::bytes).
    #[cold]
    fn hex_field(&mut self, key: &str, value: &[u8]) {
        self.buf.push_str(",\"");
        self.buf.push_str(key);
        self.buf.push_str("_hex\":\"");
        self.buf.push_str(&hex(value));
        self.buf.push('"');
    }

    /// An array of byte strings, each as in [`bytes`](Self::bytes); when any is not UTF-8,
    /// `key_hex` carries every one of them exactly, in the same order.
    pub fn byte_strings<'a>(mut self, key: &str, values: impl Iterator<Item = &'a [u8]> + Clone) -> Self {
        self.key(key);
        self.buf.push('[');
        let mut lossy = false;
        for (i, value) in values.clone().enumerate() {
            self.buf.push_str(if i == 0 { "\"" } else { ",\"" });
            lossy |= json_escape_bytes(&mut self.buf, value);
            self.buf.push('"');
        }
        self.buf.push(']');
        if lossy {
            self.buf.push_str(",\"");
            self.buf.push_str(key);
            self.buf.push_str("_hex\":[");
            for (i, value) in values.enumerate() {
                self.buf.push_str(if i == 0 { "\"" } else { ",\"" });
                self.buf.push_str(&hex(value));
                self.buf.push('"');
            }
            self.buf.push(']');
        }
        self
    }

    #[inline]
    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }

    /// The object and its newline.
    #[inline]
    pub fn finish_line(self) -> Vec<u8> {
        let mut line = self.finish();
        line.push('\n');
        line.into_bytes()
    }

    #[inline]
    pub fn write_to(self, out: &mut impl Write) -> io::Result<()> {
        let mut line = self.finish();
        line.push('\n');
        let written = out.write_all(line.as_bytes());
        Self::recycle(line);
        written
    }

    /// Gives a finished line's buffer back for the next line to reuse.
    #[inline]
    pub fn recycle(line: String) {
        SPARE.set(line);
    }
}

/// Whether writing failed because the reader went away (`| head` after head exits).
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opened_line_is_the_line_its_kind_and_stream_make() {
        let opening = JsonLine::opening("a\"kind", Some("my\\stream"));
        let expected = JsonLine::new("a\"kind").str("stream", "my\\stream").num("pid", 1).finish();
        assert_eq!(JsonLine::opened(&opening).num("pid", 1).finish(), expected);
        assert_eq!(JsonLine::opened(&JsonLine::opening("k", None)).finish(), r#"{"type":"k"}"#);
    }

    #[test]
    fn the_time_column_counts_from_the_first_event_with_elapsed() {
        let mut out = Vec::new();
        let mut time = TimeColumn::new(false, true);
        time.title(&mut out).unwrap();
        time.cell(&mut out, 5_000_000_000).unwrap();
        time.cell(&mut out, 6_250_000_000).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "TIME(s)   0.000     1.250     ");
        let mut out = Vec::new();
        let mut hidden = TimeColumn::new(false, false);
        hidden.title(&mut out).unwrap();
        hidden.cell(&mut out, 1).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn the_wall_clock_column_is_the_local_time_of_the_event() {
        let mut out = Vec::new();
        let mut time = TimeColumn::new(true, true);
        time.title(&mut out).unwrap();
        let now = clock_ns(libc::CLOCK_MONOTONIC) as u64;
        time.cell(&mut out, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (title, cell) = text.split_at(9);
        assert_eq!(title, "TIME     ");
        let wall_now = (clock_ns(libc::CLOCK_REALTIME) / 1_000_000_000) as i64;
        // The second may have turned between the two readings.
        assert!([local_hms(wall_now), local_hms(wall_now - 1)].contains(&cell.trim_end().to_string()), "{cell}");
        assert_eq!(local_hms(0).len(), 8);
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
        let args: [&[u8]; 3] = [b"ls", b"-l\"", b""];
        let line = JsonLine::new("x").byte_strings("args", args.iter().copied()).finish();
        assert_eq!(line, r#"{"type":"x","args":["ls","-l\"",""]}"#);
        let args: [&[u8]; 2] = [b"a", b"\xff"];
        let line = JsonLine::new("x").byte_strings("args", args.iter().copied()).finish();
        assert_eq!(line, r#"{"type":"x","args":["a","\\xff"],"args_hex":["61","ff"]}"#);
        let none = JsonLine::new("x").byte_strings("args", std::iter::empty()).finish();
        assert_eq!(none, r#"{"type":"x","args":[]}"#);
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
        assert_eq!(display_bytes(b"ab\x1b[2Jc\x7f\t\n\r"), "ab\\x1b[2Jc\\x7f\\x09\\x0a\\x0d");
        assert_eq!(display_bytes("c1\u{85}\u{9b}".as_bytes()), "c1\\xc2\\x85\\xc2\\x9b");
        assert_eq!(c_str(b"bash\0\0junk"), b"bash");
    }

    #[test]
    fn table_text_escapes_bytes_that_are_not_utf8() {
        assert_eq!(display_bytes(b"a\xffb\xc3"), "a\\xffb\\xc3");
    }

    #[test]
    fn table_text_escapes_the_backslash() {
        // A file literally named `a\x0ab` must not print like `a` NEWLINE `b` escaped.
        assert_eq!(display_bytes(b"a\\x0ab"), "a\\\\x0ab");
        assert_ne!(display_bytes(b"a\\x0ab"), display_bytes(b"a\nb"));
    }

    #[test]
    fn table_text_escapes_bidi_controls() {
        assert_eq!(display_bytes("evil\u{202e}txt.exe".as_bytes()), "evil\\u{202e}txt.exe");
        for c in ['\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}'] {
            assert!(hidden(c), "{:x}", u32::from(c));
        }
    }

    #[test]
    fn table_text_escapes_line_and_paragraph_separators() {
        assert_eq!(display_bytes("a\u{2028}b\u{2029}c".as_bytes()), "a\\u{2028}b\\u{2029}c");
    }

    #[test]
    fn table_text_escapes_zero_width_characters() {
        assert_eq!(display_bytes("ba\u{200b}sh".as_bytes()), "ba\\u{200b}sh");
        for c in ['\u{ad}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}', '\u{3164}', '\u{e0041}'] {
            assert!(hidden(c), "{:x}", u32::from(c));
        }
    }

    #[test]
    fn table_text_keeps_what_a_terminal_shows() {
        assert_eq!(display_bytes("/home/ünïcode/日本/файл 1.txt".as_bytes()), "/home/ünïcode/日本/файл 1.txt");
        assert!(!hidden('a') && !hidden('é') && !hidden(' '));
    }
}
