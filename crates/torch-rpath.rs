//! Shared build script of every crate that links libtorch: records an rpath to the libtorch in
//! use, so binaries and test executables run without LD_LIBRARY_PATH or a sourced file.
//! `torch-sys` publishes the directory as `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"` metadata),
//! which reaches only crates that depend on `torch-sys` directly.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        Err(_) => println!(
            "cargo:warning=torch-sys did not report its libtorch directory; binaries will need LD_LIBRARY_PATH"
        ),
    }
}
