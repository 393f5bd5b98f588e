//! The inference worker: one dedicated thread per loaded model that owns
//! the weights and runs every generation of the process.
//!
//! Concurrent generations share it by taking turns, one decode step each
//! (round-robin), so candle's compute threads (as many as cores) are never
//! oversubscribed by parallel requests. Each generation runs on its own
//! clone of candle's `ModelWeights`: the clone shares every weight tensor
//! (they are reference-counted) and has its own KV cache, which candle keeps
//! inside the layers. A long prompt is fed in chunks of
//! [`PREFILL_CHUNK`] tokens, one chunk per turn, so it does not stall the
//! generations already running.
//!
//! It takes at most [`MAX_GENERATIONS`](super::MAX_GENERATIONS) at once:
//! each job holds a slot from the moment it is handed over until it has
//! ended, and the job channel has room for exactly that many.
//!
//! Delivery is paced by the reader: a generation takes its next step only
//! once its reader has taken every chunk sent so far. At most one chunk is
//! thus in flight, the worker never generates far ahead of what anyone
//! reads, and a reader that stops reading (or drops the stream, which
//! cancels) lets at most one more token be computed. The worker waits for
//! readers and new requests without polling: it parks until a channel wakes
//! it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use agentic_core::llm::{ChatChunk, ChunkSender, LlmError, Usage};
use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::tokenizer::StreamDecoder;

/// Prompt tokens fed to the model per turn.
pub const PREFILL_CHUNK: usize = 256;

/// How one generation samples and when it stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationOptions {
    /// Most tokens to generate (the stop token included).
    pub max_tokens: u32,
    /// Sampling temperature; `None` or `<= 0` is greedy (argmax).
    pub temperature: Option<f64>,
    /// Nucleus sampling: sample from the smallest set of tokens whose
    /// probability adds up to `top_p`; `None` or `>= 1` samples from all.
    pub top_p: Option<f64>,
    /// The sampler's seed: the same seed, prompt and options give the same
    /// text.
    pub seed: u64,
    /// Keep generating past stop tokens, to exactly `max_tokens` (for
    /// benchmarks).
    pub ignore_stop: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn.
    Stop,
    /// `max_tokens` or the context's end was reached.
    Length,
    /// The reader dropped the stream.
    Cancelled,
    /// Inference failed.
    Failed(String),
}

/// How a generation ended, with its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationOutcome {
    /// Why it ended.
    pub reason: FinishReason,
    /// Prompt and generated token counts.
    pub usage: Usage,
}

/// Watches a generation from outside the stream: tokens generated so far
/// and how it ended.
#[derive(Debug, Clone)]
pub struct GenerationHandle {
    tokens: Arc<AtomicU64>,
    ids: Arc<Mutex<Vec<u32>>>,
    outcome: watch::Receiver<Option<GenerationOutcome>>,
}

impl GenerationHandle {
    /// Tokens sampled so far (the stop token included).
    pub fn tokens_generated(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }

    /// The ids of the tokens sampled so far, in order (the stop token
    /// included).
    pub fn token_ids(&self) -> Vec<u32> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    /// How it ended, or `None` while it runs.
    pub fn outcome(&self) -> Option<GenerationOutcome> {
        self.outcome.borrow().clone()
    }

    /// Waits until it has ended.
    pub async fn finished(&mut self) -> GenerationOutcome {
        let waited = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone());
        match waited {
            Ok(Some(outcome)) => outcome,
            // The worker is gone: what it last recorded, if anything.
            _ => self.outcome.borrow().clone().unwrap_or_else(stopped),
        }
    }
}

fn stopped() -> GenerationOutcome {
    GenerationOutcome {
        reason: FinishReason::Failed("the inference worker stopped".into()),
        usage: Usage::default(),
    }
}

/// A generation handed to the worker.
pub(crate) struct Job {
    pub(crate) prompt: Vec<u32>,
    pub(crate) options: GenerationOptions,
    pub(crate) tx: ChunkSender,
    tokens: Arc<AtomicU64>,
    ids: Arc<Mutex<Vec<u32>>>,
    outcome: watch::Sender<Option<GenerationOutcome>>,
    /// The job's place among the worker's
    /// [`MAX_GENERATIONS`](super::MAX_GENERATIONS), given back when it ends.
    slot: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// A job holding `slot`, and the handle that watches it.
    pub(crate) fn new(
        prompt: Vec<u32>,
        options: GenerationOptions,
        tx: ChunkSender,
        slot: OwnedSemaphorePermit,
    ) -> (Self, GenerationHandle) {
        let tokens = Arc::new(AtomicU64::new(0));
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (outcome, watcher) = watch::channel(None);
        let handle = GenerationHandle {
            tokens: tokens.clone(),
            ids: ids.clone(),
            outcome: watcher,
        };
        let job = Self {
            prompt,
            options,
            tx,
            tokens,
            ids,
            outcome,
            slot: Some(slot),
        };
        (job, handle)
    }
}

