#!/usr/bin/env bash
# Starts N ranks of mtrec-worker with mpirun, one GPU per rank (device = local rank), with the
# environment NCCL needs, on this machine or on the hosts of a hostfile.
#
#   launch/mpirun.sh 8 train --config configs/mtrec.toml [--resume auto] [--set key=value ...]
#   MPIRUN_FLAGS="--hostfile hosts" launch/mpirun.sh 16 train --config configs/mtrec.toml
#
# Ranks are mapped evenly, GPUS_PER_NODE per node (--map-by ppr:N:node). Without it: on several
# hosts (--hostfile/--host in MPIRUN_FLAGS, a multi-node SLURM allocation) the GPUs visible here
# (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`); on this machine alone, all ranks here. Set
# GPUS_PER_NODE when this machine is not like the compute nodes. Every NCCL_*, RUST_*,
# MTREC_* variable, CUDA_VISIBLE_DEVICES, LD_LIBRARY_PATH and OMP_NUM_THREADS reaches every
# rank; OMP_NUM_THREADS defaults to this machine's cores per local rank (at least 1).
# MTREC_WORKER overrides the binary (default: target/release/mtrec-worker when built, else
# target/debug/mtrec-worker). Extra mpirun flags go in MPIRUN_FLAGS.
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

# Ranks per node: GPUS_PER_NODE; else, over several hosts (a hostfile or host list in
# MPIRUN_FLAGS, a multi-node SLURM allocation), the GPUs visible here; else all ranks here.
[[ ${GPUS_PER_NODE:-1} =~ ^[1-9][0-9]*$ ]] || { echo "GPUS_PER_NODE=$GPUS_PER_NODE: a positive number" >&2; exit 2; }
per_node=${GPUS_PER_NODE:-}
hosts_flag='(^| )(--?hostfile|--?machinefile|--?default-hostfile|--?host|-H)( |=|$)'
if [ -z "$per_node" ] && { [[ " ${MPIRUN_FLAGS:-} " =~ $hosts_flag ]] || [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; }; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
    per_node=${#visible[@]}
  elif command -v nvidia-smi >/dev/null 2>&1; then
    per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
fi
[[ ${per_node:-} =~ ^[1-9][0-9]*$ ]] || per_node=$ranks
local_ranks=$((per_node < ranks ? per_node : ranks))
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=$(($(nproc) / local_ranks))
  ((OMP_NUM_THREADS >= 1)) || OMP_NUM_THREADS=1
  export OMP_NUM_THREADS
fi

flags=(--bind-to none --map-by "ppr:$per_node:node")
for var in $(compgen -e); do
  case $var in
    NCCL_* | RUST_* | MTREC_* | CUDA_VISIBLE_DEVICES | LD_LIBRARY_PATH | OMP_NUM_THREADS) flags+=(-x "$var") ;;
  esac
done
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ "$local_ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)
# shellcheck disable=SC2086 # MPIRUN_FLAGS is a list of flags
exec mpirun -n "$ranks" "${flags[@]}" ${MPIRUN_FLAGS:-} "$worker" "$@"
