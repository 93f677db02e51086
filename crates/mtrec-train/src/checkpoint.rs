//! Checkpoints: `run_dir/step-NNNNNNNN/` with `model.safetensors` (every variable by name),
//! `optimizer.safetensors` (AdamW moments over the flat layout) and `trainer.json` (step, seeds,
//! config digest, world size, metrics, and the sha256 of the two tensor files). Written into a
//! temporary folder (`.tmp-step-*`), fsync'd, then renamed: a folder named `step-*` is always
//! complete, and a temporary folder is what a killed writer left (removed at the next start).
//! Only safetensors is ever loaded. Checksums are computed streaming, by rank 0 only.
use crate::TrainError;
use mtrec_data::write::write_atomically;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_FILE: &str = "trainer.json";
/// `run_dir/INTERRUPTED`: written (holding the step) when a run stopped on a signal after its
/// checkpoint, removed when a run starts; the SLURM script requeues only on it.
pub const INTERRUPTED_FILE: &str = "INTERRUPTED";
const TEMPORARY_PREFIX: &str = ".tmp-step-";

/// `trainer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: u64,
    pub epoch: u64,
    /// Global samples consumed (`step * train.batch_size`): a resume with another batch size is
    /// refused (the data order is a function of the seed and the cursor).
    pub sample_cursor: u64,
    pub seed: u64,
    /// sha256 of the resolved config's model-shaping sections.
    pub config_digest: String,
    pub world_size: usize,
    /// Last evaluation, if any.
    pub metrics: Option<serde_json::Value>,
    /// sha256 of model.safetensors and optimizer.safetensors.
    pub model_sha256: String,
    pub optimizer_sha256: String,
    /// The learning-rate schedule the run was on (`train.max_steps`, `optim.warmup_steps`):
    /// a resume that changes it is refused unless asked for. Absent in older checkpoints.
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Rows of a news-vector cache saved in optimizer.safetensors (`crate::vector_cache`).
    #[serde(default)]
    pub vector_cache_rows: Option<u64>,
    /// `model.trainable_layers` of the run: the trained parameters, and so the optimizer's state,
    /// depend on it, so a resume with another value is refused. Absent in older checkpoints.
    #[serde(default)]
    pub trainable_layers: Option<i64>,
    /// Early stopping's count at this step (`crate::early_stop`). Absent in older checkpoints.
    #[serde(default)]
    pub early_stopping: Option<crate::early_stop::EarlyStopping>,
}

/// `run_dir/best.json`: the checkpoint with the best evaluation so far by `eval.metric` (the
/// metric early stopping watches, AUC by default); `checkpoint` is relative to the run directory
/// (`step-00001000`), so the run directory can move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Best {
    pub step: u64,
    /// The metric it is best by (`auc`, `mrr`, `ndcg5`, `ndcg10`); files written before it was
    /// recorded chose by AUC.
    #[serde(default = "auc_name")]
    pub metric: String,
    /// The metric's value at `step` (`auc` in those older files).
    #[serde(alias = "auc")]
    pub value: f64,
    pub checkpoint: PathBuf,
}

fn auc_name() -> String {
    "auc".into()
}

impl Best {
    fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("best.json")
    }

    pub fn at(step: u64, metric: &str, value: f64) -> Best {
        Best { step, metric: metric.into(), value, checkpoint: step_dir(Path::new(""), step) }
    }

    /// The run's best checkpoint so far, if `best.json` names one that still exists (a resumed
    /// run competes with it).
    pub fn read(run_dir: &Path) -> Option<Best> {
        let path = Best::path(run_dir);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Best>(&text) {
            Ok(best) if run_dir.join(&best.checkpoint).is_dir() => Some(best),
            Ok(best) => {
                tracing::warn!("{}: {} no longer exists; ignored", path.display(), best.checkpoint.display());
                None
            }
            Err(e) => {
                tracing::warn!("{}: {e}; ignored", path.display());
                None
            }
        }
    }

    /// Writes `best.json` whole or not at all, durably ([`write_durably`]).
    pub fn write(&self, run_dir: &Path) -> Result<(), TrainError> {
        write_durably(&Best::path(run_dir), serde_json::to_string(self).expect("serialisable").as_bytes())
    }
}

