//! `mtrec-worker serve` as a process on a free port of 127.0.0.1 (`--listen 127.0.0.1:0`),
//! driven by a real HTTP client (reqwest). One tiny model is trained once on synthetic MIND
//! data; `predict --split dev` and `embed` (news vectors, and `--users --split dev` user
//! vectors) of its checkpoint are the references the service's answers are checked against.
//! Every request goes to 127.0.0.1 only, and every wait is bounded.
use mtrec_e2e::{binary, repo_root, run, stdout, synthetic_shards, tiny_args, tiny_worker};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A dev impression of the synthetic `behaviors.tsv`.
#[derive(Debug, Clone)]
struct Impression {
    id: i64,
    history: Vec<String>,
    candidates: Vec<String>,
}

struct Fixture {
    root: PathBuf,
    shards: PathBuf,
    checkpoint: PathBuf,
    /// `embed`'s news vectors of the checkpoint.
    news_vectors: PathBuf,
    impressions: Vec<Impression>,
    /// `predict --split dev`'s ranks, by impression id.
    predicted: HashMap<i64, Vec<usize>>,
    /// `embed --users --split dev` user vector . `embed` news vector, by impression id.
    expected_scores: HashMap<i64, Vec<f32>>,
    /// news id -> (category, title) of `news.tsv`.
    news: HashMap<String, (String, String)>,
}

/// The run dir's name for the fixture's run.
const RUN: &str = "run";

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Under target/ (a static is never dropped): replaced by the next run, kept after a failure.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let shards = synthetic_shards(&root);
        let run_dir = root.join(RUN);
        run(&mut tiny_worker("train", &shards, &run_dir, &["train.max_steps=20"]), true);
        let checkpoint = run_dir.join("step-00000020");
        let ckpt = checkpoint.display().to_string();
        let prediction = root.join("prediction.zip");
        let mut predict = tiny_worker("predict", &shards, &run_dir, &[]);
        run(predict.args(["--checkpoint", &ckpt, "--split", "dev", "--out"]).arg(&prediction), true);
        let (news_vectors, user_vectors) = (root.join("news.parquet"), root.join("users.parquet"));
        let embed = |extra: &[&str], out: &Path| {
            let mut cmd = Command::new(binary("mtrec-worker"));
            cmd.args(["embed", "--config"]).arg(repo_root().join("configs/tiny.toml"));
            cmd.args(["--set", &format!("data.shards={}", shards.display()), "--checkpoint", &ckpt]);
            run(cmd.args(extra).arg("--out").arg(out).current_dir(repo_root()), true);
        };
        embed(&[], &news_vectors);
        embed(&["--users", "--split", "dev"], &user_vectors);

        let mind = root.join("mind");
        let impressions: Vec<Impression> = std::fs::read_to_string(mind.join("dev/behaviors.tsv"))
            .unwrap()
            .lines()
            .map(|line| {
                let cols: Vec<&str> = line.split('\t').collect();
                Impression {
                    id: cols[0].parse().unwrap(),
                    history: cols[3].split_whitespace().map(String::from).collect(),
                    candidates: cols[4]
                        .split_whitespace()
                        .map(|c| c.rsplit_once('-').unwrap().0.to_string())
                        .collect(),
                }
            })
            .collect();
        let mut text = String::new();
        let file = std::fs::File::open(&prediction).unwrap();
        zip::ZipArchive::new(file)
            .unwrap()
            .by_name("prediction.txt")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let predicted = text
            .lines()
            .map(|line| {
                let (id, ranks) = line.split_once(' ').unwrap();
                let ranks = ranks.trim_matches(['[', ']']).split(',').map(|r| r.parse().unwrap()).collect();
                (id.parse().unwrap(), ranks)
            })
            .collect();
        let news_file = mtrec_data::vectors::read_news_vectors(&news_vectors).unwrap();
        let users = mtrec_data::vectors::read_user_vectors(&user_vectors).unwrap();
        let d = news_file.dim;
        let row: HashMap<&str, usize> =
            news_file.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let user_row: HashMap<i64, usize> = users.keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        let expected_scores = impressions
            .iter()
            .map(|imp| {
                let u = &users.values[user_row[&imp.id] * d..][..d];
                let scores = imp
                    .candidates
                    .iter()
                    .map(|c| {
                        let v = &news_file.values[row[c.as_str()] * d..][..d];
                        u.iter().zip(v).map(|(a, b)| a * b).sum()
                    })
                    .collect();
                (imp.id, scores)
            })
            .collect();
        let news = std::fs::read_to_string(mind.join("train/news.tsv"))
            .unwrap()
            .lines()
            .map(|line| {
                let cols: Vec<&str> = line.split('\t').collect();
                (cols[0].to_string(), (cols[1].to_string(), cols[3].to_string()))
            })
            .collect();
        Fixture { root, shards, checkpoint, news_vectors, impressions, predicted, expected_scores, news }
    })
}

