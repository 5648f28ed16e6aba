//! The bounded cache of a server's remote raw files: the hub and object-store files of `streaming = true`
//! jobs, fetched into `--cache-dir`'s `stream-files/` as they are needed and ahead of use, shared by all
//! jobs, never more than `--stream-cache-bytes` on disk.
//!
//! **Rules.** A file is admitted before it is downloaded: its bytes (with its ETag record) are reserved
//! first, and if they do not fit, files are deleted, the least recently used first (a use is its download
//! ending, or a reader opening or closing it), until they do. A file with an open reader ([`Held`]) or a download
//! under way is never deleted. A file larger than the limit is an error naming it and the limit; so is a
//! file that does not fit beside the files in use (raise the limit). A fetch ahead ([`FileCache::prefetch`])
//! that does not fit is skipped: the reader's own fetch tries again when it needs the file. Files left by
//! an earlier server are taken over on first use (in their modification order), and temporary names
//! removed. A hub file already in the standard hub cache is read from there, and is no part of this
//! cache. (A hub file downloads through a staging directory of hf-hub's, whose bookkeeping adds a few
//! bytes while it lasts.) The count is the server's own: two servers streaming remote files through one
//! cache directory would each count only their own (FIXME: a lock per cache, as preparations have).
//!
//! Without the `raw-text` feature nothing is ever fetched, and only the bookkeeping is built.
#![cfg_attr(not(feature = "raw-text"), allow(dead_code))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

#[cfg(feature = "raw-text")]
use flame_preprocess::source::InputFile;

/// A server's bounded cache of fetched raw files.
#[derive(Debug)]
pub struct FileCache {
    root: PathBuf,
    limit_bytes: u64,
    state: Mutex<State>,
    /// Signalled when a download ends or a reader lets a file go.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Whether the files on disk were taken over.
    is_scanned: bool,
    entries: Entries,
}

/// A cached file kept from deletion while its reader is open.
#[derive(Debug)]
pub struct Held {
    cache: Arc<FileCache>,
    key: PathBuf,
    path: PathBuf,
}

impl Held {
    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.cache.lock().entries.release(&self.key);
        self.cache.changed.notify_all();
    }
}

impl FileCache {
    /// A cache under `root` holding at most `limit_bytes`; nothing is read or written before first use.
    pub fn new(root: PathBuf, limit_bytes: u64) -> Self {
        Self {
            root,
            limit_bytes,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// The directory it keeps files in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements: a panicking thread leaves no half-made change.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.is_scanned {
            state.is_scanned = true;
            let found = scan(&self.root);
            for (key, num_bytes) in found {
                state.entries.insert_fetched(key, num_bytes);
            }
            for key in state.entries.shrink_to(self.limit_bytes) {
                remove(&self.root.join(key));
            }
        }
        state
    }

    /// `input` on disk, held while the returned [`Held`] lives: a remote input is fetched (waiting for a
    /// fetch ahead under way) unless it is cached; a local one (no [`InputFile::remote`]) holds nothing.
    ///
    /// # Errors
    /// The download fails, or the file does not fit (see the module's rules); the error names the URL.
    #[cfg(feature = "raw-text")]
    pub fn hold(self: &Arc<Self>, input: &InputFile) -> anyhow::Result<Option<Held>> {
        let Some(remote) = &input.remote else {
            return Ok(None);
        };
        let url = remote.url();
        self.hold_with(
            &input.path,
            remote.disk_bytes(),
            &url,
            (&|local: &Path| remote.is_fetched(local), &|local: &Path| {
                remote.fetch(local)
            }),
        )
        .map(Some)
    }

