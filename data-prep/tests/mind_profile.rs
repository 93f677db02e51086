//! `mtrec-prep synth --profile mind`: runs the real binary and measures the written files, with
//! code of its own (not the generator's), against the MIND statistics the profile targets (the
//! issue's figures, from MIND's published statistics and a sample of MIND-small train rows):
//!
//! - a user's history is the same in every impression, in train, dev and test alike;
//! - histories: mean about 32, median 18, about 2% empty (over impressions);
//! - candidates per impression: mean about 38, median 24, at most about 300;
//! - about 1.5 clicks per impression, CTR (clicks / candidates) about 4%;
//! - the top 10% of news take about 60% of history references, the top 1% about 20%. Over the
//!   news that occur in train histories (MIND-small train: 33,195 of the 51,282 of its news.tsv),
//!   references counted over impressions; the share over all news of train's news.tsv is printed
//!   too. Those two shares and the batch figures below only fit together over the news in
//!   histories: over all of news.tsv, a law with these shares repeats far fewer titles in a batch
//!   than MIND does;
//! - unique titles per title slot of random batches: 0.94 at 8 samples, 0.84 at 32, 0.75 at 64,
//!   0.51 at 256, 0.27 at 1,024. A sample is one click (every click of train is one, as the
//!   trainer's `SampleIndex` has it), four non-clicked news of its impression (drawn without
//!   replacement, with replacement when it has fewer, as the trainer's sampler), and the user's
//!   history cut to the most recent 50; its title slots are those history slots plus the five
//!   candidates.
//!
//! Bands: every distribution figure within about 15% of MIND's. The batch figures depend on the
//! number of news (more news, fewer repeats), so they are checked on a data set of MIND-small's
//! size (65,238 news, 94,057 users, 230,117 impressions: about 3 s to write), the other figures on
//! a smaller one. The profile gets fewer repeats than MIND in small batches (about 0.97 unique at
//! 8 samples and 0.82 at 64, see `RECENT` in `src/synth.rs`), so the bands there are wider on the
//! high side: 0.85-0.99 at 8 and 0.60-0.88 at 64.
//!
//! The planted signal: a clicked candidate's category takes a larger share of the user's history
//! than a non-clicked candidate's (both would be equal without it).
//!
//! `cargo test -p mtrec-prep --test mind_profile -- --nocapture` prints the measured figures.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use rand::seq::{IndexedRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One behaviors.tsv line, news ids as numbers.
struct Impression {
    user: String,
    history: Vec<u32>,
    clicked: Vec<u32>,
    non_clicked: Vec<u32>,
}

fn synth(out: &Path, news: usize, users: usize, impressions: usize) {
    let run = Command::new(env!("CARGO_BIN_EXE_mtrec-prep"))
        .args(["synth", "--profile", "mind", "--out"])
        .arg(out)
        .args(["--news", &news.to_string(), "--users", &users.to_string()])
        .args(["--impressions", &impressions.to_string()])
        .output()
        .expect("running mtrec-prep");
    assert!(
        run.status.success(),
        "mtrec-prep synth failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn news_id(s: &str) -> u32 {
    s.strip_prefix('N').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad news id {s:?}"))
}

fn read_behaviors(split: &Path) -> Vec<Impression> {
    let path = split.join("behaviors.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "{}: five fields in {line:?}", path.display());
            let history = f[3].split_whitespace().map(news_id).collect();
            let (mut clicked, mut non_clicked) = (Vec::new(), Vec::new());
            for c in f[4].split_whitespace() {
                match c.split_once('-') {
                    Some((n, "1")) => clicked.push(news_id(n)),
                    Some((n, "0")) => non_clicked.push(news_id(n)),
                    _ => panic!("{}: bad candidate {c:?}", path.display()),
                }
            }
            Impression { user: f[1].to_string(), history, clicked, non_clicked }
        })
        .collect()
}

/// News id -> category, from a news.tsv.
fn read_categories(split: &Path) -> HashMap<u32, String> {
    let path = split.join("news.tsv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let mut f = line.split('\t');
            let id = news_id(f.next().unwrap_or(""));
            (
                id,
                f.next().unwrap_or_else(|| panic!("{}: no category in {line:?}", path.display())).to_string(),
            )
        })
        .collect()
}

fn mean(v: &[usize]) -> f64 {
    v.iter().sum::<usize>() as f64 / v.len() as f64
}

