//! The frozen-layer cache (the idea of Legommenders' `LMLayerPager`, Jyonn/Legommenders): with
//! `model.trainable_layers = k`, BERT's embeddings and lower `L - k` layers are frozen, so what
//! they compute for a news item never changes during a run. They run once per run for every news
//! item; each training step, and each evaluation during training, starts from those states and
//! runs only the upper `k` layers. In layer-forward equivalents, a multi-task step (one forward,
//! two backward passes at twice a forward each) over MiniLM's 6 layers with 2 trainable drops
//! from 6 + 2 x 2 x 2 = 14 to 2 + 8 = 10.
//!
//! Exact, with one difference from running the frozen layers every step: they run without
//! dropout (they are computed once). The states are the residual stream after the last frozen
//! layer, which is f32 under both precision policies (`mtrec_model::precision`), so the upper
//! layers read exactly what the uncached model with dropout off in its frozen part would.
//!
//! Held in host memory, packed (each news item's real tokens only, `[CLS]` and `[SEP]`
//! included), and copied per batch to the device with the batch. Its size is news x mean tokens
//! x hidden x 4 bytes: MIND-small with bert-base (65,238 news, about 16 tokens a title, 768)
//! about 3.2 GB; MIND-large (161,013 news) about 7.9 GB (`README.md`, "Choosing a step"). When
//! that does not fit, `model.layer_cache_dir` names a folder (a node-local disk) where each rank
//! keeps it in a memory-mapped file instead: the OS keeps the pages it can in memory (popular
//! news are read every few steps, so theirs stay) and reads the rest from the disk.
//!
//! Built sharded: the news are split into one contiguous range per rank, balanced by tokens;
//! each rank runs its range on its device, and the ranges are broadcast so every rank holds the
//! whole cache. A resumed run builds it again (the frozen weights are the checkpoint's, equal to
//! the ones it was first built from), so nothing of it is saved.
use crate::TrainError;
use crate::config::Config;
use crate::eval::{Tick, progress};
use mtrec_data::read::NewsTable;
use mtrec_dist::Collective;
use mtrec_model::news::LowerStates;
use mtrec_model::{NewsRecModel, TitleBatch, upload};
use tch::{Device, Kind, Tensor};

/// Tokens of the titles one forward pass of the build covers.
const BUILD_TOKENS: usize = 16_384;
/// Elements per broadcast of the build's exchange (64 MiB of f32).
const EXCHANGE_ELEMENTS: usize = 1 << 24;

/// Where the states live.
#[derive(Debug)]
enum Storage {
    Memory(Vec<f32>),
    /// A memory-mapped file, removed when the cache is dropped.
    Mapped {
        map: memmap2::MmapMut,
        path: std::path::PathBuf,
    },
}

impl Storage {
    /// `len` zeroed f32 values in memory, or in a new file `path`.
    fn new(len: usize, path: Option<std::path::PathBuf>) -> Result<Storage, TrainError> {
        let Some(path) = path else {
            return Ok(Storage::Memory(vec![0f32; len]));
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|file| file.set_len((len * std::mem::size_of::<f32>()) as u64).map(|()| file))
            .map_err(|e| TrainError::io(&path, e))?;
        // SAFETY: the file was created for this process alone and is not resized while mapped.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| TrainError::io(&path, e))?;
        Ok(Storage::Mapped { map, path })
    }

    fn values(&self) -> &[f32] {
        match self {
            Storage::Memory(values) => values,
            // SAFETY: the map is page-aligned and holds whole f32 values (its length is a
            // multiple of 4); every bit pattern is a valid f32.
            Storage::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const f32, map.len() / 4)
            },
        }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        match self {
            Storage::Memory(values) => values,
            // SAFETY: as in `values`; the map is borrowed mutably.
            Storage::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut f32, map.len() / 4)
            },
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Mapped { path, .. } = self
            && let Err(e) = std::fs::remove_file(&*path)
        {
            tracing::warn!("could not remove the frozen-layer cache file {}: {e}", path.display());
        }
    }
}

/// Every news item's states after the frozen layers.
#[derive(Debug)]
pub struct LayerCache {
    /// `[total tokens, d]` row-major: news item `n`'s tokens at rows `offsets[n]..offsets[n + 1]`.
    states: Storage,
    offsets: Vec<usize>,
    hidden: usize,
    /// The layer the cached states enter (the number of frozen layers).
    pub first_layer: usize,
}

/// Tokens a title is encoded with: an empty one as the single token 0 (as [`TitleBatch`]).
fn title_tokens(ids: &[i32]) -> usize {
    ids.len().max(1)
}

