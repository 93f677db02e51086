//! One training step on a tiny random model and the reference batch: which loss feeds which
//! gradient, where `lambda` applies, what the heads receive, and clipping.
use mtrec_data::batch::{GlobalCounts, Shares};
use mtrec_dist::Local;
use mtrec_model::Dropout;
use mtrec_train::bench::{LABELS, SAMPLES, reference_batch};
use mtrec_train::config::Config;
use mtrec_train::device_batch::DeviceBatch;
use mtrec_train::flat::FlatParams;
use mtrec_train::layer_cache::LayerCache;
use mtrec_train::optim::AdamW;
use mtrec_train::setup;
use mtrec_train::step::{Clock, Losses, PhaseTimes, flat_grad, forward, task_gradients};
use std::path::PathBuf;
use tch::{Device, Tensor};

struct Tiny {
    config: Config,
    _vs: tch::nn::VarStore,
    model: mtrec_model::NewsRecModel,
    params: FlatParams,
    batch: DeviceBatch,
}

fn tiny(sets: &[&str]) -> Tiny {
    let mut sets = sets.to_vec();
    sets.push("model.dropout=0.0");
    tiny_with_dropout(&sets)
}

/// [`tiny`] with the config's dropout unless `sets` changes it.
fn tiny_with_dropout(sets: &[&str]) -> Tiny {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let config = Config::load(&path, &sets).unwrap();
    let model_dir = setup::model_dir(&config).unwrap();
    let (vs, model) = setup::build_model(&config, LABELS, &model_dir, None, Device::Cpu).unwrap();
    let params = FlatParams::new(&vs);
    let (table, host) = reference_batch(SAMPLES, model.bert.config.vocab_size, 3);
    let labelled = table.ner_tags.iter().flatten().filter(|&&t| t >= 0).count() as u64;
    let counts = GlobalCounts { news: host.news.len() as u64, labelled_tokens: labelled };
    let batch = DeviceBatch::new(&host, &table, counts, 1, Device::Cpu, None);
    Tiny { config, _vs: vs, model, params, batch }
}

/// The losses of a forward pass without dropout, in a world of one.
fn losses_of(t: &Tiny, batch: &DeviceBatch) -> Losses {
    let mut clock = Clock::new(Device::Cpu, false);
    forward(
        &t.model,
        batch,
        &t.config.mtl,
        &Dropout::Off,
        &Local,
        None,
        &mut clock,
        &mut PhaseTimes::default(),
    )
    .unwrap()
    .losses
}

/// The flat gradient of one loss of a fresh forward pass (dropout off: the same graph).
fn gradient_of(t: &Tiny, pick: impl Fn(&Losses) -> Tensor) -> Tensor {
    let losses = losses_of(t, &t.batch);
    flat_grad(&t.params, &t.params.tensors(), &pick(&losses), false).unwrap()
}

/// The losses, `g_main` and the auxiliary gradients of one step on `batch` in a world of one
/// (`seed` picks the dropout masks).
fn task_gradients_of(t: &Tiny, batch: &DeviceBatch, seed: u64) -> (Losses, Tensor, Vec<Tensor>) {
    let mut clock = Clock::new(Device::Cpu, false);
    let (losses, g_main, aux, _) = task_gradients(
        &t.model,
        &t.params,
        &Local,
        batch,
        &t.config.mtl,
        seed,
        None,
        &mut clock,
        &mut PhaseTimes::default(),
    )
    .unwrap();
    (losses, g_main, aux)
}

fn gradients_of(t: &Tiny, batch: &DeviceBatch) -> (Tensor, Vec<Tensor>) {
    let (_, g_main, aux) = task_gradients_of(t, batch, 1);
    (g_main, aux)
}