fn median(v: &[usize]) -> usize {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// Share of all references that the most referenced `frac` of `counts` (at least one) take.
fn top_share(counts: &[u64], frac: f64) -> f64 {
    let mut c = counts.to_vec();
    c.sort_unstable_by(|a, b| b.cmp(a));
    let k = ((c.len() as f64 * frac).round() as usize).max(1);
    c[..k].iter().sum::<u64>() as f64 / c.iter().sum::<u64>() as f64
}

/// (top 1%, top 10%) shares of history references over the news that occur in histories, and
/// over all news of `tsv` (news.tsv's ids).
fn history_shares(imps: &[Impression], tsv: &HashMap<u32, String>) -> ((f64, f64), (f64, f64)) {
    let mut refs: HashMap<u32, u64> = HashMap::new();
    for imp in imps {
        for &n in &imp.history {
            *refs.entry(n).or_default() += 1;
        }
    }
    let in_histories: Vec<u64> = refs.values().copied().collect();
    let over_tsv: Vec<u64> = tsv.keys().map(|n| refs.get(n).copied().unwrap_or(0)).collect();
    (
        (top_share(&in_histories, 0.01), top_share(&in_histories, 0.1)),
        (top_share(&over_tsv, 0.01), top_share(&over_tsv, 0.1)),
    )
}

/// Mean unique titles per title slot over random batches of `batch` samples (see the file's doc).
fn unique_per_slot(imps: &[Impression], batch: usize, rng: &mut ChaCha8Rng) -> f64 {
    let samples: Vec<(usize, usize)> = imps
        .iter()
        .enumerate()
        .filter(|(_, imp)| !imp.non_clicked.is_empty())
        .flat_map(|(i, imp)| (0..imp.clicked.len()).map(move |c| (i, c)))
        .collect();
    let batches = (16_384 / batch).max(8);
    let mut sum = 0.0;
    for _ in 0..batches {
        let mut titles: HashSet<u32> = HashSet::new();
        let mut slots = 0;
        for s in index::sample(rng, samples.len(), batch) {
            let (i, c) = samples[s];
            let imp = &imps[i];
            let recent = &imp.history[imp.history.len().saturating_sub(50)..];
            let negatives: Vec<u32> = if imp.non_clicked.len() >= 4 {
                imp.non_clicked.choose_multiple(rng, 4).copied().collect()
            } else {
                (0..4).map(|_| imp.non_clicked[rng.random_range(0..imp.non_clicked.len())]).collect()
            };
            slots += recent.len() + 5;
            titles.extend(recent.iter().copied().chain([imp.clicked[c]]).chain(negatives));
        }
        sum += titles.len() as f64 / slots as f64;
    }
    sum / batches as f64
}

fn in_band(name: &str, value: f64, lo: f64, hi: f64) {
    assert!((lo..=hi).contains(&value), "{name} = {value:.4}, outside {lo}..={hi}");
}

#[test]
fn mind_profile_has_minds_statistics_and_the_planted_signal() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("mind");
    synth(&data, 20_000, 20_000, 40_000);
    let splits: Vec<(&str, Vec<Impression>)> =
        ["train", "dev", "test"].into_iter().map(|s| (s, read_behaviors(&data.join(s)))).collect();

    // One history per user, in every impression of every split; no news twice in one.
    let mut history_of: HashMap<&str, &[u32]> = HashMap::new();
    for (split, imps) in &splits {
        for imp in imps {
            let known = *history_of.entry(&imp.user).or_insert(&imp.history);
            assert_eq!(known, &imp.history[..], "{split}: user {} has two histories", imp.user);
        }
    }
    for (user, h) in &history_of {
        assert_eq!(h.iter().collect::<HashSet<_>>().len(), h.len(), "user {user}: a news twice in a history");
    }
    let sizes: Vec<String> = splits.iter().map(|(s, imps)| format!("{s} {}", imps.len())).collect();
    println!("{} users, each with one history over impressions {}", history_of.len(), sizes.join(", "));

    let train = &splits[0].1;
    let categories = read_categories(&data.join("train"));
    for imp in train {
        assert!(!imp.clicked.is_empty() && !imp.non_clicked.is_empty(), "a click and a non-click each");
        let cands: HashSet<u32> = imp.clicked.iter().chain(&imp.non_clicked).copied().collect();
        assert_eq!(cands.len(), imp.clicked.len() + imp.non_clicked.len(), "distinct candidates");
        for n in imp.history.iter().chain(&cands) {
            assert!(categories.contains_key(n), "N{n} is not in train/news.tsv");
        }
    }

    let hist: Vec<usize> = train.iter().map(|i| i.history.len()).collect();
    let cands: Vec<usize> = train.iter().map(|i| i.clicked.len() + i.non_clicked.len()).collect();
    let clicks: usize = train.iter().map(|i| i.clicked.len()).sum();
    let empty = hist.iter().filter(|&&l| l == 0).count() as f64 / hist.len() as f64;
    let clicks_per = clicks as f64 / train.len() as f64;
    let ctr = clicks as f64 / cands.iter().sum::<usize>() as f64;
    let ((top1, top10), (tsv1, tsv10)) = history_shares(train, &categories);
    let max_cands = cands.iter().copied().max().unwrap_or(0);
    println!(
        "history mean {:.2} median {} empty {:.2}%; candidates mean {:.2} median {} max {max_cands}; \
         clicks/impression {clicks_per:.3}; CTR {:.2}%",
        mean(&hist),
        median(&hist),
        100.0 * empty,
        mean(&cands),
        median(&cands),
        100.0 * ctr
    );
    println!(
        "history references: top 1% {:.1}%, top 10% {:.1}% of the news in histories; {:.1}% / {:.1}% of news.tsv's",
        100.0 * top1,
        100.0 * top10,
        100.0 * tsv1,
        100.0 * tsv10
    );
    in_band("history mean", mean(&hist), 27.0, 37.0);
    in_band("history median", median(&hist) as f64, 14.0, 22.0);
    in_band("empty histories", empty, 0.01, 0.035);
    in_band("candidates mean", mean(&cands), 33.0, 44.0);
    in_band("candidates median", median(&cands) as f64, 20.0, 28.0);
    assert!(max_cands <= 300, "at most 300 candidates, got {max_cands}");
    in_band("clicks per impression", clicks_per, 1.3, 1.7);
    in_band("CTR", ctr, 0.03, 0.055);
    in_band("top-10% share", top10, 0.50, 0.70);
    in_band("top-1% share", top1, 0.14, 0.28);

    // The planted signal: the category of a clicked candidate is commoner in the user's history
    // than that of a non-clicked one.
    let (mut clicked_share, mut n_clicked, mut other_share, mut n_other) = (0.0, 0usize, 0.0, 0usize);
    for imp in train.iter().filter(|i| !i.history.is_empty()) {
        let mut in_history: HashMap<&str, f64> = HashMap::new();
        for n in &imp.history {
            *in_history.entry(categories[n].as_str()).or_default() += 1.0 / imp.history.len() as f64;
        }
        let share = |n: &u32| in_history.get(categories[n].as_str()).copied().unwrap_or(0.0);
        clicked_share += imp.clicked.iter().map(share).sum::<f64>();
        n_clicked += imp.clicked.len();
        other_share += imp.non_clicked.iter().map(share).sum::<f64>();
        n_other += imp.non_clicked.len();
    }
    let (clicked_share, other_share) = (clicked_share / n_clicked as f64, other_share / n_other as f64);
    println!(
        "share of the user's history in the candidate's category: clicked {clicked_share:.3}, non-clicked {other_share:.3}"
    );
    assert!(clicked_share > 1.5 * other_share, "clicks follow the user's history's categories");

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for b in [8, 64] {
        println!(
            "unique titles per slot at {b} samples (20,000 news): {:.3}",
            unique_per_slot(train, b, &mut rng)
        );
    }
}

