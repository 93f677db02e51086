#!/usr/bin/env bash
# Starts N ranks of mtrec-worker with mpirun, one GPU per rank (device = local rank), with the
# environment NCCL needs, on this machine or on the hosts of a hostfile; restarts the job after a
# failure a restart can cure, as torchrun's --max-restarts.
#
#   launch/mpirun.sh [--hostfile F] [--max-restarts N] RANKS WORKER-ARGS...
#   launch/mpirun.sh 8 train --config configs/mtrec.toml [--resume auto] [--set key=value ...]
#   launch/mpirun.sh --hostfile nodes --max-restarts 3 16 train --config configs/mtrec.toml
#
# Hosts: --hostfile F (or MTREC_HOSTFILE); other mpirun flags go in MPIRUN_FLAGS.
# Network: MTREC_IFACE names the interface between the nodes, or its subnet as a CIDR
# (10.1.2.0/24): OpenMPI's btl_tcp_if_include and oob_tcp_if_include, and for an interface name
# NCCL_SOCKET_IFNAME too (unless set). MTREC_RSH_AGENT replaces ssh (OpenMPI's plm_rsh_agent;
# `eval "$(launch/local-nodes.sh env)"` sets both for the local nodes).
# A node lost: its ranks' peers see it (the liveness link: at once for a dead process, after
# dist.timeout_s / 2 for a silent node), name it and end the job. mpirun's session to a node
# that stops answering ends 10 s later (ssh -o ServerAliveInterval=5, unless
# OMPI_MCA_plm_rsh_args is set), through launch/remote-shell.sh, which tells this script; an
# mpirun still waiting on that node's daemon 5 s later is ended here (exit 71).
# Ranks per node: GPUS_PER_NODE (--map-by ppr:N:node). Without it: on several hosts the GPUs
# visible here (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`), else the ranks spread evenly over
# the hostfile's hosts; on this machine alone, all ranks here. Every NCCL_*, RUST_*, MTREC_*
# variable, CUDA_VISIBLE_DEVICES, LD_LIBRARY_PATH and OMP_NUM_THREADS reaches every rank;
# OMP_NUM_THREADS defaults to this machine's cores per local rank (at least 1).
# MTREC_WORKER overrides the binary (default: target/release/mtrec-worker when built, else
# target/debug/mtrec-worker).
#
# Restarts (--max-restarts N, default 0): when the job fails in a way a restart can cure (exit
# 70: a stall the watchdog saw; 71: a rank lost; 72: a transport error; a rank or daemon killed
# by a signal), mpirun runs again, at most N times, and a `train` resumes from its newest
# verified checkpoint (--resume auto is added). Each restart is logged with its cause and the
# checkpoint it resumes. Exit 1 (a config, data, file or numeric error), 2 (usage), 101 (a panic)
# and 75 (stopped by a signal, after a checkpoint) are never retried. Signals to this script
# (INT, TERM, USR1, USR2, HUP) go to mpirun, and no restart follows them.
set -uo pipefail
say() { printf '[mpirun.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
usage() {
  echo "usage: $0 [--hostfile F] [--max-restarts N] RANKS WORKER-ARGS... (RANKS a positive number)" >&2
  exit 2
}
hostfile=${MTREC_HOSTFILE:-}
max_restarts=0
while (($# > 0)); do
  case $1 in
    --hostfile) hostfile=${2:-}; [ -n "$hostfile" ] || usage; shift 2 ;;
    --hostfile=*) hostfile=${1#*=}; shift ;;
    --max-restarts) max_restarts=${2:-}; shift 2 ;;
    --max-restarts=*) max_restarts=${1#*=}; shift ;;
    *) break ;;
  esac
