//! `mtrec-prep synth`: a synthetic data set in exactly the MIND format, with a planted signal.
//!
//! Topics map to a category and a few subcategories; every title is made of real English words,
//! a share of them the topic's own words, plus mentions of the topic's entities (some with
//! non-ASCII names, some mentioned twice). Each user prefers one to three topics; histories are
//! mostly news of those topics, and a candidate of a preferred topic is clicked far more often than
//! another. A model that reads titles can therefore learn who clicks what. The folders `train`,
//! `dev` and `test` each get `news.tsv` (the news their behaviors mention), `behaviors.tsv`,
//! `entity_embedding.vec` and `relation_embedding.vec`; see [`mtrec_data::mind`] for the format.
//!
//! Two profiles ([`Profile`]) shape the behaviors: `uniform` (small and quick: a fresh history per
//! impression, news picked uniformly within a topic) and `mind` (MIND's statistics: a fixed
//! history per user, heavy-tailed news popularity, MIND's history lengths, candidate counts and
//! clicks; `data-prep/README.md` lists what it targets and what it gives).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use mtrec_data::mind::{MindEntity, format_time};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::staged::Staged;

/// How the behaviors are distributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A fresh history of 0-60 news for every impression, news picked uniformly within a topic,
    /// 5-20 candidates: small, quick, and what the quickstart and tests use.
    Uniform,
    /// MIND's statistics: one history per user in every impression, heavy-tailed news
    /// popularity, histories of mean 32 (median 18, 2% empty), 38 candidates on average (median
    /// 24, at most 300), 1.5 clicks per impression.
    Mind,
}

/// Options of `mtrec-prep synth`.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// How the behaviors are distributed.
    pub profile: Profile,
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
    if u32::try_from(opts.news).is_err() || u32::try_from(opts.users).is_err() {
        bail!("synth writes at most {} news and {} users", u32::MAX, u32::MAX);
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
    match opts.profile {
        Profile::Uniform => uniform_behaviors(opts, out, &news, train_news, &prefs, &mut rng),
        Profile::Mind => mind_behaviors(opts, out, &news, train_news, &prefs, &mut rng),
    }
}

/// 2019-11-09 00:00:00 UTC, the first day of MIND's log week.
const DAY0: i64 = 1_573_257_600;

/// One split folder: its name, impressions, days (from [`DAY0`]) and whether it has labels.
struct SplitPlan {
    name: &'static str,
    impressions: usize,
    first_day: i64,
    days: i64,
    labeled: bool,
}

/// Train takes 70% of the impressions over days 0-4, dev and test 15% each on days 5 and 6.
fn split_plans(opts: &SynthOptions) -> [SplitPlan; 3] {
    let n_train = opts.impressions * 70 / 100;
    let n_dev = (opts.impressions - n_train) / 2;
    let n_test = opts.impressions - n_train - n_dev;
    [
        SplitPlan { name: "train", impressions: n_train, first_day: 0, days: 5, labeled: true },
        SplitPlan { name: "dev", impressions: n_dev, first_day: 5, days: 1, labeled: true },
        SplitPlan { name: "test", impressions: n_test, first_day: 6, days: 1, labeled: !opts.unlabeled_test },
    ]
}

impl SplitPlan {
    fn is_train(&self) -> bool {
        self.name == "train"
    }

    /// A random second of the split's days.
    fn draw_time(&self, rng: &mut ChaCha8Rng) -> i64 {
        DAY0 + (self.first_day + rng.random_range(0..self.days)) * 86_400 + rng.random_range(0..86_400)
    }

