//! Token element types and their Megatron dtype codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The element type of a `.bin` file, as numpy names it.
///
/// Codes 1..=8 are Megatron-core's table (since 2023-06: 6 = float64, 7 = float32); 9 and 10 exist only
/// in fairseq's variant and are readable but never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// Code 1.
    Uint8,
    /// Code 2.
    Int8,
    /// Code 3.
    Int16,
    /// Code 4: token ids of vocabularies of 65500 or more.
    Int32,
    /// Code 5.
    Int64,
    /// Code 6.
    Float64,
    /// Code 7.
    Float32,
    /// Code 8: token ids of vocabularies below 65500.
    Uint16,
    /// Code 9 (fairseq only).
    Uint32,
    /// Code 10 (fairseq only).
    Uint64,
}

impl TokenDtype {
    /// Every dtype, in code order.
    pub const ALL: [Self; 10] = [
        Self::Uint8,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Float64,
        Self::Float32,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
    ];

    /// The code stored at byte 17 of an `.idx`.
    pub const fn code(self) -> u8 {
        match self {
            Self::Uint8 => 1,
            Self::Int8 => 2,
            Self::Int16 => 3,
            Self::Int32 => 4,
            Self::Int64 => 5,
            Self::Float64 => 6,
            Self::Float32 => 7,
            Self::Uint16 => 8,
            Self::Uint32 => 9,
            Self::Uint64 => 10,
        }
    }

    /// The dtype of a code, if the code is known.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Uint8,
            2 => Self::Int8,
            3 => Self::Int16,
            4 => Self::Int32,
            5 => Self::Int64,
            6 => Self::Float64,
            7 => Self::Float32,
            8 => Self::Uint16,
            9 => Self::Uint32,
            10 => Self::Uint64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub const fn size_bytes(self) -> usize {
        match self {
            Self::Uint8 | Self::Int8 => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Int32 | Self::Float32 | Self::Uint32 => 4,
            Self::Int64 | Self::Float64 | Self::Uint64 => 8,
        }
    }

    /// Whether Megatron-core can read this dtype (codes 1..=8).
    pub const fn is_megatron(self) -> bool {
        self.code() <= 8
    }

    /// Megatron's `DType.optimal_dtype`: `uint16` when `vocab_size < 65500`, otherwise `int32`.
    pub const fn for_vocab_size(vocab_size: u64) -> Self {
        if vocab_size < 65_500 {
            Self::Uint16
        } else {
            Self::Int32
        }
    }

    /// The largest token id this dtype stores exactly.
    pub const fn max_token_id(self) -> u64 {
        match self {
            Self::Uint8 => u8::MAX as u64,
            Self::Int8 => i8::MAX as u64,
            Self::Int16 => i16::MAX as u64,
            Self::Uint16 => u16::MAX as u64,
            Self::Int32 => i32::MAX as u64,
            Self::Uint32 => u32::MAX as u64,
            Self::Float32 => 1 << f32::MANTISSA_DIGITS,
            Self::Float64 => 1 << f64::MANTISSA_DIGITS,
            Self::Int64 => i64::MAX as u64,
            Self::Uint64 => u64::MAX,
        }
    }

    /// The numpy name (`uint16`, `int32`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Uint8 => "uint8",
            Self::Int8 => "int8",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::Float64 => "float64",
            Self::Float32 => "float32",
            Self::Uint16 => "uint16",
            Self::Uint32 => "uint32",
            Self::Uint64 => "uint64",
        }
    }
}

impl fmt::Display for TokenDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the element type of some [`TokenDtype`].
pub trait Element: bytemuck::Pod + serde::Serialize + fmt::Debug {
    /// The matching dtype.
    const DTYPE: TokenDtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: TokenDtype = TokenDtype::$d; })*
    };
}

element!(u8 => Uint8, i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64, f64 => Float64,
         f32 => Float32, u16 => Uint16, u32 => Uint32, u64 => Uint64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_megatron_table() {
        for dtype in TokenDtype::ALL {
            assert_eq!(TokenDtype::from_code(dtype.code()), Some(dtype));
        }
        assert_eq!(TokenDtype::from_code(0), None);
        assert_eq!(TokenDtype::from_code(11), None);
        assert_eq!(TokenDtype::Float64.code(), 6);
        assert_eq!(TokenDtype::Float32.code(), 7);
        assert_eq!(TokenDtype::Uint16.code(), 8);
    }

    #[test]
    fn optimal_dtype_uses_megatrons_threshold() {
        assert_eq!(TokenDtype::for_vocab_size(50_257), TokenDtype::Uint16);
        assert_eq!(TokenDtype::for_vocab_size(65_499), TokenDtype::Uint16);
        assert_eq!(TokenDtype::for_vocab_size(65_500), TokenDtype::Int32);
        assert_eq!(TokenDtype::for_vocab_size(131_072), TokenDtype::Int32);
    }

    #[test]
    fn serde_names_are_numpy_names() {
        for dtype in TokenDtype::ALL {
            let json = serde_json::to_string(&dtype).unwrap();
            assert_eq!(json, format!("\"{}\"", dtype.name()));
        }
    }
}