fn gradients(t: &Tiny) -> (Tensor, Vec<Tensor>) {
    gradients_of(t, &t.batch)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The elements of the flat layout that belong to variables whose name starts with `prefix`.
fn slice_of(t: &Tiny, g: &Tensor, prefix: &str) -> Vec<Tensor> {
    let mut offset = 0;
    let mut parts = Vec::new();
    for (name, var) in &t.params.vars {
        let n = var.numel() as i64;
        if name.starts_with(prefix) {
            parts.push(g.narrow(0, offset, n));
        }
        offset += n;
    }
    assert!(!parts.is_empty(), "no variable {prefix}*");
    parts
}

/// `lambda` scales the shared encoder's part of `g_aux` in the MTRec surgery (the paper's
/// `g_aux = lambda (g_category + g_ner)` is over the shared parameters); each head gets its own
/// task's gradient unscaled in every mode.
#[test]
fn g_main_is_the_main_loss_gradient_and_lambda_scales_the_shared_g_aux_in_the_mtrec_surgery_only() {
    for (surgery, weight) in [("mtrec", 0.3), ("none", 1.0), ("pcgrad", 1.0)] {
        let t = tiny(&[&format!("mtl.surgery={surgery}"), "mtl.lambda=0.3"]);
        let (g_main, aux) = gradients(&t);
        let main = gradient_of(&t, |l| l.main.shallow_clone());
        assert!(max_diff(&g_main, &main) < 1e-7, "{surgery}: g_main is not the gradient of L_main alone");
        let category = gradient_of(&t, |l| l.category.as_ref().unwrap().shallow_clone());
        let ner = gradient_of(&t, |l| l.ner.as_ref().unwrap().shallow_clone());
        if surgery == "pcgrad" {
            assert_eq!(aux.len(), 2, "PCGrad needs the tasks apart");
            assert!(
                max_diff(&aux[0], &category) < 1e-7 && max_diff(&aux[1], &ner) < 1e-7,
                "pcgrad: weight 1"
            );
        } else {
            assert_eq!(aux.len(), 1);
            let expected = &category + &ner;
            let _ = expected.narrow(0, 0, t.params.shared_len()).g_mul_scalar_(weight);
            let (diff, scale) = (max_diff(&aux[0], &expected), expected.abs().max().double_value(&[]));
            let everywhere = max_diff(&aux[0], &((&category + &ner) * weight));
            assert!(
                diff < 1e-6 * scale,
                "{surgery}: g_aux is not {weight} (g_category + g_ner) on the shared slice and the \
                 task's own gradient on the heads: {diff} of {scale} (lambda on every parameter: {everywhere})"
            );
            for head in ["category_head", "ner_head"] {
                for (got, own) in
                    slice_of(&t, &aux[0], head).iter().zip(slice_of(&t, &(&category + &ner), head))
                {
                    assert!(max_diff(got, &own) < 1e-7, "{surgery}: {head} got a scaled gradient");
                }
            }
        }
        // Each head gets only its own task's gradient: the main loss does not reach the heads,
        // and each auxiliary loss reaches its own head only.
        for part in slice_of(&t, &g_main, "category_head").iter().chain(&slice_of(&t, &g_main, "ner_head")) {
            assert_eq!(part.abs().max().double_value(&[]), 0.0, "{surgery}: L_main reached a head");
        }
        for part in slice_of(&t, &category, "ner_head") {
            assert_eq!(part.abs().max().double_value(&[]), 0.0, "{surgery}: L_category reached the NER head");
        }
        for part in slice_of(&t, &ner, "category_head") {
            assert_eq!(part.abs().max().double_value(&[]), 0.0, "{surgery}: L_NER reached the category head");
        }
        assert!(
            slice_of(&t, &category, "category_head").iter().any(|p| p.abs().max().double_value(&[]) > 0.0)
        );
    }
}

#[test]
fn clipping_bounds_the_global_norm() {
    let t = tiny(&["optim.max_grad_norm=0.01"]);
    let (g_main, aux) = gradients(&t);
    let mut g = &g_main + &aux[0];
    let before = g.norm().double_value(&[]);
    assert!(before > 0.01, "the gradient must be large enough to be clipped ({before})");
    let reported = AdamW::new(&t.params, t.config.optim.clone()).clip(&mut g).double_value(&[]);
    assert!((reported - before).abs() < 1e-6 * before, "clip reports the norm before clipping");
    // The norm of ~1.6M f32 values is itself rounded: 2.1e-5 relative above the bound was seen
    // (the order of summation varies with the threads), so the bound allows 1e-4; a missing
    // clip leaves the norm at `before`, orders of magnitude above.
    let after = g.norm().double_value(&[]);
    assert!(after <= 0.01 * (1.0 + 1e-4), "norm {after} after clipping to 0.01");
    assert!(after >= 0.01 * (1.0 - 1e-4), "norm {after}: clipped below 0.01");
}

/// De-duplication changes no loss: a batch whose samples repeat, with each news item encoded
/// once and weighted by its occurrences, has the losses of the same batch with every occurrence
/// encoded as its own row.
#[test]
fn occurrence_weighted_losses_on_unique_news_equal_encoding_every_occurrence() {
    let t = tiny(&[]);
    let (table, host) = reference_batch(SAMPLES, t.model.bert.config.vocab_size, 3);
    let n = host.news.len() as i64;
    let twice = |rows: &[i64], shift: i64| -> Vec<i64> {
        rows.iter().copied().chain(rows.iter().map(|r| r + shift)).collect()
    };
    let mut unique = host.clone();
    unique.size *= 2;
    unique.history = twice(&host.history, 0);
    unique.history_mask = [host.history_mask.clone(), host.history_mask.clone()].concat();
    unique.candidates = twice(&host.candidates, 0);
    unique.users = [host.users.clone(), host.users.clone()].concat();
    unique.occurrences = host.occurrences.iter().map(|c| 2 * c).collect();
    let mut every = unique.clone();
    every.news = [host.news.clone(), host.news.clone()].concat();
    every.history = twice(&host.history, n);
    every.candidates = twice(&host.candidates, n);
    every.occurrences = [host.occurrences.clone(), host.occurrences.clone()].concat();
    let occurrences: u64 = unique.occurrences.iter().map(|&c| u64::from(c)).sum();
    let labelled: u64 = unique
        .news
        .iter()
        .zip(&unique.occurrences)
        .map(|(&nid, &c)| {
            u64::from(c) * table.ner_tags[nid as usize].iter().filter(|&&t| t >= 0).count() as u64
        })
        .sum();
    let counts = GlobalCounts { news: occurrences, labelled_tokens: labelled };
    let losses = |host: &mtrec_data::batch::HostBatch| {
        let batch = DeviceBatch::new(host, &table, counts, 1, Device::Cpu, None);
        let l = losses_of(&t, &batch);
        [l.main, l.category.unwrap(), l.ner.unwrap()].map(|x| x.double_value(&[]))
    };
    let (a, b) = (losses(&unique), losses(&every));
    for ((x, y), name) in a.iter().zip(&b).zip(["main", "category", "NER"]) {
        assert!((x - y).abs() <= 1e-5 * x.abs(), "{name}: {x} on unique news, {y} encoding every occurrence");
    }
}

/// Global de-duplication's exchange in a world of one: the main gradient taken in two parts
/// (through the user encoder to the gathered table, then the table's gradient through the
/// encoder) equals the one backward pass of per-rank de-duplication; the auxiliary gradients do
/// not pass through the table. (2 ranks against 1: tests/e2e.rs.)
#[test]
fn the_exchanged_main_gradient_equals_one_backward_pass() {
    let t = tiny(&[]);
    let (table, mut host) = reference_batch(SAMPLES, t.model.bert.config.vocab_size, 3);
    let n = host.news.len();
    // Pad the first sample's history by its last 10 slots (the padding row is N in both layouts).
    for k in 40..50 {
        host.history[k] = n as i64;
        host.history_mask[k] = false;
    }
    let labelled = table.ner_tags.iter().flatten().filter(|&&t| t >= 0).count() as u64;
    let counts = GlobalCounts { news: n as u64, labelled_tokens: labelled };
    let per_rank = DeviceBatch::new(&host, &table, counts, 1, Device::Cpu, None);
    host.shares = Some(Shares {
        counts: vec![n],
        padded: n,
        tokens: vec![0],
        table_news: host.news.clone(),
        table_occurrences: host.occurrences.clone(),
        reused: Vec::new(),
    });
    let global = DeviceBatch::new(&host, &table, counts, 1, Device::Cpu, None);
    let (main_a, aux_a) = gradients_of(&t, &per_rank);
    let (main_b, aux_b) = gradients_of(&t, &global);
    let scale = main_a.abs().max().double_value(&[]);
    assert!(scale > 0.0);
    assert!(max_diff(&main_a, &main_b) <= 1e-6 * scale, "g_main: {} of {scale}", max_diff(&main_a, &main_b));
    assert_eq!(aux_a.len(), aux_b.len());
    for (a, b) in aux_a.iter().zip(&aux_b) {
        assert!(max_diff(a, b) <= 1e-6 * a.abs().max().double_value(&[]));
    }
}

/// The frozen-layer cache is exact: with the lower layer of the tiny 2-layer BERT frozen
/// (`model.trainable_layers = 1`) and dropout 0.1, a step from the cached states has the losses
/// and gradients of the same model run from the token ids with dropout off in its frozen part
/// (the upper layer draws the same masks). With `model.layer_cache = false` the frozen part has
/// dropout, as a frozen module in training mode does: the losses then differ.
#[test]
fn the_frozen_layer_cache_equals_the_uncached_model_without_frozen_dropout() {
    let t = tiny_with_dropout(&["model.trainable_layers=1", "model.dropout=0.1"]);
    assert_eq!(t.model.frozen_layers(), Some(1));
    let (table, host) = reference_batch(SAMPLES, t.model.bert.config.vocab_size, 3);
    let labelled = table.ner_tags.iter().flatten().filter(|&&t| t >= 0).count() as u64;
    let counts = GlobalCounts { news: host.news.len() as u64, labelled_tokens: labelled };
    let cache = LayerCache::build(&t.model, &table, 1, Device::Cpu, &Local, &|| Ok(()), None).unwrap();
    let tokens: usize = table.input_ids.iter().map(|ids| ids.len().max(1)).sum();
    assert_eq!(cache.tokens(), tokens, "every news item's real tokens, packed");
    let cached = DeviceBatch::new(&host, &table, counts, 1, Device::Cpu, Some(&cache));
    assert!(cached.news.titles.lower.is_some());
    // In a memory-mapped file (`model.layer_cache_dir`) it holds the same states, and the file
    // goes with the cache.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer-cache-rank0.f32");
    let mapped =
        LayerCache::build(&t.model, &table, 1, Device::Cpu, &Local, &|| Ok(()), Some(file.clone())).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, mapped.bytes());
    let in_file = DeviceBatch::new(&host, &table, counts, 1, Device::Cpu, Some(&mapped));
    let (a, b) = (
        &cached.news.titles.lower.as_ref().unwrap().states,
        &in_file.news.titles.lower.as_ref().unwrap().states,
    );
    assert_eq!(max_diff(a, b), 0.0);
    drop(mapped);
    assert!(!file.exists(), "the cache file is removed with the cache");
    let (losses_a, main_a, aux_a) = task_gradients_of(&t, &cached, 7);
    let (losses_b, main_b, aux_b) = task_gradients_of(&t, &t.batch, 7);
    let value = |l: &Tensor| l.double_value(&[]);
    assert!((value(&losses_a.main) - value(&losses_b.main)).abs() <= 1e-6 * value(&losses_a.main).abs());
    let scale = main_a.abs().max().double_value(&[]);
    assert!(scale > 0.0);
    assert!(max_diff(&main_a, &main_b) <= 1e-5 * scale, "g_main: {} of {scale}", max_diff(&main_a, &main_b));
    for (a, b) in aux_a.iter().zip(&aux_b) {
        let scale = a.abs().max().double_value(&[]);
        assert!(max_diff(a, b) <= 1e-5 * scale, "g_aux: {} of {scale}", max_diff(a, b));
    }
    // The trainable layer learns through the cached states.
    for part in slice_of(&t, &main_a, "bert.encoder.layer.1") {
        assert!(part.abs().max().double_value(&[]) > 0.0, "the trainable layer learns");
    }
    // Dropout in the frozen part (`model.layer_cache = false`) draws other masks.
    let with_frozen_dropout =
        tiny_with_dropout(&["model.trainable_layers=1", "model.dropout=0.1", "model.layer_cache=false"]);
    let (losses_c, _, _) = task_gradients_of(&with_frozen_dropout, &with_frozen_dropout.batch, 7);
    assert!((value(&losses_c.main) - value(&losses_a.main)).abs() > 1e-6, "frozen dropout changes the loss");
}
