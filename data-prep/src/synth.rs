//! `mtrec-prep synth`: a synthetic data set in exactly the MIND format, with a planted signal.
//!
//! Topics map to a category and a few subcategories; every title is made of real English words,
//! a share of them the topic's own words, plus mentions of the topic's entities (some with
//! non-ASCII names, some mentioned twice). Each user prefers one to three topics; histories are
//! mostly news of those topics, and a candidate of a preferred topic is clicked far more often than
//! another. A model that reads titles can therefore learn who clicks what. The folders `train`,
//! `dev` and `test` each get `news.tsv` (the news their behaviors mention), `behaviors.tsv`,
//! `entity_embedding.vec` and `relation_embedding.vec`; see [`mtrec_data::mind`] for the format.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use mtrec_data::mind::{MindEntity, format_time};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::staged::Staged;

/// Options of `mtrec-prep synth`.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// News items.
    pub news: usize,
    /// Users.
    pub users: usize,
    /// Impressions over all three splits (70% train, 15% dev, 15% test).
    pub impressions: usize,
    /// RNG seed.
    pub seed: u64,
    /// Write test impressions without labels (`N123` instead of `N123-1`), as MIND-large test.
    pub unlabeled_test: bool,
}

/// Entity vector dimension of MIND.
const DIM: usize = 100;

