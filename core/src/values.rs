//! The one parser of the numbers and names a user types: pids, tids, uids, counts, sizes (in
//! `size.rs`, on top of [`parse_unsigned`]) and comms. Only plain decimal digits are numbers: no
//! sign, no spaces, no suffix the caller did not define; zero and values the kernel can never
//! have are refused with the reason, so a typo is an error (exit 2) instead of a filter that
//! silently matches nothing, or everything.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// `TASK_COMM_LEN - 1`: the bytes of a comm (the kernel cuts longer names at exec).
pub const COMM_MAX: usize = 15;

/// The largest pid the kernel hands out when /proc does not say (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u64 = 4 << 20;

/// A decimal number of `what`: ASCII digits only, at most `u64::MAX`.
pub fn parse_unsigned(text: &str, what: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err(format!("an empty value is not {what}"));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_digit()) {
        let why = match bad {
            '-' => "negative numbers are not allowed".to_string(),
            '+' => "write the number without a sign".to_string(),
            _ => format!("{bad:?} is not a digit"),
        };
        return Err(format!("{text:?} is not {what}: {why}"));
    }
    text.parse().map_err(|_| format!("{text:?} is too large for {what}"))
}

/// A positive count (`records:N`, `--top N`).
pub fn parse_count(text: &str) -> Result<u64, String> {
    match parse_unsigned(text, "a count")? {
        0 => Err("0 counts nothing; give a positive number".into()),
        n => Ok(n),
    }
}

/// The kernel's limit on pids and tids (`/proc/sys/kernel/pid_max`): every id is below it.
fn pid_max() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(PID_MAX_LIMIT)
}

/// `--pid` / `--tid`: a task id, 1 to pid_max - 1. 0 is refused: in the kernel filter it means
/// "any task".
pub fn parse_task_id(text: &str) -> Result<u32, String> {
    let id = parse_unsigned(text, "a task id")?;
    let max = pid_max();
    match id {
        0 => Err("0 is no task's id (to trace every task, leave the option out)".into()),
        id if id >= max => {
            Err(format!("{id} is not a task id: this kernel's ids are below {max} (/proc/sys/kernel/pid_max)"))
        }
        // pid_max is at most 2^22, so the id fits.
        id => Ok(id as u32),
    }
}

/// A uid: 0 (root) to 4294967294; 4294967295 is `(uid_t)-1`, which no task has.
pub fn parse_uid(text: &str) -> Result<u32, String> {
    match u32::try_from(parse_unsigned(text, "a uid")?) {
        Ok(u32::MAX) | Err(_) => Err(format!("{text} is not a uid: uids go from 0 to {}", u32::MAX - 1)),
        Ok(uid) => Ok(uid),
    }
}

/// A comm to match: 1 to 15 bytes, any byte but NUL (longer names are cut to 15, as the kernel
/// cuts comm).
#[derive(Clone, PartialEq, Eq)]
pub struct Comm(Vec<u8>);

impl Comm {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Comm({})", crate::output::display_bytes(&self.0))
    }
}

/// The `value_parser` of `--name`: [`parse_comm`] on the raw argument.
pub fn comm_parser() -> impl clap::builder::TypedValueParser<Value = Comm> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(|text: std::ffi::OsString| parse_comm(&text))
}

/// `--name`: the bytes of the argument as given (not necessarily UTF-8), with `\xNN` for any
/// byte and `\\` for a backslash, so a comm of any bytes can be typed.
pub fn parse_comm(text: &OsStr) -> Result<Comm, String> {
    let bytes = unescape(text.as_bytes())?;
    if bytes.is_empty() {
        return Err("an empty name matches no task; give a comm such as `bash`".into());
    }
    if bytes.contains(&0) {
        return Err("a comm cannot contain a NUL byte (\\x00)".into());
    }
    let mut bytes = bytes;
    bytes.truncate(COMM_MAX);
    Ok(Comm(bytes))
}

/// `\xNN` → the byte, `\\` → a backslash; any other backslash is an error.
pub fn unescape(text: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match rest {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', hi, lo, tail @ ..] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                let hex = [*hi, *lo];
                // Two ASCII hex digits: valid UTF-8 and a valid u8.
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap_or("0"), 16).unwrap_or(0));
                rest = tail;
            }
            _ => return Err("a backslash starts \\xNN (a byte in hex) or \\\\ (a backslash)".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain_digits() {
        assert_eq!(parse_unsigned("42", "x"), Ok(42));
        assert_eq!(parse_unsigned("007", "x"), Ok(7));
        for bad in ["", "+5", "-1", " 5", "5 ", "5x", "0x10", "1e3", "١"] {
            assert!(parse_unsigned(bad, "x").is_err(), "{bad:?}");
        }
        assert!(parse_unsigned("99999999999999999999999", "x").unwrap_err().contains("too large"));
        assert!(parse_unsigned("-3", "x").unwrap_err().contains("negative"));
        assert!(parse_unsigned("+3", "x").unwrap_err().contains("sign"));
    }

    #[test]
    fn task_ids_are_below_pid_max_and_not_zero() {
        let max = pid_max();
        assert_eq!(parse_task_id("1"), Ok(1));
        assert_eq!(parse_task_id(&(max - 1).to_string()), Ok((max - 1) as u32));
        assert!(parse_task_id(&max.to_string()).unwrap_err().contains("pid_max"));
        assert!(parse_task_id("99999999").is_err());
        assert!(parse_task_id("0").unwrap_err().contains("leave the option out"));
        assert!(parse_task_id("+5").is_err());
        assert!(parse_count("0").is_err());
    }

    #[test]
    fn uids_exclude_minus_one() {
        assert_eq!(parse_uid("0"), Ok(0));
        assert_eq!(parse_uid("4294967294"), Ok(u32::MAX - 1));
        assert!(parse_uid("4294967295").is_err());
        assert!(parse_uid("-1").is_err());
    }

    #[test]
    fn comms_take_any_byte_but_nul() {
        let comm = |s: &[u8]| parse_comm(OsStr::from_bytes(s)).map(|c| c.bytes().to_vec());
        assert_eq!(comm(b"bash"), Ok(b"bash".to_vec()));
        assert_eq!(comm(b"a\\xffb\\\\c"), Ok(b"a\xffb\\c".to_vec()));
        assert_eq!(comm(b"raw\xfe"), Ok(b"raw\xfe".to_vec()));
        assert_eq!(comm(b"systemd-journald"), Ok(b"systemd-journal".to_vec()));
        for bad in [&b""[..], b"a\\x00", b"a\\q", b"a\\x4", b"a\\"] {
            assert!(comm(bad).is_err(), "{bad:?}");
        }
    }
}
