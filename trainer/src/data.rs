//! Data input: the job spec `--data-job` names, checked against the flags and the model, and the
//! micro-batches of this rank from flame-stream (through shared memory on the server's host), turned into
//! the models' [`Inputs`].

use anyhow::{Context, bail};
use flame_streamer::client::{Client, resume_cursors};
use flame_streamer::online::Cursor;
use flame_streamer::server::Endpoint;
use flame_streamer::spec::{JobSpec, Order};
use tch::Device;

use crate::cli::Args;
use crate::config::{Mixer, ModelConfig};
use crate::models::Inputs;

/// Checks the data job against the flags and the model before any step runs.
///
/// # Errors
/// When the job's batches or sequences are not the ones the flags train.
pub fn check_job(
    args: &Args,
    job: &JobSpec,
    config: &ModelConfig,
    world: u32,
) -> anyhow::Result<()> {
    let want_global = args.batch_size * args.gradient_accumulation_steps * world;
    if job.seq_len != args.seq_len {
        bail!(
            "the data job serves seq_len {}, the run trains --training.seq_len {}",
            job.seq_len,
            args.seq_len
        );
    }
    if job.micro_batch_size != args.batch_size || job.global_batch_size != want_global {
        bail!(
            "the data job's batches (micro {}, global {}) are not --training.batch_size {} × gradient_accumulation_steps {} × {world} ranks",
            job.micro_batch_size,
            job.global_batch_size,
            args.batch_size,
            args.gradient_accumulation_steps
        );
    }
    if job.varlen != args.varlen {
        bail!(
            "the data job has varlen = {}, the run --training.varlen {}",
            job.varlen,
            args.varlen
        );
    }
    if config.vocab_size == 0 {
        bail!("the model has no vocabulary");
    }
    // The longest stretch one token's attention covers: the sample, or its longest document.
    let (span, what) = match (job.varlen, job.context_len) {
        (true, Some(context)) if context < job.seq_len => (context, "the job's context_len"),
        _ => (job.seq_len, "seq_len"),
    };
    if let Mixer::Attention(a) = &config.mixer
        && let Some(window) = a.window_size
        && span > window
    {
        bail!(
            "the model's window_size {window} (a sliding window) is shorter than the run's \
             attention span ({what} {span}); flame-train's attention sees the whole span, which \
             would train another model: train with a span of at most {window} tokens"
        );
    }
    if let Some(gpt2) = config.gpt2()
        && span > gpt2.n_positions
    {
        bail!(
            "the model has {} learned positions (n_positions), fewer than the run's attention span \
             ({what} {span}): train with a span of at most {} tokens, or a config with more positions",
            gpt2.n_positions,
            gpt2.n_positions
        );
    }
    Ok(())
}

/// This rank's micro-batches of the job, from flame-stream.
#[derive(Debug)]
pub struct DataInput {
    client: Client,
    /// Whether batches come through a shared-memory ring (a Unix socket on the server's host).
    shared_memory: bool,
    seq_len: usize,
    /// Whether samples carry one token more than the inputs (megatron-core's order: `seq_len + 1`
    /// tokens, inputs `[:-1]`, labels `[1:]`).
    next_token: bool,
    vocab_size: u32,
    device: Device,
    /// For a job that streams raw datasets: where to ask for the resume cursors a checkpoint keeps.
    resume: Option<(Endpoint, JobSpec, Option<String>)>,
    /// A micro-batch fetched ahead ([`Self::prefetch`]): its (step, micro-step) and what fetching gave.
    ahead: Option<((u64, u64), anyhow::Result<Inputs>)>,
}

impl DataInput {
    /// Connects rank `rank` of `world` to the data service at `endpoint` for `job`; on a Unix socket, with a ring of
    /// four slots.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses the job, or serves samples of another length than
    /// the job's (`seq_len`, or `seq_len + 1` in megatron-core's order).
    pub fn connect(
        args: &Args,
        endpoint: &Endpoint,
        job: &JobSpec,
        (rank, world): (u32, u32),
        vocab_size: u32,
        device: Device,
    ) -> anyhow::Result<Self> {
        let token = args.data_token.as_deref();
        let mut client = Client::connect(endpoint.clone(), job, rank, world, token, 8)
            .with_context(|| format!("the data service at {endpoint}"))?;
        // On the server's host, batches come through shared memory.
        let shared_memory = matches!(endpoint, Endpoint::Unix(_));
        if shared_memory {
            client.open_shared_memory(4)?;
        }
        // Checked before the first step: megatron-core's samples carry the next token of the last input.
        let next_token = job.order == Order::Megatron;
        let want = args.seq_len + u32::from(next_token);
        if client.tokens_per_sample != want {
            bail!(
                "the data service at {endpoint}: it serves samples of {} tokens; this job's are {want} (seq_len {}{})",
                client.tokens_per_sample,
                args.seq_len,
                if next_token {
                    " + 1, megatron-core's order"
                } else {
                    ""
                }
            );
        }
        let resume = (job.streaming && job.has_raw_datasets())
            .then(|| (endpoint.clone(), job.clone(), args.data_token.clone()));
        Ok(Self {
            client,
            shared_memory,
            seq_len: args.seq_len as usize,
            next_token,
            vocab_size,
            device,
            resume,
            ahead: None,
        })
    }

