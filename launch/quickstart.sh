#!/usr/bin/env bash
# The main job on the bundled defaults: set up, build, and check the toolchain.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash ci/setup.sh
cargo build --release --bins
./target/release/mtrec-worker doctor
