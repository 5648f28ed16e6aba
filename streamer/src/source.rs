//! Documents of one dataset as the stream sees them: a count, lengths, and tokens by range.
//!
//! A flame-prep output or a Megatron prefix is a [`flame_formats::Corpus`]; each of its sequences is a
//! document (flame-prep writes one sequence per document). [`SplitView`] restricts a dataset to the
//! train, valid or test range of Megatron's split string, cut as megatron-core cuts it.

use std::ops::Range;

use flame_formats::{Corpus, TokenDtype};

/// What the stream needs of a dataset.
pub trait Documents: Send + Sync {
    /// Number of documents.
    fn num_documents(&self) -> u64;
    /// Tokens of document `d`.
    fn document_len(&self, d: u64) -> u64;
    /// Appends tokens `range` of document `d` to `out`.
    fn read(&self, d: u64, range: Range<u64>, out: &mut Vec<u32>) -> flame_formats::Result<()>;
    /// The stored `cu_seqlens` of `d` when it is a window packed ahead of time (flame-prep's packed
    /// output), which the stream then serves as they are.
    fn window_boundaries(&self, _d: u64) -> flame_formats::Result<Option<Vec<u32>>> {
        Ok(None)
    }
    /// The window length, when every document is a window packed ahead of time.
    fn packed_seq_len(&self) -> Option<u32> {
        None
    }
}

fn out_of_range(what: &'static str, index: u64, count: u64) -> flame_formats::Error {
    flame_formats::Error::OutOfRange {
        path: "documents".into(),
        what,
        index,
        count,
    }
}

impl Documents for Corpus {
    fn num_documents(&self) -> u64 {
        self.num_sequences()
    }

    fn window_boundaries(&self, d: u64) -> flame_formats::Result<Option<Vec<u32>>> {
        self.window_cu_seqlens(d)
    }

    fn packed_seq_len(&self) -> Option<u32> {
        Corpus::packed_seq_len(self)
    }

    fn document_len(&self, d: u64) -> u64 {
        self.sequence(d).map_or(0, |s| s.len() as u64)
    }

    fn read(&self, d: u64, range: Range<u64>, out: &mut Vec<u32>) -> flame_formats::Result<()> {
        let slice = self.sequence(d)?;
        if range.end > slice.len() as u64 || range.start > range.end {
            return Err(out_of_range("token", range.end, slice.len() as u64));
        }
        #[allow(clippy::cast_possible_truncation)] // below the slice's length
        let (start, end) = (range.start as usize, range.end as usize);
        #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
        // ids are checked by the writer
        match slice.dtype() {
            TokenDtype::Uint16 => {
                out.extend(
                    slice
                        .as_slice::<u16>()
                        .expect("dtype")
                        .get(start..end)
                        .unwrap_or(&[])
                        .iter()
                        .map(|&t| u32::from(t)),
                );
            }
            TokenDtype::Int32 => {
                // Non-negative int32 ids have the same bits as u32: a plain copy.
                let ids: &[i32] = slice
                    .as_slice::<i32>()
                    .expect("dtype")
                    .get(start..end)
                    .unwrap_or(&[]);
                out.extend_from_slice(bytemuck::cast_slice(ids));
            }
            _ => {
                out.extend(slice.to_i64_vec()[start..end].iter().map(|&t| t as u32));
            }
        }
        Ok(())
    }
}

impl<D: Documents + ?Sized> Documents for Box<D> {
    fn num_documents(&self) -> u64 {
        (**self).num_documents()
    }

    fn document_len(&self, d: u64) -> u64 {
        (**self).document_len(d)
    }

    fn read(&self, d: u64, range: Range<u64>, out: &mut Vec<u32>) -> flame_formats::Result<()> {
        (**self).read(d, range, out)
    }

    fn window_boundaries(&self, d: u64) -> flame_formats::Result<Option<Vec<u32>>> {
        (**self).window_boundaries(d)
    }

    fn packed_seq_len(&self) -> Option<u32> {
        (**self).packed_seq_len()
    }
}

/// Documents as a plain list (tests, and small in-memory datasets).
impl Documents for Vec<Vec<u32>> {
    fn num_documents(&self) -> u64 {
        self.len() as u64
    }

    fn document_len(&self, d: u64) -> u64 {
        self.get(usize::try_from(d).unwrap_or(usize::MAX))
            .map_or(0, |v| v.len() as u64)
    }

    fn read(&self, d: u64, range: Range<u64>, out: &mut Vec<u32>) -> flame_formats::Result<()> {
        let doc = usize::try_from(d)
            .ok()
            .and_then(|d| self.get(d))
            .ok_or_else(|| out_of_range("document", d, self.len() as u64))?;
        let tokens = usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(s, e)| doc.get(s..e))
            .ok_or_else(|| out_of_range("token", range.end, doc.len() as u64))?;
        out.extend_from_slice(tokens);
        Ok(())
    }
}

/// Documents `range` of another dataset, renumbered from 0.
pub struct SplitView<D> {
    inner: D,
    range: Range<u64>,
}

impl<D> std::fmt::Debug for SplitView<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitView")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl<D: Documents> SplitView<D> {
    /// The split `index` (0 train, 1 valid, 2 test) of `inner` for Megatron's split string `split`
    /// (`None`: everything is train), with megatron-core's rounding
    /// ([`split_range`](crate::megatron::split_range)), so both orders cut datasets as Megatron does.
    ///
    /// # Errors
    /// A split string that does not parse.
    pub fn new(inner: D, split: Option<&str>, index: usize) -> Result<Self, String> {
        let matrix = crate::megatron::split_matrix(split.unwrap_or("1"))?;
        let range = crate::megatron::split_range(matrix[index], inner.num_documents());
        Ok(Self { inner, range })
    }

    /// Documents `range` of `inner`.
    pub fn with_range(inner: D, range: Range<u64>) -> Self {
        Self { inner, range }
    }

    /// The range of `inner` this view shows.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }
}

impl<D: Documents> Documents for SplitView<D> {
    fn num_documents(&self) -> u64 {
        self.range.end - self.range.start
    }

    fn document_len(&self, d: u64) -> u64 {
        self.inner.document_len(self.range.start + d)
    }

    fn read(&self, d: u64, range: Range<u64>, out: &mut Vec<u32>) -> flame_formats::Result<()> {
        self.inner.read(self.range.start + d, range, out)
    }

    fn window_boundaries(&self, d: u64) -> flame_formats::Result<Option<Vec<u32>>> {
        self.inner.window_boundaries(self.range.start + d)
    }

    fn packed_seq_len(&self) -> Option<u32> {
        self.inner.packed_seq_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_views_cut_megatron_core_ranges() {
        let docs = || (1..=10u32).map(|n| vec![n; n as usize]).collect::<Vec<_>>();
        let view = SplitView::new(docs(), Some("8,1,1"), 0).unwrap();
        assert_eq!(view.range(), 0..8);
        let view = SplitView::new(docs(), Some("8,1,1"), 2).unwrap();
        assert_eq!((view.num_documents(), view.document_len(0)), (1, 10));
        assert_eq!(SplitView::new(docs(), None, 1).unwrap().num_documents(), 0);
        assert!(SplitView::new(docs(), Some("1,2,3,4"), 0).is_err());
    }
}