/// Writes `path` whole or not at all ([`write_atomically`]), fsync'd with its folder.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    write_atomically(path, |tmp| {
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(tmp)?;
            std::io::Write::write_all(&mut file, bytes)?;
            file.sync_all()
        };
        write().map_err(|e| TrainError::io(tmp, e))
    })?;
    fsync(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Marks the run as stopped on a signal at `step` (after that checkpoint is complete).
pub fn mark_interrupted(run_dir: &Path, step: u64) -> Result<(), TrainError> {
    write_durably(&run_dir.join(INTERRUPTED_FILE), format!("{step}\n").as_bytes())
}

/// Removes the marker of an earlier interrupted run, if any.
pub fn clear_interrupted(run_dir: &Path) -> Result<(), TrainError> {
    let path = run_dir.join(INTERRUPTED_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::io(&path, e)),
        _ => Ok(()),
    }
}

/// Removes the temporary folders that killed checkpoint writers left; returns them.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(run_dir).map_err(|e| TrainError::io(run_dir, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMPORARY_PREFIX) {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("step-{step:08}"))
}

/// sha256 of a file, read in 1 MiB pieces (bounded memory).
fn sha256_file(path: &Path) -> Result<String, TrainError> {
    Ok(mtrec_data::manifest::sha256_file(path)?)
}

/// sha256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn fsync(path: &Path) -> Result<(), TrainError> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

