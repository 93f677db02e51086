//! A host batch turned into tensors on the training device.
use crate::config::{DataConfig, Dedup};
use crate::layer_cache::LayerCache;
use crate::vector_cache::CacheSchedule;
use mtrec_data::batch::{GlobalCounts, HostBatch, Sampler, Shares, titles};
use mtrec_data::read::NewsTable;
use mtrec_dist::{Collective, Placement};
use mtrec_model::{NewsInputs, TitleBatch, upload, upload_i64};
use tch::{Device, Tensor};

/// Everything one step needs, on the device.
#[derive(Debug)]
pub struct DeviceBatch {
    /// With a news-vector cache: what the step reads from it and writes to it.
    pub reuse: Option<Reuse>,
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
/// longest list (the last three in one upload).
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
    let column = |values: &[i64]| nids.iter().map(|&n| values[n as usize]).collect::<Vec<_>>();
    let (category, subcategory) = (column(&table.category), column(&table.subcategory));
    let [category, subcategory, entities] =
        <[Tensor; 3]>::try_from(upload_i64(&[category.as_slice(), &subcategory, &entities], device))
            .expect("one tensor per part");
    let mut titles = TitleBatch::new(&title_ids, Some(&ner), device);
    titles.lower = cache.map(|cache| cache.lower_states(nids, &titles, device));
    NewsInputs { titles, category, subcategory, entities: entities.view([nids.len() as i64, width as i64]) }
}

impl DeviceBatch {
    /// `global`: occurrence counts of the whole global batch, split over `world` ranks. Each rank
    /// divides by `global / world`, so the all-reduced mean of the rank losses' gradients is the
    /// gradient of the global-batch loss. With a frozen-layer `cache`, the titles carry their
    /// cached states. History, candidates and users go to the device in one upload.
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
        let [history, candidates, users] = <[Tensor; 3]>::try_from(upload_i64(
            &[host.history.as_slice(), &host.candidates, &host.users],
            device,
        ))
        .expect("one tensor per part");
        DeviceBatch {
            news: news_inputs(table, &host.news, device, cache),
            shares: host.shares.clone(),
            reuse: None,
            history: history.view([b, host.history_len as i64]),
            history_mask: upload(
                Tensor::from_slice(&host.history_mask).view([b, host.history_len as i64]),
                device,
            ),
            candidates: candidates.view([b, -1]),
            users,
            size: host.size,
            news_weights: upload(Tensor::from_slice(&weights), device),
            news_occurrences: (global.news.max(1) as f64) / world as f64,
            labelled_token_occurrences: (global.labelled_tokens.max(1) as f64) / world as f64,
        }
    }
}

/// A news-vector cache's part of one step ([`crate::vector_cache`]).
#[derive(Debug)]
pub struct Reuse {
    /// Step number (1-based) the batch belongs to.
    pub step: u64,
    /// `[C]` int64 news read from the cache: the table rows after the encoded ones.
    pub read: Tensor,
    /// `[E]` int64 encoded table rows holding a news item, and their news ids (device and host):
    /// what the step writes to the cache.
    pub written_rows: Tensor,
    pub written_news: Tensor,
    pub written_news_host: Vec<i32>,
    /// Unique news of the global batch.
    pub news: usize,
}

impl Reuse {
    fn new(step: u64, shares: &Shares, device: Device) -> Reuse {
        let (rows, news): (Vec<i64>, Vec<i32>) = shares
            .table_news
            .iter()
            .enumerate()
            .filter(|(_, nid)| **nid >= 0)
            .map(|(row, &nid)| (row as i64, nid))
            .unzip();
        let read: Vec<i64> = shares.reused.iter().map(|&n| n as i64).collect();
        let written_news: Vec<i64> = news.iter().map(|&n| n as i64).collect();
        let [read, written_rows, written_news] =
            <[Tensor; 3]>::try_from(upload_i64(&[read.as_slice(), &rows, &written_news], device))
                .expect("one tensor per part");
        Reuse {
            step,
            read,
            written_rows,
            written_news,
            news: news.len() + shares.reused.len(),
            written_news_host: news,
        }
    }

