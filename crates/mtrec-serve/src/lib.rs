//! `mtrec-worker serve`: a trained MTRec model behind HTTP. The checkpoint is loaded once (its
//! config digest checked as `eval` checks it), every known news item is encoded once (or read
//! from `embed`'s file of the same checkpoint) into a `[news, d]` table kept on the model's
//! device, and requests are answered from it: rank candidates for a click history, recommend
//! the top k of the whole catalogue, add news while running, return user vectors. README,
//! "Serving", has the endpoints and what the service guarantees.
//!
//! Threads: tokio's runtime runs the HTTP side ([`api`]); one model thread ([`engine`]) owns
//! every tensor and answers queued requests in batches. SIGTERM (or SIGINT) stops accepting
//! connections, lets the requests in flight finish, and returns.

pub mod api;
pub mod catalogue;
pub mod engine;
pub mod error;
pub mod metrics;

use anyhow::{Context, bail};
use api::{AppState, Limits, Status};
use catalogue::Catalogue;
use engine::{BatchPolicy, Engine, Work};
use mtrec_data::read::NewsTable;
use mtrec_data::vectors::{read_news_vectors, read_vector_source};
use mtrec_prep::tokenize::TitleTokenizer;
use mtrec_train::checkpoint::Checkpoint;
use mtrec_train::config::Config;
use mtrec_train::setup::{self, Loaded};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// `serve`'s command line, after the config.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Address to listen on (`127.0.0.1:0`: a free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// News to serve: a shards folder (default: the config's data.shards), or a news-vector
    /// file written by `embed` from the same checkpoint.
    #[arg(long)]
    pub news: Option<PathBuf>,
    /// Requests answered by one model call, at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,
    /// While requests come concurrently, the longest a request waits for others to share its
    /// model call (milliseconds; 0: never wait).
    #[arg(long, default_value_t = 0.5, value_parser = non_negative)]
    pub batch_wait_ms: f64,
    #[arg(long, default_value_t = 1000)]
    pub max_candidates: usize,
    #[arg(long, default_value_t = 1000)]
    pub max_k: usize,
    /// News items per `/v1/news` request, at most.
    #[arg(long, default_value_t = 1000)]
    pub max_news: usize,
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Requests waiting for the model thread before new ones get 503 (overloaded).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Threads of the HTTP side (the model has its own thread).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_threads: u32,
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{text:?}: expected a number of milliseconds >= 0")),
    }
}

/// Where the catalogue's vectors come from.
enum NewsSource {
    /// Encode the news of the training shards.
    TrainingShards,
    /// Encode the news of another shards folder (same vocabularies).
    Shards(NewsTable),
    /// `embed`'s file, already checked against the checkpoint.
    Vectors(PathBuf),
}

/// Runs the service of the checkpoint trained under the config at `config` (with `overrides`)
/// until SIGTERM or SIGINT; returns when the requests in flight are answered.
pub fn serve(config: &Path, overrides: &[String], options: &ServeOptions) -> anyhow::Result<()> {
    // A panic in a request is that request's 500 (engine, api), never the end of the process.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    let config = Config::load(config, overrides)?;
    let checkpoint = Checkpoint::open(&options.checkpoint)?;
    setup::check_model_shape(&config, &checkpoint)?;
    let loaded = setup::load(&config, &mtrec_dist::Local)?;
    let source = news_source(options.news.as_deref(), &config, &checkpoint, &loaded)?;
    let tokenizer = TitleTokenizer::load(&loaded.model_dir, loaded.manifest.max_title_len as usize)?;
    let categories =
        loaded.manifest.categories.iter().enumerate().map(|(i, c)| (c.clone(), i as i64)).collect();
    if matches!(config.model.user_encoder, mtrec_model::UserEncoderKind::Lstur { .. }) {
        tracing::warn!(
            "LSTUR: requests carry no user id, so every user is served as one not seen in training \
             (user 0, as predict serves dev users absent from train)"
        );
    }
    let (queue, work) = std::sync::mpsc::sync_channel(options.queue as usize);
    let status = Arc::new(Status::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let state = AppState {
        queue,
        status: status.clone(),
        limits: Arc::new(Limits {
            history: config.data.history,
            max_candidates: options.max_candidates,
            max_k: options.max_k,
            max_news: options.max_news,
            max_body_bytes: options.max_body_bytes,
        }),
        tokenizer: Arc::new(tokenizer),
        categories: Arc::new(categories),
        category_required: config.model.amf,
        metrics: metrics.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.http_threads as usize)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&options.listen))
        .with_context(|| format!("--listen {}: cannot listen there", options.listen))?;
    let address = listener.local_addr()?;
    // Tests and scripts read this line to learn the port (`--listen 127.0.0.1:0`).
    println!("listening on http://{address}");
    std::io::Write::flush(&mut std::io::stdout())?;

    let (failed_tx, failed) = tokio::sync::oneshot::channel::<String>();
    let policy = BatchPolicy {
        max_batch: options.max_batch as usize,
        max_wait: std::time::Duration::from_secs_f64(options.batch_wait_ms / 1000.0),
    };
    let model_thread = std::thread::Builder::new().name("model".into()).spawn({
        let (status, metrics) = (status.clone(), metrics.clone());
        move || -> anyhow::Result<u64> {
            let mut engine = match build_engine(&config, &checkpoint, loaded, source) {
                Ok(engine) => engine,
                Err(e) => {
                    let _ = failed_tx.send(format!("{e:#}"));
                    return Err(e);
                }
            };
            let news = engine.catalogue.news();
            status.news.store(news, Ordering::Release);
            metrics.set_news(news);
            status.ready.store(true, Ordering::Release);
            tracing::info!("ready: {news} news");
            Ok(engine::run_batches(&work, policy, |batch: Vec<Work>| {
                metrics.batch(batch.len());
                engine.answer(batch);
            }))
        }
    })?;

    let started = Instant::now();
    let app = api::router(state);
    let stop = async move {
        tokio::select! {
            signal = stopping_signal() => tracing::info!("{signal}: no new connections; answering the requests in flight"),
            Ok(reason) = failed => tracing::error!("the model could not start: {reason}"),
        }
    };
    runtime.block_on(async {
        axum::serve(listener, app).with_graceful_shutdown(stop).await.context("serving HTTP")
    })?;
    // The router (and with it the queue's sender) is gone: the model thread ends after its batch.
    if !status.ready.load(Ordering::Acquire) {
        if model_thread.is_finished() {
            model_thread.join().map_err(|_| anyhow::anyhow!("the model thread panicked"))??;
        }
        bail!("stopped before the news table was built");
    }
    let batches = model_thread.join().map_err(|_| anyhow::anyhow!("the model thread panicked"))??;
    tracing::info!(
        "stopped after {:.1} s: {batches} model batches; {} news in the catalogue",
        started.elapsed().as_secs_f64(),
        status.news.load(Ordering::Acquire)
    );
    Ok(())
}

