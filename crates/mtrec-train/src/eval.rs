//! Evaluation: encode every news item once (the same pass gives the category head's
//! predictions), then users, then dot products; MIND metrics per impression (on the leaderboard's
//! ranks, [`crate::metrics`]) and the beyond-accuracy metrics of the top k ([`crate::beyond`]),
//! summed per rank and reduced. Impressions are split across ranks by position.
//! The loops call a [`Tick`] once per round, the same number of times on every rank (a rank with
//! less work runs empty rounds).
use crate::TrainError;
use crate::beyond::{BeyondAccuracy, TrainingClicks, beyond_accuracy};
use crate::device_batch::news_inputs;
use crate::layer_cache::LayerCache;
use crate::metrics::{RankingMetrics, UserGroups};
use crate::progress::{Tick, progress};
use mtrec_data::manifest::{Manifest, Split};
use mtrec_data::read::{EvalImpression, NewsTable};
use mtrec_dist::Collective;
use mtrec_model::{Dropout, Heads, NewsRecModel, upload, upload_i64};
use tch::{Device, Kind, Tensor};

/// Every news item's vector and, when asked for and the model has a category head, the head's
/// prediction, from one encoder pass.
pub struct EncodedNews {
    /// `[num_news + 1, d]` f32, row `nid`, row 0 zeros.
    pub vectors: Tensor,
    /// Per row, the category head's argmax (row 0: 0), on the host.
    pub categories: Option<Vec<i64>>,
}

