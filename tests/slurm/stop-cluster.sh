#!/usr/bin/env bash
# Stops the one-node cluster of tests/slurm/start-cluster.sh: cancels the jobs still queued,
# then stops the slurmd and slurmctld it started (their pid files in $GEOLIFE_SLURM_DIR/run) and
# the munged it started (a munged that was already running is left alone). Leaves slurm.conf,
# the munge key and the logs in place. Exits non-zero when a daemon does not stop.
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
DIR=${GEOLIFE_SLURM_DIR:-/var/spool/geolife-slurm}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
say() { echo "stop-cluster: $*"; }
failed=0

# Jobs first: slurmstepd processes outlive slurmd by design, so running jobs must end now.
if timeout 10 scontrol ping >/dev/null 2>&1; then
    ids=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${ids// /}" ]; then
        say "cancelling jobs: $ids"
        # shellcheck disable=SC2086
        $sudo scancel $ids || true
        for _ in $(seq 1 30); do
            [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

# stop NAME PIDFILE: SIGTERM, up to 20 s for it to save its state and exit, then SIGKILL.
stop() {
    local name=$1 pidfile=$2 pid
    pid=$($sudo cat "$pidfile" 2>/dev/null) || { say "$name: no pid file $pidfile"; return 0; }
    if [ -z "$pid" ] || [ "$($sudo cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
        say "$name (pid file $pidfile) is not running"
        $sudo rm -f "$pidfile"
        return 0
    fi
    say "stopping $name (pid $pid)"
    $sudo kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        $sudo test -d "/proc/$pid" || { $sudo rm -f "$pidfile"; return 0; }
        sleep 0.2
    done
    say "$name (pid $pid) still running 20 s after SIGTERM: SIGKILL"
    $sudo kill -9 "$pid" 2>/dev/null || true
    sleep 1
    if $sudo test -d "/proc/$pid"; then
        say "FAILED: $name (pid $pid) does not stop"
        failed=1
    else
        $sudo rm -f "$pidfile"
    fi
}

stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
if $sudo test -f /run/munge/.started-by-geolife; then
    stop munged /run/munge/munged.pid
    [ "$failed" -ne 0 ] || $sudo rm -f /run/munge/.started-by-geolife
else
    say "munged was not started by start-cluster.sh: left running"
fi
exit "$failed"
