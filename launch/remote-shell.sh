#!/usr/bin/env bash
# The remote shell launch/mpirun.sh gives OpenMPI (plm_rsh_agent): it starts a node's daemon
# through the real one and tells mpirun.sh when that session fails.
#
#   remote-shell.sh [SSH-OPTIONS...] NODE COMMAND...     (as OpenMPI calls ssh)
#
# MTREC_REMOTE_SHELL is the real remote shell (a command line; default ssh). When its session
# ends with a non-zero exit (ssh's 255: the node stopped answering its keepalive; or the daemon
# killed), this writes the exit code to MTREC_REMOTE_SHELL_DIR/NODE. mpirun does not always end
# the job when a daemon's session ends after the job has started failing (it waits to hear from
# that daemon, over TCP, for as long as TCP retries: hours); mpirun.sh ends such an mpirun.
set -uo pipefail
# The node: the argument before the daemon's command line (" orted ..."), as OpenMPI builds it.
node=
args=("$@")
for ((i = 1; i < ${#args[@]}; i++)); do
  if [[ ${args[i]} == *orted* ]]; then
    node=${args[i - 1]}
    break
  fi
done
# shellcheck disable=SC2206 # a command line of words
agent=(${MTREC_REMOTE_SHELL:-ssh})
"${agent[@]}" "$@" &
session=$!
trap 'kill -TERM "$session" 2>/dev/null' TERM INT HUP
while :; do
  wait "$session"
  rc=$?
  kill -0 "$session" 2>/dev/null || break
done
if ((rc != 0)) && [ -n "$node" ] && [ -d "${MTREC_REMOTE_SHELL_DIR:-}" ]; then
  echo "$rc" >"$MTREC_REMOTE_SHELL_DIR/$node.tmp" && mv "$MTREC_REMOTE_SHELL_DIR/$node.tmp" "$MTREC_REMOTE_SHELL_DIR/$node"
fi
exit "$rc"
