//! Parsing the `.idx` header and reading its arrays. Sans-IO: everything works on a byte slice.

use std::path::Path;

use crate::dtype::TokenDtype;
use crate::error::{Error, Result};

/// The magic bytes at offset 0.
pub const MAGIC: [u8; 9] = *b"MMIDIDX\x00\x00";
/// Header bytes of a Megatron index (fairseq's is 8 bytes shorter).
pub const HEADER_BYTES: usize = 34;
const FAIRSEQ_HEADER_BYTES: usize = 26;

/// Which variant of the `MMIDIDX` layout a file is, told apart by its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// Megatron-LM / GPT-NeoX: lengths, pointers, document index.
    Megatron,
    /// Megatron with the trailing `i8` modes array.
    Multimodal,
    /// fairseq: no document count, no document index; every sequence is a document.
    Fairseq,
}

impl IndexKind {
    /// A short lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Megatron => "megatron",
            Self::Multimodal => "megatron-multimodal",
            Self::Fairseq => "fairseq",
        }
    }
}

/// Where the arrays of one `.idx` file are. Parsed once; `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexLayout {
    kind: IndexKind,
    dtype: TokenDtype,
    num_sequences: u64,
    num_document_entries: u64,
    lengths_offset: usize,
}

impl IndexLayout {
    /// Parses and checks the header of `bytes`, the whole `.idx` file named `path`.
    ///
    /// Checks magic, version, dtype code and that the file size equals what the counts imply.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let found = bytes.len() as u64;
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(Error::BadMagic {
                path: path.into(),
                found: bytes[..magic_len].to_vec(),
            });
        }
        if bytes.len() < FAIRSEQ_HEADER_BYTES {
            return Err(Error::TruncatedHeader {
                path: path.into(),
                needed: HEADER_BYTES as u64,
                found,
            });
        }
        let version = read_u64(bytes, 9);
        if version != 1 {
            return Err(Error::UnsupportedVersion {
                path: path.into(),
                version,
            });
        }
        let code = bytes[17];
        let dtype = TokenDtype::from_code(code).ok_or_else(|| Error::UnknownDtype {
            path: path.into(),
            code,
        })?;
        let num_sequences = read_u64(bytes, 18);
        let arrays = u128::from(num_sequences) * 12;
        if u128::from(found) == FAIRSEQ_HEADER_BYTES as u128 + arrays {
            return Ok(Self {
                kind: IndexKind::Fairseq,
                dtype,
                num_sequences,
                num_document_entries: 0,
                lengths_offset: FAIRSEQ_HEADER_BYTES,
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(Error::TruncatedHeader {
                path: path.into(),
                needed: HEADER_BYTES as u64,
                found,
            });
        }
        let num_document_entries = read_u64(bytes, 26);
        let expected = HEADER_BYTES as u128 + arrays + u128::from(num_document_entries) * 8;
        let kind = if u128::from(found) == expected {
            IndexKind::Megatron
        } else if u128::from(found) == expected + u128::from(num_sequences) {
            IndexKind::Multimodal
        } else {
            return Err(Error::IndexSizeMismatch {
                path: path.into(),
                num_sequences,
                num_document_entries,
                expected: u64::try_from(expected).unwrap_or(u64::MAX),
                found,
            });
        };
        if num_document_entries == 0 {
            return Err(Error::CorruptIndex {
                path: path.into(),
                offset: 26,
                reason: "document index is empty; it must hold at least the leading 0".into(),
            });
        }
        Ok(Self {
            kind,
            dtype,
            num_sequences,
            num_document_entries,
            lengths_offset: HEADER_BYTES,
        })
    }

    /// The 34-byte Megatron header for these counts.
    pub fn encode_header(
        dtype: TokenDtype,
        num_sequences: u64,
        num_document_entries: u64,
    ) -> [u8; HEADER_BYTES] {
        let mut header = [0u8; HEADER_BYTES];
        header[..9].copy_from_slice(&MAGIC);
        header[9..17].copy_from_slice(&1u64.to_le_bytes());
        header[17] = dtype.code();
        header[18..26].copy_from_slice(&num_sequences.to_le_bytes());
        header[26..34].copy_from_slice(&num_document_entries.to_le_bytes());
        header
    }

    /// The variant.
    pub fn kind(&self) -> IndexKind {
        self.kind
    }

    /// The element type of the `.bin`.
    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    /// `S`.
    pub fn num_sequences(&self) -> u64 {
        self.num_sequences
    }

    /// Documents: `D - 1`, or `S` for fairseq.
    pub fn num_documents(&self) -> u64 {
        match self.kind {
            IndexKind::Fairseq => self.num_sequences,
            IndexKind::Megatron | IndexKind::Multimodal => self.num_document_entries - 1,
        }
    }

    /// `D`, the length of the stored document index (0 for fairseq).
    pub fn num_document_entries(&self) -> u64 {
        self.num_document_entries
    }

    /// Byte offset of the lengths array.
    pub fn lengths_offset(&self) -> usize {
        self.lengths_offset
    }

    /// Byte offset of the pointers array.
    pub fn pointers_offset(&self) -> usize {
        self.lengths_offset + 4 * self.num_sequences_usize()
    }

    /// Byte offset of the document index.
    pub fn documents_offset(&self) -> usize {
        self.lengths_offset + 12 * self.num_sequences_usize()
    }

    /// Byte offset of the modes array (multimodal only).
    pub fn modes_offset(&self) -> usize {
        self.documents_offset()
            + 8 * usize::try_from(self.num_document_entries).expect("checked against file size")
    }

    fn num_sequences_usize(&self) -> usize {
        usize::try_from(self.num_sequences).expect("checked against file size")
    }

    /// Length of sequence `i`. `i < S` is the caller's to check.
    pub(crate) fn length(&self, bytes: &[u8], i: usize) -> i32 {
        let at = self.lengths_offset + 4 * i;
        i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Pointer of sequence `i`. `i < S` is the caller's to check.
    pub(crate) fn pointer(&self, bytes: &[u8], i: usize) -> i64 {
        let at = self.pointers_offset() + 8 * i;
        i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Entry `j` of the document index. `j < D` is the caller's to check.
    pub(crate) fn document_entry(&self, bytes: &[u8], j: usize) -> i64 {
        let at = self.documents_offset() + 8 * j;
        i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Mode of sequence `i` (multimodal only).
    pub(crate) fn mode(&self, bytes: &[u8], i: usize) -> i8 {
        i8::from_le_bytes([bytes[self.modes_offset() + i]])
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn megatron_bytes(lengths: &[i32], documents: &[i64]) -> Vec<u8> {
        let mut out = IndexLayout::encode_header(
            TokenDtype::Uint16,
            lengths.len() as u64,
            documents.len() as u64,
        )
        .to_vec();
        let mut pointer = 0i64;
        for len in lengths {
            out.extend_from_slice(&len.to_le_bytes());
        }
        for len in lengths {
            out.extend_from_slice(&pointer.to_le_bytes());
            pointer += i64::from(*len) * 2;
        }
        for d in documents {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out
    }

    #[test]
    fn parses_the_documented_example() {
        // Hexdump from ../shared/notes/megatron.md §1.1: lengths [4,3,0,6,2,2], documents [0,1,2,3,4,6].
        let bytes = megatron_bytes(&[4, 3, 0, 6, 2, 2], &[0, 1, 2, 3, 4, 6]);
        let expected = [
            "4d4d49444944580000",
            "0100000000000000",
            "08",
            "0600000000000000",
            "0600000000000000",
        ];
        assert_eq!(hex::encode(&bytes[..34]), expected.concat());
        let layout = IndexLayout::parse(&bytes, Path::new("x.idx")).unwrap();
        assert_eq!(layout.kind(), IndexKind::Megatron);
        assert_eq!(layout.num_documents(), 5);
        assert_eq!(layout.pointer(&bytes, 4), 26);
        assert_eq!(layout.document_entry(&bytes, 5), 6);
    }

    #[test]
    fn tells_variants_apart_by_size() {
        let mut bytes = megatron_bytes(&[1, 2], &[0, 2]);
        bytes.extend_from_slice(&[0, 1]);
        assert_eq!(
            IndexLayout::parse(&bytes, Path::new("m")).unwrap().kind(),
            IndexKind::Multimodal
        );
        let mut fairseq = bytes[..26].to_vec();
        fairseq.extend_from_slice(&[0u8; 24]);
        let layout = IndexLayout::parse(&fairseq, Path::new("f")).unwrap();
        assert_eq!(layout.kind(), IndexKind::Fairseq);
        assert_eq!(layout.num_documents(), 2);
    }

    #[test]
    fn rejects_bad_headers_with_offsets() {
        let good = megatron_bytes(&[1], &[0, 1]);
        let mut bad_magic = good.clone();
        bad_magic[3] = b'X';
        assert!(matches!(
            IndexLayout::parse(&bad_magic, Path::new("a")),
            Err(Error::BadMagic { .. })
        ));
        let mut version = good.clone();
        version[9] = 2;
        assert!(matches!(
            IndexLayout::parse(&version, Path::new("a")),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));
        let mut code = good.clone();
        code[17] = 11;
        let err = IndexLayout::parse(&code, Path::new("a")).unwrap_err();
        assert!(err.to_string().contains("byte 17"), "{err}");
        assert!(matches!(
            IndexLayout::parse(&good[..20], Path::new("a")),
            Err(Error::TruncatedHeader { .. })
        ));
        assert!(matches!(
            IndexLayout::parse(&good[..good.len() - 1], Path::new("a")),
            Err(Error::IndexSizeMismatch { .. })
        ));
        assert!(matches!(
            IndexLayout::parse(b"MMI", Path::new("a")),
            Err(Error::TruncatedHeader { .. })
        ));
        assert!(matches!(
            IndexLayout::parse(b"", Path::new("a")),
            Err(Error::TruncatedHeader { .. })
        ));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let mut bytes = megatron_bytes(&[], &[0]);
        bytes[18..26].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes[26..34].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            IndexLayout::parse(&bytes, Path::new("a")),
            Err(Error::IndexSizeMismatch { .. })
        ));
    }
}
