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
//! Held packed (each news item's real tokens only, `[CLS]` and `[SEP]` included). Its size is
//! news x mean tokens x hidden x 4 bytes: MIND-small with bert-base (65,238 news, about 16 tokens
//! a title, 768) about 3.2 GB; MIND-large (161,013 news) about 7.9 GB (`README.md`, "Choosing a
//! step"). On CUDA it stays in GPU memory when it takes at most [`GPU_SHARE`] of the memory free
//! once the model and the optimizer are there: a batch's rows are then gathered on the GPU, and
//! only their int64 row numbers travel. Otherwise it is held on the host and a batch's rows are
//! gathered into one tensor (uploaded through pinned memory on CUDA). When host memory does not
//! fit either, `model.layer_cache_dir` names a folder (a node-local disk) where each rank keeps
//! it in a memory-mapped file instead: the OS keeps the pages it can in memory (popular news are
//! read every few steps, so theirs stay) and reads the rest from the disk.
//!
//! Every rank holds its own copy: on its GPU, or in host memory, where 8 ranks of a node hold 8
//! copies (26 GB for MIND-small at bert-base). One copy per node would need a segment the node's
//! ranks share (an MPI shared-memory window, or one file all of them map), built by one rank and
//! freed with the job, and `mtrec_dist::Collective` has no node-local communicator to build it
//! with; so it is not done. Where the cache fits in GPU memory it takes no host memory at all.
//!
//! Built sharded: the news are split into one contiguous range per rank, balanced by tokens;
//! each rank runs its range on its device, and the ranges are broadcast so every rank holds the
//! whole cache. A resumed run builds it again (the frozen weights are the checkpoint's, equal to
//! the ones it was first built from), so nothing of it is saved.
use crate::TrainError;
use crate::config::Config;
use crate::progress::{Tick, progress};
use mtrec_data::read::NewsTable;
use mtrec_dist::Collective;
use mtrec_model::news::LowerStates;
use mtrec_model::{NewsRecModel, TitleBatch, upload};
use tch::{Device, Kind, Tensor};

/// Tokens of the titles one forward pass of the build covers.
const BUILD_TOKENS: usize = 16_384;
/// Elements per broadcast of the build's exchange (64 MiB of f32).
const EXCHANGE_ELEMENTS: usize = 1 << 24;
/// The share of a GPU's free memory (once the model and the optimizer are there) the cache may
/// take there: the rest is left to the steps' activations.
pub const GPU_SHARE: f64 = 0.5;

/// Where the states live.
#[derive(Debug)]
enum Storage {
    Gpu(GpuStates),
    Host(HostStates),
}

/// `[total tokens, d]` f32 on the training GPU.
#[derive(Debug)]
struct GpuStates(Tensor);

// SAFETY: once built (the build holds the cache mutably), the tensor is only read, by
// `index_select`, from the input pipeline's thread and the evaluation's, possibly at once:
// libtorch reads a tensor from several threads safely (its reference count is atomic); nothing
// writes, resizes or differentiates it.
unsafe impl Sync for GpuStates {}

/// The states on the host, `total tokens x d` f32 row-major.
#[derive(Debug)]
enum HostStates {
    Memory(Vec<f32>),
    /// A memory-mapped file, removed when the cache is dropped.
    Mapped {
        map: memmap2::MmapMut,
        path: std::path::PathBuf,
    },
}

