#!/usr/bin/env bash
# A single-node SLURM on this machine, to try cluster/jobqueue_batch.py on a laptop or in CI.
#
#   cluster/slurm/local.sh up       install Debian's slurm-wlm and munge if missing, start
#                                   munged, slurmctld and slurmd on localhost, wait until the
#                                   node is idle (idempotent: running daemons are kept)
#   cluster/slurm/local.sh status   the daemons' pids and `sinfo` (exit 1 if not all running)
#   cluster/slurm/local.sh down     cancel the jobs still queued, stop the daemons this
#                                   script started
#
# Needs root (apt-get, munge's key, slurmd runs jobs as their users) and a Debian-like system.
# The daemons are started directly, not through systemd (containers have none): their pid,
# log and state files live in $ROIDASK_SLURM_DIR (default /var/lib/roidask-slurm). The node
# is this machine (`hostname -s` at 127.0.0.1) with the CPUs and memory `slurmd -C` reports,
# in partition `debug`; no cgroups (proctrack/linuxproc, task/none), no accounting.
# /etc/slurm/slurm.conf is written (with a marker line) only if absent or written by this
# script; munge's key /etc/munge/munge.key is created only if absent.
# Exit status: 0 ok, 1 failure, 3 SLURM is not installed and cannot be (no apt-get, not root).
set -euo pipefail

STATE=${ROIDASK_SLURM_DIR:-/var/lib/roidask-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by roidask cluster/slurm/local.sh"
PACKAGES=(slurm-wlm munge)
READY_TIMEOUT_S=${ROIDASK_SLURM_READY_TIMEOUT_S:-60}

say() { echo "slurm/local.sh: $*" >&2; }
die() { say "error: $1"; exit "${2:-1}"; }

# process $2 is alive (not a zombie) and named $1
is_alive() {
  local stat
  stat=$(cat "/proc/$2/stat" 2>/dev/null) || return 1
  [ "$(cat "/proc/$2/comm" 2>/dev/null)" = "$1" ] && [ "$(echo "${stat##*) }" | cut -c1)" != Z ]
}

# pid of daemon $1 started by this script, if it is still running
running_pid() {
  local pidfile="$STATE/$1.pid" pid
  [ -r "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [ -n "$pid" ] && is_alive "$1" "$pid" || return 1
  echo "$pid"
}

munge_works() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install_packages() {
  local missing=() p
  for p in slurmctld slurmd sinfo munged; do
    command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null ||
    die "SLURM is not installed (${missing[*]} missing) and apt-get is not available" 3
  [ "$(id -u)" -eq 0 ] ||
    die "SLURM is not installed (${missing[*]} missing); installing it needs root" 3
  say "installing ${PACKAGES[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

start_munge() {
  if munge_works; then
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating munge key /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p "$STATE/munge" /run/munge
  chown munge:munge "$STATE/munge" /run/munge
  chmod 0700 "$STATE/munge"
  chmod 0755 /run/munge
  # as the munge user, like its service; pid and log in the state directory
  runuser -u munge -- /usr/sbin/munged \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed"
  local i
  for i in $(seq 50); do
    munge_works && return 0
    sleep 0.1
  done
  die "munged did not start; see $STATE/munge/munged.log"
}

write_conf() {
  local node=$1 hw
  if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching it (SLURM may \
already be configured here: use it, or move that file away)"
  fi
  # the node as slurmd sees it: CPUs, sockets, cores, threads and memory (MB)
  hw=$(/usr/sbin/slurmd -C | head -n1 | sed -e "s/^NodeName=[^ ]*//")
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
  chmod 0755 "$STATE"
  cat >"$CONF.tmp" <<EOF
$MARKER
# A single-node cluster for trying roidask's jobqueue recipe; see cluster/README.md.
ClusterName=roidask
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups: works in containers without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
}

node_state() { sinfo -h -n "$1" -o %t 2>/dev/null | head -n1; }

wait_ready() {
  local node=$1 state="" i resumed=0
  for i in $(seq $((READY_TIMEOUT_S * 2))); do
    state=$(node_state "$node")
    case "$state" in
      idle | mix | alloc | comp) sinfo; return 0 ;;
      down* | drain* | drng*)
        if [ $resumed -eq 0 ] && [ $i -gt 4 ]; then
          scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
          resumed=1
        fi
        ;;
    esac
    running_pid slurmctld >/dev/null || die "slurmctld exited; see $STATE/slurmctld.log"
    running_pid slurmd >/dev/null || die "slurmd exited; see $STATE/slurmd.log"
    sleep 0.5
  done
  sinfo >&2 || true
  die "node $node not idle after ${READY_TIMEOUT_S} s (state '$state'); see $STATE/*.log"
}

cmd_up() {
  local node t0=$SECONDS
  [ "$(id -u)" -eq 0 ] || die "needs root (apt-get, munge key, slurmd)" 3
  install_packages
  node=$(hostname -s)
  mkdir -p "$STATE"
  if running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null; then
    say "already running (slurmctld $(running_pid slurmctld), slurmd $(running_pid slurmd))"
  else
    start_munge
    if ! running_pid slurmctld >/dev/null && ! running_pid slurmd >/dev/null; then
      write_conf "$node"
    fi
    if ! running_pid slurmctld >/dev/null; then
      if running_pid slurmd >/dev/null; then
        /usr/sbin/slurmctld -i # keep the jobs slurmd runs; ignore unreadable state files
      else
        /usr/sbin/slurmctld -c # a fresh start: forget earlier jobs and node states
      fi
    fi
    if ! running_pid slurmd >/dev/null; then
      /usr/sbin/slurmd -N "$node"
    fi
    local i
    for i in $(seq 50); do
      running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null && break
      sleep 0.1
    done
  fi
  wait_ready "$node"
  say "node $node ready in $((SECONDS - t0)) s (state, logs: $STATE)"
}

cmd_status() {
  local rc=0 d pid
  for d in slurmctld slurmd; do
    if pid=$(running_pid $d); then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=1; fi
  done
  if munge_works; then echo "munged: running"; else echo "munged: stopped"; rc=1; fi
  [ $rc -eq 0 ] && sinfo
  return $rc
}

stop_pid() {
  local name=$1 pid=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    is_alive "$name" "$pid" || return 0
    sleep 0.1
  done
  say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  local d pid jobs i
  if running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null; then
    # this cluster's jobs would outlive slurmd (no cgroups): cancel them first
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      say "cancelling jobs $(echo $jobs)"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for i in $(seq 30); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  for d in slurmd slurmctld; do
    if pid=$(running_pid $d); then
      stop_pid "$d" "$pid"
      say "stopped $d (pid $pid)"
    fi
  done
  # munged only if this script started it (its pid file is in the state directory)
  pid=$(cat "$STATE/munge/munged.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && is_alive munged "$pid"; then
    stop_pid munged "$pid"
    say "stopped munged (pid $pid)"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  *)
    echo "usage: cluster/slurm/local.sh up | status | down" >&2
    exit 2
    ;;
esac
