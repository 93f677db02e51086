#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine (Debian's munge, slurmctld and slurmd), for the
# tests and for trying launch/slurm/mtrec.sbatch before a real cluster sees it.
#
#   launch/slurm/local-cluster.sh start    # write the config, start munged, slurmctld, slurmd;
#                                          # wait until the node is idle (a second start is a no-op)
#   launch/slurm/local-cluster.sh stop     # cancel its jobs, stop its daemons; nothing of it keeps running
#   launch/slurm/local-cluster.sh status   # what runs (exit 0 when all three daemons run, else 3)
#   eval "$(launch/slurm/local-cluster.sh env)"   # point sbatch/srun/squeue/scontrol at it
#
# Everything lives under target/slurm/ (MTREC_SLURM_DIR overrides it): its own slurm.conf, munge
# key, state, spool and logs; only munge's socket is in /run/mtrec-munge-* (see below). Nothing
# else outside that folder is read or written: the
# daemons get -f and the munge socket/key paths, the clients SLURM_CONF. The node is this machine
# (hostname, `nproc` CPUs, 90% of the memory `free` reports), one partition `local`; no cgroups
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
  local name=$1 mark=$2 pidfile=$run/$1.pid pid
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
slurmd_pid() { pid_of slurmd "$conf"; }

# slurmstepd processes of our node (job steps outlive slurmd): their working directory is in our
# folder (slurmd's log folder).
stepd_pids() {
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null || true); do
    case "$(readlink "/proc/$p/cwd" 2>/dev/null)" in "$dir"/*) echo "$p" ;; esac
  done
}

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n 1; }

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ { print int($2 * 0.9) }')
  mkdir -p "$dir/etc" "$run" "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
  chmod 700 "$dir/munge" # munged refuses a key or seed others can read
  mkdir -p "$socket_dir"
  chmod 755 "$socket_dir" # ... and a socket folder others cannot reach
  : >"$dir/etc/plugstack.conf"
  cat >"$conf.tmp" <<EOF
# Written by launch/slurm/local-cluster.sh; rewritten by every start.
ClusterName=mtrec-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: how long a step credential lives, and how long a requeued job waits to start again.
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
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
SlurmdTimeout=60
MessageTimeout=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
}

start() {
  [ "$(id -u)" = 0 ] || die "the local cluster runs munged, slurmctld and slurmd as root: run it as root"
  local missing=() d
  for d in munged slurmctld slurmd sbatch; do command -v "$d" >/dev/null 2>&1 || missing+=("$d"); done
  ((${#missing[@]} == 0)) || die "${missing[*]} not installed: run ci/setup.sh (Debian packages slurm-wlm, munge)"
  if munged_pid >/dev/null && slurmctld_pid >/dev/null && slurmd_pid >/dev/null; then
    say "already running (SLURM_CONF=$conf)"
    wait_idle
    return
  fi
  # Some daemon is missing: restart all of them on a fresh state (no jobs, job ids from 1).
  stop_daemons quiet
  rm -rf "$dir/state" "$dir/spool"
  write_conf
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed" ||
    die "munged did not start: $(tail -n 3 "$dir/log/munged.log" 2>/dev/null)"
  slurmctld -f "$conf" || die "slurmctld did not start: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
  # slurmd registers with the controller; give the controller a moment to listen first.
  local i
  for ((i = 0; i < 50; i++)); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
  slurmd -f "$conf" || die "slurmd did not start: $(tail -n 5 "$dir/log/slurmd.log" 2>/dev/null)"
  wait_idle
  say "started: node $(hostname -s), $(nproc) CPUs, partition local (SLURM_CONF=$conf)"
}

wait_idle() {
  local i state=
  for ((i = 0; i < 300; i++)); do
    state=$(node_state)
    case $state in idle | mix | alloc) return 0 ;; esac
    sleep 0.2
  done
  say "the node is not up after 60 s (state '${state:-none}'); logs in $dir/log:" >&2
  tail -n 5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
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
  for name in slurmd slurmctld munged; do
    p=$(pid_of "$name" "$([ "$name" = munged ] && echo "$socket" || echo "$conf")") || continue
    [ -n "$quiet" ] || say "stopping $name ($p)"
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
  rm -f "$run/slurmd.pid" "$run/slurmctld.pid" "$run/munged.pid"
  rm -rf "$socket_dir"
  return 0
}

stop() {
  if ! munged_pid >/dev/null && ! slurmctld_pid >/dev/null && ! slurmd_pid >/dev/null &&
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
      say "$name running (pid $p)"
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
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
