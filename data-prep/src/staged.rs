//! Output folders that appear complete or not at all: a command writes into a temporary folder
//! beside `--out` and [`Staged::publish`] renames it into place. Until then an existing `--out`
//! is untouched (with `--force` it is replaced only once the new one is complete); on error, or if
//! the process dies, only a hidden `.mtrec-prep-*` folder can remain, never a partial `--out`.
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub struct Staged {
    tmp: tempfile::TempDir,
    out: PathBuf,
}

impl Staged {
    /// Refuses an `out` that is a file, or a non-empty folder without `force`; then creates the
    /// temporary folder in `out`'s parent (the same file system, so the final rename is atomic).
    pub fn new(out: &Path, force: bool) -> Result<Staged> {
        if out.exists() {
            if !out.is_dir() {
                bail!("--out {}: exists and is not a folder", out.display());
            }
            let empty = std::fs::read_dir(out)
                .with_context(|| format!("reading {}", out.display()))?
                .next()
                .is_none();
            if !empty && !force {
                bail!("--out {}: exists and is not empty (pass --force to replace it)", out.display());
            }
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".mtrec-prep-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
        Ok(Staged { tmp, out: out.to_path_buf() })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Moves the finished folder to `out`: an old `out` moves aside, the new one into place, then
    /// the old one is removed; if the swap fails, the old one is put back and the new one deleted.
    pub fn publish(self) -> Result<()> {
        let out = &self.out;
        let old = out.exists().then(|| self.tmp.path().with_extension("old"));
        if let Some(old) = &old {
            std::fs::rename(out, old).with_context(|| format!("moving the old {} aside", out.display()))?;
        }
        if let Err(e) = std::fs::rename(self.tmp.path(), out) {
            if let Some(old) = &old {
                let _ = std::fs::rename(old, out);
            }
            return Err(e)
                .with_context(|| format!("renaming {} to {}", self.tmp.path().display(), out.display()));
        }
        let _ = self.tmp.keep(); // its folder is now `out`
        if let Some(old) = old {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("removing the old output {}", old.display()))?;
        }
        Ok(())
    }
}