/// A running `serve` process; killed when dropped.
struct Server {
    child: Child,
    url: String,
    client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `serve` on the fixture's checkpoint with `extra` arguments; returns once
    /// `/readyz` says ready (within 60 s).
    fn start(extra: &[&str]) -> Server {
        let mut cmd = Self::command(extra);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = lines.next();
            let _ = tx.send(first);
            lines.for_each(drop);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("serve printed its address within 60 s");
        let line = line.expect("serve's stdout").expect("a line");
        let url = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let server = Server { child, url, client };
        let start = Instant::now();
        loop {
            if let Ok(r) = server.client.get(format!("{}/readyz", server.url)).send()
                && r.status() == 200
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn command(extra: &[&str]) -> Command {
        let f = fixture();
        let mut cmd = Command::new(binary("mtrec-worker"));
        cmd.args(tiny_args("serve", &f.shards, &f.root.join(RUN), &[]));
        cmd.args(["--checkpoint", &f.checkpoint.display().to_string(), "--listen", "127.0.0.1:0"]);
        cmd.args(extra).current_dir(repo_root());
        cmd
    }

    /// POSTs `body` (a JSON value, or raw text when a string) to `path`: status and JSON answer.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let request =
            self.client.post(format!("{}{path}", self.url)).header("content-type", "application/json");
        let request = match body {
            Value::String(raw) => request.body(raw.clone()),
            other => request.body(other.to_string()),
        };
        let response = request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
    }

    fn rank(&self, history: &[String], candidates: &[String]) -> Value {
        let (status, answer) = self.post("/v1/rank", &json!({"history": history, "candidates": candidates}));
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The candidates' scores in listed order, from a `/v1/rank` answer.
fn scores_in_listed_order(answer: &Value, candidates: &[String]) -> Vec<f32> {
    let ranked = answer["ranked"].as_array().unwrap();
    let ranks: Vec<usize> =
        answer["ranks"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap() as usize).collect();
    assert_eq!(ranks.len(), candidates.len());
    ranks
        .iter()
        .zip(candidates)
        .map(|(&r, id)| {
            assert_eq!(ranked[r - 1]["id"], id.as_str());
            ranked[r - 1]["score"].as_f64().unwrap() as f32
        })
        .collect()
}

/// The service's ranks and `predict`'s order the candidates alike, except two whose scores are
/// within 1e-5 of each other (the user vector is computed in another batch, so a near tie may
/// fall either way).
fn assert_same_order(ours: &[usize], predicted: &[usize], scores: &[f32], impression: i64) {
    assert_eq!(ours.len(), predicted.len(), "impression {impression}");
    for i in 0..ours.len() {
        for j in 0..ours.len() {
            if ours[i] < ours[j] && predicted[i] > predicted[j] {
                let (a, b) = (scores[i], scores[j]);
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "impression {impression}: candidates {i} and {j} in another order than predict's \
                     (scores {a} and {b}): {ours:?} vs {predicted:?}"
                );
            }
        }
    }
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: {x} vs {y}");
    }
}

/// Every dev impression with a history, ranked by the service: the ranks equal `predict`'s
/// submission line, and the scores equal the dot products of `embed`'s user and news vectors
/// (to 1e-5). Impressions without a history get a 400 naming `history`. The same with the
/// catalogue read from `embed`'s file (`--news`) instead of encoded at start.
#[test]
fn ranking_equals_predict_and_embed() {
    let f = fixture();
    for news in [None, Some(&f.news_vectors)] {
        let extra: Vec<String> =
            news.map(|p| vec!["--news".into(), p.display().to_string()]).unwrap_or_default();
        let server = Server::start(&extra.iter().map(String::as_str).collect::<Vec<_>>());
        let (mut ranked, mut refused, mut exact) = (0, 0, 0);
        for imp in &f.impressions {
            if imp.history.is_empty() {
                let (status, answer) =
                    server.post("/v1/rank", &json!({"history": [], "candidates": imp.candidates}));
                assert_eq!((status, answer["field"].as_str()), (400, Some("history")), "{answer}");
                refused += 1;
                continue;
            }
            let answer = server.rank(&imp.history, &imp.candidates);
            let ranks: Vec<usize> =
                answer["ranks"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap() as usize).collect();
            let scores = scores_in_listed_order(&answer, &imp.candidates);
            assert_close(&scores, &f.expected_scores[&imp.id], &format!("impression {}", imp.id));
            assert_same_order(&ranks, &f.predicted[&imp.id], &scores, imp.id);
            exact += usize::from(ranks == f.predicted[&imp.id]);
            let used = answer["history"]["used"].as_u64().unwrap() as usize;
            assert_eq!(used, imp.history.len().min(20), "data.history = 20 in tiny.toml");
            assert_eq!(answer["history"]["note"].is_string(), imp.history.len() > 20);
            ranked += 1;
        }
        assert!(ranked > 300, "{ranked} impressions ranked, {refused} without history");
        eprintln!(
            "--news {news:?}: {ranked} dev impressions ranked as predict ranks them ({exact} identical, \
             the others differing only between scores within 1e-5), {refused} refused"
        );
    }
}

/// 64 clients at once, each ranking other impressions: every answer is its own request's.
#[test]
fn sixty_four_concurrent_clients_get_their_own_answers() {
    let f = fixture();
    let server = Server::start(&[]);
    let with_history: Vec<&Impression> = f.impressions.iter().filter(|i| !i.history.is_empty()).collect();
    std::thread::scope(|scope| {
        for client in 0..64 {
            let (server, with_history) = (&server, &with_history);
            scope.spawn(move || {
                for imp in with_history.iter().skip(client).step_by(64).take(5) {
                    let answer = server.rank(&imp.history, &imp.candidates);
                    let scores = scores_in_listed_order(&answer, &imp.candidates);
                    assert_close(
                        &scores,
                        &f.expected_scores[&imp.id],
                        &format!("client {client}, impression {}", imp.id),
                    );
                }
            });
        }
    });
    let metrics = server.client.get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"mtrec_requests_total{endpoint="/v1/rank",status="200"}"#))
        .unwrap();
    assert!(line.ends_with(" 320"), "{line}");
    let batches: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("mtrec_batch_size_count ")).unwrap().parse().unwrap();
    eprintln!("320 concurrent rankings in {batches} model batches");
    assert!(batches < 320.0, "concurrent requests shared model calls");
}

