#!/usr/bin/env bash
# Nodes on one machine: N network + UTS namespaces node1..nodeN on one bridge, so that mpirun,
# srun and the tests run a job across "hosts" that have their own network stack, address and
# hostname (the filesystem is shared, as over NFS; `unshare -m` gives a node a disk of its own).
#
#   launch/local-nodes.sh start N          # make node1..nodeN (a second start is a no-op)
#   launch/local-nodes.sh stop             # kill their processes, remove them: nothing is left
#   launch/local-nodes.sh status           # the nodes, their addresses and processes (exit 3: none)
#   launch/local-nodes.sh exec NODE CMD... # run CMD on NODE, with NODE's hostname
#   launch/local-nodes.sh kill NODE        # SIGKILL every process on NODE (its power is gone)
#   launch/local-nodes.sh cut NODE | heal NODE   # take NODE's link down (a partition) or up again
#   launch/local-nodes.sh pids NODE        # the processes running on NODE
#   launch/local-nodes.sh mount NODE SRC DST   # NODE's local disk: what starts on NODE from now
#                                          # on sees folder SRC at DST (unmount NODE: none again)
#   eval "$(launch/local-nodes.sh env)"    # MTREC_IFACE and MTREC_RSH_AGENT for launch/mpirun.sh
#   launch/local-nodes.sh rsh NODE CMD...  # OpenMPI's remote shell (plm_rsh_agent): ssh without sshd
#                                          # (with the variables of target/local-nodes/NODE.env;
#                                          # ends after MTREC_NODES_ALIVE_MAX s without an answer)
#
# The bridge `mtrecbr0` holds .1 of a private /24 (the first of 10.213.0.0/24 .. 10.213.255.0/24
# that no interface uses; MTREC_NODES_SUBNET=10.1.2.0/24 picks one), nodeK holds .(K+1) on its
# interface `mtrec0`. The node names go into /etc/hosts (marked, removed by stop). State lives in
# target/local-nodes/ (MTREC_NODES_DIR overrides it). Needs root (ip netns, /etc/hosts).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir=${MTREC_NODES_DIR:-$root/target/local-nodes}
bridge=mtrecbr0
mark="# mtrec local-nodes"
PATH=$PATH:/usr/sbin:/sbin

