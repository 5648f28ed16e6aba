//! The wire protocol between `flame-stream` and its clients, over TCP or a Unix socket. Version 1.
//!
//! Every message is a frame: a little-endian `u32` length `L`, then `L` bytes: a one-byte kind and the
//! payload. Integers are little-endian; a string or byte field is a `u32` length and its bytes.
//!
//! | kind | message | payload |
//! |---|---|---|
//! | 1 | `Hello` (client) | magic `FLMS`, version `u16`, token bytes, job spec TOML, rank `u32`, world size `u32` |
//! | 2 | `Welcome` (server) | version `u16`, fingerprint string, seq_len `u32`, micro-steps per step `u32` |
//! | 3 | `Request` (client) | step `u64`, micro-step `u64` |
//! | 4 | `Batch` (server) | step `u64`, micro-step `u64`, samples `u32`, then per sample: dataset `u32`, index `u64`, `cu_seqlens` count `u32` and values `u32`, tokens count `u32` and values `u32` |
//! | 5 | `Error` (server) | message string; the server closes the connection after it. One that starts with [`END_OF_JOB`] answers a `Request` past the job's end |
//! | 6 | `ShmOpen` (client, Unix socket only) | slots `u32`: asks for a shared-memory ring of that many slots |
//! | 7 | `ShmReady` (server) | slots `u32`, slot bytes `u64`; the ring's file descriptor travels with this frame (`SCM_RIGHTS`) |
//! | 8 | `Slot` (server) | step `u64`, micro-step `u64`, slot `u32`, bytes `u64`: the answer to a `Request` once a ring is open; the batch is in that slot ([`crate::shm`] has its layout) |
//! | 9 | `Release` (client) | slot `u32`: the client no longer reads that slot; the server may write it again |
//! | 10 | `Cursors` (client) | step `u64`, cursors `u32`, then per cursor: dataset `u32` and the [`Cursor`]'s window, epoch, file, block, document, offset as `u64`s: gives the job's streamed datasets these cursors (from a checkpoint; none to only ask) and asks for the cursors to resume at `step` |
//! | 11 | `CursorsAt` (server) | the answer to `Cursors`: step `u64` and the cursors, as there |
//! | 12 | `Preparing` (server, before `Welcome`) | dataset string, input bytes read `u64`, input bytes `u64`: the job waits for a raw dataset's preparation, this far along; sent every few seconds until the `Welcome` |
//!
//! The job's end (its `num_samples`, or `epochs` passes over its datasets) is the last micro-batch every
//! rank has: a `Request` for any later one, of any rank, is answered by an `Error` whose message starts
//! with [`END_OF_JOB`], so a client that does not know the job's length stops there cleanly. (Servers
//! before this convention answered such requests with an `Error` of another wording, and served a
//! rank's micro-batch that lay before the end while another rank's did not.)
//!
//! [`decode`] is sans-IO: it takes the bytes received so far and returns a message and how many bytes
//! it used, `None` when more are needed, or an error. Every length is checked against [`Limits`] before
//! anything is allocated, so a malformed or hostile frame costs nothing.

use thiserror::Error;

use crate::online::Cursor;

/// Most cursors a `Cursors` or `CursorsAt` frame may carry: one per dataset of a job.
pub const MAX_CURSORS: u32 = 4096;
const _: () = assert!(MAX_CURSORS as usize == crate::spec::MAX_DATASETS);

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// The first bytes of a `Hello`.
pub const MAGIC: [u8; 4] = *b"FLMS";
/// How the message of an `Error` past the job's end starts.
pub const END_OF_JOB: &str = "end of job: ";

/// Upper bounds on what a peer may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest frame, in bytes.
    pub max_frame: u32,
}

impl Limits {
    /// What a server accepts from clients: small frames only.
    pub const CLIENT_FRAMES: Self = Self { max_frame: 1 << 20 };
    /// What a client accepts from a server: batches up to 1 GiB.
    pub const SERVER_FRAMES: Self = Self { max_frame: 1 << 30 };
}

/// One sample as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireSample {
    /// Index of its dataset in the job.
    pub dataset: u32,
    /// Global sample index.
    pub index: u64,
    /// Sequence boundaries.
    pub cu_seqlens: Vec<u32>,
    /// Tokens.
    pub tokens: Vec<u32>,
}