/// A news item added through `/v1/news` (the title and category of a known one under a new id)
/// scores what the known one scores, in a ranking and as history; replacing it reports so.
#[test]
fn added_news_ranks_like_one_known_at_start() {
    let f = fixture();
    let server = Server::start(&[]);
    let imp = f.impressions.iter().find(|i| i.history.len() >= 3).unwrap();
    let known = &imp.candidates[0];
    let (category, title) = &f.news[known];
    let added = format!("{known}-copy");
    let (status, answer) =
        server.post("/v1/news", &json!({"id": added, "title": title, "category": category}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["added"].as_u64(), answer["replaced"].as_u64()), (Some(1), Some(0)));
    let both = vec![known.clone(), added.clone()];
    let scores = scores_in_listed_order(&server.rank(&imp.history, &both), &both);
    assert_close(&scores[1..], &scores[..1], "the added copy vs the known news");
    // The known news item as the last click, then its copy in its place.
    let mut history = imp.history.clone();
    history.push(known.clone());
    let original = scores_in_listed_order(&server.rank(&history, &imp.candidates), &imp.candidates);
    *history.last_mut().unwrap() = added.clone();
    let copy_history = history;
    let with_copy = scores_in_listed_order(&server.rank(&copy_history, &imp.candidates), &imp.candidates);
    assert_close(&with_copy, &original, "a history naming the copy");
    let (status, answer) = server
        .post("/v1/news", &json!([{"id": added, "title": "something else entirely", "category": category}]));
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["added"].as_u64(), answer["replaced"].as_u64()), (Some(0), Some(1)));
}

