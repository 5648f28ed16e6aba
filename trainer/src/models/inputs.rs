//! A batch as the models take it: token ids, per-document positions, the attention mask or the packed
//! document list, and next-token labels that never cross a document boundary.
//!
//! Varlen: each sample's `cu_seqlens` (from flame-stream) restart the positions at every document; on
//! the CPU they make attention block-diagonal (a boolean mask for `scaled_dot_product_attention`), on
//! CUDA they become one packed `cu_seqlens` over the batch for flash attention. The label of the last
//! token of a document (the next document's first token) is ignored, so nothing is learnt across a
//! boundary. flame itself lets that token predict the next document's BOS; we do not.

use tch::{Device, Kind, Tensor};

/// Label id that the loss ignores.
pub const IGNORE: i64 = -100;

/// A batch as the model takes it: tokens `[B, T]` and, per sample, its `cu_seqlens`.
#[derive(Debug)]
pub struct Inputs {
    /// Token ids, int64 `[B, T]`.
    pub tokens: Tensor,
    /// Position of each token in its document, int64 `[B, T]`.
    pub positions: Tensor,
    /// `[B, 1, T, T]`, true where a query may attend to a key (causal and within its document), on the
    /// CPU; `None` for plain causal attention over the whole window, or on CUDA.
    pub mask: Option<Tensor>,
    /// On CUDA, for varlen batches: every document of the batch as one packed sequence list
    /// (`cu_seqlens` int32 over `B × T` tokens) and the longest, for flash attention.
    pub packed: Option<(Tensor, i64)>,
    /// Each sample's `cu_seqlens` over its inputs, as given (the linear mixers cut documents into
    /// chunks from them).
    pub documents: Vec<Vec<u32>>,
    /// Next-token labels, [`IGNORE`] across document boundaries: `[B, T - 1]` for samples of `T`
    /// tokens (the last position has no label), `[B, T]` for Megatron's samples of `T + 1`.
    pub labels: Tensor,
}

impl Inputs {
    /// Tokens per sample's inputs.
    pub fn seq_len(&self) -> usize {
        usize::try_from(self.tokens.size()[1]).expect("a length")
    }

    /// Builds the inputs of samples of `seq_len` tokens each (`tokens` row-major) with their boundaries.
    ///
    /// # Panics
    /// If the shapes disagree.
    pub fn new(tokens: &[u32], seq_len: usize, cu_seqlens: &[Vec<u32>], device: Device) -> Self {
        Self::build(tokens, seq_len, 0, cu_seqlens, device)
    }

    /// Builds the inputs of Megatron's samples, `seq_len + 1` tokens each (`order = "megatron"`):
    /// inputs are each sample's first `seq_len` tokens, labels its last `seq_len` (`[:-1]` and `[1:]`,
    /// as megatron-core's `GPTDataset` gives them), `cu_seqlens` over the inputs.
    ///
    /// # Panics
    /// If the shapes disagree.
    pub fn with_next_token(
        tokens: &[u32],
        seq_len: usize,
        cu_seqlens: &[Vec<u32>],
        device: Device,
    ) -> Self {
        Self::build(tokens, seq_len, 1, cu_seqlens, device)
    }

    /// Samples of `seq_len + extra` tokens, of which the first `seq_len` are inputs.
    fn build(
        tokens: &[u32],
        seq_len: usize,
        extra: usize,
        cu_seqlens: &[Vec<u32>],
        device: Device,
    ) -> Self {
        let batch = cu_seqlens.len();
        let sample_len = seq_len + extra;
        assert_eq!(
            tokens.len(),
            batch * sample_len,
            "tokens are [B, sample_len]"
        );
        let mut ids = Vec::with_capacity(batch * seq_len);
        let mut positions = Vec::with_capacity(batch * seq_len);
        let mut documents = Vec::with_capacity(batch * seq_len);
        let mut labels = Vec::with_capacity(batch * (sample_len - 1));
        let varlen = cu_seqlens.iter().any(|cu| cu.len() > 2);
        let as_i64 = |n: usize| i64::try_from(n).expect("sizes fit i64");
        for (sample, cu) in cu_seqlens.iter().enumerate() {
            let row = &tokens[sample * sample_len..(sample + 1) * sample_len];
            let mut doc = 0usize;
            let mut start = 0usize;
            for at in 0..seq_len {
                if cu.get(doc + 1).is_some_and(|&c| c as usize == at) {
                    doc += 1;
                    start = at;
                }
                ids.push(i64::from(row[at]));
                positions.push(as_i64(at - start));
                documents.push(as_i64(doc));
                if at + 1 < sample_len {
                    // `cu_seqlens` end at `seq_len`: Megatron's extra label token starts nothing.
                    // The next boundary after this token's document start is `cu[doc + 1]` (one
                    // lookup per token: a scan of `cu` was milliseconds per 64K-token batch).
                    let starts_document =
                        at + 1 < seq_len && cu.get(doc + 1).is_some_and(|&c| c as usize == at + 1);
                    labels.push(if starts_document {
                        IGNORE
                    } else {
                        i64::from(row[at + 1])
                    });
                }
            }
        }
        let (b, t) = (as_i64(batch), as_i64(seq_len));
        let packed = (varlen && device.is_cuda()).then(|| {
            let mut flat = vec![0i32];
            let mut longest = 0u32;
            for (sample, cu) in cu_seqlens.iter().enumerate() {
                let base = u32::try_from(sample * seq_len).expect("batch tokens fit u32");
                for pair in cu.windows(2) {
                    longest = longest.max(pair[1] - pair[0]);
                    flat.push(i32::try_from(base + pair[1]).expect("batch tokens fit i32"));
                }
            }
            (
                upload(Tensor::from_slice(&flat), device),
                i64::from(longest),
            )
        });
        let mask = (varlen && !device.is_cuda()).then(|| {
            let documents = upload(Tensor::from_slice(&documents).view([b, t]), device);
            let same = documents.unsqueeze(2).eq_tensor(&documents.unsqueeze(1));
            let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
            same.logical_and(&causal).unsqueeze(1)
        });
        Self {
            documents: cu_seqlens.to_vec(),
            tokens: upload(Tensor::from_slice(&ids).view([b, t]), device),
            positions: upload(Tensor::from_slice(&positions).view([b, t]), device),
            mask,
            packed,
            labels: upload(Tensor::from_slice(&labels).view([b, -1]), device),
        }
    }
}

/// Moves a host tensor to `device`: on CUDA through pinned memory without waiting, so that the copy
/// queues behind the GPU's work instead of blocking the host until it is done.
fn upload(t: Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        crate::shim::pin_memory(&t)
            .expect("pinned host memory")
            .to_device_(device, t.kind(), true, false)
    } else {
        t
    }
}