done
[[ $max_restarts =~ ^[0-9]+$ ]] || { echo "--max-restarts $max_restarts: a number" >&2; exit 2; }
if [ $# -lt 2 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then usage; fi
ranks=$1
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
default_worker=$root/target/release/mtrec-worker
[ -x "$default_worker" ] || default_worker=$root/target/debug/mtrec-worker
worker=${MTREC_WORKER:-$default_worker}
[ -x "$worker" ] || { echo "$worker is not built: run cargo build --bins" >&2; exit 2; }
[ -z "$hostfile" ] || [ -r "$hostfile" ] || { echo "hostfile $hostfile: not readable" >&2; exit 2; }

# shellcheck source=launch/nccl-env.sh
source "$root/launch/nccl-env.sh"

flags=(--bind-to none)
[ -n "$hostfile" ] && flags+=(--hostfile "$hostfile")
if [ -n "${MTREC_IFACE:-}" ]; then
  flags+=(--mca btl_tcp_if_include "$MTREC_IFACE" --mca oob_tcp_if_include "$MTREC_IFACE")
  [[ $MTREC_IFACE == */* ]] || export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$MTREC_IFACE}
fi

# Ranks per node: GPUS_PER_NODE; else, over several hosts (a hostfile, a host list in
# MPIRUN_FLAGS, a multi-node SLURM allocation), the GPUs visible here, else an even spread over
# the hostfile's hosts; else all ranks here.
[[ ${GPUS_PER_NODE:-1} =~ ^[1-9][0-9]*$ ]] || { echo "GPUS_PER_NODE=$GPUS_PER_NODE: a positive number" >&2; exit 2; }
per_node=${GPUS_PER_NODE:-}
hosts_flag='(^| )(--?hostfile|--?machinefile|--?default-hostfile|--?host|-H)( |=|$)'
if [ -z "$per_node" ] && { [ -n "$hostfile" ] || [[ " ${MPIRUN_FLAGS:-} " =~ $hosts_flag ]] || [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; }; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
    per_node=${#visible[@]}
  elif command -v nvidia-smi >/dev/null 2>&1; then
    per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  fi
  if ! [[ ${per_node:-} =~ ^[1-9][0-9]*$ ]] && [ -n "$hostfile" ]; then
    hosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile" || true)
    ((hosts > 0)) && per_node=$(((ranks + hosts - 1) / hosts))
  fi
fi
[[ ${per_node:-} =~ ^[1-9][0-9]*$ ]] || per_node=$ranks
local_ranks=$((per_node < ranks ? per_node : ranks))
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  OMP_NUM_THREADS=$(($(nproc) / local_ranks))
  ((OMP_NUM_THREADS >= 1)) || OMP_NUM_THREADS=1
  export OMP_NUM_THREADS
fi
flags+=(--map-by "ppr:$per_node:node")
for var in $(compgen -e); do
  case $var in
    NCCL_* | RUST_* | MTREC_* | CUDA_VISIBLE_DEVICES | LD_LIBRARY_PATH | OMP_NUM_THREADS) flags+=(-x "$var") ;;
  esac
done
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ "$local_ranks" -gt "$(nproc)" ] && flags+=(--oversubscribe)

# shellcheck source=launch/exit-codes.sh
source "$root/launch/exit-codes.sh"

# From the command's config: the run directory of a `train` (for the checkpoint a restart
# resumes) and dist.timeout_s (the ranks' own watchdog).
args=("$@")
config_args=()
for ((i = 1; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --config | --set) config_args+=("${args[i]}" "${args[i + 1]:-}"); i=$((i + 1)) ;;
    --config=* | --set=*) config_args+=("${args[i]}") ;;
  esac
done
config_get() {
  ((${#config_args[@]} > 0)) && "$worker" config "${config_args[@]}" --get "$1" 2>/dev/null
}
run_dir=
[ "${args[0]}" = train ] && run_dir=$(config_get train.run_dir)
timeout_s=$(config_get dist.timeout_s) || timeout_s=900

# Remote shells (ssh, or MTREC_RSH_AGENT) go through launch/remote-shell.sh, which tells this
# script when a node's session fails. mpirun starts the daemons of up to 32 nodes itself
# (OpenMPI's routed_radix tree); in a larger job those start the rest, with a plain ssh. A node
# that stops answering ends its session dist.timeout_s / 2 + 10 s after (ssh's ServerAlive
# keepalive; the local nodes' agent's MTREC_NODES_ALIVE_MAX): after the ranks' liveness link
# has named what was lost (dist.timeout_s / 2), long before TCP would give up (hours).
alive_s=$(((timeout_s + 1) / 2 + 10))
if [ -n "${MTREC_RSH_AGENT:-}" ]; then
  export MTREC_REMOTE_SHELL=$MTREC_RSH_AGENT MTREC_NODES_ALIVE_MAX=${MTREC_NODES_ALIVE_MAX:-$alive_s}
elif [ -n "${OMPI_MCA_plm_rsh_args:-}" ]; then
  export MTREC_REMOTE_SHELL=ssh
else
  export MTREC_REMOTE_SHELL="ssh -o ServerAliveInterval=5 -o ServerAliveCountMax=$(((alive_s + 4) / 5))"
fi
flags+=(--mca plm_rsh_agent "$root/launch/remote-shell.sh")
sessions=$(mktemp -d "${TMPDIR:-/tmp}/mtrec-sessions.XXXXXX")
export MTREC_REMOTE_SHELL_DIR=$sessions
trap 'rm -rf "$sessions"' EXIT
newest_checkpoint() {
  [ -n "$run_dir" ] || { echo "none"; return; }
  local newest
  newest=$(find "$run_dir" -maxdepth 1 -name 'step-*' -type d 2>/dev/null | sort | tail -n 1)
  echo "${newest:-none (step 0)}"
}

SESSION_GRACE_S=5
signalled=
pid=
forward() {
  signalled=$1
  [ -n "$pid" ] && kill "-$1" "$pid" 2>/dev/null
}
for sig in INT TERM USR1 USR2 HUP; do
  # shellcheck disable=SC2064 # the signal's name, now
  trap "forward $sig" "$sig"
done

restarts=0
while :; do
  rm -f "$sessions"/*
  # shellcheck disable=SC2086 # MPIRUN_FLAGS is a list of flags
  mpirun -n "$ranks" "${flags[@]}" ${MPIRUN_FLAGS:-} "$worker" "${args[@]}" &
  pid=$!
  lost=
  lost_since=
  ended_here=
  # Until mpirun ends (a trap runs between two polls). A node whose session failed: mpirun gets
  # SESSION_GRACE_S to end the job by itself, then this ends mpirun (and the sessions it runs).
  while kill -0 "$pid" 2>/dev/null; do
    if [ -z "$lost" ]; then
      for f in "$sessions"/*; do
        [ -f "$f" ] || continue
        lost=${f##*/}
        lost_since=$SECONDS
        say "$lost: its remote session ended (exit $(cat "$f"): the node died or stopped answering)"
        break
      done
    elif ((SECONDS - lost_since >= SESSION_GRACE_S)); then
      say "mpirun still waits on $lost's daemon $SESSION_GRACE_S s after its session ended: ending mpirun"
      # Its remote shells first (their daemons end with their sessions), then mpirun, which
      # would wait on the lost daemon again if asked to end itself.
      pkill -TERM -P "$pid" 2>/dev/null
      sleep 1
      pkill -KILL -P "$pid" 2>/dev/null
      kill -KILL "$pid" 2>/dev/null
      ended_here=1
      break
    fi
    sleep 0.5
  done
  wait "$pid" 2>/dev/null
  rc=$?
  # mpirun ended by this script: the node was lost, which a restart may cure.
  [ -n "$ended_here" ] && rc=71
  pid=
  if [ "$rc" -eq 0 ]; then
    ((restarts == 0)) || say "finished after $restarts restart(s)"
    exit 0
  fi
  if [ -n "$signalled" ] || ! retryable "$rc"; then
    ((max_restarts == 0)) || say "exit $rc: $(cause "$rc")${signalled:+ (after SIG$signalled)}; not restarting ($restarts restart(s) so far)"
    exit "$rc"
  fi
  if ((restarts >= max_restarts)); then
    ((max_restarts == 0)) || say "exit $rc: $(cause "$rc"); the $max_restarts restart(s) allowed are spent"
    exit "$rc"
  fi
  restarts=$((restarts + 1))
  resume=
  if [ "${args[0]}" = train ] && [[ " ${args[*]} " != *" --resume "* && " ${args[*]} " != *" --resume="* ]]; then
    args+=(--resume auto)
    resume=" (--resume auto added)"
  fi
  say "restart $restarts/$max_restarts after exit $rc: $(cause "$rc")${lost:+ (the session to $lost ended)}; resuming from $(newest_checkpoint)$resume"
done
