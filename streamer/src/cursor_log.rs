//! A streamed dataset's cursors kept on disk, so that a server restarted on the same cache (after a crash,
//! a kill -9, an upgrade) continues its clients from the nearest cursor instead of the stream's start.
//!
//! One line of JSON per cursor, appended as the dataset produces them (every
//! [`CURSOR_EVERY`](crate::online::CURSOR_EVERY) windows). A line cut short by a crash is skipped when the
//! file is read; a file of more than [`KEEP`] lines is rewritten with its last [`KEEP`] (a temporary file,
//! then a rename). Writing is best effort: a failure is logged once and logging stops, and serving goes on
//! (a restart then costs a longer replay, never a wrong window: cursors are checked where they are used).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::online::Cursor;

/// Lines kept when the file is rewritten: as many as a dataset keeps in memory.
pub const KEEP: usize = 16_384;

/// An open cursor log.
#[derive(Debug)]
pub struct CursorLog {
    path: PathBuf,
    /// `None` once a write failed.
    file: Mutex<Option<std::fs::File>>,
}

impl CursorLog {
    /// Opens (creating) the log at `path`; returns it and the cursors it holds, oldest first.
    ///
    /// # Errors
    /// The directory or the file cannot be created, read or rewritten.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<Cursor>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // What follows the last newline is a line a crash cut short: it goes, so appends start afresh.
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        if whole < bytes.len() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)?
                .set_len(whole as u64)?;
        }
        let mut cursors = Vec::new();
        for line in bytes[..whole].lines() {
            match serde_json::from_str::<Cursor>(&line?) {
                Ok(cursor) => cursors.push(cursor),
                Err(e) => {
                    tracing::debug!(log = %path.display(), error = %e, "Skipping a line that is no cursor.");
                }
            }
        }
        if cursors.len() > KEEP {
            cursors.drain(..cursors.len() - KEEP);
            let temp = path.with_extension("tmp");
            let mut text = String::new();
            for cursor in &cursors {
                text += &serde_json::to_string(cursor).expect("a cursor serializes");
                text.push('\n');
            }
            std::fs::write(&temp, text)?;
            std::fs::rename(&temp, path)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file: Mutex::new(Some(file)),
            },
            cursors,
        ))
    }

    /// Appends `cursor` (one `write` of a whole line).
    pub fn append(&self, cursor: &Cursor) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(f) = file.as_mut() else {
            return;
        };
        let mut line = serde_json::to_vec(cursor).expect("a cursor serializes");
        line.push(b'\n');
        if let Err(e) = f.write_all(&line) {
            tracing::warn!(log = %self.path.display(), error = %e, "Cannot keep the stream's cursors on disk; a restarted server will replay further.");
            *file = None;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn cursor(window: u64) -> Cursor {
        Cursor {
            window,
            epoch: window / 100,
            file: 1,
            block: 2,
            document: 3,
            offset: window % 7,
        }
    }

    #[test]
    fn cursors_come_back_in_order_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/0.jsonl");
        let (log, none) = CursorLog::open(&path).unwrap();
        assert!(none.is_empty());
        for w in [0, 64, 128] {
            log.append(&cursor(w));
        }
        drop(log);
        // A crash in the middle of a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"window\":19")
            .unwrap();
        let (log, back) = CursorLog::open(&path).unwrap();
        assert_eq!(back, [cursor(0), cursor(64), cursor(128)]);
        log.append(&cursor(192));
        let (_, back) = CursorLog::open(&path).unwrap();
        assert_eq!(back.last(), Some(&cursor(192)));
    }

    #[test]
    fn a_long_log_is_cut_to_its_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.jsonl");
        let (log, _) = CursorLog::open(&path).unwrap();
        for w in 0..KEEP as u64 + 10 {
            log.append(&cursor(w * 64));
        }
        drop(log);
        let (_, back) = CursorLog::open(&path).unwrap();
        assert_eq!(back.len(), KEEP);
        assert_eq!(back[0], cursor(10 * 64));
        let (_, again) = CursorLog::open(&path).unwrap();
        assert_eq!(again, back, "the rewritten file holds the same");
    }
}
