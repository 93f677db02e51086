//! `mtrec-load`: an HTTP load generator for `mtrec-worker serve`, bounded in requests and in
//! time, against a loopback address only. Bodies are made from the news ids of a shards folder
//! (random histories and candidates, seeded), POSTed by `--concurrency` clients on keep-alive
//! connections; it reports requests/s and latency percentiles, with every non-200 counted.
//!
//! ```text
//! mtrec-load --url http://127.0.0.1:8080 --endpoint rank --shards data/shards \
//!     --history 50 --candidates 20 --concurrency 16 --requests 20000 --max-seconds 60
//! ```
use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Endpoint {
    Rank,
    Recommend,
    Users,
    /// `/v1/news`: one news item per request, id `load-N`, title and category of `--titles`.
    News,
}

#[derive(Parser, Debug)]
#[command(name = "mtrec-load", about = "Load generator for mtrec-worker serve (loopback only)")]
struct Args {
    /// The service, e.g. http://127.0.0.1:8080 (a loopback address).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    endpoint: Endpoint,
    /// Shards folder whose news ids the bodies use.
    #[arg(long)]
    shards: PathBuf,
    #[arg(long, default_value_t = 50)]
    history: usize,
    /// Candidates per `rank` request.
    #[arg(long, default_value_t = 20)]
    candidates: usize,
    /// `k` of each `recommend` request.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Clients sending at once, each waiting for its answer before the next request.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests in all, at most.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Seconds, at most (requests not started by then are not sent).
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Requests sent (and not counted) before the measured ones, to open connections.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// With `--endpoint news`: a MIND `news.tsv` whose titles and categories the added news take.
    #[arg(long, required_if_eq("endpoint", "news"))]
    titles: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    json: bool,
    /// A label copied into the report (which server setup was measured).
    #[arg(long, default_value = "")]
    tag: String,
}

/// Distinct bodies made, then sent in turn.
const BODIES: usize = 1024;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = reqwest::Url::parse(&args.url).with_context(|| format!("--url {}", args.url))?;
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("--url {}: mtrec-load sends load to a loopback address only", args.url);
    }
    let path = match args.endpoint {
        Endpoint::Rank => "v1/rank",
        Endpoint::Recommend => "v1/recommend",
        Endpoint::Users => "v1/users",
        Endpoint::News => "v1/news",
    };
    let target = url.join(path)?;
    let news = mtrec_data::read::read_news(&args.shards)?.news_id.split_off(1);
    if news.len() < args.history.max(args.candidates) {
        bail!("{}: {} news, fewer than a body needs", args.shards.display(), news.len());
    }
    let titles = match &args.titles {
        Some(path) => read_titles(path)?,
        None => Vec::new(),
    };
    let bodies = Arc::new(make_bodies(&args, &news, &titles));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args, target, bodies))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:?} concurrency {}: {} requests ({} errors) in {:.2} s: {:.0} requests/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.endpoint,
            args.concurrency,
            report["requests"],
            report["errors"],
            report["seconds"].as_f64().unwrap_or(0.0),
            report["requests_per_s"].as_f64().unwrap_or(0.0),
            report["p50_ms"].as_f64().unwrap_or(0.0),
            report["p90_ms"].as_f64().unwrap_or(0.0),
            report["p99_ms"].as_f64().unwrap_or(0.0),
            report["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
    if report["errors"].as_u64() != Some(0) {
        bail!("{} requests failed (first: {})", report["errors"], report["first_error"]);
    }
    Ok(())
}

/// `(category, title)` of every line of a MIND `news.tsv`.
fn read_titles(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let titles: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols.len() > 3).then(|| (cols[1].to_string(), cols[3].to_string()))
        })
        .collect();
    if titles.is_empty() {
        bail!("{}: no news lines (id, category, subcategory, title, ...)", path.display());
    }
    Ok(titles)
}

fn make_bodies(args: &Args, news: &[String], titles: &[(String, String)]) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    (0..BODIES)
        .map(|i| {
            let history: Vec<&String> = news.choose_multiple(&mut rng, args.history).collect();
            let body = match args.endpoint {
                Endpoint::Rank => {
                    let candidates: Vec<&String> =
                        (0..args.candidates).map(|_| &news[rng.random_range(0..news.len())]).collect();
                    serde_json::json!({"history": history, "candidates": candidates})
                }
                Endpoint::Recommend => serde_json::json!({"history": history, "k": args.k}),
                Endpoint::Users => serde_json::json!({"history": history}),
                Endpoint::News => {
                    let (category, title) = &titles[i % titles.len()];
                    serde_json::json!({"id": format!("load-{i}"), "title": title, "category": category})
                }
            };
            body.to_string()
        })
        .collect()
}

async fn run(
    args: &Args,
    target: reqwest::Url,
    bodies: Arc<Vec<String>>,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let sender = Sender { client, target, bodies };
    for i in 0..args.warmup {
        sender.send(i).await.map_err(|e| anyhow::anyhow!("warm-up request: {e}"))?;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.max_seconds);
    let clients: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (next, sender, requests) = (next.clone(), sender.clone(), args.requests);
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || Instant::now() >= deadline {
                        break;
                    }
                    let sent = Instant::now();
                    match sender.send(i).await {
                        Ok(()) => latencies.push(sent.elapsed().as_secs_f64()),
                        Err(e) => errors.push(e),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), Vec::new());
    for client in clients {
        let (l, e) = client.await?;
        latencies.extend(l);
        errors.extend(e);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] * 1e3
    };
    let done = latencies.len() + errors.len();
    Ok(serde_json::json!({
        "tag": args.tag,
        "endpoint": format!("{:?}", args.endpoint).to_lowercase(),
        "concurrency": args.concurrency,
        "history": args.history,
        "candidates": args.candidates,
        "k": args.k,
        "requests": done,
        "errors": errors.len(),
        "first_error": errors.first(),
        "seconds": seconds,
        "requests_per_s": done as f64 / seconds,
        "p50_ms": percentile(50.0),
        "p90_ms": percentile(90.0),
        "p99_ms": percentile(99.0),
        "max_ms": latencies.last().map_or(0.0, |l| l * 1e3),
    }))
}

/// Sends request `i` (body `i` modulo the bodies made); `Err` for anything but a 200.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    target: reqwest::Url,
    bodies: Arc<Vec<String>>,
}

impl Sender {
    async fn send(&self, i: u64) -> Result<(), String> {
        let body = self.bodies[i as usize % self.bodies.len()].clone();
        let response = self
            .client
            .post(self.target.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("{status}: {text}"));
        }
        Ok(())
    }
}
