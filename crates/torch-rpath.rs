//! Shared build script of every crate that links libtorch: records an rpath to the libtorch in
//! use, so binaries and test executables run without LD_LIBRARY_PATH or a sourced file.
//! `torch-sys` publishes the directory as `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata),
//! which reaches only crates that depend on `torch-sys` directly.
//!
//! NCCL too: cudarc opens `libnccl.so` by name at run time, and PyTorch's nvidia-nccl wheel (next
//! to the torch package) ships only `libnccl.so.2`. When that wheel is there, a `libnccl.so`
//! link to it is made in this build's output folder and that folder goes on the rpath, which
//! `dlopen` searches: NCCL loads with no LD_LIBRARY_PATH. A system NCCL (`libnccl.so` on the
//! loader's path) still works without it.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            // Nothing references libtorch_cuda's symbols directly, so `--as-needed` would drop
            // it and libtorch would see no CUDA device: keep it when this libtorch has CUDA.
            if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            }
            link_wheel_nccl(std::path::Path::new(&lib));
        }
        Err(_) => println!(
            "cargo:warning=torch-sys did not report its libtorch directory; binaries will need LD_LIBRARY_PATH"
        ),
    }
}

/// `OUT_DIR/nccl/libnccl.so` -> the nvidia-nccl wheel's `libnccl.so.2` beside `torch/lib`, on the rpath.
fn link_wheel_nccl(torch_lib: &std::path::Path) {
    let Ok(torch_lib) = std::fs::canonicalize(torch_lib) else { return };
    let Some(site_packages) = torch_lib.parent().and_then(|torch| torch.parent()) else { return };
    let wheel = site_packages.join("nvidia/nccl/lib/libnccl.so.2");
    let Ok(out) = std::env::var("OUT_DIR") else { return };
    if !wheel.is_file() {
        return;
    }
    let dir = std::path::Path::new(&out).join("nccl");
    let link = dir.join("libnccl.so");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::remove_file(&link);
    match std::os::unix::fs::symlink(&wheel, &link) {
        Ok(()) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display()),
        Err(e) => println!("cargo:warning=cannot link {} to {}: {e}", link.display(), wheel.display()),
    }
}