    /// Starts fetching `input` on a thread of its own, if it is remote, not cached, and fits without
    /// deleting a file in use; errors are left to [`FileCache::hold`].
    #[cfg(feature = "raw-text")]
    pub fn prefetch(self: &Arc<Self>, input: &InputFile) {
        let Some(remote) = input.remote.clone() else {
            return;
        };
        let key = input.path.clone();
        let admitted = {
            let mut state = self.lock();
            if state.entries.contains(&key) {
                return;
            }
            let admit = state
                .entries
                .admit(&key, remote.disk_bytes(), self.limit_bytes);
            self.apply(admit, &remote.url())
        };
        if let Err(e) = admitted {
            tracing::debug!(file = remote.url(), error = %format!("{e:#}"), "Not fetched ahead.");
            return;
        }
        let cache = Arc::clone(self);
        std::thread::spawn(move || {
            let local = cache.root.join(&key);
            let fetched = caught(&|local: &Path| remote.fetch(local), &local);
            if let Err(e) = &fetched {
                tracing::debug!(file = remote.url(), error = %format!("{e:#}"), "A fetch ahead failed.");
            }
            cache.lock().entries.fetched(&key, fetched.is_ok());
            cache.changed.notify_all();
        });
    }

    /// Deletes what an admission evicted, or says why it was refused.
    fn apply(&self, admit: Admit, url: &str) -> anyhow::Result<()> {
        match admit {
            Admit::Admitted { evicted } => {
                for key in evicted {
                    remove(&self.root.join(key));
                }
                Ok(())
            }
            Admit::TooLarge { num_bytes } => anyhow::bail!(
                "{url}: {num_bytes} bytes, more than the stream cache holds (--stream-cache-bytes {})",
                self.limit_bytes
            ),
            Admit::NoRoom {
                num_bytes,
                in_use_bytes,
            } => anyhow::bail!(
                "{url}: {num_bytes} bytes do not fit beside {in_use_bytes} bytes of files in use or being \
                 fetched in the stream cache (--stream-cache-bytes {})",
                self.limit_bytes
            ),
        }
    }

    /// [`FileCache::hold`] of the file `key` (`num_bytes` on disk), with its check and its download.
    fn hold_with(
        self: &Arc<Self>,
        key: &Path,
        num_bytes: u64,
        url: &str,
        (is_fetched, fetch): Fetcher<'_>,
    ) -> anyhow::Result<Held> {
        let local = self.root.join(key);
        let held = |cache: &Arc<Self>| Held {
            cache: Arc::clone(cache),
            key: key.to_owned(),
            path: local.clone(),
        };
        let mut state = self.lock();
        loop {
            match state.entries.state_of(key) {
                Some(EntryState::Fetching) => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                Some(EntryState::Fetched) if is_fetched(&local) => {
                    state.entries.hold(key);
                    return Ok(held(self));
                }
                Some(EntryState::Fetched) if state.entries.is_held(key) => {
                    anyhow::bail!(
                        "{url}: the cached copy at {}, being read, is of another version of the file",
                        local.display()
                    );
                }
                Some(EntryState::Fetched) => {
                    // Stale (the object changed since, or the copy was damaged): fetched again.
                    state.entries.forget(key);
                    remove(&local);
                }
                None => {}
            }
            let admit = state.entries.admit(key, num_bytes, self.limit_bytes);
            self.apply(admit, url)?;
            drop(state);
            let fetched = caught(fetch, &local);
            state = self.lock();
            state.entries.fetched(key, fetched.is_ok());
            self.changed.notify_all();
            fetched?;
            state.entries.hold(key);
            return Ok(held(self));
        }
    }
}

/// Whether a file is already on disk, and its download.
type Fetcher<'a> = (
    &'a dyn Fn(&Path) -> bool,
    &'a dyn Fn(&Path) -> anyhow::Result<()>,
);

/// `fetch(local)`, a panic in it an error: a download's reservation must end either way, or those
/// waiting for it would wait for ever.
fn caught(fetch: &dyn Fn(&Path) -> anyhow::Result<()>, local: &Path) -> anyhow::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch(local))).unwrap_or_else(
        |panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow::anyhow!("the download panicked: {what}"))
        },
    )
}

/// Deletes a cached file and its ETag record.
fn remove(local: &Path) {
    let _ = std::fs::remove_file(local);
    let _ = std::fs::remove_file(flame_formats::prefix::with_suffix(local, ".etag"));
}

/// The files an earlier server left under `root` (relative path, bytes with the ETag record), oldest
/// first; temporary names (downloads cut short) are removed.
fn scan(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let extension = path.extension().unwrap_or_default().to_owned();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if extension == "tmp" {
                let _ = if meta.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            } else if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() && extension != "etag" {
                let etag = std::fs::metadata(flame_formats::prefix::with_suffix(&path, ".etag"))
                    .map_or(0, |m| m.len());
                let modified = meta.modified().ok();
                if let Ok(key) = path.strip_prefix(root) {
                    found.push((modified, key.to_owned(), meta.len() + etag));
                }
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(_, key, bytes)| (key, bytes))
        .collect()
}