/// What the worker needs besides its jobs.
pub(crate) struct WorkerModel {
    pub(crate) weights: ModelWeights,
    pub(crate) token_bytes: Vec<Vec<u8>>,
    pub(crate) stop_ids: Vec<u32>,
    pub(crate) context_length: usize,
}

/// Starts the worker thread; it runs until every sender of `jobs` is gone
/// and its last generation has ended.
pub(crate) fn spawn(
    model: WorkerModel,
    jobs: mpsc::Receiver<Job>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lion-inference".into())
        .spawn(move || run(model, jobs))
}

/// One generation in progress.
struct Active {
    job: Job,
    weights: ModelWeights,
    sampler: LogitsProcessor,
    decoder: StreamDecoder,
    /// Prompt tokens fed so far.
    fed: usize,
    /// Tokens in the KV cache.
    pos: usize,
    /// The last token sampled, fed on the next step.
    last: u32,
    generated: u32,
}

/// What a step led to.
enum Step {
    /// More to come; the text completed by this step, if any.
    Continue(Option<String>),
    /// The generation ended, with its last text.
    Done(Option<String>, FinishReason),
}

impl Active {
    fn new(job: Job, model: &WorkerModel) -> Self {
        let o = job.options;
        let sampling = match o.temperature.filter(|t| *t > 0.0) {
            None => Sampling::ArgMax,
            Some(temperature) => match o.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
                Some(p) => Sampling::TopP { p, temperature },
                None => Sampling::All { temperature },
            },
        };
        let mut weights = model.weights.clone();
        weights.clear_kv_cache();
        Self {
            sampler: LogitsProcessor::from_sampling(o.seed, sampling),
            job,
            weights,
            decoder: StreamDecoder::default(),
            fed: 0,
            pos: 0,
            last: 0,
            generated: 0,
        }
    }

    /// One turn: a chunk of the prompt, or one token.
    fn step(&mut self, model: &WorkerModel) -> candle_core::Result<Step> {
        let device = Device::Cpu;
        let logits = if self.fed < self.job.prompt.len() {
            let end = (self.fed + PREFILL_CHUNK).min(self.job.prompt.len());
            let input = Tensor::new(&self.job.prompt[self.fed..end], &device)?.unsqueeze(0)?;
            let logits = self.weights.forward(&input, self.fed)?;
            self.pos = end;
            self.fed = end;
            if end < self.job.prompt.len() {
                return Ok(Step::Continue(None));
            }
            logits
        } else {
            let input = Tensor::new(&[self.last], &device)?.unsqueeze(0)?;
            let logits = self.weights.forward(&input, self.pos)?;
            self.pos += 1;
            logits
        };
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?;
        let token = self.sampler.sample(&logits)?;
        self.generated += 1;
        if let Ok(mut ids) = self.job.ids.lock() {
            ids.push(token);
        }
        self.job.tokens.fetch_add(1, Ordering::SeqCst);
        if !self.job.options.ignore_stop && model.stop_ids.contains(&token) {
            return Ok(Step::Done(self.decoder.finish(), FinishReason::Stop));
        }
        self.last = token;
        let bytes = model
            .token_bytes
            .get(token as usize)
            .map_or(&[][..], Vec::as_slice);
        let text = self.decoder.push(bytes);
        if self.generated >= self.job.options.max_tokens || self.pos >= model.context_length {
            let text = match (text, self.decoder.finish()) {
                (Some(a), Some(b)) => Some(a + &b),
                (a, b) => a.or(b),
            };
            return Ok(Step::Done(text, FinishReason::Length));
        }
        Ok(Step::Continue(text))
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.job.prompt.len() as u64,
            completion_tokens: u64::from(self.generated),
        }
    }

    /// Whether the reader has taken every chunk sent so far.
    fn reader_caught_up(&self) -> bool {
        self.job.tx.capacity() == self.job.tx.max_capacity()
    }

    /// Gives the job's slot back, then records the outcome for the handle
    /// (so whoever sees the outcome finds the slot free).
    fn conclude(&mut self, reason: FinishReason) {
        drop(self.job.slot.take());
        let _ = self.job.outcome.send(Some(GenerationOutcome {
            reason,
            usage: self.usage(),
        }));
    }
}

