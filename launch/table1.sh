#!/usr/bin/env bash
# Runs every Table 1 config of the paper (Bi et al. 2022: BERT baseline, LSTUR+BERT, NRMS+BERT,
# BERT+AMF, MTRec, MTRec+AMF), one after the other on the ranks it is given, then writes the
# comparison with the paper's numbers (`mtrec-worker compare`).
#
#   launch/table1.sh RANKS [--steps N] [--out DIR] [--set key=value ...]
#
# RANKS: processes per run (launch/mpirun.sh: one per GPU). --steps N shortens every run to N
# steps (a smoke test; the paper's numbers need the configs' full length). --out DIR holds one run
# directory per config and compare.md (default runs/table1). Other arguments go to every train.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
usage() { echo "usage: $0 RANKS [--steps N] [--out DIR] [--set key=value ...]" >&2; exit 2; }
if [ $# -lt 1 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then usage; fi
ranks=$1
shift
out=runs/table1
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --steps) [ $# -ge 2 ] || usage; extra+=(--set "train.max_steps=$2" --set "optim.warmup_steps=0"); shift 2 ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
default_worker=$root/target/release/mtrec-worker
[ -x "$default_worker" ] || default_worker=$root/target/debug/mtrec-worker
worker=${MTREC_WORKER:-$default_worker}
export MTREC_WORKER=$worker

runs=()
for name in bert-baseline lstur-bert nrms-bert bert-amf mtrec mtrec-amf; do
  run_dir=$out/$name
  echo "== $name (configs/$name.toml) -> $run_dir"
  resume=()
  [ -d "$run_dir" ] && resume=(--resume auto)
  launch/mpirun.sh "$ranks" train --config "configs/$name.toml" --set "train.run_dir=$run_dir" "${extra[@]}" "${resume[@]}"
  runs+=("$run_dir")
done
"$worker" compare "${runs[@]}" --out "$out"
echo "table: $out/compare.md"
