#!/usr/bin/env bash
# Starts N ranks of mtrec-worker on this machine with mpirun, one GPU per rank (device = local
# rank), with the environment NCCL needs.
#
#   launch/mpirun.sh 8 train --config configs/mtrec.toml [--resume auto] [--set key=value ...]
#
# MTREC_WORKER overrides the binary (default: target/release/mtrec-worker when built, else
# target/debug/mtrec-worker). Extra mpirun flags can
# be given in MPIRUN_FLAGS (for example "--hostfile hosts").
set -euo pipefail
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 RANKS WORKER-ARGS... (RANKS a positive number)" >&2
  exit 2
fi
ranks=$1
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_worker=$root/target/release/mtrec-worker
[ -x "$default_worker" ] || default_worker=$root/target/debug/mtrec-worker
worker=${MTREC_WORKER:-$default_worker}
[ -x "$worker" ] || { echo "$worker is not built: run cargo build --bins" >&2; exit 2; }

# shellcheck source=launch/nccl-env.sh
source "$root/launch/nccl-env.sh"

flags=(--bind-to none)
for var in LD_LIBRARY_PATH RUST_LOG OMP_NUM_THREADS NCCL_DEBUG NCCL_SOCKET_IFNAME; do
  [ -n "${!var:-}" ] && flags+=(-x "$var")
done
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ "$ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
# shellcheck disable=SC2086 # MPIRUN_FLAGS is a list of flags
exec mpirun -n "$ranks" "${flags[@]}" ${MPIRUN_FLAGS:-} "$worker" "$@"
