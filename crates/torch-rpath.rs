//! Shared build script of every crate that links libtorch: records an rpath to the libtorch in
//! use, so binaries and test executables run without LD_LIBRARY_PATH or a sourced file.
//! `torch-sys` publishes the directory as `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata),
//! which reaches only crates that depend on `torch-sys` directly.
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
        }
        Err(_) => println!(
            "cargo:warning=torch-sys did not report its libtorch directory; binaries will need LD_LIBRARY_PATH"
        ),
    }
}
