//! Dataset prefixes: `PREFIX.idx` + `PREFIX.bin`, and finding them in a directory in numeric order.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `PREFIX.idx`. Appends rather than replacing an extension, so `data.v2` gives `data.v2.idx`.
pub fn idx_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".idx")
}

/// `PREFIX.bin`.
pub fn bin_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".bin")
}

/// `prefix` followed by `suffix`, verbatim.
pub fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Strips a trailing `.idx` or `.bin`, so users may name either file of a pair.
pub fn normalize_prefix(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some("idx" | "bin") => path.with_extension(""),
        _ => path.to_path_buf(),
    }
}

/// Compares names with runs of digits compared as numbers, so `x_2` sorts before `x_10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (da, ra) = split_digits(a);
                let (db, rb) = split_digits(b);
                let (ta, tb) = (trim_zeros(da), trim_zeros(db));
                let order = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| da.len().cmp(&db.len()));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

/// The prefixes of all `.idx` files directly in `dir`, in natural order.
pub fn discover_prefixes(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "read_dir", e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "read_dir", e))?;
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".idx")) {
            names.push(stem.to_owned());
        }
    }
    names.sort_by(|a, b| natural_cmp(a, b));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_2_before_10() {
        let mut names = vec!["x_10", "x_2", "x_1", "y", "x_02", "x"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["x", "x_1", "x_2", "x_02", "x_10", "y"]);
    }

    #[test]
    fn prefixes_keep_inner_dots() {
        assert_eq!(idx_path(Path::new("a/data.v2")), Path::new("a/data.v2.idx"));
        assert_eq!(
            normalize_prefix(Path::new("a/data.v2.bin")),
            Path::new("a/data.v2")
        );
        assert_eq!(
            normalize_prefix(Path::new("a/data.v2")),
            Path::new("a/data.v2")
        );
    }
}
