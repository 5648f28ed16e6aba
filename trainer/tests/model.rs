//! The transformer on CPU: varlen inputs, GQA and tied embeddings build, a tiny model learns, and the
//! chunked loss and activation checkpointing give the plain backward pass's gradients.

use flame_trainer::config::ModelConfig;
use flame_trainer::models::{CausalLm, Checkpointing, IGNORE, Inputs, Model};
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, nn};

fn tiny(extra: &str) -> ModelConfig {
    ModelConfig::from_json(&format!(
        r#"{{"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 2, "num_heads": 4,
            "vocab_size": 64, "intermediate_size": 48 {extra}}}"#
    ))
    .unwrap()
}

#[test]
fn varlen_inputs_restart_positions_and_mask_labels_at_documents() {
    let tokens: Vec<u32> = (0..16).collect();
    let inputs = Inputs::new(&tokens, 8, &[vec![0, 3, 8], vec![0, 8]], Device::Cpu);
    let positions: Vec<i64> = inputs.positions.reshape([-1]).try_into().unwrap();
    assert_eq!(positions, [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7]);
    let labels: Vec<i64> = inputs.labels.reshape([-1]).try_into().unwrap();
    assert_eq!(
        labels,
        [1, 2, IGNORE, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
    );
    let mask = inputs.mask.unwrap();
    assert_eq!(mask.size(), [2, 1, 8, 8]);
    // Token 4 (document 2 of sample 0) sees tokens 3 and 4 only.
    let row: Vec<bool> = mask.get(0).get(0).get(4).try_into().unwrap();
    assert_eq!(row, [false, false, false, true, true, false, false, false]);
    // Whole windows need no mask: plain causal attention.
    assert!(
        Inputs::new(&tokens, 8, &[vec![0, 8], vec![0, 8]], Device::Cpu)
            .mask
            .is_none()
    );
}

#[test]
fn attention_never_crosses_a_document_boundary() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &tiny(""));
    // Two documents packed in one window give the logits of each document alone.
    let (a, b): (Vec<u32>, Vec<u32>) = ((1..6).collect(), (20..23).collect());
    let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
    let together = model.forward(&Inputs::new(&packed, 8, &[vec![0, 5, 8]], Device::Cpu));
    let alone = model.forward(&Inputs::new(&b, 3, &[vec![0, 3]], Device::Cpu));
    let diff = (together.narrow(1, 5, 3) - alone)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn a_tiny_model_learns_and_gqa_and_tied_variants_run() {
    for extra in [
        "",
        r#", "num_kv_heads": 2"#,
        r#", "tie_word_embeddings": true"#,
    ] {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = tiny(extra);
        let model = CausalLm::new(&vs.root(), &config);
        let mut opt = nn::AdamW::default()
            .beta1(0.9)
            .beta2(0.95)
            .wd(0.1)
            .build(&vs, 3e-3)
            .unwrap();
        let tokens: Vec<u32> = (0..64).map(|i| (i * 7 + 3) % 64).collect();
        let inputs = Inputs::new(&tokens, 32, &[vec![0, 10, 32], vec![0, 32]], Device::Cpu);
        let first = model.loss(&inputs).double_value(&[]);
        for _ in 0..60 {
            let loss = model.loss(&inputs);
            opt.backward_step_clip_norm(&loss, 1.0);
        }
        let last = model.loss(&inputs).double_value(&[]);
        assert!(last < first * 0.5, "{extra}: loss {first} -> {last}");
        assert_eq!(model.forward(&inputs).kind(), Kind::Float);
    }
}