/// A protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The client's opening.
    Hello {
        /// Protocol version.
        version: u16,
        /// The shared auth token (empty for none).
        token: Vec<u8>,
        /// The job spec, TOML.
        job: String,
        /// This client's rank.
        rank: u32,
        /// Ranks in the job.
        world_size: u32,
    },
    /// The server's answer to `Hello`.
    Welcome {
        /// Protocol version.
        version: u16,
        /// The job's fingerprint.
        fingerprint: String,
        /// Tokens per sample.
        seq_len: u32,
        /// Micro-steps per step for this world size.
        micro_steps: u32,
    },
    /// A request for one micro-batch.
    Request {
        /// Optimizer step.
        step: u64,
        /// Micro-step inside it.
        micro_step: u64,
    },
    /// One micro-batch.
    Batch {
        /// Optimizer step.
        step: u64,
        /// Micro-step inside it.
        micro_step: u64,
        /// The samples.
        samples: Vec<WireSample>,
    },
    /// A refusal; the connection ends.
    Error {
        /// Why.
        message: String,
    },
    /// Asks for a shared-memory ring (Unix sockets only).
    ShmOpen {
        /// Slots in the ring: batches the client may hold at once.
        slots: u32,
    },
    /// The ring is ready; its file descriptor came with this frame.
    ShmReady {
        /// Slots in the ring.
        slots: u32,
        /// Bytes per slot.
        slot_bytes: u64,
    },
    /// The requested micro-batch is in a slot of the ring.
    Slot {
        /// Optimizer step.
        step: u64,
        /// Micro-step inside it.
        micro_step: u64,
        /// Which slot.
        slot: u32,
        /// Bytes of the slot in use.
        bytes: u64,
    },
    /// The client is done with a slot.
    Release {
        /// Which slot.
        slot: u32,
    },
    /// Gives the job's streamed datasets cursors and asks for those to resume at `step`.
    Cursors {
        /// The step to resume at.
        step: u64,
        /// (dataset, cursor) pairs from a checkpoint; empty to only ask.
        cursors: Vec<(u32, Cursor)>,
    },
    /// The cursors to resume at `step`, one per streamed dataset the server has one for.
    CursorsAt {
        /// The step asked for.
        step: u64,
        /// (dataset, cursor) pairs.
        cursors: Vec<(u32, Cursor)>,
    },
    /// The job waits for a raw dataset's preparation (before its `Welcome`).
    Preparing {
        /// The dataset, as the job names it.
        dataset: String,
        /// Input bytes read so far.
        input_bytes: u64,
        /// The input's size.
        total_bytes: u64,
    },
}

impl Message {
    /// The message's name, as in the table above.
    pub fn kind(&self) -> &'static str {
        kind_name(match self {
            Self::Hello { .. } => 1,
            Self::Welcome { .. } => 2,
            Self::Request { .. } => 3,
            Self::Batch { .. } => 4,
            Self::Error { .. } => 5,
            Self::ShmOpen { .. } => 6,
            Self::ShmReady { .. } => 7,
            Self::Slot { .. } => 8,
            Self::Release { .. } => 9,
            Self::Cursors { .. } => 10,
            Self::CursorsAt { .. } => 11,
            Self::Preparing { .. } => 12,
        })
    }
}