/// Each bad request gets its 4xx with a JSON error naming the field, and the next good request
/// is answered.
#[test]
fn bad_requests_get_a_4xx_naming_the_field_and_the_service_goes_on() {
    let f = fixture();
    let server = Server::start(&["--max-candidates", "50", "--max-k", "100", "--max-body-bytes", "65536"]);
    let imp = f.impressions.iter().find(|i| !i.history.is_empty()).unwrap();
    let (history, candidates) = (&imp.history, &imp.candidates);
    let many: Vec<String> = (0..51).map(|i| candidates[i % candidates.len()].clone()).collect();
    let huge = json!({"history": vec!["N1"; 20_000], "candidates": candidates});
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/rank", json!({"history": history, "candidates": ["N999999"]}), 400, "candidates[0]"),
        ("/v1/rank", json!({"history": ["nope"], "candidates": candidates}), 400, "history[0]"),
        ("/v1/rank", json!({"history": [], "candidates": candidates}), 400, "history"),
        ("/v1/rank", json!({"history": history, "candidates": []}), 400, "candidates"),
        ("/v1/rank", json!({"history": history, "candidates": many}), 400, "candidates"),
        ("/v1/rank", json!({"history": history}), 400, ""),
        ("/v1/rank", json!({"history": history, "candidates": candidates, "extra": 1}), 400, ""),
        ("/v1/rank", json!({"history": history, "candidates": [1, 2]}), 400, "candidates[0]"),
        ("/v1/rank", Value::String("{\"history\": [".into()), 400, ""),
        ("/v1/rank", huge, 413, ""),
        ("/v1/recommend", json!({"history": history, "k": 0}), 400, "k"),
        ("/v1/recommend", json!({"history": history, "k": 101}), 400, "k"),
        ("/v1/recommend", json!({"history": history, "k": -3}), 400, "k"),
        ("/v1/news", json!({"id": "X", "title": ""}), 400, "title"),
        ("/v1/news", json!([{"id": "X", "title": "t"}, {"id": "", "title": "t"}]), 400, "[1].id"),
        ("/v1/news", json!({"id": "X", "title": "t", "category": "no-such-category"}), 400, "category"),
        ("/v1/news", json!([{"id": "X", "title": 3}]), 400, "[0].title"),
        ("/v1/users", json!({"history": "N1"}), 400, "history"),
        ("/v1/nothing", json!({}), 404, ""),
    ];
    for (path, body, status, field) in cases {
        let (got, answer) = server.post(path, &body);
        assert_eq!(got, status, "{path} {body:.200}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{path} {body:.200}: {answer}");
        }
        eprintln!("{path} -> {got} {answer}");
        server.rank(history, candidates);
    }
    // An over-long history keeps its last data.history clicks and says so.
    let long: Vec<String> = history.iter().cycle().take(45).cloned().collect();
    let answer = server.rank(&long, candidates);
    assert_eq!(
        (answer["history"]["given"].as_u64(), answer["history"]["used"].as_u64()),
        (Some(45), Some(20))
    );
    let note = answer["history"]["note"].as_str().unwrap();
    assert!(note.contains("the last 20 used"), "{note}");
    let last: Vec<String> = long[25..].to_vec();
    assert_close(
        &scores_in_listed_order(&answer, candidates),
        &scores_in_listed_order(&server.rank(&last, candidates), candidates),
        "a long history vs its last 20",
    );
    // recommend: k items, none of the history, best first; users: a vector of the model's width.
    let (status, answer) = server.post("/v1/recommend", &json!({"history": history, "k": 10}));
    assert_eq!(status, 200, "{answer}");
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|i| !history.contains(&i["id"].as_str().unwrap().to_string())));
    assert!(items.windows(2).all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    // Every click given is excluded, also one older than the last data.history (20) the user
    // vector reads: X, the best item for 20 clicks, put before them, is never recommended.
    let mut clicks: Vec<String> = Vec::new();
    for id in f.impressions.iter().flat_map(|i| i.candidates.iter()) {
        if clicks.len() < 20 && !clicks.contains(id) {
            clicks.push(id.clone());
        }
    }
    let top = |history: &[String], k: usize| -> Vec<String> {
        let (status, answer) = server.post("/v1/recommend", &json!({"history": history, "k": k}));
        assert_eq!(status, 200, "{answer}");
        answer["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
    };
    let best = top(&clicks, 11);
    let older: Vec<String> = std::iter::once(best[0].clone()).chain(clicks.iter().cloned()).collect();
    assert_eq!(top(&older, 10), best[1..], "a click older than the last 20 is excluded too");
    let (status, answer) = server.post("/v1/users", &json!({"history": history}));
    assert_eq!((status, answer["vector"].as_array().map(Vec::len)), (200, Some(64)), "{answer}");
}

/// SIGTERM while requests wait for their batch (`--batch-wait-ms 700`): each is answered, the
/// process exits 0 within 30 s, and the port takes no more connections.
#[test]
fn sigterm_answers_the_requests_in_flight_and_exits_0() {
    let f = fixture();
    let mut server = Server::start(&["--batch-wait-ms", "700"]);
    let imp = f.impressions.iter().find(|i| !i.history.is_empty()).unwrap();
    let statuses = std::thread::scope(|scope| {
        let requests: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    server.post("/v1/rank", &json!({"history": imp.history, "candidates": imp.candidates})).0
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        run(Command::new("kill").args(["-TERM", &server.child.id().to_string()]), true);
        requests.into_iter().map(|r| r.join().unwrap()).collect::<Vec<u16>>()
    });
    assert_eq!(statuses, vec![200; 8]);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "serve did not exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(server.client.get(format!("{}/healthz", server.url)).send().is_err(), "still accepting");
}

/// A config of another model shape, and news vectors of other weights, are refused by name
/// before the service starts.
#[test]
fn another_models_config_or_vectors_are_refused() {
    let f = fixture();
    let out = run(Server::command(&["--set", "model.layers=3"]).stdout(Stdio::piped()), false);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("different model configuration"), "{text}");
    let pretrained = f.root.join("pretrained-news.parquet");
    let mut embed = Command::new(binary("mtrec-worker"));
    embed.args(["embed", "--config"]).arg(repo_root().join("configs/tiny.toml"));
    embed.args(["--set", &format!("data.shards={}", f.shards.display()), "--out"]).arg(&pretrained);
    run(embed.current_dir(repo_root()), true);
    let out = run(&mut Server::command(&["--news", &pretrained.display().to_string()]), false);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("written without a checkpoint"), "{text}");
    assert!(stdout(&out).is_empty(), "refused before listening: {}", stdout(&out));
}
