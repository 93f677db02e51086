//! Helpers for the end-to-end tests: locate the built binaries and the project venv, run
//! commands with their output attached to failures.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// A binary of the workspace, built by `cargo test --workspace` next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --bins` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// The project venv's python (ci/setup.sh).
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// Runs `cmd`, returning its output; panics with stdout+stderr when it fails and `expect_ok`.
pub fn run(cmd: &mut Command, expect_ok: bool) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if expect_ok && !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