/// What the cache holds, as bookkeeping only (no files): each file's bytes, readers, last use, and
/// whether it is still being fetched.
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<PathBuf, Entry>,
    /// Ticks at each use, for the least-recently-used order.
    clock: u64,
    /// Bytes of every entry, fetched or reserved.
    num_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    num_bytes: u64,
    readers: u32,
    last_use: u64,
    is_fetching: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    Fetching,
    Fetched,
}

/// The answer to an admission.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Reserved; these files are to be deleted first (least recently used first).
    Admitted { evicted: Vec<PathBuf> },
    /// Larger than the limit.
    TooLarge { num_bytes: u64 },
    /// The files in use or being fetched leave too little room.
    NoRoom { num_bytes: u64, in_use_bytes: u64 },
}

impl Entries {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn contains(&self, key: &Path) -> bool {
        self.map.contains_key(key)
    }

    fn state_of(&self, key: &Path) -> Option<EntryState> {
        self.map.get(key).map(|e| {
            if e.is_fetching {
                EntryState::Fetching
            } else {
                EntryState::Fetched
            }
        })
    }

    fn is_held(&self, key: &Path) -> bool {
        self.map.get(key).is_some_and(|e| e.readers > 0)
    }

    /// Whether an entry may be deleted: no reader, no download under way.
    fn is_evictable(entry: &Entry) -> bool {
        entry.readers == 0 && !entry.is_fetching
    }

    /// A file found on disk, as if just fetched.
    fn insert_fetched(&mut self, key: PathBuf, num_bytes: u64) {
        let last_use = self.tick();
        self.num_bytes += num_bytes;
        self.map.insert(
            key,
            Entry {
                num_bytes,
                readers: 0,
                last_use,
                is_fetching: false,
            },
        );
    }

    /// Deletes the least recently used evictable entries until at most `limit_bytes` are held; returns
    /// them.
    fn shrink_to(&mut self, limit_bytes: u64) -> Vec<PathBuf> {
        let mut candidates: Vec<(u64, PathBuf)> = self
            .map
            .iter()
            .filter(|(_, e)| Self::is_evictable(e))
            .map(|(k, e)| (e.last_use, k.clone()))
            .collect();
        candidates.sort();
        let mut evicted = Vec::new();
        for (_, key) in candidates {
            if self.num_bytes <= limit_bytes {
                break;
            }
            self.forget(&key);
            evicted.push(key);
        }
        evicted
    }

    /// Reserves `num_bytes` for `key` (not present), evicting as the module's rules say.
    fn admit(&mut self, key: &Path, num_bytes: u64, limit_bytes: u64) -> Admit {
        if num_bytes > limit_bytes {
            return Admit::TooLarge { num_bytes };
        }
        let in_use_bytes: u64 = self
            .map
            .values()
            .filter(|e| !Self::is_evictable(e))
            .map(|e| e.num_bytes)
            .sum();
        if in_use_bytes + num_bytes > limit_bytes {
            return Admit::NoRoom {
                num_bytes,
                in_use_bytes,
            };
        }
        let evicted = self.shrink_to(limit_bytes - num_bytes);
        let last_use = self.tick();
        self.num_bytes += num_bytes;
        self.map.insert(
            key.to_owned(),
            Entry {
                num_bytes,
                readers: 0,
                last_use,
                is_fetching: true,
            },
        );
        Admit::Admitted { evicted }
    }

    /// The download of `key` ended: kept if it succeeded, its reservation dropped if not.
    fn fetched(&mut self, key: &Path, is_ok: bool) {
        if !is_ok {
            self.forget(key);
            return;
        }
        let last_use = self.tick();
        if let Some(entry) = self.map.get_mut(key) {
            entry.is_fetching = false;
            entry.last_use = last_use;
        }
    }

