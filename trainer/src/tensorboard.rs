//! TensorBoard event files (`events.out.tfevents.*`): scalars a step at a time, readable by TensorBoard
//! and `tensorboard.backend.event_processing`. Each record is a TFRecord (length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes) holding an `Event` protobuf, encoded here by hand: the
//! three messages used are a few fields each.
//!
//! [`truncate_after`] reads the files back (stopping at a torn record, as a killed writer leaves one) and
//! drops the steps after a resumed checkpoint, so that a resumed run logs each step once.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes one event file.
#[derive(Debug)]
pub struct EventWriter {
    out: BufWriter<File>,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = u32::try_from(crc_fast::checksum(
        crc_fast::CrcAlgorithm::Crc32Iscsi,
        bytes,
    ))
    .expect("a 32-bit checksum");
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(u8::try_from(v & 0x7f).expect("7 bits") | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).expect("below 0x80"));
}

fn bytes_field(field: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(field << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: Option<u64>, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1); // wall_time: double
    e.extend_from_slice(&wall_time.to_le_bytes());
    if let Some(step) = step {
        e.push(2 << 3); // step: int64
        varint(step, &mut e);
    }
    body(&mut e);
    e
}

impl EventWriter {
    /// Creates a new `dir/events.out.tfevents.<seconds>.flame-train.<pid>[.<n>]` (never an existing
    /// file: a run resumed within the same second keeps the earlier run's events) and writes the
    /// file-version event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let base = format!(
            "events.out.tfevents.{}.flame-train.{}",
            now.as_secs(),
            std::process::id()
        );
        let mut n = 0u32;
        let file = loop {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            match File::create_new(dir.join(name)) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                other => break other?,
            }
        };
        let mut writer = Self {
            out: BufWriter::new(file),
        };
        let version = event(now.as_secs_f64(), None, |e| {
            bytes_field(3, b"brain.Event:2", e); // file_version
        });
        writer.record(&version)?;
        Ok(writer)
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())
    }

    /// Writes the scalars `(tag, value)` of `step` and flushes.
    #[allow(clippy::cast_possible_truncation)] // TensorBoard's simple_value is a float32
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let data = event(now, Some(step), |e| {
            let mut summary = Vec::new();
            for (tag, value) in values {
                let mut v = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut v); // tag
                v.push(2 << 3 | 5); // simple_value: float
                v.extend_from_slice(&(*value as f32).to_le_bytes());
                bytes_field(1, &v, &mut summary); // Summary.value
            }
            bytes_field(5, &summary, e); // Event.summary
        });
        self.record(&data)?;
        self.out.flush()
    }
}

/// A scalar event read back: its step and `(tag, value)` pairs.
pub type StepScalars = (u64, Vec<(String, f32)>);

/// The event files of `dir`, in name order.
fn event_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("events.out.tfevents."))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// The whole records of an event file, as (byte range, data); reading stops at the first record that
/// is torn or fails its checksums (the tail a killed writer leaves).
fn records(bytes: &[u8]) -> Vec<(std::ops::Range<usize>, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 12) {
        let (len, len_crc) = header.split_at(8);
        let Ok(n) = usize::try_from(u64::from_le_bytes(len.try_into().expect("8 bytes"))) else {
            break;
        };
        if u32::from_le_bytes(len_crc.try_into().expect("4 bytes")) != masked_crc(len) {
            break;
        }
        let Some(data) = at
            .checked_add(12 + n)
            .and_then(|end| bytes.get(at + 12..end))
        else {
            break;
        };
        let Some(crc) = bytes.get(at + 12 + n..at + 16 + n) else {
            break;
        };
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc(data) {
            break;
        }
        out.push((at..at + 16 + n, data));
        at += 16 + n;
    }
    out
}

/// Reads a varint at `*at`.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// The protobuf fields of a message: (field number, varint value or bytes).
fn fields(bytes: &[u8]) -> Vec<(u64, Result<u64, &[u8]>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(key) = read_varint(bytes, &mut at) else {
            break;
        };
        let value = match key & 7 {
            0 => read_varint(bytes, &mut at).map(Ok),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                let slice = bytes.get(at..at + n);
                at += n;
                slice.map(Err)
            }
            2 => read_varint(bytes, &mut at)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| {
                    let slice = bytes.get(at..at.checked_add(n)?);
                    at += n;
                    slice
                })
                .map(Err),
            _ => None,
        };
        let Some(value) = value else { break };
        out.push((key >> 3, value));
    }
    out
}