/// The name of the first of SIGTERM and SIGINT to arrive.
async fn stopping_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// `--news`: absent (the config's shards), a shards folder, or `embed`'s vector file, which
/// must come from this checkpoint under this model configuration.
fn news_source(
    news: Option<&Path>,
    config: &Config,
    checkpoint: &Checkpoint,
    loaded: &Loaded,
) -> anyhow::Result<NewsSource> {
    let Some(path) = news else {
        return Ok(NewsSource::TrainingShards);
    };
    if path.is_dir() {
        let mut other = config.clone();
        other.data.shards = path.to_path_buf();
        let shards = setup::load(&other, &mtrec_dist::Local)?;
        if shards.manifest.categories != loaded.manifest.categories {
            bail!(
                "--news {}: its category vocabulary differs from the training shards' ({}): \
                 prepare both with the same mtrec-prep run",
                path.display(),
                config.data.shards.display()
            );
        }
        return Ok(NewsSource::Shards(shards.news));
    }
    let expected = setup::vector_source(config, checkpoint);
    match read_vector_source(path)? {
        Some(found) if found == expected => Ok(NewsSource::Vectors(path.to_path_buf())),
        Some(found) => bail!(
            "--news {}: written from another model (model.safetensors sha256 {}, config digest {}) \
             than --checkpoint {} (sha256 {}, digest {}): run embed with this checkpoint and config",
            path.display(),
            found.model_sha256,
            found.config_digest,
            checkpoint.dir.display(),
            expected.model_sha256,
            expected.config_digest
        ),
        None => bail!(
            "--news {}: written without a checkpoint (pretrained weights): run embed --checkpoint {}",
            path.display(),
            checkpoint.dir.display()
        ),
    }
}

/// The model with the checkpoint's weights, and its catalogue (on the model thread).
fn build_engine(
    config: &Config,
    checkpoint: &Checkpoint,
    loaded: Loaded,
    source: NewsSource,
) -> anyhow::Result<Engine> {
    let device = setup::device(config.train.device, 0)?;
    let start = Instant::now();
    let (mut weights, model) = setup::trained_model(config, &loaded, Some(checkpoint), device)?;
    weights.freeze();
    let d = model.bert.config.hidden_size;
    let encode = |news: &NewsTable| -> anyhow::Result<Catalogue> {
        let tick = || Ok(());
        let batch = config.eval.news_batch;
        let table = mtrec_train::eval::news_vectors(&model, news, batch, device, &tick)?;
        Ok(Catalogue::new(table, news.news_id[1..].to_vec()))
    };
    let catalogue = match source {
        NewsSource::TrainingShards => encode(&loaded.news)?,
        NewsSource::Shards(news) => encode(&news)?,
        NewsSource::Vectors(path) => {
            let file = read_news_vectors(&path)?;
            if file.dim as i64 != d && !file.keys.is_empty() {
                bail!("{}: {}-d vectors, the model's are {d}-d", path.display(), file.dim);
            }
            let mut values = vec![0.0f32; d as usize];
            values.extend_from_slice(&file.values);
            let table = tch::Tensor::from_slice(&values).view([-1, d]).to_device(device);
            Catalogue::new(table, file.keys)
        }
    };
    tracing::info!(
        "news table: {} news, {d}-d, on {device:?}, built in {:.1} s",
        catalogue.news(),
        start.elapsed().as_secs_f64()
    );
    Ok(Engine { model, weights, catalogue, history: config.data.history, news_batch: config.eval.news_batch })
}