#[test]
fn mind_profile_batches_repeat_titles_like_mind_at_mind_small_size() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("mind-small");
    synth(&data, 65_238, 94_057, 230_117);
    let train = read_behaviors(&data.join("train"));
    let categories = read_categories(&data.join("train"));
    let ((top1, top10), (tsv1, tsv10)) = history_shares(&train, &categories);
    println!(
        "MIND-small size: history references: top 1% {:.1}%, top 10% {:.1}% of the news in histories; \
         {:.1}% / {:.1}% of news.tsv's",
        100.0 * top1,
        100.0 * top10,
        100.0 * tsv1,
        100.0 * tsv10
    );
    in_band("top-10% share", top10, 0.50, 0.70);
    in_band("top-1% share", top1, 0.14, 0.28);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut ratio = HashMap::new();
    for (b, mind) in [(8, 0.94), (32, 0.84), (64, 0.75), (256, 0.51), (1024, 0.27)] {
        let r = unique_per_slot(&train, b, &mut rng);
        println!("MIND-small size: unique titles per slot at {b} samples: {r:.3} (MIND {mind})");
        ratio.insert(b, r);
    }
    in_band("unique per slot at 8 samples", ratio[&8], 0.85, 0.99);
    in_band("unique per slot at 64 samples", ratio[&64], 0.60, 0.88);
}
