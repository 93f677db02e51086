//! `mtrec-worker doctor`: reports the toolchain this binary runs with, and how to fix what is
//! missing. Exits non-zero when something a CPU run needs is broken.
use std::path::{Path, PathBuf};

/// The directory of the libtorch shared library mapped into this process.
fn loaded_libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| Path::new(path).parent().map(Path::to_path_buf))
}

/// libtorch's version: `torch/version.py` of a PyTorch wheel, or `build-version` of a libtorch zip.
fn libtorch_version(lib_dir: &Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split('=').nth(1)?.trim().trim_matches(['\'', '"']).to_string());
    }
    std::fs::read_to_string(root.join("build-version")).ok().map(|v| v.trim().to_string())
}

pub fn run(job: &mtrec_dist::Job) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    println!("mtrec-worker {}", env!("CARGO_PKG_VERSION"));

    match loaded_libtorch_dir() {
        Some(dir) => {
            let version = libtorch_version(&dir).unwrap_or_else(|| "unknown version".into());
            println!("libtorch    {version} at {}", dir.display());
        }
        None => {
            println!("libtorch    loaded, location unknown");
        }
    }
    // A real forward + backward proves the library works, not just that it links.
    let x = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
    let y = (&x * &x).sum(tch::Kind::Float);
    y.backward();
    let grad: Vec<f32> = Vec::try_from(x.grad()).unwrap_or_default();
    if grad == [2.0, 4.0, 6.0] {
        println!("autograd    ok (d/dx sum x^2 = 2x)");
    } else {
        println!("autograd    FAILED: got {grad:?}, expected [2, 4, 6]");
        problems.push("libtorch autograd gives wrong results");
    }

    if tch::Cuda::is_available() {
        println!(
            "CUDA        {} device(s), cuDNN {}",
            tch::Cuda::device_count(),
            if tch::Cuda::cudnn_is_available() { "available" } else { "missing" }
        );
    } else {
        println!("CUDA        no devices (CPU training only)");
    }

    println!("MPI         {}", mtrec_dist::mpi_library_version());
    if mtrec_dist::launched_by_mpi() {
        let p = job.placement();
        println!(
            "rank        {} of {} (local rank {} of {} on this node)",
            p.rank, p.world_size, p.local_rank, p.local_size
        );
    } else {
        println!("rank        0 of 1 (not launched by mpirun/srun)");
    }

    match mtrec_dist::nccl_library_status() {
        Ok(version) => println!("NCCL        {version}"),
        Err(why) => println!("NCCL        unavailable: {why}"),
    }

    if problems.is_empty() { Ok(()) } else { anyhow::bail!("doctor found problems: {}", problems.join("; ")) }
}