    /// Creates the split folder and its behaviors.tsv.
    fn create(&self, out: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf, BufWriter<File>)> {
        let dir = out.join(self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("behaviors.tsv");
        let w = BufWriter::new(File::create(&path).with_context(|| format!("creating {}", path.display()))?);
        Ok((dir, path, w))
    }
}

/// The `uniform` profile: a fresh history for every impression, news picked uniformly within a
/// topic, 5-20 candidates.
fn uniform_behaviors(
    opts: &SynthOptions,
    out: &Path,
    news: &[SynthNews],
    train_news: usize,
    prefs: &[Vec<usize>],
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let mut by_topic: Vec<Vec<usize>> = vec![Vec::new(); TOPICS.len()];
    let mut by_topic_train: Vec<Vec<usize>> = vec![Vec::new(); TOPICS.len()];
    for (i, n) in news.iter().enumerate() {
        by_topic[n.topic].push(i);
        if i < train_news {
            by_topic_train[n.topic].push(i);
        }
    }
    // 90% of users appear in train; dev and test draw from all, so some users are new there.
    let train_users = (opts.users * 9 / 10).max(1);
    for plan in split_plans(opts) {
        let (dir, path, mut w) = plan.create(out)?;
        let pool = if plan.is_train() { &by_topic_train } else { &by_topic };
        let users = if plan.is_train() { train_users } else { opts.users };
        let mut used = vec![false; news.len()];
        let mut line = String::new();
        for imp in 0..plan.impressions {
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
            let time = plan.draw_time(rng);
            line.clear();
            write!(line, "{}\tU{}\t{}\t", imp + 1, u + 1, format_time(time))?;
            for h in 0..hist_len {
                // History: news of the training period, mostly of the user's topics.
                let t = if rng.random_bool(0.8) {
                    *prefs[u].choose(rng).unwrap_or(&0)
                } else {
                    rng.random_range(0..TOPICS.len())
                };
                let n = by_topic_train[t].choose(rng).copied().unwrap_or(0);
                used[n] = true;
                write!(line, "{}N{}", if h > 0 { " " } else { "" }, n + 1)?;
            }
            line.push('\t');
            let mut cands: Vec<(usize, bool)> = (0..n_cand)
                .map(|_| {
                    let preferred = rng.random_bool(0.3);
                    let n = pick(rng, preferred);
                    let liked = prefs[u].contains(&news[n].topic);
                    (n, rng.random_bool(if liked { 0.4 } else { 0.03 }))
                })
                .collect();
            if !cands.iter().any(|c| c.1) {
                let at = rng.random_range(0..cands.len());
                cands[at] = (pick(rng, true), true);
            }
            if cands.iter().all(|c| c.1) {
                cands[0].1 = false;
            }
            for (i, (n, clicked)) in cands.iter().enumerate() {
                used[*n] = true;
                let sep = if i > 0 { " " } else { "" };
                if plan.labeled {
                    write!(line, "{sep}N{}-{}", n + 1, u8::from(*clicked))?;
                } else {
                    write!(line, "{sep}N{}", n + 1)?;
                }
            }
            line.push('\n');
            w.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        write_news_and_vectors(&dir, news, &used, rng)?;
    }
    Ok(())
}

// The `mind` profile. Every figure it targets is one the MIND statistics of the issue state:
// a fixed history per user; the top 10% of history news take about 60% of history references
// and the top 1% about 20%; histories average 32 clicks (median 18), 2% empty; impressions
// average 38 candidates (median 24, up to about 300) with about 1.5 clicks (CTR about 4%); the
// top 1% of news get about 60% of clicks (SpeedyFeed, Xiao et al. 2021).

/// Share of the training-period news that histories draw on (the oldest ones: MIND's histories
/// are clicks from before the log window). In MIND-small train, 33,195 distinct news occur in
/// histories (a published profile of it, datarechub.com: 5,107,630 history entries over its
/// 156,965 impressions, the 32.5 mean the issue states) of the 51,282 news of its news.tsv: 65%.
/// The others appear only as candidates. A smaller pool also makes more titles repeat within a
/// batch; this one keeps the measured share.
const HISTORY_POOL: f64 = 0.65;

/// A user's most recent history entries, drawn by [`RECENT_LAW`]; older ones are drawn uniformly
/// from the pool. 50 is the history a training sample keeps (the issue's "cut to the most recent
/// 50", `mtrec-prep mind --max-history`'s default). Recent clicks concentrate on the news of the
/// days before the log, older ones spread over a longer past. With one law for all entries
/// fitted to the same top-1% and top-10% shares, far fewer titles repeat within a batch than in
/// MIND (unique titles per slot at MIND-small size, by a simulation of this generator: 0.98 at 8
/// samples, 0.44 at 1,024, against MIND's 0.94 and 0.27); with the split, 0.97 and 0.32
/// (measured, `tests/mind_profile.rs`).
const RECENT: usize = 50;

/// Popularity of the recent history entries, fitted numerically so that all history references,
/// with the older entries (28% of them at [`HISTORY_LEN`]) uniform, give the top 1% about
/// 20% and top 10% about 60% of the references, over the news that occur in histories. A pure
/// Zipf law (`c` = 0) cannot give both shares at once.
const RECENT_LAW: Law = Law { s: 1.95, c: 0.0256 };

/// Popularity of candidates, over all news. Steeper than the history law: an impression shows
/// news of its day, and clicks concentrate (the top 1% of news get about 60% of clicks,
/// SpeedyFeed); clicks follow the candidates, and this law gives them that share.
const CANDIDATE_LAW: Law = Law { s: 2.0, c: 0.005 };

/// Users without a history: about 2% (the MIND figure).
const HISTORY_EMPTY: f64 = 0.02;

/// Length of a non-empty history: with 2% empty, mean 32 and median 18 over impressions (the
/// issue's MIND figures), solved for the rounded, clamped law.
const HISTORY_LEN: LogNormal = LogNormal { median: 18.5, sigma: 1.075 };

/// Longest history; MIND's longest run to several hundred.
const HISTORY_MAX: usize = 500;

/// Candidates per impression: mean 38, median 24 (the MIND figures) after clamping to
/// [`CANDIDATES_MIN`]..=[`CANDIDATES_MAX`].
const CANDIDATES: LogNormal = LogNormal { median: 24.0, sigma: 0.975 };

/// One clicked and one non-clicked candidate at least.
const CANDIDATES_MIN: usize = 2;

/// MIND's largest impressions show about 300 news.
const CANDIDATES_MAX: usize = 300;

/// Clicks per impression: one, plus each further candidate but one (one stays non-clicked) with
/// this chance: 1 + 0.5 · (38 - 2) / 36 = 1.5 clicks at 38 candidates on average, CTR 1.5 / 38
/// ≈ 4% (the MIND figures).
const EXTRA_CLICK_RATE: f64 = 0.5 / 36.0;

/// Share of a history from the user's preferred topics (as in the `uniform` profile).
const HISTORY_PREFERRED: f64 = 0.8;

/// Share of candidates from the user's preferred topics (as in the `uniform` profile).
const CANDIDATE_PREFERRED: f64 = 0.3;

/// How much likelier a candidate of a preferred topic is to be the clicked one: the odds of the
/// `uniform` profile's click chances, 0.4 against 0.03.
const LIKED_CLICK_ODDS: f64 = 0.4 / 0.03;

/// Draws per wanted item before giving up on distinct ones (tiny data sets have topics of a few
/// news): far more than a draw from MIND-sized topics needs.
const TRIES_PER_ITEM: usize = 20;

/// A Zipf–Mandelbrot law over `n` items: the item at rank `r` (1-based) weighs `(r / n + c)^-s`.
/// The offset scales with `n`, so the top shares stay nearly the same at any size.
#[derive(Debug, Clone, Copy)]
struct Law {
    s: f64,
    c: f64,
}

impl Law {
    /// Weights of `n` items whose ranks are a random permutation.
    fn weights(self, rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
        let mut ranks: Vec<usize> = (1..=n).collect();
        ranks.shuffle(rng);
        ranks.iter().map(|&r| (r as f64 / n as f64 + self.c).powf(-self.s)).collect()
    }
}

/// A lognormal law by its median and the standard deviation of its log.
#[derive(Debug, Clone, Copy)]
struct LogNormal {
    median: f64,
    sigma: f64,
}

impl LogNormal {
    /// A draw rounded to a count in `lo..=hi` (Box–Muller for the normal).
    fn count(self, rng: &mut ChaCha8Rng, lo: usize, hi: usize) -> usize {
        let u1 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        ((self.median * (self.sigma * z).exp()).round() as usize).clamp(lo, hi)
    }
}

/// The news of one topic with cumulative weights: a weighted draw is one binary search.
#[derive(Default)]
struct Pool {
    items: Vec<u32>,
    cumulative: Vec<f64>,
}

impl Pool {
    /// Per topic, the news `0..end`, weighted by `weight[news index]`.
    fn by_topic(news: &[SynthNews], end: usize, weight: &[f64]) -> Vec<Pool> {
        let mut pools: Vec<Pool> = (0..TOPICS.len()).map(|_| Pool::default()).collect();
        for (i, (n, w)) in news.iter().zip(weight).take(end).enumerate() {
            let p = &mut pools[n.topic];
            let total = p.cumulative.last().copied().unwrap_or(0.0) + w;
            p.items.push(i as u32);
            p.cumulative.push(total);
        }
        pools
    }

    fn weighted(&self, rng: &mut ChaCha8Rng) -> Option<u32> {
        let x = rng.random::<f64>() * self.cumulative.last()?;
        let at = self.cumulative.partition_point(|&c| c <= x).min(self.items.len() - 1);
        Some(self.items[at])
    }

    fn uniform(&self, rng: &mut ChaCha8Rng) -> Option<u32> {
        self.items.choose(rng).copied()
    }
}

/// A preferred topic of the user with chance `preferred`, else any topic.
fn pick_topic(rng: &mut ChaCha8Rng, prefs: &[usize], preferred: f64) -> usize {
    if rng.random_bool(preferred) {
        prefs.choose(rng).copied().unwrap_or(0)
    } else {
        rng.random_range(0..TOPICS.len())
    }
}

/// Which news the current history or impression already holds: a stamp per news, so starting
/// afresh costs nothing.
struct Seen {
    stamp: Vec<u32>,
    now: u32,
}

impl Seen {
    fn new(news: usize) -> Self {
        Seen { stamp: vec![0; news], now: 0 }
    }

    fn clear(&mut self) {
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamp.fill(0);
            self.now = 1;
        }
    }

    /// Whether `n` was new (and is now seen).
    fn insert(&mut self, n: u32) -> bool {
        let s = &mut self.stamp[n as usize];
        let new = *s != self.now;
        *s = self.now;
        new
    }
}

/// Appends up to `want` news from `draw` that `seen` does not hold yet.
fn draw_distinct(
    rng: &mut ChaCha8Rng,
    want: usize,
    seen: &mut Seen,
    out: &mut Vec<u32>,
    mut draw: impl FnMut(&mut ChaCha8Rng) -> Option<u32>,
) {
    let goal = out.len() + want;
    for _ in 0..want * TRIES_PER_ITEM {
        if out.len() == goal {
            break;
        }
        if let Some(n) = draw(rng)
            && seen.insert(n)
        {
            out.push(n);
        }
    }
}

/// Every user's history, drawn once: MIND lists the same history in every impression of a user.
/// Oldest first, as MIND lists clicks; flat, with offsets (MIND-large's million users take
/// about 130 MB).
struct Histories {
    news: Vec<u32>,
    start: Vec<usize>,
}

impl Histories {
    fn draw(
        rng: &mut ChaCha8Rng,
        prefs: &[Vec<usize>],
        pools: &[Pool],
        pool_len: usize,
        seen: &mut Seen,
    ) -> Self {
        let max_len = HISTORY_MAX.min(pool_len / 2).max(1);
        let mut h = Histories { news: Vec::new(), start: vec![0] };
        for p in prefs {
            let len = if rng.random_bool(HISTORY_EMPTY) { 0 } else { HISTORY_LEN.count(rng, 1, max_len) };
            let old = len.saturating_sub(RECENT);
            seen.clear();
            draw_distinct(rng, old, seen, &mut h.news, |rng| {
                pools[pick_topic(rng, p, HISTORY_PREFERRED)].uniform(rng)
            });
            draw_distinct(rng, len - old, seen, &mut h.news, |rng| {
                pools[pick_topic(rng, p, HISTORY_PREFERRED)].weighted(rng)
            });
            h.start.push(h.news.len());
        }
        h
    }

