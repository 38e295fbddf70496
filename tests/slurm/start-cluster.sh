#!/usr/bin/env bash
# Starts a real one-node Slurm cluster on this machine (issue 23, item 4): installs slurm-wlm
# and munge with apt-get when missing, creates a munge key, starts munged, writes a one-node
# /etc/slurm/slurm.conf (the path the Debian package reads: no SLURM_CONF needed), starts
# slurmctld and slurmd as root in their daemon modes (no systemd needed), waits until the node
# is idle, and ends with a smoke check (one job, an array and an afterok job).
#
# Runs as root, or as a user with sudo (then sudo is used for the privileged steps only, and the
# smoke-check jobs run as the calling user). Idempotent: a second run finds the daemons it
# started and reuses them (restarting them only when slurm.conf changed).
# Exits non-zero, naming the step that failed and showing the daemons' last log lines, whenever
# the cluster does not work: it never exits 0 without a working cluster.
#
# Environment:
#   GEOLIFE_SLURM_DIR  state, spool, pid files and logs (default /var/spool/geolife-slurm)
#   GEOLIFE_SLURM_WAIT seconds to wait for the node to become idle (default 60)
#   GEOLIFE_SLURM_NO_SMOKE=1 skips the smoke check
set -euo pipefail

DIR=${GEOLIFE_SLURM_DIR:-/var/spool/geolife-slurm}
WAIT=${GEOLIFE_SLURM_WAIT:-60}
CONF=/etc/slurm/slurm.conf
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
t_start=$(date +%s)

step="start"
say() { echo "start-cluster: $*"; }
dump_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" /var/log/munge/munged.log; do
        if $sudo test -f "$f"; then
            echo "----- last lines of $f -----"
            $sudo tail -n 25 "$f" || true
        fi
    done
    if command -v sinfo >/dev/null && [ -f "$CONF" ]; then
        echo "----- sinfo -----"
        timeout 5 sinfo -N -l 2>&1 || true
        echo "----- scontrol show node -----"
        timeout 5 scontrol show node 2>&1 || true
    fi
}
fail() {
    trap - EXIT
    echo "start-cluster: FAILED at step '$step': $*" >&2
    dump_logs >&2
    exit 1
}
# Any command that fails under `set -e` lands here, with the step it was in.
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "start-cluster: FAILED at step '"'"'$step'"'"' (exit $rc)" >&2; dump_logs >&2; fi' EXIT