/// Writes a checkpoint atomically and returns its folder.
pub fn save(
    run_dir: &Path,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    mut state: TrainerState,
) -> Result<PathBuf, TrainError> {
    let final_dir = step_dir(run_dir, state.step);
    let tmp = run_dir.join(format!("{TEMPORARY_PREFIX}{:08}-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let model_path = tmp.join(MODEL_FILE);
    let optimizer_path = tmp.join(OPTIMIZER_FILE);
    Tensor::write_safetensors(model, &model_path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", model_path.display())))?;
    Tensor::write_safetensors(optimizer, &optimizer_path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", optimizer_path.display())))?;
    state.model_sha256 = sha256_file(&model_path)?;
    state.optimizer_sha256 = sha256_file(&optimizer_path)?;
    let trainer_path = tmp.join(TRAINER_FILE);
    let json = serde_json::to_string_pretty(&state).expect("trainer state serialises");
    std::fs::write(&trainer_path, json).map_err(|e| TrainError::io(&trainer_path, e))?;
    for file in [&model_path, &optimizer_path, &trainer_path, &tmp] {
        fsync(file)?;
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    fsync(run_dir)?;
    Ok(final_dir)
}

/// Writes checkpoints in the background (a tokio blocking task) so training does not wait on the
/// disk: [`CheckpointWriter::submit`] takes a host snapshot of the tensors and returns; the next
/// submit, and [`CheckpointWriter::finish`], wait for the write before. Old checkpoints are
/// pruned after each write.
pub struct CheckpointWriter {
    runtime: tokio::runtime::Runtime,
    pending: Option<tokio::task::JoinHandle<Result<PathBuf, TrainError>>>,
    run_dir: PathBuf,
    keep: usize,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("run_dir", &self.run_dir)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

/// Host copies of named tensors: a snapshot that training can no longer change.
fn snapshot(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    tensors.iter().map(|(n, t)| (n.clone(), t.to_device(tch::Device::Cpu).copy())).collect()
}

impl CheckpointWriter {
    pub fn new(run_dir: &Path, keep: usize) -> Result<Self, TrainError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| TrainError::Checkpoint(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(CheckpointWriter { runtime, pending: None, run_dir: run_dir.to_path_buf(), keep })
    }

    /// Starts writing a checkpoint; `protect` (the best one) survives pruning. Returns its folder.
    pub fn submit(
        &mut self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        state: TrainerState,
        protect: Option<PathBuf>,
    ) -> Result<PathBuf, TrainError> {
        self.finish()?;
        let (model, optimizer) = (snapshot(model), snapshot(optimizer));
        let (run_dir, keep) = (self.run_dir.clone(), self.keep);
        let dir = step_dir(&run_dir, state.step);
        self.pending = Some(self.runtime.spawn_blocking(move || {
            let dir = save(&run_dir, &model, &optimizer, state)?;
            prune(&run_dir, keep, protect.as_deref());
            Ok(dir)
        }));
        Ok(dir)
    }

    /// Waits for the write in flight, if any.
    pub fn finish(&mut self) -> Result<(), TrainError> {
        if let Some(handle) = self.pending.take() {
            self.runtime
                .block_on(handle)
                .map_err(|e| TrainError::Checkpoint(format!("checkpoint writer failed: {e}")))??;
        }
        Ok(())
    }
}

/// A checkpoint: its folder and `trainer.json`.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: TrainerState,
    /// sha256 of `trainer.json`, which records the sha256 of the two tensor files: ranks that
    /// read the same `trainer.json` and the same file sizes read the checkpoint rank 0 verified.
    pub trainer_sha256: String,
}

impl Checkpoint {
    /// Opens `dir`, refusing it when a file is missing or a checksum does not match.
    pub fn open(dir: &Path) -> Result<Checkpoint, TrainError> {
        let checkpoint = Checkpoint::open_unverified(dir)?;
        for (file, expected) in [
            (MODEL_FILE, &checkpoint.state.model_sha256),
            (OPTIMIZER_FILE, &checkpoint.state.optimizer_sha256),
        ] {
            let actual = sha256_file(&dir.join(file))?;
            if &actual != expected {
                return Err(
                    checkpoint.refuse(format!("{file} has sha256 {actual}, trainer.json says {expected}"))
                );
            }
        }
        Ok(checkpoint)
    }

    /// Opens `dir` reading `trainer.json` and checking that both tensor files exist, without
    /// hashing them (ranks other than 0 compare [`Checkpoint::identity`] with rank 0's instead).
    pub fn open_unverified(dir: &Path) -> Result<Checkpoint, TrainError> {
        let refuse = |reason: String| TrainError::Checkpoint(format!("{}: {reason}", dir.display()));
        let trainer_path = dir.join(TRAINER_FILE);
        let text =
            std::fs::read_to_string(&trainer_path).map_err(|e| refuse(format!("{TRAINER_FILE}: {e}")))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| refuse(format!("{TRAINER_FILE}: {e}")))?;
        for file in [MODEL_FILE, OPTIMIZER_FILE] {
            if !dir.join(file).is_file() {
                return Err(refuse(format!("{file} is missing")));
            }
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), state, trainer_sha256: sha256_hex(text.as_bytes()) })
    }

    fn refuse(&self, reason: String) -> TrainError {
        TrainError::Checkpoint(format!("{}: {reason}", self.dir.display()))
    }

    /// What ranks compare to know they read the same checkpoint: `trainer.json`'s sha256 and
    /// the sizes of the tensor files.
    pub fn identity(&self) -> Result<String, TrainError> {
        let mut identity = self.trainer_sha256.clone();
        for file in [MODEL_FILE, OPTIMIZER_FILE] {
            let path = self.dir.join(file);
            let size = std::fs::metadata(&path).map_err(|e| TrainError::io(&path, e))?.len();
            identity.push_str(&format!(" {file}={size}"));
        }
        Ok(identity)
    }

    pub fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    pub fn optimizer_file(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }
}

/// Bytes moved per piece by [`read_safetensors_into`].
const READ_PIECE_BYTES: usize = 64 << 20;

/// One tensor's entry in a safetensors header.
#[derive(Debug, Deserialize)]
struct SafetensorsEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// Where each tensor of a safetensors file is: name -> (kind, shape, absolute byte range).
type SafetensorsIndex = std::collections::BTreeMap<String, (tch::Kind, Vec<i64>, [u64; 2])>;

/// The tensors a safetensors file holds.
fn safetensors_index(path: &Path) -> Result<SafetensorsIndex, TrainError> {
    use std::io::Read;
    let bad = |reason: String| TrainError::Checkpoint(format!("{}: {reason}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| TrainError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("a safetensors header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| TrainError::io(path, e))?;
    let mut entries: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header: {e}")))?;
    entries.remove("__metadata__");
    let mut index = std::collections::BTreeMap::new();
    for (name, value) in entries {
        let entry: SafetensorsEntry =
            serde_json::from_value(value).map_err(|e| bad(format!("safetensors header, {name}: {e}")))?;
        let kind = match entry.dtype.as_str() {
            "F32" => tch::Kind::Float,
            "F64" => tch::Kind::Double,
            "BF16" => tch::Kind::BFloat16,
            "F16" => tch::Kind::Half,
            "I64" => tch::Kind::Int64,
            "I32" => tch::Kind::Int,
            other => return Err(bad(format!("{name}: dtype {other} is not one this crate writes"))),
        };
        let [begin, end] = entry.data_offsets.map(|o| o + 8 + len);
        let numel: i64 = entry.shape.iter().product();
        if end - begin != numel as u64 * kind.elt_size_in_bytes() as u64 {
            return Err(bad(format!(
                "{name}: {} bytes for shape {:?} of {}",
                end - begin,
                entry.shape,
                entry.dtype
            )));
        }
        index.insert(name, (kind, entry.shape, [begin, end]));
    }
    Ok(index)
}

/// Copies the tensors of the safetensors file `path` into `targets` (name, contiguous tensor of
/// the same shape; any device and float kind) [`READ_PIECE_BYTES`] at a time: memory stays
/// bounded, where loading the file whole would hold a second copy of every tensor. Every name
/// must be in the file with its shape; problems are listed together.
pub fn read_safetensors_into(path: &Path, targets: &[(String, Tensor)]) -> Result<(), TrainError> {
    use std::io::{Read, Seek, SeekFrom};
    let index = safetensors_index(path)?;
    let problems: Vec<String> = targets
        .iter()
        .filter_map(|(name, target)| match index.get(name) {
            Some((_, shape, _)) if *shape == target.size() && target.is_contiguous() => None,
            Some((_, shape, _)) => Some(format!("{name}: checkpoint {shape:?}, model {:?}", target.size())),
            None => Some(format!("{name}: missing")),
        })
        .collect();
    if !problems.is_empty() {
        return Err(TrainError::Checkpoint(format!(
            "{}: does not fit the configured model (a config change that changes the model?):\n  {}",
            path.display(),
            problems.join("\n  ")
        )));
    }
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut piece = vec![0u8; READ_PIECE_BYTES];
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, target) in targets {
            let (kind, _, [begin, _]) = &index[name];
            let elt = kind.elt_size_in_bytes();
            let (flat, numel) = (target.view([-1]), target.numel());
            file.seek(SeekFrom::Start(*begin)).map_err(|e| TrainError::io(path, e))?;
            let per_piece = READ_PIECE_BYTES / elt;
            for start in (0..numel).step_by(per_piece) {
                let count = per_piece.min(numel - start);
                let bytes = &mut piece[..count * elt];
                file.read_exact(bytes).map_err(|e| TrainError::io(path, e))?;
                let source = Tensor::f_from_data_size(bytes, &[count as i64], *kind)?;
                flat.narrow(0, start as i64, count as i64).copy_(&source);
            }
        }
        Ok(())
    })
}