say() { printf '[local-nodes] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "network namespaces and /etc/hosts need root: run it as root"; }

nodes() { if [ -f "$dir/nodes" ]; then cat "$dir/nodes"; fi; }
subnet() { cat "$dir/subnet" 2>/dev/null; }
# The /24's first three octets, e.g. 10.213.7
prefix() { local s; s=$(subnet); echo "${s%.*}"; }
address() { echo "$(prefix).$((${1#node} + 1))"; }
is_node() { nodes | grep -qx "$1"; }
node_arg() {
  if [ -z "${1:-}" ] || ! is_node "$1"; then
    die "'${1:-}' is not a running local node (nodes: $(nodes | tr '\n' ' '))"
  fi
}

used_subnets() { ip -4 -o addr show | awk '{ split($4, a, "."); print a[1] "." a[2] "." a[3] }'; }

pick_subnet() {
  if [ -n "${MTREC_NODES_SUBNET:-}" ]; then
    [[ $MTREC_NODES_SUBNET =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] ||
      die "MTREC_NODES_SUBNET=$MTREC_NODES_SUBNET: a /24 such as 10.1.2.0/24"
    used_subnets | grep -qx "${BASH_REMATCH[1]}" && die "MTREC_NODES_SUBNET=$MTREC_NODES_SUBNET is in use here"
    echo "$MTREC_NODES_SUBNET"
    return
  fi
  local i used
  used=$(used_subnets)
  for ((i = 0; i < 256; i++)); do
    grep -qx "10.213.$i" <<<"$used" || { echo "10.213.$i.0/24"; return; }
  done
  die "every 10.213.x.0/24 is in use: set MTREC_NODES_SUBNET"
}

start() {
  local n=${1:-}
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "usage: $0 start N (1 to 99 nodes)"
  need_root
  if [ -f "$dir/nodes" ]; then
    local have
    have=$(nodes | wc -l)
    [ "$have" -eq "$n" ] || die "$have nodes are running already: stop them first"
    say "already running: $(nodes | tr '\n' ' ')on $(subnet)"
    return
  fi
  if [ -n "$(ours)" ] || ip link show "$bridge" >/dev/null 2>&1; then
    say "removing what an earlier run left (its state folder $dir is gone)"
    stop
  fi
  mkdir -p "$dir"
  local net k name
  net=$(pick_subnet)
  echo "$net" >"$dir/subnet"
  : >"$dir/nodes.tmp"
  ip link add "$bridge" type bridge
  ip addr add "$(prefix).1/24" dev "$bridge"
  ip link set "$bridge" up
  for ((k = 1; k <= n; k++)); do
    name=node$k
    ip netns add "$name"
    ip link add "mtrec-$name" type veth peer name mtrec0 netns "$name"
    ip link set "mtrec-$name" master "$bridge" up
    ip -n "$name" addr add "$(prefix).$((k + 1))/24" dev mtrec0
    ip -n "$name" link set mtrec0 up
    ip -n "$name" link set lo up
    echo "$name" >>"$dir/nodes.tmp"
  done
  mv "$dir/nodes.tmp" "$dir/nodes"
  hosts_remove
  for name in $(nodes); do echo "$(address "$name") $name $mark"; done >>/etc/hosts
  for name in $(nodes); do wait_reachable "$name"; done
  say "started $(nodes | tr '\n' ' ')on $net (bridge $bridge $(prefix).1)"
}

# A TCP connect from the host to the node's address, bounded in time: bash's /dev/tcp needs no
# ping. Any answer (a refused connection included) proves the node is reachable.
wait_reachable() {
  local i addr answer
  addr=$(address "$1")
  for ((i = 0; i < 50; i++)); do
    answer=$(timeout 1 bash -c "exec 3<>/dev/tcp/$addr/9 && echo connected" 2>&1 || true)
    [[ $answer == *connected* || $answer == *refused* ]] && return 0
    sleep 0.1
  done
  die "$1 ($addr) does not answer a TCP connect from the host"
}

hosts_remove() {
  if grep -q "$mark" /etc/hosts; then
    # /etc/hosts may be a bind mount: rewrite it in place instead of replacing the file.
    local kept
    kept=$(grep -v "$mark" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

pids() { ip netns pids "$1" 2>/dev/null || true; }

kill_node() {
  local name=$1 p i
  for ((i = 0; i < 50; i++)); do
    p=$(pids "$name")
    [ -z "$p" ] && return 0
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $p 2>/dev/null || true
    sleep 0.1
  done
  die "processes on $name survive SIGKILL: $(pids "$name" | tr '\n' ' ')"
}

# The nodes to remove: those of the state folder, and any namespace with our interface in it
# (left by a run whose state folder is gone: a new clone, a deleted target/).
ours() {
  local name
  {
    nodes
    for name in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
      ip -n "$name" link show mtrec0 >/dev/null 2>&1 && echo "$name"
    done
  } | sort -u
}

stop() {
  need_root
  local name found
  found=$(ours)
  if [ -z "$found" ] && ! ip link show "$bridge" >/dev/null 2>&1; then
    hosts_remove
    rm -f "$dir/nodes" "$dir/subnet"
    say "not running"
    return
  fi
  for name in $found; do
    kill_node "$name"
    ip netns del "$name" 2>/dev/null || true
    ip link del "mtrec-$name" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  ip link show "$bridge" >/dev/null 2>&1 && die "cannot remove the bridge $bridge"
  hosts_remove
  rm -f "$dir/nodes" "$dir/subnet" "$dir"/node*.env "$dir"/node*.mounts
  say "stopped"
}

status() {
  if [ ! -f "$dir/nodes" ]; then
    say "not running"
    return 3
  fi
  local name state
  echo "subnet $(subnet), bridge $bridge $(prefix).1"
  for name in $(nodes); do
    state=$(ip -o link show "mtrec-$name" 2>/dev/null | grep -q 'state UP\|,UP' && echo up || echo cut)
    echo "$name $(address "$name") link $state, $(pids "$name" | wc -l) processes"
  done
}

# CMD on NODE with its hostname: the node's network namespace, a UTS namespace of its own
# (nsenter, not `ip netns exec`, which would mount a /sys without the cgroups slurmd needs).
# With target/local-nodes/NODE.mounts (`mount NODE SOURCE TARGET`), CMD also gets a mount
# namespace of its own in which each SOURCE is bind-mounted on its TARGET: the node's local disk.
exec_on() {
  local name=$1
  shift
  node_arg "$name"
  (($# > 0)) || die "usage: $0 exec NODE CMD..."
  if [ -s "$dir/$name.mounts" ]; then
    # shellcheck disable=SC2016 # expanded by that shell
    exec nsenter --net="/run/netns/$name" unshare -u -m --propagation private sh -c '
      hostname "$0" || exit 1
      while read -r source target; do mount --bind "$source" "$target" || exit 1; done <"$1"
      shift
      exec "$@"' "$name" "$dir/$name.mounts" "$@"
  fi
  # shellcheck disable=SC2016 # expanded by that shell
  exec nsenter --net="/run/netns/$name" unshare -u sh -c 'hostname "$0" && exec "$@"' "$name" "$@"
}

# A local disk for NODE: what NODE starts from now on sees SOURCE at TARGET (a bind mount in its
# own mount namespace), the other nodes and this machine still see TARGET itself.
add_mount() {
  local name=${1:-} source=${2:-} target=${3:-}
  node_arg "$name"
  { [ -d "$source" ] && [ -d "$target" ]; } || die "usage: $0 mount NODE SOURCE TARGET (two folders)"
  [[ $source$target != *[[:space:]]* ]] || die "mount: folders without spaces, please"
  echo "$(realpath "$source") $(realpath "$target")" >>"$dir/$name.mounts"
  say "$name sees $source at $target"
}

# OpenMPI's plm_rsh_agent: `AGENT NODE COMMAND...`, COMMAND a line for the remote shell, as ssh
# takes it. The variables of target/local-nodes/NODE.env (if any) are set on that node only, as
# a node's own login environment would (tests make one node differ with it). Like an ssh session
# with ServerAliveInterval=1 and ServerAliveCountMax=MTREC_NODES_ALIVE_MAX (default 30), the
# agent stays on the host and asks the node over its link every second (a TCP connect: a
# refused connection is an answer). When the node has not answered for that many seconds the
# session ends with 255, as ssh's does, and its processes on the node are killed, as sshd ends a
# session whose client is gone (sshd's ClientAliveInterval). mpirun then reports its daemon on
# that node lost. The default leaves a rank's own watchdog (dist.timeout_s, 20 s in the tests)
# the first word: the ranks name what they lost, then the session ends.
remote_shell() {
  local node=${1:-} session missed=0 max=${MTREC_NODES_ALIVE_MAX:-30}
  node_arg "$node"
  shift
  if [ -f "$dir/$node.env" ]; then
    set -a
    # shellcheck disable=SC1090 # written by whoever wants the node to differ
    . "$dir/$node.env"
    set +a
  fi
  # A session (and process group) of its own, so that ending it reaches every process of it.
  setsid bash "${BASH_SOURCE[0]}" exec "$node" sh -c "$*" <&0 &
  session=$!
  trap 'kill -TERM -- "-$session" 2>/dev/null || true' TERM INT HUP
  while kill -0 "$session" 2>/dev/null; do
    if answers "$(address "$node")"; then
      missed=0
      sleep 1
    elif ((++missed >= max)); then
      say "$node: no answer over its link for $max s; ending the session on it (exit 255, as ssh's)"
      kill -KILL -- "-$session" 2>/dev/null || true
      wait "$session" 2>/dev/null || true
      exit 255
    fi
  done
  wait "$session"
}

# Whether ADDRESS answers a TCP connect within 1 s (connected or refused: either is an answer).
answers() {
  local said
  said=$(timeout 1 bash -c ": </dev/tcp/$1/9" 2>&1) && return 0
  [[ $said == *refused* ]]
}

case ${1:-} in
  start) start "${2:-}" ;;
  stop) stop ;;
  status) status ;;
  exec) shift; exec_on "$@" ;;
  rsh) shift; remote_shell "$@" ;;
  kill) node_arg "${2:-}"; kill_node "$2"; say "killed every process on $2" ;;
  cut) node_arg "${2:-}"; ip link set "mtrec-$2" down; say "$2 cut off (link mtrec-$2 down)" ;;
  heal) node_arg "${2:-}"; ip link set "mtrec-$2" up; wait_reachable "$2"; say "$2 reconnected" ;;
  pids) node_arg "${2:-}"; pids "$2" ;;
  mount) add_mount "${2:-}" "${3:-}" "${4:-}" ;;
  unmount) node_arg "${2:-}"; rm -f "$dir/$2.mounts"; say "$2 sees this machine's folders again" ;;
  env)
    [ -f "$dir/nodes" ] || die "not running: $0 start N"
    echo "export MTREC_IFACE=$(subnet) MTREC_RSH_AGENT='$root/launch/local-nodes.sh rsh'"
    ;;
  *)
    sed -n '6,18p' "$0" >&2
    exit 2
    ;;
esac