/// (category, subcategories, topic words, entities as (name, type)).
type Topic =
    (&'static str, &'static [&'static str], &'static [&'static str], &'static [(&'static str, &'static str)]);

const TOPICS: &[Topic] = &[
    (
        "sports",
        &["football_nfl", "basketball_nba"],
        &[
            "coach",
            "season",
            "game",
            "quarterback",
            "playoff",
            "team",
            "score",
            "win",
            "touchdown",
            "league",
            "player",
            "trade",
            "injury",
            "fans",
            "stadium",
            "championship",
        ],
        &[
            ("Tom Brady", "P"),
            ("LeBron James", "P"),
            ("New England Patriots", "O"),
            ("José Mourinho", "P"),
            ("Los Angeles Lakers", "O"),
        ],
    ),
    (
        "finance",
        &["markets", "personalfinance"],
        &[
            "stock",
            "market",
            "investors",
            "bank",
            "shares",
            "price",
            "economy",
            "money",
            "tax",
            "retirement",
            "debt",
            "interest",
            "rates",
            "profit",
            "fund",
            "trading",
        ],
        &[
            ("Wall Street", "G"),
            ("Federal Reserve", "O"),
            ("Warren Buffett", "P"),
            ("Société Générale", "O"),
            ("Goldman Sachs", "O"),
        ],
    ),
    (
        "foodanddrink",
        &["recipes", "restaurants"],
        &[
            "recipe",
            "chicken",
            "dinner",
            "cheese",
            "bread",
            "soup",
            "kitchen",
            "chef",
            "cook",
            "dessert",
            "pie",
            "sauce",
            "restaurant",
            "wine",
            "breakfast",
            "salad",
        ],
        &[
            ("Gordon Ramsay", "P"),
            ("Starbucks", "O"),
            ("McDonald's", "O"),
            ("Crème Brûlée", "C"),
            ("Thanksgiving", "C"),
        ],
    ),
    (
        "travel",
        &["traveltips", "travelnews"],
        &[
            "beach",
            "hotel",
            "flight",
            "island",
            "trip",
            "airport",
            "travel",
            "city",
            "vacation",
            "tourists",
            "cruise",
            "mountain",
            "park",
            "road",
            "destination",
            "passengers",
        ],
        &[
            ("Zürich", "G"),
            ("Kraków", "G"),
            ("Hawaii", "G"),
            ("Delta Air Lines", "O"),
            ("Yellowstone National Park", "G"),
        ],
    ),
    (
        "health",
        &["wellness", "medical"],
        &[
            "doctor", "health", "disease", "sleep", "weight", "diet", "heart", "cancer", "hospital",
            "patients", "study", "exercise", "brain", "symptoms", "vitamin", "risk",
        ],
        &[
            ("Mayo Clinic", "O"),
            ("World Health Organization", "O"),
            ("Alzheimer's disease", "C"),
            ("Harvard Medical School", "O"),
            ("FDA", "O"),
        ],
    ),
    (
        "movies",
        &["movienews", "celebrity"],
        &[
            "movie",
            "film",
            "actor",
            "director",
            "star",
            "trailer",
            "box",
            "office",
            "sequel",
            "cast",
            "role",
            "hollywood",
            "premiere",
            "oscar",
            "drama",
            "comedy",
        ],
        &[
            ("Renée Zellweger", "P"),
            ("Joker", "C"),
            ("Martin Scorsese", "P"),
            ("Netflix", "O"),
            ("Disney", "O"),
        ],
    ),
    (
        "music",
        &["musicnews", "celebrity"],
        &[
            "song", "album", "singer", "concert", "tour", "band", "music", "rapper", "fans", "stage",
            "awards", "video", "grammy", "pop", "guitar", "hit",
        ],
        &[("Beyoncé", "P"), ("Taylor Swift", "P"), ("Billboard", "O"), ("Kanye West", "P"), ("Björk", "P")],
    ),
    (
        "news",
        &["newspolitics", "newsworld"],
        &[
            "president",
            "election",
            "vote",
            "senate",
            "court",
            "law",
            "police",
            "government",
            "impeachment",
            "campaign",
            "congress",
            "officials",
            "protest",
            "judge",
            "minister",
            "war",
        ],
        &[
            ("Donald Trump", "P"),
            ("Nicolás Maduro", "P"),
            ("House of Representatives", "O"),
            ("Nancy Pelosi", "P"),
            ("Hong Kong", "G"),
        ],
    ),
    (
        "autos",
        &["autosnews", "autosenthusiasts"],
        &[
            "car", "truck", "engine", "driver", "vehicle", "electric", "speed", "model", "wheel", "motor",
            "race", "fuel", "crash", "road", "brand", "design",
        ],
        &[("Tesla", "O"), ("Ford", "O"), ("Elon Musk", "P"), ("Škoda", "O"), ("Porsche", "O")],
    ),
    (
        "weather",
        &["weathertopstories", "weathernews"],
        &[
            "storm",
            "snow",
            "rain",
            "winter",
            "temperatures",
            "cold",
            "wind",
            "forecast",
            "hurricane",
            "flood",
            "weather",
            "ice",
            "heat",
            "tornado",
            "warning",
            "freeze",
        ],
        &[
            ("National Weather Service", "O"),
            ("Chicago", "G"),
            ("Texas", "G"),
            ("Montréal", "G"),
            ("Midwest", "G"),
        ],
    ),
];

const GENERAL: &[&str] = &[
    "the",
    "new",
    "after",
    "says",
    "how",
    "why",
    "what",
    "first",
    "year",
    "best",
    "could",
    "more",
    "world",
    "big",
    "people",
    "day",
    "time",
    "here",
    "about",
    "over",
    "this",
    "week",
    "back",
    "last",
    "just",
    "still",
    "may",
    "now",
    "old",
    "top",
    "says",
    "video",
    "report",
    "family",
    "home",
    "life",
    "woman",
    "man",
    "years",
    "things",
    "ways",
    "know",
    "should",
    "never",
    "every",
    "make",
    "great",
    "major",
    "little",
    "real",
    "state",
    "local",
    "from",
    "with",
    "for",
    "and",
    "into",
    "will",
    "their",
    "his",
    "her",
    "your",
    "most",
    "all",
    "makes",
    "gets",
    "takes",
    "finds",
    "shows",
    "reveals",
    "announces",
    "could",
    "might",
    "again",
    "before",
    "during",
    "against",
    "under",
    "next",
    "only",
    "other",
    "some",
    "many",
    "good",
    "bad",
    "long",
    "free",
    "high",
    "small",
    "right",
    "left",
    "late",
    "early",
    "school",
    "town",
    "morning",
    "night",
    "story",
    "news",
];

/// A deterministic pseudo-random "Wikidata id" per (topic, entity).
fn wikidata_id(topic: usize, entity: usize) -> String {
    format!("Q{}", 1000 + topic * 97 + entity * 7919)
}

fn title_case(w: &str) -> String {
    let mut c = w.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One synthetic news item, already formatted as a news.tsv line (without the id).
struct SynthNews {
    topic: usize,
    line: String,
}

fn make_news(rng: &mut ChaCha8Rng, topic: usize, nid: usize) -> Result<SynthNews> {
    let (category, subs, words, ents) = TOPICS[topic];
    let n_words = rng.random_range(9..=17usize);
    let mut parts: Vec<(String, Option<usize>)> = (0..n_words)
        .map(|_| {
            let w = if rng.random_bool(0.4) { words } else { GENERAL }.choose(rng).copied().unwrap_or("news");
            (w.to_string(), None)
        })
        .collect();
    // 0-2 distinct entities, the first sometimes mentioned twice.
    let n_ents = [0usize, 1, 1, 2].choose(rng).copied().unwrap_or(1);
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < n_ents {
        let e = rng.random_range(0..ents.len());
        if !chosen.contains(&e) {
            chosen.push(e);
        }
    }
    let mut mentions = chosen.clone();
    if let Some(&first) = chosen.first()
        && rng.random_bool(0.2)
    {
        mentions.push(first);
    }
    for e in mentions {
        let at = rng.random_range(0..=parts.len());
        parts.insert(at, (ents[e].0.to_string(), Some(e)));
    }
    let mut title = String::new();
    let mut chars = 0u64;
    let mut entities: Vec<MindEntity> = Vec::new();
    for (i, (text, ent)) in parts.iter().enumerate() {
        if i > 0 {
            title.push(' ');
            chars += 1;
        }
        let text = if ent.is_some() { text.clone() } else { title_case(text) };
        if let Some(e) = ent {
            let id = wikidata_id(topic, *e);
            match entities.iter_mut().find(|x| x.wikidata_id == id) {
                Some(x) => {
                    x.occurrence_offsets.push(chars);
                    x.surface_forms.push(text.clone());
                }
                None => entities.push(MindEntity {
                    label: ents[*e].0.to_string(),
                    kind: ents[*e].1.to_string(),
                    wikidata_id: id,
                    confidence: (rng.random_range(80..=100) as f64) / 100.0,
                    occurrence_offsets: vec![chars],
                    surface_forms: vec![text.clone()],
                }),
            }
        }
        chars += text.chars().count() as u64;
        title.push_str(&text);
    }
    let abstract_text: Vec<&str> =
        (0..rng.random_range(8..20)).map(|_| *GENERAL.choose(rng).unwrap_or(&"news")).collect();
    let sub = subs.choose(rng).copied().unwrap_or(category);
    let line = format!(
        "{category}\t{sub}\t{title}\t{}.\thttps://assets.msn.com/labs/mind/AA{nid:06}.html\t{}\t[]",
        title_case(&abstract_text.join(" ")),
        serde_json::to_string(&entities).context("serializing entities")?
    );
    Ok(SynthNews { topic, line })
}

/// Writes `out/train`, `out/dev`, `out/test`.
/// Writes the data set into a staged folder ([`Staged`]): `out` appears complete or not at all.
pub fn run(opts: &SynthOptions, out: &Path, force: bool) -> Result<()> {
    if opts.news < 50 || opts.users < 10 || opts.impressions < 30 {
        bail!("synth needs at least 50 news, 10 users and 30 impressions");
    }
    let staged = Staged::new(out, force)?;
    generate(opts, staged.path())?;
    staged.publish()
}

fn generate(opts: &SynthOptions, out: &Path) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let news: Vec<SynthNews> = (0..opts.news)
        .map(|i| {
            let topic = rng.random_range(0..TOPICS.len());
            make_news(&mut rng, topic, i + 1)
        })
        .collect::<Result<_>>()?;
    // The last 10% of news are "fresh": they only show up in dev and test.
    let train_news = (opts.news * 9 / 10).max(1);
    let mut by_topic: Vec<Vec<usize>> = vec![Vec::new(); TOPICS.len()];
    let mut by_topic_train: Vec<Vec<usize>> = vec![Vec::new(); TOPICS.len()];
    for (i, n) in news.iter().enumerate() {
        by_topic[n.topic].push(i);
        if i < train_news {
            by_topic_train[n.topic].push(i);
        }
    }
    let prefs: Vec<Vec<usize>> = (0..opts.users)
        .map(|_| {
            let k = rng.random_range(1..=3usize);
            let mut p: Vec<usize> = Vec::new();
            while p.len() < k {
                let t = rng.random_range(0..TOPICS.len());
                if !p.contains(&t) {
                    p.push(t);
                }
            }
            p
        })
        .collect();
    // 90% of users appear in train; dev and test draw from all, so some users are new there.
    let train_users = (opts.users * 9 / 10).max(1);
    let n_train = opts.impressions * 70 / 100;
    let n_dev = (opts.impressions - n_train) / 2;
    let n_test = opts.impressions - n_train - n_dev;
    // 2019-11-09 00:00:00 UTC
    let day0 = 1_573_257_600i64;
    let splits = [
        ("train", n_train, 0i64, 5i64, true),
        ("dev", n_dev, 5, 1, true),
        ("test", n_test, 6, 1, !opts.unlabeled_test),
    ];
    for (name, count, first_day, days, labeled) in splits {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pool = if name == "train" { &by_topic_train } else { &by_topic };
        let users = if name == "train" { train_users } else { opts.users };
        let mut used = vec![false; news.len()];
        let path = dir.join("behaviors.tsv");
        let mut w =
            BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        let mut line = String::new();
        for imp in 0..count {
            let u = rng.random_range(0..users);
            let pick = |rng: &mut ChaCha8Rng, preferred: bool| -> usize {
                let t = if preferred {
                    *prefs[u].choose(rng).unwrap_or(&0)
                } else {
                    rng.random_range(0..TOPICS.len())
                };
                let p = if pool[t].is_empty() { &by_topic_train[t] } else { &pool[t] };
                p.choose(rng).copied().unwrap_or(0)
            };
            let hist_len = if rng.random_bool(0.03) { 0 } else { rng.random_range(1..=60usize) };
            let n_cand = rng.random_range(5..=20usize);
            let time = day0 + (first_day + rng.random_range(0..days)) * 86_400 + rng.random_range(0..86_400);
            line.clear();
            write!(line, "{}\tU{}\t{}\t", imp + 1, u + 1, format_time(time))?;
            for h in 0..hist_len {
                // History: news of the training period, mostly of the user's topics.
                let t = if rng.random_bool(0.8) {
                    *prefs[u].choose(&mut rng).unwrap_or(&0)
                } else {
                    rng.random_range(0..TOPICS.len())
                };
                let n = by_topic_train[t].choose(&mut rng).copied().unwrap_or(0);
                used[n] = true;
                write!(line, "{}N{}", if h > 0 { " " } else { "" }, n + 1)?;
            }
            line.push('\t');
            let mut cands: Vec<(usize, bool)> = (0..n_cand)
                .map(|_| {
                    let preferred = rng.random_bool(0.3);
                    let n = pick(&mut rng, preferred);
                    let liked = prefs[u].contains(&news[n].topic);
                    (n, rng.random_bool(if liked { 0.4 } else { 0.03 }))
                })
                .collect();
            if !cands.iter().any(|c| c.1) {
                let at = rng.random_range(0..cands.len());
                cands[at] = (pick(&mut rng, true), true);
            }
            if cands.iter().all(|c| c.1) {
                cands[0].1 = false;
            }
            for (i, (n, clicked)) in cands.iter().enumerate() {
                used[*n] = true;
                let sep = if i > 0 { " " } else { "" };
                if labeled {
                    write!(line, "{sep}N{}-{}", n + 1, u8::from(*clicked))?;
                } else {
                    write!(line, "{sep}N{}", n + 1)?;
                }
            }
            line.push('\n');
            w.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        write_news_and_vectors(&dir, &news, &used, &mut rng)?;
    }
    Ok(())
}

fn write_news_and_vectors(dir: &Path, news: &[SynthNews], used: &[bool], rng: &mut ChaCha8Rng) -> Result<()> {
    let path = dir.join("news.tsv");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
    for (i, n) in news.iter().enumerate().filter(|(i, _)| used[*i]) {
        writeln!(w, "N{}\t{}", i + 1, n.line).with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    // Entity vectors: the topic's direction plus noise; the last entity of every topic has none
    // (MIND, too, links entities that have no vector).
    let path = dir.join("entity_embedding.vec");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
    let mut vrng = ChaCha8Rng::seed_from_u64(7);
    for (t, topic) in TOPICS.iter().enumerate() {
        for e in 0..topic.3.len() - 1 {
            let mut line = wikidata_id(t, e);
            for d in 0..DIM {
                let v = if d % TOPICS.len() == t { 0.5 } else { 0.0 } + vrng.random_range(-0.1f32..0.1);
                write!(line, "\t{v:.6}")?;
            }
            writeln!(w, "{line}\t").with_context(|| format!("writing {}", path.display()))?;
        }
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("relation_embedding.vec");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
    for p in ["P31", "P17", "P131", "P106", "P27", "P54", "P641", "P159"] {
        let mut line = p.to_string();
        for _ in 0..DIM {
            write!(line, "\t{:.6}", rng.random_range(-0.1f32..0.1))?;
        }
        writeln!(w, "{line}\t").with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