/// Complete checkpoint folders of a run, oldest first.
pub fn list(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest checkpoint that verifies (older ones are tried when a newer one is damaged, with
/// a warning); `None` when the run has none, an error saying why each was rejected when none
/// verifies.
pub fn latest(run_dir: &Path) -> Result<Option<Checkpoint>, TrainError> {
    let mut rejected = Vec::new();
    for (_, dir) in list(run_dir).into_iter().rev() {
        match Checkpoint::open(&dir) {
            Ok(checkpoint) => {
                for reason in &rejected {
                    tracing::warn!("skipped {reason}");
                }
                return Ok(Some(checkpoint));
            }
            Err(e) => rejected.push(e.to_string()),
        }
    }
    if rejected.is_empty() {
        return Ok(None);
    }
    Err(TrainError::Checkpoint(format!(
        "--resume auto: no checkpoint of {} verifies:\n  {}",
        run_dir.display(),
        rejected.join("\n  ")
    )))
}

/// Removes all but the newest `keep` checkpoints, never `protect` (the best one).
pub fn prune(run_dir: &Path, keep: usize, protect: Option<&Path>) {
    let all = list(run_dir);
    let excess = all.len().saturating_sub(keep);
    for (_, dir) in all.into_iter().take(excess) {
        if Some(dir.as_path()) != protect
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!("could not remove old checkpoint {}: {e}", dir.display());
        }
    }
}

/// Loads `model.safetensors` into the variables of `vs` by name (all must be present, same
/// shapes), piece by piece ([`read_safetensors_into`]).
pub fn load_model(vs: &tch::nn::VarStore, checkpoint: &Checkpoint) -> Result<(), TrainError> {
    let targets: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    read_safetensors_into(&checkpoint.model_file(), &targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            epoch: 0,
            sample_cursor: step * 4,
            seed: 1,
            config_digest: "d".into(),
            world_size: 1,
            metrics: None,
            model_sha256: String::new(),
            optimizer_sha256: String::new(),
            max_steps: None,
            warmup_steps: None,
            vector_cache_rows: None,
            trainable_layers: None,
            early_stopping: None,
        }
    }

    #[test]
    fn damaged_or_partial_checkpoints_are_never_resumed() {
        let run = tempfile::tempdir().unwrap();
        let model = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0]))];
        let optim = vec![("exp_avg".to_string(), Tensor::from_slice(&[0.0f32, 0.0]))];
        save(run.path(), &model, &optim, state(10)).unwrap();
        let newer = save(run.path(), &model, &optim, state(20)).unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.step, 20);

        // A write interrupted before the rename leaves only a temporary folder: ignored, and
        // removed at the next start.
        let stale = run.path().join(".tmp-step-00000030-1");
        std::fs::create_dir_all(&stale).unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.step, 20);
        assert_eq!(remove_stale_temporaries(run.path()).unwrap(), vec![stale.clone()]);
        assert!(!stale.exists());

        // A corrupted file fails its checksum: the older checkpoint is used, and opening it directly is refused.
        std::fs::write(newer.join(MODEL_FILE), b"garbage").unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.step, 10);
        let err = Checkpoint::open(&newer).unwrap_err().to_string();
        assert!(err.contains("model.safetensors has sha256"), "{err}");

        // A missing file is refused by name.
        let newest = save(run.path(), &model, &optim, state(30)).unwrap();
        std::fs::remove_file(newest.join(OPTIMIZER_FILE)).unwrap();
        let err = Checkpoint::open(&newest).unwrap_err().to_string();
        assert!(err.contains("optimizer.safetensors is missing"), "{err}");

        // None verifying is an error that says why each was rejected; none at all is no error.
        std::fs::write(run.path().join("step-00000010").join(TRAINER_FILE), b"{").unwrap();
        let err = latest(run.path()).unwrap_err().to_string();
        for reason in [
            "step-00000030: optimizer.safetensors is missing",
            "step-00000020: model.safetensors has sha256",
            "step-00000010: trainer.json",
        ] {
            assert!(err.contains(reason), "{reason} not in {err}");
        }
        assert!(latest(&run.path().join("nothing-here")).unwrap().is_none());
    }

    #[test]
    fn best_json_round_trips_and_is_ignored_once_its_checkpoint_is_gone() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(Best::read(run.path()), None, "no best.json yet");
        let model = vec![("w".to_string(), Tensor::from_slice(&[1.0f32]))];
        let dir = save(run.path(), &model, &model, state(5)).unwrap();
        let best = Best::at(5, "mrr", 0.61);
        best.write(run.path()).unwrap();
        assert_eq!(Best::read(run.path()), Some(best.clone()));
        // A file from before `metric` was recorded: chosen by AUC.
        std::fs::write(run.path().join("best.json"), r#"{"step":5,"auc":0.6,"checkpoint":"step-00000005"}"#)
            .unwrap();
        assert_eq!(Best::read(run.path()), Some(Best::at(5, "auc", 0.6)));
        best.write(run.path()).unwrap();
        // Relative to the run directory: it survives a move.
        let text = std::fs::read_to_string(run.path().join("best.json")).unwrap();
        assert!(text.contains(r#""checkpoint":"step-00000005""#), "{text}");
        let moved = run.path().with_extension("moved");
        std::fs::rename(run.path(), &moved).unwrap();
        assert_eq!(Best::read(&moved), Some(best));
        std::fs::rename(&moved, run.path()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Best::read(run.path()), None, "names a folder that is gone");
        std::fs::write(run.path().join("best.json"), "{").unwrap();
        assert_eq!(Best::read(run.path()), None, "unreadable");
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_best() {
        let run = tempfile::tempdir().unwrap();
        let model = vec![("w".to_string(), Tensor::from_slice(&[1.0f32]))];
        let dirs: Vec<PathBuf> =
            (1..=4).map(|s| save(run.path(), &model, &model, state(s)).unwrap()).collect();
        prune(run.path(), 2, Some(&dirs[0]));
        let left: Vec<u64> = list(run.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![1, 3, 4]);
    }
}
