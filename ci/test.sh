#!/usr/bin/env bash
# The project's test command: setup (idempotent), format, lints, every test (including the
# 2-rank mpirun tests, which the test binaries launch themselves).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash ci/setup.sh
# mpirun refuses root unless told; these only matter when CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

step() { printf '\n== %s\n' "$*"; }
step "shellcheck";         shellcheck ci/*.sh .ci/run launch/*.sh launch/slurm/*.sbatch launch/slurm/*.sh data-prep/*.sh crates/mtrec-serve/*.sh
step "cargo fmt --check";  cargo fmt --all -- --check
step "cargo clippy";       cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the real binaries; cargo builds a binary for the tests of its own
# package only, so build them all first.
step "cargo build --bins"; cargo build --workspace --bins
step "cargo test";         cargo test --workspace
step "ok"