/// News vectors of every news item (and with `heads = Heads::Category` the category head's
/// predictions: [`EncodedNews`]). Titles are sorted by length and dealt round-robin to the ranks
/// (equal work); each rank encodes its share `batch` titles at a time (almost no padding), and
/// the shares are gathered so every rank ends with the whole table. With a frozen-layer `cache`
/// (during training), only the layers above it run.
#[allow(clippy::too_many_arguments)]
pub fn encode_all_news(
    model: &NewsRecModel,
    table: &NewsTable,
    batch: usize,
    heads: Heads,
    device: Device,
    collective: &dyn Collective,
    tick: Tick,
    cache: Option<&LayerCache>,
) -> Result<EncodedNews, TrainError> {
    let placement = collective.placement();
    let (rank, world) = (placement.rank, placement.world_size);
    let mut sorted: Vec<i32> = (1..table.input_ids.len() as i32).collect();
    sorted.sort_by_key(|&n| table.input_ids[n as usize].len());
    let share = |r: usize| sorted.iter().skip(r).step_by(world).copied().collect::<Vec<i32>>();
    let mine = share(rank);
    let rows_per_rank = sorted.len().div_ceil(world);
    let d = model.bert.config.hidden_size;
    // The predicted category travels as one more f32 column (exact: ids are far below 2^24).
    let with_categories = heads == Heads::Category && model.has_category_head();
    let width = d + i64::from(with_categories);
    let kind = Kind::Float;
    let local = Tensor::zeros([rows_per_rank as i64, width], (kind, device));
    let bar = progress(mine.len() as u64, "news", placement.is_main());
    let batch = batch.max(1);
    tch::no_grad(|| -> Result<(), TrainError> {
        for round in 0..rows_per_rank.div_ceil(batch) {
            let chunk = &mine[(round * batch).min(mine.len())..((round + 1) * batch).min(mine.len())];
            if !chunk.is_empty() {
                let out = model.encode_news(&news_inputs(table, chunk, device, cache), heads, &Dropout::Off);
                let rows = local.narrow(0, (round * batch) as i64, chunk.len() as i64);
                rows.narrow(1, 0, d).copy_(&out.vectors);
                if let Some(logits) = out.category_logits.filter(|_| with_categories) {
                    rows.narrow(1, d, 1).copy_(&logits.argmax(-1, true));
                }
                bar.inc(chunk.len() as u64);
            }
            tick()?;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let gathered = collective.all_gather(&local)?.view([-1, width]);
    // Row q * rows_per_rank + j of `gathered` is the j-th news of rank q's share (0 = padding).
    let mut rows = vec![0i64; world * rows_per_rank];
    for q in 0..world {
        for (j, nid) in share(q).into_iter().enumerate() {
            rows[q * rows_per_rank + j] = nid as i64;
        }
    }
    let mut table_rows = Tensor::zeros([table.input_ids.len() as i64, width], (kind, device));
    tch::no_grad(|| {
        let _ = table_rows.index_copy_(0, &upload(Tensor::from_slice(&rows), device), &gathered);
        let _ = table_rows.get(0).zero_();
    });
    let categories = if with_categories {
        let column = table_rows.narrow(1, d, 1).view([-1]).to_kind(Kind::Int64).to_device(Device::Cpu);
        Some(Vec::try_from(column)?)
    } else {
        None
    };
    let vectors = if with_categories { table_rows.narrow(1, 0, d).contiguous() } else { table_rows };
    Ok(EncodedNews { vectors, categories })
}

/// [`encode_all_news`]'s vectors in one process (no other ranks, no cache, no heads), for
/// `predict`, `embed` and `serve`.
pub fn news_vectors(
    model: &NewsRecModel,
    table: &NewsTable,
    batch: usize,
    device: Device,
    tick: Tick,
) -> Result<Tensor, TrainError> {
    let local = mtrec_dist::Local;
    Ok(encode_all_news(model, table, batch, Heads::None, device, &local, tick, None)?.vectors)
}

/// One round's impressions on the device, from one upload.
struct ImpressionBatch {
    /// `[B, H]` int64 news rows of the histories (the last `history` clicks, 0 = padding), and
    /// `[B, H]` bool where they are real.
    history: Tensor,
    mask: Tensor,
    /// `[B]` int64.
    users: Tensor,
    /// `[C]` int64 news rows of every candidate of the round, impression after impression, and
    /// `[C]` the impression (row of `users`) each belongs to.
    candidates: Tensor,
    owners: Tensor,
}

impl ImpressionBatch {
    fn new(chunk: &[EvalImpression], history: usize, device: Device) -> ImpressionBatch {
        let h = chunk.iter().map(|i| i.history.len().min(history)).max().unwrap_or(0).max(1);
        let mut rows = Vec::with_capacity(chunk.len() * h);
        let mut mask = Vec::with_capacity(chunk.len() * h);
        for imp in chunk {
            let kept = &imp.history[imp.history.len().saturating_sub(history)..];
            rows.extend(kept.iter().map(|&n| n as i64).chain(std::iter::repeat_n(0, h - kept.len())));
            mask.extend((0..h).map(|t| i64::from(t < kept.len())));
        }
        let users: Vec<i64> = chunk.iter().map(|i| i.user as i64).collect();
        let candidates: Vec<i64> =
            chunk.iter().flat_map(|i| i.candidates.iter().map(|&n| n as i64)).collect();
        let owners: Vec<i64> = (0..chunk.len() as i64)
            .flat_map(|i| std::iter::repeat_n(i, chunk[i as usize].candidates.len()))
            .collect();
        let parts = [rows.as_slice(), &mask, &users, &candidates, &owners];
        let [history, mask, users, candidates, owners] =
            <[Tensor; 5]>::try_from(upload_i64(&parts, device)).expect("one tensor per part");
        let shape = [chunk.len() as i64, h as i64];
        ImpressionBatch {
            history: history.view(shape),
            mask: mask.view(shape).ne(0),
            users,
            candidates,
            owners,
        }
    }

    /// `[B, d]`: each impression's user vector, from the news vectors of its history.
    fn user_vectors(&self, model: &NewsRecModel, news_vectors: &Tensor) -> Result<Tensor, TrainError> {
        let (b, h) = self.history.size2()?;
        let d = news_vectors.size()[1];
        let history = news_vectors.index_select(0, &self.history.view([-1])).view([b, h, d]);
        Ok(model.encode_users(&history, &self.mask, &self.users, &Dropout::Off))
    }
}

/// `[impressions, d]` user vectors on the device of `news_vectors`, each from the impression's
/// last `history` clicks (as [`score_impressions`] computes them), `batch` impressions at a time.
pub fn user_vectors(
    model: &NewsRecModel,
    news_vectors: &Tensor,
    impressions: &[EvalImpression],
    history: usize,
    batch: usize,
) -> Result<Tensor, TrainError> {
    let device = news_vectors.device();
    let d = news_vectors.size()[1];
    tch::no_grad(|| {
        let parts = impressions
            .chunks(batch.max(1))
            .map(|chunk| ImpressionBatch::new(chunk, history, device).user_vectors(model, news_vectors))
            .collect::<Result<Vec<Tensor>, TrainError>>()?;
        Ok(if parts.is_empty() {
            Tensor::zeros([0, d], (Kind::Float, device))
        } else {
            Tensor::cat(&parts, 0)
        })
    })
}

/// Click scores of every candidate of `impressions`, in their original order, `batch`
/// impressions per round over `rounds` rounds (at least enough for all of them; more when
/// another rank has more). A round's inputs go to the device in one upload; the scores stay
/// there and come back in one copy at the end (no synchronisation per round).
#[allow(clippy::too_many_arguments)]
pub fn score_impressions(
    model: &NewsRecModel,
    news_vectors: &Tensor,
    impressions: &[EvalImpression],
    history: usize,
    batch: usize,
    rounds: usize,
    show_progress: bool,
    tick: Tick,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let device = news_vectors.device();
    let bar = progress(impressions.len() as u64, "impressions", show_progress);
    let batch = batch.max(1);
    let chunks = impressions.chunks(batch);
    let empty_rounds = rounds.saturating_sub(chunks.len());
    let mut scores = Vec::with_capacity(chunks.len());
    tch::no_grad(|| -> Result<(), TrainError> {
        for chunk in chunks {
            let inputs = ImpressionBatch::new(chunk, history, device);
            let user_vectors = inputs.user_vectors(model, news_vectors)?;
            // All candidates of the chunk at once: [C, d] . their impressions' user vectors.
            let cand_vectors = news_vectors.index_select(0, &inputs.candidates);
            let owners = user_vectors.index_select(0, &inputs.owners);
            scores.push((cand_vectors * owners).sum_dim_intlist(-1, false, Kind::Float));
            bar.inc(chunk.len() as u64);
            tick()?;
        }
        (0..empty_rounds).try_for_each(|_| tick())
    })?;
    bar.finish_and_clear();
    let scores: Vec<f32> = if scores.is_empty() {
        Vec::new()
    } else {
        Vec::try_from(Tensor::cat(&scores, 0).to_device(Device::Cpu))?
    };
    let mut offset = 0;
    Ok(impressions
        .iter()
        .map(|imp| {
            offset += imp.candidates.len();
            scores[offset - imp.candidates.len()..offset].to_vec()
        })
        .collect())
}

/// Rounds of `batch` that the longest of the ranks' shares of `len` items needs.
pub fn rounds_for(len: usize, world: usize, batch: usize) -> usize {
    len.div_ceil(world).div_ceil(batch.max(1))
}

/// The impressions of `eval.split`, the first `eval.max_impressions` of them (0 = all); refused
/// when the split is empty or has an impression without labels.
pub fn eval_impressions(
    config: &crate::config::Config,
    manifest: &Manifest,
) -> Result<Vec<EvalImpression>, TrainError> {
    let split = if config.eval.split == "test" { Split::Test } else { Split::Dev };
    let mut impressions = mtrec_data::read::read_eval(&config.data.shards, manifest, split)?;
    let shards = config.data.shards.display();
    if impressions.is_empty() {
        return Err(TrainError::Config(format!(
            "eval.split = {}: {shards} has no such impressions",
            config.eval.split
        )));
    }
    if let Some(imp) = impressions.iter().find(|i| i.labels.is_none()) {
        return Err(TrainError::Config(format!(
            "eval.split = {}: impression {} in {shards} has no labels: evaluate on a labelled split",
            config.eval.split, imp.impression_id
        )));
    }
    if config.eval.max_impressions > 0 {
        impressions.truncate(config.eval.max_impressions);
    }
    Ok(impressions)
}

/// How well the auxiliary category task learned, on the news of the evaluated impressions
/// (history and candidates, each news item once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CategoryAccuracy {
    /// The category head's accuracy.
    pub accuracy: f64,
    /// The share of their most common category (the majority-class baseline).
    pub majority: f64,
}

impl CategoryAccuracy {
    /// From the head's prediction per news row; `None` when the impressions name no news.
    pub fn of(predicted: &[i64], table: &NewsTable, impressions: &[EvalImpression]) -> Option<Self> {
        let mut nids: Vec<i32> =
            impressions.iter().flat_map(|i| i.history.iter().chain(&i.candidates)).copied().collect();
        nids.sort_unstable();
        nids.dedup();
        if nids.is_empty() {
            return None;
        }
        let mut correct = 0usize;
        let mut counts = std::collections::HashMap::new();
        for &nid in &nids {
            let truth = table.category[nid as usize];
            correct += usize::from(predicted[nid as usize] == truth);
            *counts.entry(truth).or_insert(0usize) += 1;
        }
        let majority = counts.values().copied().max().unwrap_or(0);
        let n = nids.len() as f64;
        Some(CategoryAccuracy { accuracy: correct as f64 / n, majority: majority as f64 / n })
    }
}

/// This rank's share of `len` items: a contiguous range.
pub fn rank_range(len: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = len.div_ceil(world);
    (rank * per).min(len)..((rank + 1) * per).min(len)
}

/// What one evaluation measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// MIND's metrics over every impression.
    pub metrics: RankingMetrics,
    /// The same by user group.
    pub groups: UserGroups,
    /// The beyond-accuracy metrics of each `eval.top_k`.
    pub beyond: Vec<BeyondAccuracy>,
    /// Without a category head: `None`.
    pub category: Option<CategoryAccuracy>,
}

impl Evaluation {
    /// The fields `metrics.json` and the evaluation records of `metrics.jsonl` share.
    pub fn to_json(&self) -> serde_json::Value {
        let m = &self.metrics;
        serde_json::json!({"auc": m.auc, "mrr": m.mrr, "ndcg5": m.ndcg5, "ndcg10": m.ndcg10,
            "impressions": m.impressions, "groups": self.groups.to_json(), "beyond_accuracy": self.beyond,
            "category_accuracy": self.category.map(|c| c.accuracy),
            "category_majority": self.category.map(|c| c.majority)})
    }
}

impl std::fmt::Display for Evaluation {
    /// The summary a log shows: the metrics, then each group, top k and the category head.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.metrics)?;
        write!(f, "by user group:\n{}", self.groups)?;
        for b in &self.beyond {
            writeln!(f, "  {b}")?;
        }
        if let Some(c) = self.category {
            writeln!(f, "  category head accuracy {:.4} (majority class {:.4})", c.accuracy, c.majority)?;
        }
        Ok(())
    }
}