impl Storage {
    /// `tokens x hidden` zeroed f32 values: on `device` when it is a GPU they fit on
    /// ([`gpu_zeros`]), else in memory, or in a new file `path`.
    fn new(
        tokens: usize,
        hidden: usize,
        device: Device,
        path: Option<std::path::PathBuf>,
    ) -> Result<Storage, TrainError> {
        if let Some(states) = gpu_zeros(tokens, hidden, device) {
            return Ok(Storage::Gpu(GpuStates(states)));
        }
        let len = tokens * hidden;
        let Some(path) = path else {
            return Ok(Storage::Host(HostStates::Memory(vec![0f32; len])));
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
        Ok(Storage::Host(HostStates::Mapped { map, path }))
    }

    /// Writes `states` (`[n, d]`, on any device) at rows `first_row..first_row + n`.
    fn write(&mut self, first_row: usize, states: &Tensor, hidden: usize) -> Result<(), TrainError> {
        let states = states.to_kind(Kind::Float);
        match self {
            Storage::Gpu(GpuStates(all)) => {
                all.narrow(0, first_row as i64, states.size()[0]).copy_(&states);
            }
            Storage::Host(host) => {
                let slice = &mut host.values_mut()[first_row * hidden..first_row * hidden + states.numel()];
                states.to_device(Device::Cpu).contiguous().view([-1]).f_copy_data(slice, slice.len())?;
            }
        }
        Ok(())
    }

    /// Broadcasts values `range` (flat, row-major) from rank `owner` to every rank, in pieces of
    /// [`EXCHANGE_ELEMENTS`] (the same pieces wherever each rank holds its states).
    fn broadcast(
        &mut self,
        range: std::ops::Range<usize>,
        owner: usize,
        device: Device,
        collective: &dyn Collective,
    ) -> Result<(), TrainError> {
        let mine = owner == collective.placement().rank;
        for start in range.clone().step_by(EXCHANGE_ELEMENTS) {
            let piece = start..(start + EXCHANGE_ELEMENTS).min(range.end);
            match self {
                Storage::Gpu(GpuStates(all)) => {
                    // A view of the states: the broadcast writes into them in place.
                    let mut t = all.view([-1]).narrow(0, piece.start as i64, piece.len() as i64);
                    collective.broadcast(&mut t, owner)?;
                }
                Storage::Host(host) => {
                    let piece = &mut host.values_mut()[piece];
                    let mut t = if mine {
                        upload(Tensor::from_slice(piece), device)
                    } else {
                        Tensor::zeros([piece.len() as i64], (Kind::Float, device))
                    };
                    collective.broadcast(&mut t, owner)?;
                    if !mine {
                        t.to_device(Device::Cpu).f_copy_data(piece, piece.len())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Where the states are, for the log.
    fn place(&self) -> String {
        match self {
            Storage::Gpu(_) => "in GPU memory".to_string(),
            Storage::Host(HostStates::Memory(_)) => "in host memory".to_string(),
            Storage::Host(HostStates::Mapped { path, .. }) => {
                format!("memory-mapped from {}", path.display())
            }
        }
    }
}

impl HostStates {
    fn values(&self) -> &[f32] {
        match self {
            HostStates::Memory(values) => values,
            // SAFETY: the map is page-aligned and holds whole f32 values (its length is a
            // multiple of 4); every bit pattern is a valid f32.
            HostStates::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts(map.as_ptr() as *const f32, map.len() / 4)
            },
        }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        match self {
            HostStates::Memory(values) => values,
            // SAFETY: as in `values`; the map is borrowed mutably.
            HostStates::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut f32, map.len() / 4)
            },
        }
    }
}

impl Drop for HostStates {
    fn drop(&mut self) {
        if let HostStates::Mapped { path, .. } = self
            && let Err(e) = std::fs::remove_file(&*path)
        {
            tracing::warn!("could not remove the frozen-layer cache file {}: {e}", path.display());
        }
    }
}

/// `[tokens, hidden]` f32 zeros on `device` when it is a GPU where they take at most
/// [`GPU_SHARE`] of the free memory; `None` otherwise, and when the driver cannot tell the free
/// memory or the allocation fails (both logged: the cache is then held on the host).
fn gpu_zeros(tokens: usize, hidden: usize, device: Device) -> Option<Tensor> {
    let Device::Cuda(index) = device else {
        return None;
    };
    let bytes = tokens * hidden * std::mem::size_of::<f32>();
    let held_on_host = "the frozen-layer cache is held in host memory";
    match mtrec_dist::gpu::memory(index) {
        Ok(memory) if bytes as f64 <= GPU_SHARE * memory.free as f64 => {}
        Ok(memory) => {
            tracing::info!(
                "{held_on_host}: its {:.2} GB exceed {GPU_SHARE} of GPU {index}'s {:.2} GB free",
                bytes as f64 / 1e9,
                memory.free as f64 / 1e9
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("{held_on_host}: the free memory of GPU {index} is unknown ({e})");
            return None;
        }
    }
    match Tensor::f_zeros([tokens as i64, hidden as i64], (Kind::Float, device)) {
        Ok(states) => Some(states),
        Err(e) => {
            tracing::warn!(
                "{held_on_host}: allocating {:.2} GB on GPU {index} failed ({e})",
                bytes as f64 / 1e9
            );
            None
        }
    }
}

/// Rows `rows` of `[_, hidden]` f32 host `values`: one gather by libtorch (on its threads) into
/// a new tensor, `values` read in place.
fn gather_host(values: &[f32], hidden: usize, rows: &[i64]) -> Tensor {
    let shape = [(values.len() / hidden) as i64, hidden as i64];
    // SAFETY: the tensor views `values`, borrowed for this function; it is only read, by the
    // gather, whose result owns its memory, and it is dropped before the function returns.
    let all = unsafe {
        Tensor::from_blob(values.as_ptr() as *const u8, &shape, &[hidden as i64, 1], Kind::Float, Device::Cpu)
    };
    all.index_select(0, &Tensor::from_slice(rows))
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
    /// has frozen layers (`model.trainable_layers`), else `None`. Logs its size, where it is
    /// held and its build time.
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
        let cache = LayerCache::build(model, news, first_layer, device, collective, tick, file)?;
        if collective.placement().is_main() {
            tracing::info!(
                news = news.input_ids.len() - 1,
                tokens = cache.tokens(),
                "frozen-layer cache: the embeddings and {first_layer} layers computed once, {:.2} GB \
                 {}, built in {:.1} s",
                cache.bytes() as f64 / 1e9,
                cache.states.place(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(Some(cache))
    }

    /// Runs the embeddings and the first `first_layer` layers of `model` over every news item of
    /// `news` (this rank its range, on `device`), then exchanges the ranges. The states go to
    /// the GPU when they fit there (module documentation), else to host memory, or with `file`
    /// to that memory-mapped file (created, and removed with the cache).
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
        let mut storage = Storage::new(total, hidden, device, file)?;
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
                    model.bert.lower_states(&batch.input_ids, &batch.positions, &batch.layout, first_layer);
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
                let ordered = packed.index_select(0, &upload(Tensor::from_slice(&rows), device));
                storage.write(offsets[first], &ordered, hidden)?;
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
                storage.broadcast(range, owner, device, collective)?;
                tick()?;
            }
        }
        Ok(LayerCache { states: storage, offsets, hidden, first_layer })
    }

    /// The cached states of `titles`' packed tokens (title `i` is news item `nids[i]`), on
    /// `device`: what [`TitleBatch::lower`] takes. Gathered on the GPU when the cache is there,
    /// else on the host straight into the tensor [`upload`] sends.
    pub fn lower_states(&self, nids: &[i32], titles: &TitleBatch, device: Device) -> LowerStates {
        let rows: Vec<i64> = titles
            .order
            .iter()
            .flat_map(|&i| {
                let nid = nids[i] as usize;
                self.offsets[nid] as i64..self.offsets[nid + 1] as i64
            })
            .collect();
        let states = match &self.states {
            Storage::Gpu(GpuStates(all)) => all.index_select(0, &upload(Tensor::from_slice(&rows), device)),
            Storage::Host(host) => upload(gather_host(host.values(), self.hidden, &rows), device),
        };
        LowerStates { states, first_layer: self.first_layer }
    }

    /// Bytes the states take.
    pub fn bytes(&self) -> usize {
        self.tokens() * self.hidden * std::mem::size_of::<f32>()
    }

    /// Tokens cached (over every news item).
    pub fn tokens(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
}