/// A frame that breaks the protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame is larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// The frame's content does not parse.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Message kind (or "unknown").
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes the first message in `buf`: `Ok(Some((message, bytes used)))`, or `Ok(None)` when `buf` does
/// not yet hold a whole frame.
pub fn decode(buf: &[u8], limits: Limits) -> Result<Option<(Message, usize)>, ProtocolError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header.try_into().expect("4 bytes"));
    if len > limits.max_frame {
        return Err(ProtocolError::TooLarge {
            len: u64::from(len),
            max: limits.max_frame,
        });
    }
    let end = 4 + len as usize;
    let Some(frame) = buf.get(4..end) else {
        return Ok(None);
    };
    let (&kind, payload) = frame.split_first().ok_or(ProtocolError::Malformed {
        kind: "unknown",
        reason: "empty frame".into(),
    })?;
    let mut r = Reader {
        bytes: payload,
        kind: kind_name(kind),
    };
    let message = match kind {
        1 => {
            let magic = r.take(4)?;
            if magic != MAGIC {
                return Err(r.malformed(format!("bad magic {magic:?}")));
            }
            Message::Hello {
                version: r.u16()?,
                token: r.bytes()?.to_vec(),
                job: r.string()?,
                rank: r.u32()?,
                world_size: r.u32()?,
            }
        }
        2 => Message::Welcome {
            version: r.u16()?,
            fingerprint: r.string()?,
            seq_len: r.u32()?,
            micro_steps: r.u32()?,
        },
        3 => Message::Request {
            step: r.u64()?,
            micro_step: r.u64()?,
        },
        4 => r.batch()?,
        5 => Message::Error {
            message: r.string()?,
        },
        6 => Message::ShmOpen { slots: r.u32()? },
        7 => Message::ShmReady {
            slots: r.u32()?,
            slot_bytes: r.u64()?,
        },
        8 => Message::Slot {
            step: r.u64()?,
            micro_step: r.u64()?,
            slot: r.u32()?,
            bytes: r.u64()?,
        },
        9 => Message::Release { slot: r.u32()? },
        10 => Message::Cursors {
            step: r.u64()?,
            cursors: r.cursors()?,
        },
        11 => Message::CursorsAt {
            step: r.u64()?,
            cursors: r.cursors()?,
        },
        12 => Message::Preparing {
            dataset: r.string()?,
            input_bytes: r.u64()?,
            total_bytes: r.u64()?,
        },
        other => {
            return Err(ProtocolError::Malformed {
                kind: "unknown",
                reason: format!("message kind {other}"),
            });
        }
    };
    if !r.bytes.is_empty() {
        return Err(r.malformed(format!("{} trailing bytes", r.bytes.len())));
    }
    Ok(Some((message, end)))
}

