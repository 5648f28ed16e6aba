//! TensorBoard event files (`events.out.tfevents.*`): scalars a step at a time, readable by TensorBoard
//! and `tensorboard.backend.event_processing`. Each record is a TFRecord (length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes) holding an `Event` protobuf, encoded here by hand: the
//! three messages used are a few fields each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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
    /// Creates `dir/events.out.tfevents.<seconds>.flame-train` and writes the file-version event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let path = dir.join(format!("events.out.tfevents.{}.flame-train", now.as_secs()));
        let mut writer = Self {
            out: BufWriter::new(File::create(path)?),
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
}
