# Sourced by the launchers: cudarc opens libnccl.so by name, and PyTorch's nvidia-nccl wheel
# ships only libnccl.so.2, so this gives it a directory with a libnccl.so link and puts that
# directory on LD_LIBRARY_PATH. Needs $root (the repository, or a device bundle); $PYTHON picks
# the interpreter whose nvidia-nccl to use (a path or a command name; default .venv/bin/python).
# Without one, nothing changes (a system NCCL or none: the worker says which at start).
# shellcheck shell=bash
nccl_python=$(command -v "${PYTHON:-$root/.venv/bin/python}" || true)
if [ -n "$nccl_python" ] \
   && nccl_dir=$("$nccl_python" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null) \
   && [ -f "$nccl_dir/libnccl.so.2" ]; then
  mkdir -p "$root/target/nccl"
  ln -sfn "$nccl_dir/libnccl.so.2" "$root/target/nccl/libnccl.so"
  export LD_LIBRARY_PATH="$root/target/nccl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
