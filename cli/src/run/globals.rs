//! `--set NAME=VALUE`: a read-only global of the object (`const volatile`, in `.rodata`) set
//! before loading, the value typed from the global's BTF: integers of every width (decimal, a
//! `-` for signed ones), bools (`true`/`false`/`1`/`0`), enums (a value's name or its number)
//! and char arrays (a string that fits with its NUL; `\xNN` for any byte). The common filter
//! options set the globals of `bpf/include/bpfstream_filter.h` where the object has them.

use super::btf::{Btf, Kind, TypeId};
use super::object::ObjectInfo;
use crate::lifecycle::{task_filter_globals, CommonArgs};

/// A global's name and the bytes to load it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The `value_parser` of `--set`: `NAME=VALUE`.
pub fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE (a read-only global of the object and its value)")),
    }
}

/// The settings of `--set` and of the filter options, in the order they apply (the last wins).
pub fn settings(object: &ObjectInfo, common: &CommonArgs, sets: &[(String, String)]) -> Result<Vec<Setting>, String> {
    let mut out = filter_settings(object, common)?;
    for (name, value) in sets {
        let Some(global) = object.global(name) else {
            let known: Vec<&str> = object.globals.iter().map(|g| g.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(format!("--set {name}: the object has no read-only global {name} (its globals: {known})"));
        };
        let bytes = typed(&object.btf, global.ty, value).map_err(|e| format!("--set {name}={value}: {e}"))?;
        out.retain(|s| s.name != *name);
        out.push(Setting { name: name.clone(), bytes });
    }
    Ok(out)
}

/// `--pid`, `--uid`, `--name`, `-n`, `--cgroup`: bpfstream_filter.h's globals, where the object
/// has them; `self_tgid` (never trace bpfstream itself) always, where it has it.
fn filter_settings(object: &ObjectInfo, common: &CommonArgs) -> Result<Vec<Setting>, String> {
    let filtering = common.pid.is_some()
        || common.uid.is_some()
        || common.name.is_some()
        || common.name_contains.is_some()
        || common.cgroup.is_some();
    if filtering && object.global("targ_pid").is_none() {
        return Err("--pid, --uid, --name, -n and --cgroup set the globals of bpfstream_filter.h (targ_pid, ...), \
                    which the object does not have: set its own with --set NAME=VALUE"
            .into());
    }
    let mut out = Vec::new();
    for g in task_filter_globals(common, None) {
        let Some(global) = object.global(g.name) else { continue };
        let size = object.btf.size_of(global.ty).ok();
        if size != Some(g.bytes.len() as u64) {
            return Err(format!(
                "the object's {} is not the {}-byte global of bpfstream_filter.h",
                g.name,
                g.bytes.len()
            ));
        }
        out.push(Setting { name: g.name.to_owned(), bytes: g.bytes });
    }
    Ok(out)
}

/// `value` as the bytes of a global of type `ty`.
pub fn typed(btf: &Btf, ty: TypeId, value: &str) -> Result<Vec<u8>, String> {
    let id = btf.resolve(ty).map_err(|e| e.to_string())?;
    let type_name = btf.type_name(ty);
    match &btf.get(id).kind {
        Kind::Int { bool: true, size, .. } => {
            let on: u8 = match value {
                "true" | "1" => 1,
                "false" | "0" => 0,
                _ => return Err(format!("{type_name} takes true or false")),
            };
            Ok(u128::from(on).to_le_bytes()[..*size as usize].to_vec())
        }
        Kind::Int { size, signed, .. } => integer(value, *size as usize, *signed, &type_name),
        Kind::Enum { size, signed, values } => match values.iter().find(|v| v.name == value) {
            Some(v) => Ok(v.value.to_le_bytes()[..*size as usize].to_vec()),
            None => integer(value, *size as usize, *signed, &type_name).map_err(|_| {
                let names: Vec<&str> = values.iter().map(|v| v.name.as_str()).collect();
                format!("{type_name} takes one of {} (or its number)", names.join(", "))
            }),
        },
        Kind::Array { elem, nelems } if is_char(btf, *elem) => {
            let mut bytes = crate::values::unescape(value.as_bytes())?;
            if bytes.len() >= *nelems as usize {
                return Err(format!("{} bytes do not fit in {type_name} with its NUL", bytes.len()));
            }
            bytes.resize(*nelems as usize, 0);
            Ok(bytes)
        }
        _ => Err(format!("a global of type {type_name} cannot be set from the command line")),
    }
}

fn is_char(btf: &Btf, elem: TypeId) -> bool {
    btf.resolve(elem).is_ok_and(|id| matches!(btf.get(id).kind, Kind::Int { size: 1, bool: false, .. }))
}

/// A decimal integer that fits `size` bytes (1 to 16), signed or not.
fn integer(text: &str, size: usize, signed: bool, type_name: &str) -> Result<Vec<u8>, String> {
    let unused = 128 - size as u32 * 8;
    if !signed {
        let value = parse_u128(text, type_name)?;
        let max = u128::MAX >> unused;
        if value > max {
            return Err(format!("{text} does not fit in {type_name} (0..={max})"));
        }
        return Ok(value.to_le_bytes()[..size].to_vec());
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let magnitude = parse_u128(digits, type_name)?;
    let (min, max) = (i128::MIN >> unused, i128::MAX >> unused);
    // |min| = max + 1
    let fits = if negative { magnitude <= max as u128 + 1 } else { magnitude <= max as u128 };
    if !fits {
        return Err(format!("{text} does not fit in {type_name} ({min}..={max})"));
    }
    let value = if negative { (magnitude as i128).wrapping_neg() } else { magnitude as i128 };
    Ok(value.to_le_bytes()[..size].to_vec())
}

fn parse_u128(text: &str, type_name: &str) -> Result<u128, String> {
    let what = format!("a {type_name}");
    match crate::values::parse_unsigned(text, &what) {
        Ok(n) => Ok(u128::from(n)),
        Err(e) if e.contains("too large") => text.parse::<u128>().map_err(|_| e),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects;

    fn set(name: &str, value: &str) -> Result<Vec<u8>, String> {
        let object = ObjectInfo::read(objects::SYSCALLS.ring).unwrap();
        let global = object.global(name).unwrap();
        typed(&object.btf, global.ty, value)
    }

    #[test]
    fn values_are_typed_from_btf() {
        assert_eq!(set("targ_pid", "4242"), Ok(4242u32.to_le_bytes().to_vec()));
        assert_eq!(set("targ_cgroup", "18446744073709551615"), Ok(vec![0xff; 8]));
        assert_eq!(set("filter_uid", "true"), Ok(vec![1]));
        assert_eq!(set("targ_comm", "bash"), Ok(b"bash\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()));
        assert_eq!(set("targ_comm", "a\\xffb").unwrap()[..3], *b"a\xffb");
        assert_eq!(set("bpfstream_wakeup_policy", "BPFSTREAM_WAKE_NEVER"), Ok(2u32.to_le_bytes().to_vec()));
        assert_eq!(set("bpfstream_wakeup_policy", "3"), Ok(3u32.to_le_bytes().to_vec()));
    }

    #[test]
    fn values_that_do_not_fit_are_refused() {
        assert_eq!(set("targ_pid", "4294967296").unwrap_err(), "4294967296 does not fit in __u32 (0..=4294967295)");
        assert!(set("targ_pid", "-1").unwrap_err().contains("negative numbers are not allowed"));
        assert!(set("targ_pid", "0x10").is_err());
        assert!(set("filter_uid", "yes").unwrap_err().contains("true or false"));
        assert!(set("targ_comm", "0123456789abcdef").unwrap_err().contains("do not fit in char[16]"));
        assert!(set("bpfstream_wakeup_policy", "SOMETIMES").unwrap_err().contains("BPFSTREAM_WAKE_ADAPTIVE"));
        assert_eq!(integer("-128", 1, true, "__s8"), Ok(vec![0x80]));
        assert!(integer("-129", 1, true, "__s8").is_err());
        assert_eq!(integer("-1", 16, true, "__int128"), Ok(vec![0xff; 16]));
        assert_eq!(integer("340282366920938463463374607431768211455", 16, false, "u128"), Ok(vec![0xff; 16]));
        assert_eq!(integer("-170141183460469231731687303715884105728", 16, true, "i128").unwrap()[15], 0x80);
        assert!(integer("170141183460469231731687303715884105728", 16, true, "i128").is_err());
    }

    #[test]
    fn assignments_parse() {
        assert_eq!(parse_assignment("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_assignment("a="), Ok(("a".into(), String::new())));
        assert!(parse_assignment("=1").is_err() && parse_assignment("a").is_err());
    }
}