/// The step of an `Event`, if it has one (the file-version event has none).
fn event_step(event: &[u8]) -> Option<u64> {
    fields(event)
        .into_iter()
        .find_map(|(field, value)| (field == 2).then_some(value.ok()).flatten())
}

/// Every scalar event of the event files in `dir`, in file then record order.
///
/// # Errors
/// When the directory or a file cannot be read.
pub fn read_scalars(dir: &Path) -> std::io::Result<Vec<StepScalars>> {
    let mut out = Vec::new();
    for file in event_files(dir)? {
        let bytes = std::fs::read(&file)?;
        for (_, event) in records(&bytes) {
            let Some(step) = event_step(event) else {
                continue;
            };
            let mut values = Vec::new();
            for (_, summary) in fields(event).into_iter().filter(|(f, _)| *f == 5) {
                let Err(summary) = summary else { continue };
                for (_, value) in fields(summary).into_iter().filter(|(f, _)| *f == 1) {
                    let Err(value) = value else { continue };
                    let (mut tag, mut number) = (String::new(), f32::NAN);
                    for (field, v) in fields(value) {
                        match (field, v) {
                            (1, Err(b)) => tag = String::from_utf8_lossy(b).into_owned(),
                            (2, Err(b)) if b.len() == 4 => {
                                number = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                            }
                            _ => {}
                        }
                    }
                    values.push((tag, number));
                }
            }
            out.push((step, values));
        }
    }
    Ok(out)
}

/// Drops from every event file in `dir` the events of steps after `step`, and any torn tail, rewriting
/// a file (atomically, fsynced) only when something is dropped.
///
/// # Errors
/// When a file cannot be read or rewritten.
pub fn truncate_after(dir: &Path, step: u64) -> std::io::Result<()> {
    for file in event_files(dir)? {
        let bytes = std::fs::read(&file)?;
        let whole = records(&bytes);
        let kept: Vec<u8> = whole
            .iter()
            .filter(|(_, event)| event_step(event).is_none_or(|s| s <= step))
            .flat_map(|(range, _)| bytes[range.clone()].iter().copied())
            .collect();
        if kept.len() != bytes.len() {
            flame_formats::write_atomic(&file, &kept).map_err(std::io::Error::other)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn records_frame_and_checksum_like_tfrecord() {
        // CRC-32C of "123456789" is 0xe3069283 (the standard check value).
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, b"123456789");
        assert_eq!(crc, 0xe306_9283);
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.scalars(7, &[("loss", 2.5), ("lr", 1e-3)]).unwrap();
        drop(writer);
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(file).unwrap();
        let mut at = 0;
        let mut records = Vec::new();
        while at < bytes.len() {
            let len =
                usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())).unwrap();
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc =
                u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc(data));
            records.push(data.to_vec());
            at += 16 + len;
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        assert!(records[1].windows(4).any(|w| w == b"loss"));
        assert!(records[1].windows(4).any(|w| w == 2.5f32.to_le_bytes()));
    }

    /// Issue 16: a resumed run drops the steps after its checkpoint (and a killed writer's torn
    /// record), so that each step is in the event files once; a second writer within the same second
    /// gets a file of its own.
    #[test]
    fn steps_after_a_resumed_checkpoint_and_a_torn_tail_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = EventWriter::create(dir.path()).unwrap();
        for step in 1..=5 {
            #[allow(clippy::cast_precision_loss)]
            first.scalars(step, &[("loss", step as f64)]).unwrap();
        }
        drop(first);
        // A record cut short by a kill.
        let file = event_files(dir.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(&[9, 0, 0]);
        std::fs::write(&file, &bytes).unwrap();
        truncate_after(dir.path(), 3).unwrap();
        let mut second = EventWriter::create(dir.path()).unwrap();
        second.scalars(4, &[("loss", 40.0)]).unwrap();
        drop(second);
        assert_eq!(event_files(dir.path()).unwrap().len(), 2);
        let steps: Vec<(u64, f32)> = read_scalars(dir.path())
            .unwrap()
            .into_iter()
            .map(|(step, values)| (step, values[0].1))
            .collect();
        let mut sorted = steps.clone();
        sorted.sort_by_key(|s| s.0);
        assert_eq!(sorted, [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]);
    }
}