    /// For a job that streams raw datasets (none otherwise): the cursors a checkpoint at `step` keeps,
    /// after giving the server `given`, those of the checkpoint being resumed, so that a restarted or
    /// fresh server continues the stream without replaying it
    /// ([`flame_streamer::client::resume_cursors`]).
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub fn stream_cursors(
        &self,
        step: u64,
        given: &[(u32, Cursor)],
    ) -> anyhow::Result<Vec<(u32, Cursor)>> {
        let Some((endpoint, job, token)) = &self.resume else {
            return Ok(Vec::new());
        };
        resume_cursors(endpoint, job, (step, given), token.as_deref(), 8).with_context(|| {
            format!("--data-endpoint {endpoint}: the stream's resume cursors at step {step}")
        })
    }

    /// The job's fingerprint, as the server computed it.
    pub fn fingerprint(&self) -> &str {
        &self.client.fingerprint
    }

    /// The micro-batch (`step`, `micro_step`) of this rank, on the device: the one fetched ahead if it
    /// is that one.
    ///
    /// # Errors
    /// When the server cannot serve it, or it holds a token outside the model's vocabulary.
    pub fn micro_batch(&mut self, step: u64, micro_step: u64) -> anyhow::Result<Inputs> {
        match self.ahead.take() {
            Some((at, inputs)) if at == (step, micro_step) => inputs,
            _ => self.fetch(step, micro_step),
        }
    }

    /// Fetches micro-batch (`step`, `micro_step`) now, for [`Self::micro_batch`] to return: called while
    /// the GPU works through the step before it, the host's share of the batch (the server's reply,
    /// the inputs built and queued for upload) overlaps that work. An error waits for the batch to
    /// be asked for.
    pub fn prefetch(&mut self, step: u64, micro_step: u64) {
        let inputs = self.fetch(step, micro_step);
        self.ahead = Some(((step, micro_step), inputs));
    }

    fn fetch(&mut self, step: u64, micro_step: u64) -> anyhow::Result<Inputs> {
        let sample_len = self.seq_len + usize::from(self.next_token);
        let shape = |tokens: usize, samples: usize| {
            if tokens == samples * sample_len {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "step {step}: the server sent {samples} samples of {tokens} tokens in all; this job's samples have {sample_len}"
                ))
            }
        };
        let build = |tokens: &[u32], cu: &[Vec<u32>]| {
            if self.next_token {
                Inputs::with_next_token(tokens, self.seq_len, cu, self.device)
            } else {
                Inputs::new(tokens, self.seq_len, cu, self.device)
            }
        };
        Ok(if self.shared_memory {
            let b = self.client.micro_batch_in_place(step, micro_step)?;
            shape(b.tokens().len(), b.len())?;
            check_vocabulary(step, b.tokens(), self.vocab_size)?;
            let cu: Vec<Vec<u32>> = (0..b.len()).map(|i| b.cu_seqlens(i).to_vec()).collect();
            build(b.tokens(), &cu)
        } else {
            let samples = self.client.micro_batch(step, micro_step)?;
            let tokens: Vec<u32> = samples.iter().flat_map(|x| x.tokens.clone()).collect();
            shape(tokens.len(), samples.len())?;
            check_vocabulary(step, &tokens, self.vocab_size)?;
            let cu: Vec<Vec<u32>> = samples.iter().map(|x| x.cu_seqlens.clone()).collect();
            build(&tokens, &cu)
        })
    }
}

fn check_vocabulary(step: u64, tokens: &[u32], vocab_size: u32) -> anyhow::Result<()> {
    if let Some(&bad) = tokens.iter().find(|&&t| t >= vocab_size) {
        bail!(
            "step {step}: the stream holds token id {bad}, outside the model's vocabulary of {vocab_size}"
        );
    }
    Ok(())
}