    /// A reader opens `key` (fetched).
    fn hold(&mut self, key: &Path) {
        let last_use = self.tick();
        if let Some(entry) = self.map.get_mut(key) {
            entry.readers += 1;
            entry.last_use = last_use;
        }
    }

    /// A reader of `key` is done with it.
    fn release(&mut self, key: &Path) {
        let last_use = self.tick();
        if let Some(entry) = self.map.get_mut(key) {
            entry.readers = entry.readers.saturating_sub(1);
            entry.last_use = last_use;
        }
    }

    fn forget(&mut self, key: &Path) {
        if let Some(entry) = self.map.remove(key) {
            self.num_bytes -= entry.num_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(n: u8) -> PathBuf {
        PathBuf::from(format!("s3/b/{n}.jsonl"))
    }

    #[derive(Debug, Clone)]
    enum Action {
        Admit(u8, u64),
        Fetched(u8, bool),
        Hold(u8),
        Release(u8),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (0u8..8, 0u64..60).prop_map(|(k, n)| Action::Admit(k, n)),
            (0u8..8, any::<bool>()).prop_map(|(k, ok)| Action::Fetched(k, ok)),
            (0u8..8).prop_map(Action::Hold),
            (0u8..8).prop_map(Action::Release),
        ]
    }

    proptest! {
        /// Any sequence of admissions, downloads, opens and closes keeps the rules: never more than the
        /// limit; a file in use or being fetched is never evicted; the evicted are the least recently used
        /// of those that could be; a file is refused only when larger than the limit or when the files in
        /// use leave no room.
        #[test]
        fn eviction_keeps_the_rules(actions in prop::collection::vec(action(), 1..200), limit in 1u64..120) {
            let mut entries = Entries::default();
            for action in actions {
                match action {
                    Action::Admit(k, n) => {
                        if entries.contains(&key(k)) {
                            continue;
                        }
                        let before: HashMap<PathBuf, Entry> = entries.map.clone();
                        let in_use: u64 = before.values().filter(|e| !Entries::is_evictable(e)).map(|e| e.num_bytes).sum();
                        match entries.admit(&key(k), n, limit) {
                            Admit::Admitted { evicted } => {
                                prop_assert!(in_use + n <= limit);
                                let kept_oldest = entries.map.iter()
                                    .filter(|(k2, e)| Entries::is_evictable(e) && before.contains_key(*k2))
                                    .map(|(_, e)| e.last_use).min();
                                for gone in &evicted {
                                    let entry = before[gone];
                                    prop_assert!(Entries::is_evictable(&entry), "evicted a file in use");
                                    if let Some(oldest) = kept_oldest {
                                        prop_assert!(entry.last_use < oldest, "not the least recently used");
                                    }
                                }
                                // Nothing was evicted that was not needed for room.
                                let freed: u64 = evicted.iter().map(|g| before[g].num_bytes).sum();
                                let last = evicted.last().map_or(0, |g| before[g].num_bytes);
                                let held_before: u64 = before.values().map(|e| e.num_bytes).sum();
                                prop_assert!(evicted.is_empty() || held_before - (freed - last) + n > limit);
                            }
                            Admit::TooLarge { .. } => prop_assert!(n > limit),
                            Admit::NoRoom { in_use_bytes, .. } => {
                                prop_assert!(n <= limit && in_use_bytes + n > limit);
                                prop_assert_eq!(in_use_bytes, in_use);
                                prop_assert_eq!(entries.map.len(), before.len(), "a refusal evicts nothing");
                            }
                        }
                    }
                    Action::Fetched(k, ok) => {
                        if entries.state_of(&key(k)) == Some(EntryState::Fetching) {
                            entries.fetched(&key(k), ok);
                            prop_assert_eq!(entries.contains(&key(k)), ok);
                        }
                    }
                    Action::Hold(k) => {
                        if entries.state_of(&key(k)) == Some(EntryState::Fetched) {
                            entries.hold(&key(k));
                        }
                    }
                    Action::Release(k) => {
                        if entries.is_held(&key(k)) {
                            entries.release(&key(k));
                        }
                    }
                }
                let total: u64 = entries.map.values().map(|e| e.num_bytes).sum();
                prop_assert_eq!(total, entries.num_bytes);
                prop_assert!(total <= limit, "{} bytes held, limit {}", total, limit);
            }
        }
    }

    /// A cache over `dir` whose "downloads" write `bytes` bytes.
    fn fetch_to(bytes: usize) -> impl Fn(&Path) -> anyhow::Result<()> {
        move |local: &Path| {
            std::fs::create_dir_all(local.parent().unwrap())?;
            std::fs::write(local, vec![b'x'; bytes])?;
            Ok(())
        }
    }

    fn on_disk(root: &Path) -> u64 {
        scan(root).iter().map(|(_, n)| n).sum()
    }

    #[test]
    fn files_in_use_stay_and_the_least_recently_used_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::new(dir.path().join("files"), 250));
        let is_fetched = |local: &Path| local.is_file();
        let fetch = fetch_to(100);
        let hold = |n: u8| {
            cache
                .hold_with(
                    &key(n),
                    100,
                    &format!("s3://b/{n}.jsonl"),
                    (&is_fetched, &fetch),
                )
                .unwrap()
        };
        let first = hold(1);
        drop(hold(2));
        // The third needs room: 2 goes (1 is in use), and the disk never holds more than the limit.
        let third = hold(3);
        assert!(first.path().is_file() && third.path().is_file());
        assert!(!cache.root().join(key(2)).exists());
        assert!(on_disk(cache.root()) <= 250);
        // Both in use: a fourth does not fit, and the error says why.
        let err = cache
            .hold_with(&key(4), 100, "s3://b/4.jsonl", (&is_fetched, &fetch))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://b/4.jsonl")
                && err.contains("files in use")
                && err.contains("--stream-cache-bytes 250"),
            "{err}"
        );
        // Released, 1 is older than 3: it goes first.
        drop(first);
        drop(third);
        let _ = hold(3);
        drop(hold(4));
        assert!(!cache.root().join(key(1)).exists());
        assert!(cache.root().join(key(3)).exists());
        // Larger than the limit: an error naming the file and the limit.
        let err = cache
            .hold_with(&key(5), 251, "s3://b/5.jsonl", (&is_fetched, &fetch))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "s3://b/5.jsonl: 251 bytes, more than the stream cache holds (--stream-cache-bytes 250)"
        );
    }

    #[test]
    fn a_new_server_takes_over_the_files_left_and_removes_temporary_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir_all(root.join("s3/b")).unwrap();
        std::fs::write(root.join("s3/b/1.jsonl"), vec![0; 100]).unwrap();
        std::fs::write(root.join("s3/b/1.jsonl.etag"), "e1").unwrap();
        std::fs::write(root.join("s3/b/2.jsonl.tmp"), vec![0; 50]).unwrap();
        let cache = Arc::new(FileCache::new(root.clone(), 150));
        let fetched = std::cell::Cell::new(0);
        let fetch = |local: &Path| {
            fetched.set(fetched.get() + 1);
            fetch_to(40)(local)
        };
        let held = cache
            .hold_with(
                &key(1),
                102,
                "s3://b/1.jsonl",
                (&|l: &Path| l.is_file(), &fetch),
            )
            .unwrap();
        assert_eq!(fetched.get(), 0, "the file left behind is used");
        assert!(!root.join("s3/b/2.jsonl.tmp").exists());
        drop(held);
        // A failed download leaves nothing and reserves nothing.
        let err = cache
            .hold_with(
                &key(2),
                40,
                "s3://b/2.jsonl",
                (&|_: &Path| false, &|_: &Path| {
                    anyhow::bail!("connection refused")
                }),
            )
            .unwrap_err();
        assert!(err.to_string().contains("connection refused"));
        assert_eq!(cache.lock().entries.num_bytes, 102);
        // Nor does a download that panics: the next one goes ahead instead of waiting for it.
        let err = cache
            .hold_with(
                &key(2),
                40,
                "s3://b/2.jsonl",
                (&|_: &Path| false, &|_: &Path| {
                    panic!("a bug in a client library")
                }),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("panicked: a bug in a client library"),
            "{err}"
        );
        let held = cache
            .hold_with(&key(2), 40, "s3://b/2.jsonl", (&|_: &Path| false, &fetch))
            .unwrap();
        assert_eq!(std::fs::read(held.path()).unwrap().len(), 40);
    }
}