/// MIND metrics of `impressions` (which must have labels), averaged over impressions of all ranks.
/// Each impression is scored as the leaderboard scores the ranks `predict` writes for it: its
/// scores are ranked by [`crate::metrics::ranks_in_input_order`] (descending score, ties in listed
/// order, `-0.0 == +0.0`) and the metrics are computed on those ranks (score `1 / rank`), so they
/// equal MIND's scorer on `predict`'s `prediction.zip` for the same checkpoint and split. A NaN
/// score is an error naming the impression; impressions without both a click and a non-click are
/// skipped (see [`crate::metrics`]). Also the same metrics by user group ([`UserGroups`]), the
/// beyond-accuracy metrics of `eval.top_k` ([`crate::beyond`], novelty from `clicks`) and the
/// category head's accuracy, from the encoder pass that gives the news vectors.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &NewsRecModel,
    table: &NewsTable,
    impressions: &[EvalImpression],
    clicks: &TrainingClicks,
    config: &crate::config::Config,
    device: Device,
    collective: &dyn Collective,
    tick: Tick,
    cache: Option<&LayerCache>,
) -> Result<Evaluation, TrainError> {
    let placement = collective.placement();
    let show = placement.is_main();
    let news = encode_all_news(
        model,
        table,
        config.eval.news_batch,
        Heads::Category,
        device,
        collective,
        tick,
        cache,
    )?;
    let mine = &impressions[rank_range(impressions.len(), placement.rank, placement.world_size)];
    let (history, batch) = (config.data.history, config.eval.user_batch);
    let rounds = rounds_for(impressions.len(), placement.world_size, batch);
    let scores = score_impressions(model, &news.vectors, mine, history, batch, rounds, show, tick)?;
    let (mut sums, mut groups) = (RankingMetrics::default(), UserGroups::default());
    for (imp, s) in mine.iter().zip(&scores) {
        let labels = imp.labels.as_ref().ok_or_else(|| {
            TrainError::Config(format!(
                "impression {} has no labels: evaluate on a labelled split",
                imp.impression_id
            ))
        })?;
        let mut one = RankingMetrics::default();
        one.add(imp.impression_id, labels, s).map_err(|e| TrainError::Config(format!("scores: {e}")))?;
        sums = sums.plus(&one);
        for g in UserGroups::of(imp.history.len(), imp.user) {
            groups.0[g] = groups.0[g].plus(&one);
        }
    }
    let mut array = sums.as_array().to_vec();
    array.extend(groups.as_array());
    collective.all_reduce_sum_f64(&mut array)?;
    let overall = RankingMetrics::from_array(array[..5].try_into().expect("5 sums"));
    let beyond =
        beyond_accuracy(&config.eval.top_k, mine, &scores, table, &news.vectors, clicks, collective)?;
    Ok(Evaluation {
        metrics: overall.mean(),
        groups: UserGroups::from_array(&array[5..]).mean(),
        beyond,
        category: news.categories.and_then(|predicted| CategoryAccuracy::of(&predicted, table, impressions)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impression(id: i64, user: i32, history: &[i32], candidates: &[i32]) -> EvalImpression {
        EvalImpression {
            impression_id: id,
            user,
            time: 0,
            history: history.to_vec(),
            candidates: candidates.to_vec(),
            labels: None,
        }
    }

    /// Impressions batched two per round (histories cut to 3, padded, one empty; 1-3
    /// candidates) score what each scores alone: its candidates' vectors dotted with its own
    /// user vector, in listed order; every round, and the empty ones asked for, tick once.
    #[test]
    fn batched_rounds_score_each_impression_as_alone() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        let config = crate::config::Config::load(&path, &[]).unwrap();
        let model_dir = crate::setup::model_dir(&config).unwrap();
        let (_vs, model) =
            crate::setup::build_model(&config, crate::bench::LABELS, &model_dir, None, Device::Cpu).unwrap();
        tch::manual_seed(4);
        let d = model.bert.config.hidden_size;
        let vectors = Tensor::randn([8, d], (Kind::Float, Device::Cpu));
        let _ = tch::no_grad(|| vectors.get(0).zero_());
        let impressions = [
            impression(1, 3, &[1, 2, 3, 4], &[5, 6]),
            impression(2, 0, &[], &[7]),
            impression(3, 5, &[6, 1], &[1, 2, 3]),
        ];
        let ticks = std::cell::Cell::new(0);
        let tick = || {
            ticks.set(ticks.get() + 1);
            Ok(())
        };
        let scores = score_impressions(&model, &vectors, &impressions, 3, 2, 4, false, &tick).unwrap();
        assert_eq!(ticks.get(), 4, "2 rounds of impressions and 2 empty ones");
        for (imp, scores) in impressions.iter().zip(&scores) {
            let kept = &imp.history[imp.history.len().saturating_sub(3)..];
            let rows: Vec<i64> =
                if kept.is_empty() { vec![0] } else { kept.iter().map(|&n| n as i64).collect() };
            let h = rows.len() as i64;
            let history = vectors.index_select(0, &Tensor::from_slice(&rows)).view([1, h, d]);
            let mask = Tensor::from_slice(&vec![!kept.is_empty(); rows.len()]).view([1, h]);
            let user = tch::no_grad(|| {
                model.encode_users(&history, &mask, &Tensor::from_slice(&[imp.user as i64]), &Dropout::Off)
            });
            let candidates: Vec<i64> = imp.candidates.iter().map(|&n| n as i64).collect();
            let alone = vectors.index_select(0, &Tensor::from_slice(&candidates)).matmul(&user.view([d, 1]));
            let alone: Vec<f32> = Vec::try_from(alone.view([-1])).unwrap();
            assert_eq!(scores.len(), alone.len());
            for (a, b) in scores.iter().zip(&alone) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "impression {}: {a} vs {b}",
                    imp.impression_id
                );
            }
        }
    }
}
