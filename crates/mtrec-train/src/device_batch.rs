//! A host batch turned into tensors on the training device.
use mtrec_data::batch::{GlobalCounts, HostBatch, titles};
use mtrec_data::read::NewsTable;
use mtrec_model::{NewsInputs, TitleBatch, upload};
use tch::{Device, Tensor};

/// Everything one step needs, on the device.
#[derive(Debug)]
pub struct DeviceBatch {
    /// The batch's unique news (titles bucketed by length, labels, entities).
    pub news: NewsInputs,
    /// `[B, H]` int64 rows of the news vectors (`N` = the zero padding row).
    pub history: Tensor,
    /// `[B, H]` bool.
    pub history_mask: Tensor,
    /// `[B, 1 + K]` int64 rows of the news vectors, the clicked news first.
    pub candidates: Tensor,
    /// `[B]` int64 user ids.
    pub users: Tensor,
    /// Samples in the batch.
    pub size: usize,
    /// `[N]` float occurrences of each unique news item in this rank's batch.
    pub news_weights: Tensor,
    /// This rank's share of the global batch's news occurrences: the `I` of the category loss and
    /// of the paper's NER loss.
    pub news_occurrences: f64,
    /// This rank's share of the global batch's labelled token occurrences (the per-token NER
    /// variant's denominator).
    pub labelled_token_occurrences: f64,
}

/// News-side inputs for the news items `nids`: titles with NER labels, category, subcategory,
/// entity rows padded with 0 to the longest list.
pub fn news_inputs(table: &NewsTable, nids: &[i32], device: Device) -> NewsInputs {
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
    NewsInputs {
        titles: TitleBatch::new(&title_ids, Some(&ner), device),
        category: column(&table.category),
        subcategory: column(&table.subcategory),
        entities: upload(Tensor::from_slice(&entities).view([nids.len() as i64, width as i64]), device),
    }
}

impl DeviceBatch {
    /// `global`: occurrence counts of the whole global batch, split over `world` ranks. Each rank
    /// divides by `global / world`, so the all-reduced mean of the rank losses' gradients is the
    /// gradient of the global-batch loss.
    pub fn new(
        host: &HostBatch,
        table: &NewsTable,
        global: GlobalCounts,
        world: usize,
        device: Device,
    ) -> Self {
        let b = host.size as i64;
        let weights: Vec<f32> = host.occurrences.iter().map(|&c| c as f32).collect();
        DeviceBatch {
            news: news_inputs(table, &host.news, device),
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