/// The worker's loop.
fn run(model: WorkerModel, mut jobs: mpsc::Receiver<Job>) {
    let mut active: Vec<Active> = Vec::new();
    let mut accepting = true;
    loop {
        while accepting {
            match jobs.try_recv() {
                Ok(job) => active.push(Active::new(job, &model)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => accepting = false,
            }
        }
        if active.is_empty() {
            if !accepting {
                return;
            }
            match jobs.blocking_recv() {
                Some(job) => active.push(Active::new(job, &model)),
                None => return,
            }
            continue;
        }

        let mut stepped = false;
        let mut i = 0;
        while i < active.len() {
            let generation = &mut active[i];
            if generation.job.tx.is_closed() {
                generation.conclude(FinishReason::Cancelled);
                active.swap_remove(i);
                continue;
            }
            if !generation.reader_caught_up() {
                i += 1;
                continue;
            }
            stepped = true;
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| generation.step(&model)));
            let (text, end) = match step {
                Ok(Ok(Step::Continue(text))) => (text, None),
                Ok(Ok(Step::Done(text, reason))) => (text, Some(reason)),
                Ok(Err(e)) => (None, Some(FinishReason::Failed(e.to_string()))),
                Err(_) => (
                    None,
                    Some(FinishReason::Failed("the model panicked".into())),
                ),
            };
            // The reader had taken everything, so these few chunks fit.
            let mut delivered = true;
            if let Some(text) = text {
                delivered = generation
                    .job
                    .tx
                    .try_send(Ok(ChatChunk::Text(text)))
                    .is_ok();
            }
            match end {
                None if delivered => i += 1,
                None => {
                    generation.conclude(FinishReason::Cancelled);
                    active.swap_remove(i);
                }
                Some(reason) => {
                    let tx = &generation.job.tx;
                    match &reason {
                        FinishReason::Failed(message) => {
                            let _ = tx.try_send(Err(LlmError::Local(format!(
                                "inference failed: {message}"
                            ))));
                        }
                        FinishReason::Stop | FinishReason::Length => {
                            let finish = if reason == FinishReason::Stop {
                                "stop"
                            } else {
                                "length"
                            };
                            let _ = tx.try_send(Ok(ChatChunk::Usage(generation.usage())));
                            let _ = tx.try_send(Ok(ChatChunk::Finished(Some(finish.into()))));
                        }
                        FinishReason::Cancelled => {}
                    }
                    generation.conclude(reason);
                    active.swap_remove(i);
                }
            }
        }

        if !stepped && !active.is_empty() {
            // Every generation waits for its reader: sleep until a reader
            // catches up (or leaves) or a new job arrives.
            match wait(&active, &mut jobs, accepting) {
                Woken::Job(job) => active.push(Active::new(job, &model)),
                Woken::NoMoreJobs => accepting = false,
                Woken::Reader => {}
            }
        }
    }
}

/// What ended a wait.
enum Woken {
    Job(Job),
    NoMoreJobs,
    Reader,
}

/// Blocks until a reader has taken all its chunks (or dropped its stream)
/// or, if `accepting`, a job arrives.
fn wait(active: &[Active], jobs: &mut mpsc::Receiver<Job>, accepting: bool) -> Woken {
    type Pending<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
    let mut readers: Vec<Pending<'_>> = active
        .iter()
        .map(|a| {
            let tx = &a.job.tx;
            Box::pin(async move {
                // Resolves once the whole buffer is free (permits dropped at
                // once) or the reader is gone.
                let _ = tx.reserve_many(tx.max_capacity()).await;
            }) as Pending<'_>
        })
        .collect();
    block_on(std::future::poll_fn(|cx| {
        if accepting {
            match jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) => return Poll::Ready(Woken::Job(job)),
                Poll::Ready(None) => return Poll::Ready(Woken::NoMoreJobs),
                Poll::Pending => {}
            }
        }
        for reader in &mut readers {
            if reader.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woken::Reader);
            }
        }
        Poll::Pending
    }))
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread, parking between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