# True when the pid in file $1 is alive and is the program $2.
running() {
    local pid
    pid=$($sudo cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$($sudo cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# ---------------------------------------------------------------- 1. packages
step="install slurm-wlm and munge"
missing=""
for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch; do
    command -v "$cmd" >/dev/null || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null \
        || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    say "missing:$missing; installing slurm-wlm and munge with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurm-wlm munge
fi
export PATH="$PATH:/usr/sbin:/sbin"
for cmd in munged munge unmunge slurmctld slurmd sinfo sbatch squeue scontrol scancel; do
    command -v "$cmd" >/dev/null || fail "$cmd not found after installing slurm-wlm and munge"
done
say "$(slurmctld -V) ($(munged -V 2>&1 | head -1))"

# ---------------------------------------------------------------- 2. munge
step="munge key"
getent passwd munge >/dev/null || fail "no 'munge' user (the munge package creates it)"
$sudo mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
$sudo chown munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
$sudo chmod 0700 /etc/munge /var/lib/munge /var/log/munge
$sudo chmod 0755 /run/munge   # clients (any user) reach the socket through it
if ! $sudo test -s /etc/munge/munge.key; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        $sudo mungekey --create --keyfile=/etc/munge/munge.key
    else
        $sudo dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
$sudo chown munge:munge /etc/munge/munge.key
$sudo chmod 0400 /etc/munge/munge.key

step="start munged"
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munged already running"
else
    # A stale socket or pid file from a killed munged makes a new one refuse to start.
    if ! running /run/munge/munged.pid munged; then
        $sudo rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    fi
    # munged forks into the background by itself; it runs as the munge user, as its unit does.
    $sudo runuser -u munge -- munged || fail "munged did not start"
    $sudo touch "/run/munge/.started-by-geolife"
    for _ in $(seq 1 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
step="check munge -n | unmunge"
munge -n | unmunge >/dev/null || fail "munge -n | unmunge does not work"

# ---------------------------------------------------------------- 3. slurm.conf
step="write $CONF"
# slurmd finds its node by the short host name (no DNS involved: addresses are given below).
node=$(hostname -s 2>/dev/null || uname -n | cut -d. -f1)
[ -n "$node" ] || fail "hostname -s is empty"
# slurmd -C prints this machine's NodeName line (CPUs, sockets, cores, threads, RealMemory).
hw=$(slurmd -C 2>/dev/null | head -1) || true
[[ "$hw" == NodeName=* ]] || fail "slurmd -C printed no NodeName line: '$hw'"
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
boards=$(sed -n 's/.* Boards=\([0-9]*\).*/\1/p' <<<"$hw")
sockets=$(sed -n 's/.* SocketsPerBoard=\([0-9]*\).*/\1/p' <<<"$hw")
cores=$(sed -n 's/.* CoresPerSocket=\([0-9]*\).*/\1/p' <<<"$hw")
threads=$(sed -n 's/.* ThreadsPerCore=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$cpus" ] && [ -n "$mem" ] || fail "could not read CPUs/RealMemory from: $hw"
# A little under the measured memory, so that the node is never drained for 'Low RealMemory'.
mem=$((mem * 95 / 100))
new_conf=$(cat <<EOF
# Written by tests/slurm/start-cluster.sh (geolife CI): a one-node cluster on this machine.
ClusterName=geolife
# Addresses given explicitly: nothing needs to resolve '$node' through DNS or /etc/hosts.
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# No cgroups: processes are tracked through /proc, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
# A node that went down comes back by itself when its slurmd registers again.
ReturnToService=2
# The node's hardware as configured here wins over what slurmd detects (no drain on mismatch).
SlurmdParameters=config_overrides
SlurmctldTimeout=300
SlurmdTimeout=300
InactiveLimit=0
Waittime=0
# Requeue and kill fast: SIGTERM, then SIGKILL 5 s later; finished jobs stay visible 300 s.
JobRequeue=1
KillWait=5
MinJobAge=300
# Schedule often so that dependent and requeued jobs start within seconds.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# No accounting daemon: sacct does not work, use squeue -t all / scontrol show job.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)
conf_changed=0
if [ "$($sudo cat "$CONF" 2>/dev/null || true)" != "$new_conf" ]; then
    conf_changed=1
    say "writing $CONF (node $node, $cpus CPUs, RealMemory=$mem MB)"
    $sudo mkdir -p /etc/slurm
    printf '%s\n' "$new_conf" | $sudo tee "$CONF" >/dev/null
    $sudo chmod 0644 "$CONF"
fi
$sudo mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
$sudo chmod 0755 "$DIR" "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"

# ---------------------------------------------------------------- 4. daemons
step="start slurmctld and slurmd"
if [ "$conf_changed" -eq 1 ]; then
    for d in slurmd slurmctld; do
        if running "$DIR/run/$d.pid" "$d"; then
            pid=$($sudo cat "$DIR/run/$d.pid")
            say "slurm.conf changed: stopping the running $d (pid $pid)"
            $sudo kill "$pid" || true
            # The daemon removes its pid file first, and exits after saving its state.
            for _ in $(seq 1 100); do $sudo test -d "/proc/$pid" || break; sleep 0.2; done
            ! $sudo test -d "/proc/$pid" || fail "$d (pid $pid) still running 20 s after SIGTERM"
        fi
    done
fi
for d in slurmctld slurmd; do
    if running "$DIR/run/$d.pid" "$d"; then
        say "$d already running (pid $($sudo cat "$DIR/run/$d.pid"))"
        continue
    fi
    # Another slurmctld/slurmd (not started by this script) would hold the port.
    other=$(pgrep -x "$d" || true)
    [ -z "$other" ] || fail "a $d not started by this script is running (pid $other): stop it first"
    say "starting $d"
    # Without -D the daemons fork into the background themselves, logging to $DIR/log.
    # slurmctld -c: start with a clean state (no jobs left over from a previous cluster).
    # (The redirection runs under sudo too: the log folder belongs to root.)
    args=""
    [ "$d" != slurmctld ] || args="-c -i"
    $sudo sh -c "exec $d $args >>'$DIR/log/start.log' 2>&1 </dev/null" \
        || { $sudo tail -n 20 "$DIR/log/start.log" >&2 || true; fail "$d exited at start"; }
    for _ in $(seq 1 50); do running "$DIR/run/$d.pid" "$d" && break; sleep 0.2; done
    running "$DIR/run/$d.pid" "$d" || fail "$d is not running 10 s after its start"
done

step="wait for node $node to be idle"
resumed=0
state=""
deadline=$(( $(date +%s) + WAIT ))
while :; do
    for d in slurmctld slurmd; do
        running "$DIR/run/$d.pid" "$d" || fail "$d exited after its start (see its log below)"
    done
    state=$(timeout 5 sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drained|draining|down|drain|fail|failing|"down~"|inval)
            if [ "$resumed" -eq 0 ]; then
                reason=$(timeout 10 sinfo -h -N -n "$node" -o '%E' 2>/dev/null || true)
                say "node $node is '$state' ($reason): resuming it"
                $sudo scontrol update nodename="$node" state=resume || true
                resumed=1
            fi ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || fail "node $node is '${state:-not listed}' after ${WAIT}s (wanted idle)"
    sleep 1
done
say "node $node is $state ($(( $(date +%s) - t_start ))s since start)"

# ---------------------------------------------------------------- 5. smoke check
if [ "${GEOLIFE_SLURM_NO_SMOKE:-0}" = 1 ]; then
    trap - EXIT
    say "cluster up (smoke check skipped)"
    exit 0
fi
step="smoke check"
smoke=$(mktemp -d "${TMPDIR:-/tmp}/geolife-slurm-smoke.XXXXXX")
chmod 0755 "$smoke"
# Waits until every task of job $1 has left the queue; fails unless they all COMPLETED.
wait_done() {
    local id=$1 deadline=$(( $(date +%s) + ${2:-60} )) states
    while :; do
        states=$(squeue -h -t all -j "$id" -o '%T' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        case "$states" in
            *PENDING*|*RUNNING*|*CONFIGURING*|*COMPLETING*|*REQUEUED*|*SUSPENDED*) ;;
            "COMPLETED ") return 0 ;;
            "") return 0 ;;   # gone from the queue (older than MinJobAge)
            *) fail "job $id ended as: $states" ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || fail "job $id not done after ${2:-60}s (states: $states)"
        sleep 0.5
    done
}
t0=$(date +%s.%N)
id=$(sbatch --parsable -J smoke-hi -D "$smoke" -o "$smoke/hi.out" --wrap 'echo hi') \
    || fail "sbatch refused a job"
wait_done "$id" 60
grep -qx hi "$smoke/hi.out" || fail "job $id wrote '$(cat "$smoke/hi.out" 2>/dev/null)' instead of 'hi'"
t1=$(date +%s.%N)
say "job $id ran 'echo hi' ($(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"

arr=$(sbatch --parsable -J smoke-array -D "$smoke" -o "$smoke/array-%a.out" --array=0-2 \
    --wrap 'echo "task $SLURM_ARRAY_TASK_ID"') || fail "sbatch refused an array job"
dep=$(sbatch --parsable -J smoke-after -D "$smoke" -o "$smoke/after.out" \
    --dependency="afterok:$arr" --wrap 'cat array-0.out array-1.out array-2.out') \
    || fail "sbatch refused a job with --dependency=afterok:$arr"
wait_done "$arr" 60
wait_done "$dep" 60
expected=$'task 0\ntask 1\ntask 2'
[ "$(cat "$smoke/after.out" 2>/dev/null)" = "$expected" ] \
    || fail "afterok job $dep wrote '$(cat "$smoke/after.out" 2>/dev/null)', expected the 3 array tasks' lines"
t2=$(date +%s.%N)
say "array $arr (3 tasks) then afterok job $dep ran ($(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b-a}') s)"
rm -rf "$smoke"

trap - EXIT
say "cluster up: node $node idle, smoke check passed ($(( $(date +%s) - t_start ))s in all)"
say "config $CONF, logs $DIR/log, stop with tests/slurm/stop-cluster.sh"
