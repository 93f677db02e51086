//! A host batch turned into tensors on the training device.
use crate::config::Dedup;
use crate::layer_cache::LayerCache;
use mtrec_data::batch::{GlobalCounts, HostBatch, Sampler, Shares, titles};
use mtrec_data::read::NewsTable;
use mtrec_dist::Placement;
use mtrec_model::{NewsInputs, TitleBatch, upload};
use tch::{Device, Tensor};

/// Everything one step needs, on the device.
#[derive(Debug)]
pub struct DeviceBatch {
    /// The news this rank encodes (titles bucketed by length, labels, entities): its batch's
    /// unique news, or with `shares` its share of the global batch's.
    pub news: NewsInputs,
    /// Global de-duplication: how the global batch's news are split over the ranks, and so the
    /// rows of the gathered table that `history` and `candidates` index.
    pub shares: Option<Shares>,
    /// `[B, H]` int64 rows of the news vectors (the last row is the zero padding row).
    pub history: Tensor,
    /// `[B, H]` bool.
    pub history_mask: Tensor,
    /// `[B, 1 + K]` int64 rows of the news vectors, the clicked news first.
    pub candidates: Tensor,
    /// `[B]` int64 user ids.
    pub users: Tensor,
    /// Samples in the batch.
    pub size: usize,
    /// `[N]` float occurrences of each news item of `news` in this rank's batch (with `shares`:
    /// in the global batch).
    pub news_weights: Tensor,
    /// This rank's share of the global batch's news occurrences: the `I` of the category loss and
    /// of the paper's NER loss.
    pub news_occurrences: f64,
    /// This rank's share of the global batch's labelled token occurrences (the per-token NER
    /// variant's denominator).
    pub labelled_token_occurrences: f64,
}

/// News-side inputs for the news items `nids`: titles with NER labels (and their frozen-layer
/// states when there is a cache), category, subcategory, entity rows padded with 0 to the
/// longest list.
pub fn news_inputs(
    table: &NewsTable,
    nids: &[i32],
    device: Device,
    cache: Option<&LayerCache>,
) -> NewsInputs {
    let (title_ids, ner) = titles(table, nids);
    let width = nids.iter().map(|&n| table.entities[n as usize].len()).max().unwrap_or(0).max(1);
    let mut entities = vec![0i64; nids.len() * width];
    for (row, &nid) in nids.iter().enumerate() {
        for (col, &e) in table.entities[nid as usize].iter().enumerate() {
            entities[row * width + col] = e as i64;
        }
    }
    let column = |values: &[i64]| {
        upload(Tensor::from_slice(&nids.iter().map(|&n| values[n as usize]).collect::<Vec<_>>()), device)
    };
    let mut titles = TitleBatch::new(&title_ids, Some(&ner), device);
    titles.lower = cache.map(|cache| cache.lower_states(nids, &titles, device));
    NewsInputs {
        titles,
        category: column(&table.category),
        subcategory: column(&table.subcategory),
        entities: upload(Tensor::from_slice(&entities).view([nids.len() as i64, width as i64]), device),
    }
}

impl DeviceBatch {
    /// `global`: occurrence counts of the whole global batch, split over `world` ranks. Each rank
    /// divides by `global / world`, so the all-reduced mean of the rank losses' gradients is the
    /// gradient of the global-batch loss. With a frozen-layer `cache`, the titles carry their
    /// cached states.
    pub fn new(
        host: &HostBatch,
        table: &NewsTable,
        global: GlobalCounts,
        world: usize,
        device: Device,
        cache: Option<&LayerCache>,
    ) -> Self {
        let b = host.size as i64;
        let weights: Vec<f32> = host.occurrences.iter().map(|&c| c as f32).collect();
        DeviceBatch {
            news: news_inputs(table, &host.news, device, cache),
            shares: host.shares.clone(),
            history: upload(Tensor::from_slice(&host.history).view([b, host.history_len as i64]), device),
            history_mask: upload(
                Tensor::from_slice(&host.history_mask).view([b, host.history_len as i64]),
                device,
            ),
            candidates: upload(Tensor::from_slice(&host.candidates).view([b, -1]), device),
            users: upload(Tensor::from_slice(&host.users), device),
            size: host.size,
            news_weights: upload(Tensor::from_slice(&weights), device),
            news_occurrences: (global.news.max(1) as f64) / world as f64,
            labelled_token_occurrences: (global.labelled_tokens.max(1) as f64) / world as f64,
        }
    }
}

/// Turns a step of the epoch's sample order into this rank's [`DeviceBatch`]: the samples, their
/// news de-duplicated per rank or over the global batch (`data.dedup`; a world of one encodes its
/// batch's unique news either way), and the global batch's occurrence counts.
#[derive(Debug)]
pub struct Batches<'a> {
    pub sampler: Sampler<'a>,
    news: &'a NewsTable,
    /// Title tokens per news item (what the global split balances).
    title_tokens: Vec<u32>,
    /// Labelled NER tokens per news item (the auxiliary losses' global counts).
    labelled_tokens: Vec<u32>,
    global_dedup: bool,
    batch_size: usize,
    placement: Placement,
}

impl<'a> Batches<'a> {
    pub fn new(
        sampler: Sampler<'a>,
        news: &'a NewsTable,
        dedup: Dedup,
        batch_size: usize,
        placement: Placement,
    ) -> Self {
        Batches {
            sampler,
            title_tokens: news.input_ids.iter().map(|ids| ids.len() as u32).collect(),
            labelled_tokens: news
                .ner_tags
                .iter()
                .map(|tags| tags.iter().filter(|&&t| t >= 0).count() as u32)
                .collect(),
            news,
            global_dedup: dedup == Dedup::Global && placement.world_size > 1,
            batch_size,
            placement,
        }
    }

    /// The news table the batches read.
    pub fn news(&self) -> &'a NewsTable {
        self.news
    }

    /// This rank's host batch of step `step` of the epoch with sample order `order`.
    pub fn host(&self, epoch: u64, order: &[u32], step: u64) -> HostBatch {
        let Placement { rank, world_size: world, .. } = self.placement;
        if self.global_dedup {
            self.sampler.assemble_global(epoch, order, step, self.batch_size, rank, world, &self.title_tokens)
        } else {
            self.sampler
                .assemble(epoch, &self.sampler.rank_samples(order, step, self.batch_size, rank, world))
        }
    }

    /// [`Batches::host`] with the global batch's counts, on `device` (with the states of a
    /// frozen-layer `cache`).
    pub fn device(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        device: Device,
        cache: Option<&LayerCache>,
    ) -> DeviceBatch {
        let host = self.host(epoch, order, step);
        let global = self.sampler.global_counts(epoch, order, step, self.batch_size, &self.labelled_tokens);
        DeviceBatch::new(&host, self.news, global, self.placement.world_size, device, cache)
    }
}
