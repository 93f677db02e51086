#!/usr/bin/env bash
# A real SLURM cluster on this machine (Debian's munge, slurmctld and slurmd): this machine as its
# one node, or the local nodes of launch/local-nodes.sh with a slurmd each; for the tests and for
# trying launch/slurm/mtrec.sbatch before a real cluster sees it.
#
#   launch/slurm/local-cluster.sh start    # write the config, start munged, slurmctld, slurmd;
#                                          # wait until the node is idle (a second start is a no-op)
#   launch/slurm/local-cluster.sh start-nodes   # the same on the nodes of launch/local-nodes.sh:
#                                          # one slurmd per node (its own address and hostname),
#                                          # slurmctld on the host side of their bridge
#   launch/slurm/local-cluster.sh slurmd NODE   # start NODE's slurmd again (after local-nodes.sh
#                                          # kill NODE: the node rebooted)
#   launch/slurm/local-cluster.sh stop     # cancel its jobs, stop its daemons; nothing of it keeps running
#   launch/slurm/local-cluster.sh status   # what runs (exit 0 when all three daemons run, else 3)
#   eval "$(launch/slurm/local-cluster.sh env)"   # point sbatch/srun/squeue/scontrol at it
#
# Everything lives under target/slurm/ (MTREC_SLURM_DIR overrides it): its own slurm.conf, munge
# key, state, spool and logs; only munge's socket is in /run/mtrec-munge-* (see below). Nothing
# else outside that folder is read or written: the
# daemons get -f and the munge socket/key paths, the clients SLURM_CONF. The node is this machine
# (hostname, `nproc` CPUs, 90% of the memory `free` reports), or with start-nodes each local node
# (its address; every node says it has all CPUs, and a share of the memory; a /tmp of its own
# under target/slurm/tmp/NODE, emptied when its slurmd starts), one partition `local`; no cgroups
# (proctrack/linuxproc, task/none), requeue allowed, root as SlurmUser, short timeouts. A
# requeued job waits AuthInfo cred_expire + 1 s before it starts again (SLURM's default 120 s;
# 10 s here). Ports 16817/16818 (MTREC_SLURM_PORT, MTREC_SLURM_PORT+1) keep clear of a system
# SLURM. The daemons run as root: start it as root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir=${MTREC_SLURM_DIR:-$root/target/slurm}
port=${MTREC_SLURM_PORT:-16817}
conf=$dir/etc/slurm.conf
run=$dir/run
# munged refuses a socket in a folder that some ancestor keeps others out of (a clone under a 0700
# mktemp folder), so its socket lives in /run, in a folder named after $dir.
socket_dir=/run/mtrec-munge-$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
socket=$socket_dir/munge.socket
export SLURM_CONF=$conf
PATH=$PATH:/usr/sbin:/sbin

say() { printf '[local-cluster] %s\n' "$*"; }
die() { say "error: $*" >&2; exit 1; }

# The pid of one of our daemons, when it runs: the pid file's process, if its command line names
# our files (a pid file left by a crash may name a reused pid).
pid_of() {
  local name=$1 mark=$2 pidfile=$run/${3:-$1.pid} pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  local cmdline
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmdline == *"$name"*"$mark"* ]] || return 1
  echo "$pid"
}
munged_pid() { pid_of munged "$socket"; }
slurmctld_pid() { pid_of slurmctld "$conf"; }
# The cluster's nodes: this machine, or the local nodes (target/slurm/nodes lists them).
cluster_nodes() { if [ -f "$dir/nodes" ]; then cat "$dir/nodes"; else hostname -s; fi; }
# Every slurmd of ours that runs (one pid per line); true when all of the nodes' run.
slurmd_pid() {
  local node p all=0
  for node in $(cluster_nodes); do
    if p=$(pid_of "slurmd" "$conf" "slurmd-$node.pid"); then echo "$p"; else all=1; fi
  done
  return "$all"
}