    /// News read from the cache.
    pub fn hits(&self) -> usize {
        self.news - self.written_news_host.len()
    }
}

/// Turns a step of the epoch's sample order into this rank's [`DeviceBatch`]: the samples, their
/// news de-duplicated per rank or over the global batch (`data.dedup`; a world of one encodes its
/// batch's unique news either way, and runs the global exchange only on NCCL; a news-vector
/// cache always assembles the global batch), and
/// the occurrence counts of the news the step encodes.
#[derive(Debug)]
pub struct Batches<'a> {
    pub sampler: Sampler<'a>,
    news: &'a NewsTable,
    /// Title tokens per news item (what the global split balances).
    title_tokens: Vec<u32>,
    /// Labelled NER tokens per news item (the auxiliary losses' global counts).
    labelled_tokens: Vec<u32>,
    global: bool,
    batch_size: usize,
    placement: Placement,
}

impl<'a> Batches<'a> {
    pub fn new(
        sampler: Sampler<'a>,
        news: &'a NewsTable,
        data: &DataConfig,
        batch_size: usize,
        collective: &dyn Collective,
    ) -> Self {
        let placement = collective.placement();
        Batches {
            sampler,
            title_tokens: news.input_ids.iter().map(|ids| ids.len() as u32).collect(),
            labelled_tokens: news
                .ner_tags
                .iter()
                .map(|tags| tags.iter().filter(|&&t| t >= 0).count() as u32)
                .collect(),
            news,
            // The exchange runs wherever a collective moves data: every world of more than one,
            // and a world of one on NCCL (`dist.backend = "nccl"`), which then runs it for real.
            global: data.vector_cache || (data.dedup == Dedup::Global && collective.backend() != "local"),
            batch_size,
            placement,
        }
    }

    /// The news table the batches read.
    pub fn news(&self) -> &'a NewsTable {
        self.news
    }

    /// This rank's host batch of step `step` of the epoch with sample order `order`; with a
    /// vector-cache `schedule`, for step number `number` (1-based, over the run; steps in order).
    pub fn host(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        schedule: Option<(&mut CacheSchedule, u64)>,
    ) -> HostBatch {
        let Placement { rank, world_size: world, .. } = self.placement;
        if !self.global {
            return self
                .sampler
                .assemble(epoch, &self.sampler.rank_samples(order, step, self.batch_size, rank, world));
        }
        let mut split = schedule.map(|(schedule, number)| {
            move |news: &[i32], candidate: &[bool]| schedule.split(number, news, candidate).cached
        });
        let reuse = split.as_mut().map(|f| f as &mut mtrec_data::batch::Reuse<'_>);
        self.sampler.assemble_global(
            epoch,
            order,
            step,
            self.batch_size,
            rank,
            world,
            &self.title_tokens,
            reuse,
        )
    }

    /// [`Batches::host`] with the counts of the news it encodes, on `device` (with the states
    /// of a frozen-layer `cache`, and what a vector-cache `schedule` decided).
    pub fn device(
        &self,
        epoch: u64,
        order: &[u32],
        step: u64,
        device: Device,
        cache: Option<&LayerCache>,
        schedule: Option<(&mut CacheSchedule, u64)>,
    ) -> DeviceBatch {
        let number = schedule.as_ref().map(|(_, number)| *number);
        let host = self.host(epoch, order, step, schedule);
        let counts = match &host.shares {
            Some(shares) => shares.encoded_counts(&self.labelled_tokens),
            None => self.sampler.global_counts(epoch, order, step, self.batch_size, &self.labelled_tokens),
        };
        let mut batch = DeviceBatch::new(&host, self.news, counts, self.placement.world_size, device, cache);
        if let (Some(number), Some(shares)) = (number, &host.shares) {
            batch.reuse = Some(Reuse::new(number, shares, device));
        }
        batch
    }
}