impl LayerCache {
    /// The cache a run with `config` uses: built when `model.layer_cache` is on and the model
    /// has frozen layers (`model.trainable_layers`), else `None`. Logs its size and build time.
    pub fn for_run(
        config: &Config,
        model: &NewsRecModel,
        news: &NewsTable,
        device: Device,
        collective: &dyn Collective,
        tick: Tick,
    ) -> Result<Option<LayerCache>, TrainError> {
        let Some(first_layer) = model.frozen_layers().filter(|_| config.model.layer_cache) else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let dir = &config.model.layer_cache_dir;
        let file = (!dir.as_os_str().is_empty())
            .then(|| dir.join(format!("layer-cache-rank{}.f32", collective.placement().rank)));
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        let where_held = match &file {
            Some(file) => format!("memory-mapped from {}", file.display()),
            None => "in host memory".to_string(),
        };
        let cache = LayerCache::build(model, news, first_layer, device, collective, tick, file)?;
        if collective.placement().is_main() {
            tracing::info!(
                news = news.input_ids.len() - 1,
                tokens = cache.tokens(),
                "frozen-layer cache: the embeddings and {first_layer} layers computed once, {:.2} GB \
                 {where_held}, built in {:.1} s",
                cache.bytes() as f64 / 1e9,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Some(cache))
    }

    /// Runs the embeddings and the first `first_layer` layers of `model` over every news item of
    /// `news` (this rank its range, on `device`), then exchanges the ranges. `file`: keep the
    /// states in that memory-mapped file (created, and removed with the cache) instead of memory.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        model: &NewsRecModel,
        news: &NewsTable,
        first_layer: usize,
        device: Device,
        collective: &dyn Collective,
        tick: Tick,
        file: Option<std::path::PathBuf>,
    ) -> Result<LayerCache, TrainError> {
        let placement = collective.placement();
        let hidden = model.bert.config.hidden_size as usize;
        let mut offsets = Vec::with_capacity(news.input_ids.len() + 1);
        offsets.push(0);
        for ids in &news.input_ids {
            offsets.push(offsets.last().expect("starts with 0") + title_tokens(ids));
        }
        let total = *offsets.last().expect("starts with 0");
        let mut storage = Storage::new(total * hidden, file)?;
        let states = storage.values_mut();
        // Rank r runs the news whose first token falls in the r-th equal share of the tokens.
        let world = placement.world_size;
        let bounds: Vec<usize> = (0..=world)
            .map(|r| offsets.partition_point(|&start| start * world < total * r).min(news.input_ids.len()))
            .collect();
        let mine = bounds[placement.rank]..bounds[placement.rank + 1];
        let bar = progress(mine.len() as u64, "cache", placement.is_main());
        let mut first = mine.start;
        tch::no_grad(|| -> Result<(), TrainError> {
            while first < mine.end {
                let mut last = first + 1;
                while last < mine.end && offsets[last + 1] - offsets[first] <= BUILD_TOKENS {
                    last += 1;
                }
                let titles: Vec<&[i32]> = news.input_ids[first..last].iter().map(Vec::as_slice).collect();
                let batch = TitleBatch::new(&titles, None, device);
                let packed =
                    model.bert.lower_states(&batch.input_ids, &batch.positions, &batch.groups, first_layer);
                // Packed order (by length) back to news order.
                let mut start = vec![0i64; titles.len()];
                let mut row = 0i64;
                for &i in &batch.order {
                    start[i] = row;
                    row += title_tokens(titles[i]) as i64;
                }
                let rows: Vec<i64> = (0..titles.len())
                    .flat_map(|i| start[i]..start[i] + title_tokens(titles[i]) as i64)
                    .collect();
                let ordered = packed.index_select(0, &Tensor::from_slice(&rows).to_device(device));
                let host = ordered.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
                let slice = &mut states[offsets[first] * hidden..offsets[last] * hidden];
                host.view([-1]).f_copy_data(slice, slice.len())?;
                bar.inc((last - first) as u64);
                first = last;
                tick()?;
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        // Every rank's range to every rank.
        if world > 1 {
            for owner in 0..world {
                let range = offsets[bounds[owner]] * hidden..offsets[bounds[owner + 1]] * hidden;
                for piece in states[range].chunks_mut(EXCHANGE_ELEMENTS) {
                    let mut t = if owner == placement.rank {
                        upload(Tensor::from_slice(piece), device)
                    } else {
                        Tensor::zeros([piece.len() as i64], (Kind::Float, device))
                    };
                    collective.broadcast(&mut t, owner)?;
                    if owner != placement.rank {
                        t.to_device(Device::Cpu).f_copy_data(piece, piece.len())?;
                    }
                }
                tick()?;
            }
        }
        Ok(LayerCache { states: storage, offsets, hidden, first_layer })
    }

    /// The cached states of `titles`' packed tokens (title `i` is news item `nids[i]`), on
    /// `device`: what [`TitleBatch::lower`] takes.
    pub fn lower_states(&self, nids: &[i32], titles: &TitleBatch, device: Device) -> LowerStates {
        let states = self.states.values();
        let mut packed = Vec::with_capacity(titles.tokens.max(titles.len) * self.hidden);
        for &i in &titles.order {
            let nid = nids[i] as usize;
            packed.extend_from_slice(
                &states[self.offsets[nid] * self.hidden..self.offsets[nid + 1] * self.hidden],
            );
        }
        let states = Tensor::from_slice(&packed).view([-1, self.hidden as i64]);
        LowerStates { states: upload(states, device), first_layer: self.first_layer }
    }

    /// Bytes the states take.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.states.values())
    }

    /// Tokens cached (over every news item).
    pub fn tokens(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
}