    fn of(&self, user: usize) -> &[u32] {
        &self.news[self.start[user]..self.start[user + 1]]
    }
}

/// A split's behaviors as they came out, counted while writing them: the figures the issue
/// states for MIND.
struct MindStats {
    /// Impressions by history length.
    history_len: Vec<u64>,
    /// Impressions by candidate count.
    candidates: Vec<u64>,
    clicks: u64,
    /// Per news: occurrences in the histories of all impressions.
    history_refs: Vec<u64>,
    /// Per news: clicks.
    click_refs: Vec<u64>,
}

impl MindStats {
    fn new(news: usize) -> Self {
        MindStats {
            history_len: vec![0; HISTORY_MAX + 1],
            candidates: vec![0; CANDIDATES_MAX + 1],
            clicks: 0,
            history_refs: vec![0; news],
            click_refs: vec![0; news],
        }
    }

    /// One line: history length, candidates, clicks, CTR, and the top shares of history
    /// references (over the news in histories, and over the news of news.tsv) and of clicks.
    fn summary(&self, used: &[bool]) -> String {
        let impressions: u64 = self.history_len.iter().sum();
        let candidates: u64 = self.candidates.iter().enumerate().map(|(n, c)| n as u64 * c).sum();
        let mean = |h: &[u64]| {
            h.iter().enumerate().map(|(n, c)| n as u64 * c).sum::<u64>() as f64 / impressions as f64
        };
        let in_histories: Vec<u64> = self.history_refs.iter().copied().filter(|&r| r > 0).collect();
        let in_tsv = |refs: &[u64]| -> Vec<u64> {
            refs.iter().zip(used).filter(|(_, u)| **u).map(|(r, _)| *r).collect()
        };
        let (h1, h10) = (top_share(&in_histories, 0.01), top_share(&in_histories, 0.1));
        let tsv_refs = in_tsv(&self.history_refs);
        let (t1, t10) = (top_share(&tsv_refs, 0.01), top_share(&tsv_refs, 0.1));
        let clicks = in_tsv(&self.click_refs);
        format!(
            "{impressions} impressions; history mean {:.1}, median {}, empty {:.1}%; candidates mean {:.1}, \
             median {}, max {}; clicks per impression {:.2}, CTR {:.2}%; top 1% / 10% of the {} news in histories \
             take {:.1}% / {:.1}% of history references ({:.1}% / {:.1}% over the {} news of news.tsv); \
             top 1% / 10% of news.tsv take {:.1}% / {:.1}% of clicks",
            mean(&self.history_len),
            median(&self.history_len),
            100.0 * self.history_len[0] as f64 / impressions as f64,
            mean(&self.candidates),
            median(&self.candidates),
            self.candidates.iter().rposition(|&c| c > 0).unwrap_or(0),
            self.clicks as f64 / impressions as f64,
            100.0 * self.clicks as f64 / candidates as f64,
            in_histories.len(),
            100.0 * h1,
            100.0 * h10,
            100.0 * t1,
            100.0 * t10,
            tsv_refs.len(),
            100.0 * top_share(&clicks, 0.01),
            100.0 * top_share(&clicks, 0.1),
        )
    }
}

/// The median of a histogram (the value at the middle position of the sorted values).
fn median(histogram: &[u64]) -> usize {
    let half = histogram.iter().sum::<u64>() / 2;
    let mut below = 0;
    for (v, c) in histogram.iter().enumerate() {
        below += c;
        if below > half {
            return v;
        }
    }
    0
}

/// Share of the total that the top `frac` of the counts (at least one) take.
fn top_share(counts: &[u64], frac: f64) -> f64 {
    let mut c = counts.to_vec();
    c.sort_unstable_by(|a, b| b.cmp(a));
    let k = ((c.len() as f64 * frac).round() as usize).max(1).min(c.len());
    let total: u64 = c.iter().sum();
    if total == 0 { 0.0 } else { c[..k].iter().sum::<u64>() as f64 / total as f64 }
}

/// The `mind` profile: fixed histories per user, heavy-tailed popularity, MIND's history-length,
/// candidate-count and click distributions (the constants above say where each comes from).
fn mind_behaviors(
    opts: &SynthOptions,
    out: &Path,
    news: &[SynthNews],
    train_news: usize,
    prefs: &[Vec<usize>],
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let pool_len = ((train_news as f64 * HISTORY_POOL).round() as usize).clamp(1, train_news);
    let history_pools = Pool::by_topic(news, pool_len, &RECENT_LAW.weights(rng, pool_len));
    let candidate_weight = CANDIDATE_LAW.weights(rng, news.len());
    let train_candidates = Pool::by_topic(news, train_news, &candidate_weight);
    let all_candidates = Pool::by_topic(news, news.len(), &candidate_weight);
    let mut seen = Seen::new(news.len());
    let histories = Histories::draw(rng, prefs, &history_pools, pool_len, &mut seen);
    // 90% of users appear in train; dev and test draw from all, so some users are new there.
    let train_users = (opts.users * 9 / 10).max(1);
    for plan in split_plans(opts) {
        let (dir, path, mut w) = plan.create(out)?;
        let (pools, users, pool_news) = if plan.is_train() {
            (&train_candidates, train_users, train_news)
        } else {
            (&all_candidates, opts.users, news.len())
        };
        let max_candidates = (pool_news / 2).clamp(CANDIDATES_MIN, CANDIDATES_MAX);
        let mut used = vec![false; news.len()];
        let mut stats = MindStats::new(news.len());
        let mut line = String::new();
        let mut cands: Vec<u32> = Vec::new();
        let mut clicked: Vec<bool> = Vec::new();
        for imp in 0..plan.impressions {
            let u = rng.random_range(0..users);
            let time = plan.draw_time(rng);
            line.clear();
            write!(line, "{}\tU{}\t{}\t", imp + 1, u + 1, format_time(time))?;
            let history = histories.of(u);
            for (i, &n) in history.iter().enumerate() {
                used[n as usize] = true;
                stats.history_refs[n as usize] += 1;
                write!(line, "{}N{}", if i > 0 { " " } else { "" }, n + 1)?;
            }
            stats.history_len[history.len()] += 1;
            line.push('\t');
            let want = CANDIDATES.count(rng, CANDIDATES_MIN, max_candidates);
            cands.clear();
            seen.clear();
            draw_distinct(rng, want, &mut seen, &mut cands, |rng| {
                pools[pick_topic(rng, &prefs[u], CANDIDATE_PREFERRED)].weighted(rng)
            });
            if cands.len() < CANDIDATES_MIN {
                bail!("{} impression {}: found fewer than two distinct candidates", plan.name, imp + 1);
            }
            // The clicks: a count, then which ones, weighted towards the user's topics.
            let n_clicks = 1 + (0..cands.len() - 2).filter(|_| rng.random_bool(EXTRA_CLICK_RATE)).count();
            let weight: Vec<f64> = cands
                .iter()
                .map(|&n| if prefs[u].contains(&news[n as usize].topic) { LIKED_CLICK_ODDS } else { 1.0 })
                .collect();
            clicked.clear();
            clicked.resize(cands.len(), false);
            for _ in 0..n_clicks {
                let open = |i: &usize| !clicked[*i];
                let total: f64 = (0..cands.len()).filter(open).map(|i| weight[i]).sum();
                let mut x = rng.random::<f64>() * total;
                let mut pick = None;
                for i in (0..cands.len()).filter(open) {
                    pick = Some(i);
                    x -= weight[i];
                    if x < 0.0 {
                        break;
                    }
                }
                if let Some(i) = pick {
                    clicked[i] = true;
                }
            }
            stats.candidates[cands.len()] += 1;
            stats.clicks += n_clicks as u64;
            for (i, (&n, &c)) in cands.iter().zip(&clicked).enumerate() {
                used[n as usize] = true;
                if c {
                    stats.click_refs[n as usize] += 1;
                }
                let sep = if i > 0 { " " } else { "" };
                if plan.labeled {
                    write!(line, "{sep}N{}-{}", n + 1, u8::from(c))?;
                } else {
                    write!(line, "{sep}N{}", n + 1)?;
                }
            }
            line.push('\n');
            w.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        }
        w.flush().with_context(|| format!("writing {}", path.display()))?;
        tracing::info!("synth --profile mind, {}: {}", plan.name, stats.summary(&used));
        write_news_and_vectors(&dir, news, &used, rng)?;
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