# slurmstepd processes of our node (job steps outlive slurmd): their working directory is in our
# folder (slurmd's log folder).
stepd_pids() {
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    case "$(readlink "/proc/$p/cwd" 2>/dev/null)" in "$dir"/*) echo "$p" ;; esac
  done
}

# The states of the nodes, one word each ("idle idle").
node_states() { sinfo -h -N -o '%t' 2>/dev/null | tr '\n' ' '; }

# slurm.conf for the nodes in $dir/nodes (NODE ADDRESS per line) with the controller on
# $controller_addr, or for this machine alone.
write_conf() {
  local host cpus mem node_lines partition_nodes name addr
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ { print int($2 * 0.9) }')
  if [ -f "$dir/nodes.addr" ]; then
    # CPUs are shared by every node of this machine: each says it has all of them.
    node_lines=$(while read -r name addr; do
      echo "NodeName=$name NodeAddr=$addr CPUs=$cpus RealMemory=$((mem / $(wc -l <"$dir/nodes.addr"))) State=UNKNOWN"
    done <"$dir/nodes.addr")
    partition_nodes=$(cut -d' ' -f1 "$dir/nodes.addr" | paste -sd,)
  else
    node_lines="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    partition_nodes=$host
  fi
  mkdir -p "$dir/etc" "$run" "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
  chmod 700 "$dir/munge" # munged refuses a key or seed others can read
  mkdir -p "$socket_dir"
  chmod 755 "$socket_dir" # ... and a socket folder others cannot reach
  : >"$dir/etc/plugstack.conf"
  cat >"$conf.tmp" <<EOF
# Written by launch/slurm/local-cluster.sh; rewritten by every start.
ClusterName=mtrec-local
SlurmctldHost=$host(${controller_addr:-127.0.0.1})
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a step credential lives, and how long a requeued job waits to start again.
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
PlugStackConfig=$dir/etc/plugstack.conf
MailProg=/bin/true
# no cgroups: processes are tracked through /proc, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
SlurmdParameters=config_overrides
# short timeouts: tests wait for these
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=300
KillWait=15
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=20
MessageTimeout=10
$node_lines
PartitionName=local Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
}

# start [nodes]: this machine as the one node, or the nodes of launch/local-nodes.sh.
start() {
  [ "$(id -u)" = 0 ] || die "the local cluster runs munged, slurmctld and slurmd as root: run it as root"
  local mode=${1:-one} missing=() d wanted='' controller_addr=''
  for d in munged slurmctld slurmd sbatch; do command -v "$d" >/dev/null 2>&1 || missing+=("$d"); done
  ((${#missing[@]} == 0)) || die "${missing[*]} not installed: run ci/setup.sh (Debian packages slurm-wlm, munge)"
  if [ "$mode" = nodes ]; then
    local status
    status=$(bash "$root/launch/local-nodes.sh" status 2>&1) ||
      die "no local nodes: start them first (launch/local-nodes.sh start N): $status"
    wanted=$(awk '/^node[0-9]+ / { print $1, $2 }' <<<"$status")
    controller_addr=$(awk '/^subnet / { print $NF; exit }' <<<"$status")
  fi
  if munged_pid >/dev/null && slurmctld_pid >/dev/null && slurmd_pid >/dev/null &&
    [ "$wanted" = "$(cat "$dir/nodes.addr" 2>/dev/null)" ]; then
    say "already running (SLURM_CONF=$conf)"
    wait_idle
    return
  fi
  # Some daemon is missing, or other nodes are asked for: restart all of them on a fresh state
  # (no jobs, job ids from 1).
  stop_daemons quiet
  rm -rf "$dir/state" "$dir/spool" "$dir/nodes" "$dir/nodes.addr"
  mkdir -p "$dir"
  if [ -n "$wanted" ]; then
    echo "$wanted" >"$dir/nodes.addr"
    cut -d' ' -f1 "$dir/nodes.addr" >"$dir/nodes"
  fi
  write_conf
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
    die "munged did not start: $(tail -n 3 "$dir/log/munged.log" 2>/dev/null)"
  slurmctld -f "$conf" || die "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
  # slurmd registers with the controller; give the controller a moment to listen first.
  local i node
  for ((i = 0; i < 50; i++)); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
  for node in $(cluster_nodes); do start_slurmd "$node"; done
  wait_idle
  say "started: nodes $(cluster_nodes | paste -sd' '), $(nproc) CPUs each, partition local (SLURM_CONF=$conf)"
}

# NODE's slurmd: on this machine, or inside the local node (its network and hostname, and a
# /tmp of its own, as a real node has: PMIx makes the same folder names in /tmp on every node).
# A node starts with an empty /tmp, as after a reboot: a killed node's job steps leave their PMIx
# folders behind, and a fresh cluster numbers its jobs from 1 again.
start_slurmd() {
  local node=$1
  mkdir -p "$dir/spool/$node"
  if [ -f "$dir/nodes" ]; then
    rm -rf "${dir:?}/tmp/$node"
    mkdir -p "$dir/tmp/$node"
    chmod 1777 "$dir/tmp/$node"
    # A checkout under /tmp stays visible at its path, with the node's local disks mounted in it:
    # bound (recursively) into the node's /tmp first.
    # shellcheck disable=SC2016 # expanded by that shell
    bash "$root/launch/local-nodes.sh" exec "$node" unshare -m --propagation private \
      sh -c 'case $2 in /tmp/*) mkdir -p "$0/${2#/tmp/}" && mount --rbind "$2" "$0/${2#/tmp/}" || exit 1 ;; esac
        mount --rbind "$0" /tmp && exec slurmd -f "$1"' "$dir/tmp/$node" "$conf" "$root" ||
      die "slurmd on $node did not start: $(tail -n 5 "$dir/log/slurmd-$node.log" 2>/dev/null)"
  else
    slurmd -f "$conf" || die "slurmd did not start: $(tail -n 5 "$dir/log/slurmd-$node.log" 2>/dev/null)"
  fi
}

wait_idle() {
  local i states='' state up
  for ((i = 0; i < 300; i++)); do
    states=$(node_states)
    up=1
    for state in $states; do
      case $state in idle | mix | alloc) ;; *) up= ;; esac
    done
    [ -n "$states" ] && [ -n "$up" ] && return 0
    sleep 0.2
  done
  say "the nodes are not up after 60 s (states '${states:-none}'); logs in $dir/log:" >&2
  tail -n 5 "$dir/log/slurmctld.log" "$dir"/log/slurmd-*.log >&2 || true
  exit 1
}

# Stops what runs of ours; with `quiet`, says nothing when nothing ran.
stop_daemons() {
  local quiet=${1:-} pids=() p i name
  if slurmctld_pid >/dev/null; then
    # Jobs first, so that no job step outlives slurmd.
    scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      [ -z "$(squeue -h -t running,completing,configuring -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for p in $(slurmd_pid) $(slurmctld_pid) $(munged_pid); do
    [ -n "$quiet" ] || say "stopping $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -d' ' -f1) ($p)"
    kill -TERM "$p" 2>/dev/null || true
    pids+=("$p")
  done
  # Job steps left behind (a job whose processes ignored SIGTERM): SIGKILL them and their tasks.
  for p in $(stepd_pids); do
    [ -n "$quiet" ] || say "killing leftover slurmstepd $p and its tasks"
    pkill -KILL -P "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
    pids+=("$p")
  done
  for p in "${pids[@]}"; do
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  rm -f "$run"/slurmd-*.pid "$run/slurmctld.pid" "$run/munged.pid"
  rm -rf "$socket_dir"
  return 0
}

stop() {
  if ! munged_pid >/dev/null && ! slurmctld_pid >/dev/null && [ -z "$(slurmd_pid)" ] &&
    [ -z "$(stepd_pids)" ]; then
    say "not running"
    return
  fi
  stop_daemons
  say "stopped"
}

status() {
  local ok=0 name p
  for name in munged slurmctld slurmd; do
    if p=$("${name}_pid"); then
      say "$name running (pid $(echo "$p" | paste -sd' '))"
    else
      say "$name not running"
      ok=3
    fi
  done
  if slurmctld_pid >/dev/null; then
    sinfo -N -o '%10N %8t %5c %10m %P' 2>/dev/null || true
    squeue -O 'JobID:8,Name:12,State:12,RestartCnt:14,TimeUsed:10,ReasonList:30' 2>/dev/null || true
  fi
  say "SLURM_CONF=$conf"
  return "$ok"
}

case ${1:-} in
  start) start ;;
  start-nodes) start nodes ;;
  slurmd)
    grep -qx "${2:-}" "$dir/nodes" 2>/dev/null || die "'${2:-}' is not a node of the running cluster"
    start_slurmd "$2"
    ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *)
    echo "usage: $0 start|start-nodes|slurmd NODE|stop|status|env" >&2
    exit 2
    ;;
esac