fn gradients(vs: &nn::VarStore) -> Vec<(String, tch::Tensor)> {
    let mut grads: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.grad().copy()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

#[test]
fn the_chunked_loss_and_full_checkpointing_give_the_plain_backward_gradients() {
    for extra in [r#", "num_kv_heads": 2"#, r#", "tie_word_embeddings": true"#] {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = CausalLm::new(&vs.root(), &tiny(extra));
        let tokens: Vec<u32> = (0..64).map(|i| (i * 11 + 5) % 64).collect();
        let inputs = Inputs::new(
            &tokens,
            32,
            &[vec![0, 10, 32], vec![0, 20, 32]],
            Device::Cpu,
        );
        let reference = model.loss(&inputs) * 0.5;
        reference.backward();
        let (want_loss, want) = (reference.double_value(&[]) * 2.0, gradients(&vs));
        for (rows, mode) in [
            (1 << 20, Checkpointing::None),
            (5, Checkpointing::None),
            (7, Checkpointing::Full),
            (1 << 20, Checkpointing::Full),
        ] {
            for (_, mut t) in vs.variables() {
                t.zero_grad();
            }
            model.set_loss_chunk(rows);
            let mut segments = Vec::new();
            let loss = model
                .forward_backward(&inputs, 0.5, mode, &mut |segment| {
                    segments.push(segment);
                    Ok(())
                })
                .unwrap()
                .double_value(&[]);
            assert!(
                (loss - want_loss).abs() < 1e-6,
                "{extra} {rows} {mode:?}: loss {loss} vs {want_loss}"
            );
            for ((name, got), (_, want)) in gradients(&vs).iter().zip(&want) {
                let scale = want.abs().max().double_value(&[]).max(1e-3);
                let diff = (got - want).abs().max().double_value(&[]) / scale;
                assert!(
                    diff < 1e-5,
                    "{extra} {rows} {mode:?}: {name} differs by {diff:.2e}"
                );
            }
        }
    }
}

/// Issue 16: megatron-core's samples are `seq_len + 1` tokens; the model trains on `[:-1]` with labels
/// `[1:]`, the last label included, document boundaries inside the inputs masked as for flame's order.
#[test]
fn megatron_samples_give_inputs_without_the_last_token_and_labels_without_the_first() {
    let tokens: Vec<u32> = (0..18).collect();
    let inputs = Inputs::with_next_token(&tokens, 8, &[vec![0, 3, 8], vec![0, 8]], Device::Cpu);
    assert_eq!(inputs.tokens.size(), [2, 8]);
    let ids: Vec<i64> = inputs.tokens.reshape([-1]).try_into().unwrap();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16]);
    let labels: Vec<i64> = inputs.labels.reshape([-1]).try_into().unwrap();
    assert_eq!(
        labels,
        [1, 2, IGNORE, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17]
    );
    let positions: Vec<i64> = inputs.positions.reshape([-1]).try_into().unwrap();
    assert_eq!(positions, [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7]);
    // The loss covers every label: the chunked path agrees with the plain one.
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ModelConfig::from_json(
        r#"{"model_type": "transformer", "hidden_size": 32, "num_hidden_layers": 1, "num_heads": 4,
            "vocab_size": 32, "intermediate_size": 48}"#,
    )
    .unwrap();
    let model = CausalLm::new(&vs.root(), &config);
    let plain = model.loss(&inputs).double_value(&[]);
    let chunked = model
        .forward_backward(&inputs, 1.0, Checkpointing::None, &mut |_| Ok(()))
        .unwrap()
        .double_value(&[]);
    assert!((plain - chunked).abs() < 1e-5, "{plain} vs {chunked}");
}

/// Issue 16: fla builds `nn.Embedding(..., padding_idx=pad_token_id)` (flame's transformer_1B.json sets
/// 2): the lookup never trains that row. Untied, its gradient stays zero; the other rows learn.
#[test]
fn the_padding_row_of_the_embedding_gets_no_gradient_from_the_lookup() {
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = CausalLm::new(&vs.root(), &tiny(r#", "pad_token_id": 2"#));
    let tokens: Vec<u32> = (0..32).map(|i| [2, 5, 7, 2, 9][i % 5]).collect();
    let inputs = Inputs::new(&tokens, 16, &[vec![0, 16], vec![0, 16]], Device::Cpu);
    let _loss = model
        .forward_backward(&inputs, 1.0, Checkpointing::None, &mut |_| Ok(()))
        .unwrap();
    let grad = vs
        .variables()
        .remove("model.embed_tokens.weight")
        .unwrap()
        .grad();
    let row = |i: i64| grad.get(i).abs().sum(Kind::Float).double_value(&[]);
    assert!(row(2) == 0.0, "the padding row has a gradient");
    assert!(row(5) > 0.0 && row(7) > 0.0);
}