/// Appends `message` as one frame to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match message {
        Message::Hello {
            version,
            token,
            job,
            rank,
            world_size,
        } => {
            out.push(1);
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            put_bytes(out, token);
            put_bytes(out, job.as_bytes());
            out.extend_from_slice(&rank.to_le_bytes());
            out.extend_from_slice(&world_size.to_le_bytes());
        }
        Message::Welcome {
            version,
            fingerprint,
            seq_len,
            micro_steps,
        } => {
            out.push(2);
            out.extend_from_slice(&version.to_le_bytes());
            put_bytes(out, fingerprint.as_bytes());
            out.extend_from_slice(&seq_len.to_le_bytes());
            out.extend_from_slice(&micro_steps.to_le_bytes());
        }
        Message::Request { step, micro_step } => {
            out.push(3);
            out.extend_from_slice(&step.to_le_bytes());
            out.extend_from_slice(&micro_step.to_le_bytes());
        }
        Message::Batch {
            step,
            micro_step,
            samples,
        } => {
            out.truncate(start);
            let parts: Vec<SampleParts<'_>> = samples
                .iter()
                .map(|s| {
                    (
                        s.dataset,
                        s.index,
                        s.cu_seqlens.as_slice(),
                        s.tokens.as_slice(),
                    )
                })
                .collect();
            encode_batch(*step, *micro_step, &parts, out);
            return;
        }
        Message::Error { message } => {
            out.push(5);
            put_bytes(out, message.as_bytes());
        }
        Message::ShmOpen { slots } => {
            out.push(6);
            out.extend_from_slice(&slots.to_le_bytes());
        }
        Message::ShmReady { slots, slot_bytes } => {
            out.push(7);
            out.extend_from_slice(&slots.to_le_bytes());
            out.extend_from_slice(&slot_bytes.to_le_bytes());
        }
        Message::Slot {
            step,
            micro_step,
            slot,
            bytes,
        } => {
            out.push(8);
            out.extend_from_slice(&step.to_le_bytes());
            out.extend_from_slice(&micro_step.to_le_bytes());
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
        }
        Message::Release { slot } => {
            out.push(9);
            out.extend_from_slice(&slot.to_le_bytes());
        }
        Message::Cursors { step, cursors } => put_cursors(out, 10, *step, cursors),
        Message::CursorsAt { step, cursors } => put_cursors(out, 11, *step, cursors),
        Message::Preparing {
            dataset,
            input_bytes,
            total_bytes,
        } => {
            out.push(12);
            put_bytes(out, dataset.as_bytes());
            out.extend_from_slice(&input_bytes.to_le_bytes());
            out.extend_from_slice(&total_bytes.to_le_bytes());
        }
    }
    let len = u32::try_from(out.len() - start - 4).expect("frames are below 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// One sample of a `Batch` as borrowed parts: dataset, global index, `cu_seqlens`, tokens.
pub type SampleParts<'a> = (u32, u64, &'a [u32], &'a [u32]);

/// The largest `Batch` frame of `samples` samples of `tokens_per_sample` tokens: each with the most
/// `cu_seqlens` a sample can have (one per token, plus one).
pub fn batch_frame_bound(samples: u32, tokens_per_sample: u32) -> u64 {
    let t = u64::from(tokens_per_sample);
    25 + u64::from(samples) * (20 + 4 * (2 * t + 1))
}

/// Appends a `Batch` frame of `samples` to `out`, copying the arrays as they are.
pub fn encode_batch(step: u64, micro_step: u64, samples: &[SampleParts<'_>], out: &mut Vec<u8>) {
    let start = out.len();
    let bytes: usize = samples
        .iter()
        .map(|(_, _, cu, tokens)| 20 + 4 * (cu.len() + tokens.len()))
        .sum();
    out.reserve(4 + 1 + 20 + bytes);
    out.extend_from_slice(&[0; 4]);
    out.push(4);
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&micro_step.to_le_bytes());
    out.extend_from_slice(&u32::try_from(samples.len()).expect("small").to_le_bytes());
    for (dataset, index, cu_seqlens, tokens) in samples {
        out.extend_from_slice(&dataset.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        put_u32s(out, cu_seqlens);
        put_u32s(out, tokens);
    }
    let len = u32::try_from(out.len() - start - 4).expect("frames are below 4 GiB");
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

fn put_cursors(out: &mut Vec<u8>, kind: u8, step: u64, cursors: &[(u32, Cursor)]) {
    out.push(kind);
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&u32::try_from(cursors.len()).expect("few").to_le_bytes());
    for (dataset, c) in cursors {
        out.extend_from_slice(&dataset.to_le_bytes());
        for value in [c.window, c.epoch, c.file, c.block, c.document, c.offset] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    out.extend_from_slice(&u32::try_from(values.len()).expect("small").to_le_bytes());
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "Hello",
        2 => "Welcome",
        3 => "Request",
        4 => "Batch",
        5 => "Error",
        6 => "ShmOpen",
        7 => "ShmReady",
        8 => "Slot",
        9 => "Release",
        10 => "Cursors",
        11 => "CursorsAt",
        12 => "Preparing",
        _ => "unknown",
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: String) -> ProtocolError {
        ProtocolError::Malformed {
            kind: self.kind,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.bytes.len() < n {
            return Err(self.malformed(format!("needs {n} more bytes, has {}", self.bytes.len())));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    /// A `Batch`'s payload.
    fn batch(&mut self) -> Result<Message, ProtocolError> {
        let (step, micro_step) = (self.u64()?, self.u64()?);
        let count = self.u32()?;
        // Each sample takes at least 20 bytes: a count larger than the frame allows is a lie.
        if u64::from(count) * 20 > self.bytes.len() as u64 {
            return Err(self.malformed(format!("{count} samples do not fit the frame")));
        }
        let mut samples = Vec::with_capacity(count as usize);
        for _ in 0..count {
            samples.push(WireSample {
                dataset: self.u32()?,
                index: self.u64()?,
                cu_seqlens: self.u32s()?,
                tokens: self.u32s()?,
            });
        }
        Ok(Message::Batch {
            step,
            micro_step,
            samples,
        })
    }

    /// A count and that many (dataset, cursor) pairs.
    fn cursors(&mut self) -> Result<Vec<(u32, Cursor)>, ProtocolError> {
        let count = self.u32()?;
        if count > MAX_CURSORS || u64::from(count) * 52 > self.bytes.len() as u64 {
            return Err(self.malformed(format!("{count} cursors do not fit the frame")));
        }
        (0..count)
            .map(|_| {
                let dataset = self.u32()?;
                let mut v = [0u64; 6];
                for value in &mut v {
                    *value = self.u64()?;
                }
                let [window, epoch, file, block, document, offset] = v;
                Ok((
                    dataset,
                    Cursor {
                        window,
                        epoch,
                        file,
                        block,
                        document,
                        offset,
                    },
                ))
            })
            .collect()
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.malformed("a string is not UTF-8".into()))
    }

    fn u32s(&mut self) -> Result<Vec<u32>, ProtocolError> {
        let n = self.u32()? as usize;
        let bytes = self.take(
            n.checked_mul(4)
                .ok_or_else(|| self.malformed("count overflows".into()))?,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Message> {
        vec![
            Message::Hello {
                version: VERSION,
                token: b"secret".to_vec(),
                job: "seed = 1".into(),
                rank: 3,
                world_size: 8,
            },
            Message::Welcome {
                version: VERSION,
                fingerprint: "ab12".into(),
                seq_len: 2048,
                micro_steps: 4,
            },
            Message::Request {
                step: 7,
                micro_step: 1,
            },
            Message::Batch {
                step: 7,
                micro_step: 1,
                samples: vec![WireSample {
                    dataset: 1,
                    index: 99,
                    cu_seqlens: vec![0, 2, 4],
                    tokens: vec![5, 6, 7, 8],
                }],
            },
            Message::Error {
                message: "no".into(),
            },
            Message::ShmOpen { slots: 4 },
            Message::ShmReady {
                slots: 4,
                slot_bytes: 1 << 20,
            },
            Message::Slot {
                step: 3,
                micro_step: 1,
                slot: 2,
                bytes: 4096,
            },
            Message::Release { slot: 2 },
            Message::Cursors {
                step: 12,
                cursors: vec![],
            },
            Message::CursorsAt {
                step: 12,
                cursors: vec![(
                    3,
                    Cursor {
                        window: 640,
                        epoch: 1,
                        file: 2,
                        block: 7,
                        document: 100,
                        offset: 33,
                    },
                )],
            },
            Message::Preparing {
                dataset: "hub:HuggingFaceFW/fineweb-edu".into(),
                input_bytes: 1 << 33,
                total_bytes: 5 << 33,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_partial_frames_wait() {
        for message in all_kinds() {
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut], Limits::SERVER_FRAMES),
                    Ok(None),
                    "{message:?} cut at {cut}"
                );
            }
            bytes.extend_from_slice(&[9, 9]);
            let (decoded, used) = decode(&bytes, Limits::SERVER_FRAMES).unwrap().unwrap();
            assert_eq!((decoded, used), (message, bytes.len() - 2));
        }
    }

    #[test]
    fn every_single_byte_change_decodes_or_errors_without_panicking() {
        for message in all_kinds() {
            let mut bytes = Vec::new();
            encode(&message, &mut bytes);
            for i in 0..bytes.len() {
                for value in [0u8, 1, 0x7f, 0xff] {
                    let mut changed = bytes.clone();
                    changed[i] = value;
                    let _ = decode(&changed, Limits::CLIENT_FRAMES);
                }
            }
        }
    }

    #[test]
    fn oversized_and_lying_frames_are_refused_before_allocating() {
        let huge = (u32::MAX).to_le_bytes();
        assert!(matches!(
            decode(&huge, Limits::CLIENT_FRAMES),
            Err(ProtocolError::TooLarge { .. })
        ));
        // A Batch announcing 10^9 samples in a 30-byte frame.
        let mut frame = vec![4u8];
        frame.extend_from_slice(&[0; 16]);
        frame.extend_from_slice(&1_000_000_000u32.to_le_bytes());
        let mut bytes = u32::try_from(frame.len()).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        assert!(matches!(
            decode(&bytes, Limits::SERVER_FRAMES),
            Err(ProtocolError::Malformed { .. })
        ));
        // Cursors announcing more than a job's datasets, or more than the frame holds.
        for count in [MAX_CURSORS + 1, 2] {
            let mut frame = vec![10u8];
            frame.extend_from_slice(&[0; 8]);
            frame.extend_from_slice(&count.to_le_bytes());
            frame.extend_from_slice(&[0; 52]);
            let mut bytes = u32::try_from(frame.len()).unwrap().to_le_bytes().to_vec();
            bytes.extend_from_slice(&frame);
            assert!(matches!(
                decode(&bytes, Limits::CLIENT_FRAMES),
                Err(ProtocolError::Malformed { .. })
            ));
        }
        assert!(matches!(
            decode(&[1, 0, 0, 0, 42], Limits::CLIENT_FRAMES),
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            decode(&[0, 0, 0, 0], Limits::CLIENT_FRAMES),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
