#!/usr/bin/env bash
# Shows, on the cluster of tests/slurm/start-cluster.sh, how a running batch job is sent SIGTERM
# and then run again from the start under the same job id (what geolife's Slurm executor relies
# on: a member that is preempted, timed out or requeued writes its checkpoint on SIGTERM and the
# requeued run resumes from it). Prints each step with its time; exits non-zero, naming the
# step, when Slurm does not behave as described. About 25 s.
#
# What it demonstrates (Slurm 22.05, KillWait=5):
#  A. `scancel -s TERM ID` alone does not reach a batch script (it signals job steps only);
#     `scancel --signal=TERM --full ID` (or --batch) does.
#  B. scancel --full --signal=TERM, the job traps it and exits 0 (state COMPLETED), then
#     `scontrol requeue ID`: the job is PENDING again with BeginTime = now + ~121 s, and
#     `scontrol update jobid=ID StartTime=now+2` makes it start ~2-3 s later, same job id,
#     SLURM_RESTART_COUNT=1 (unset on the first run). Not StartTime=now: a run started in the
#     same second as the previous run's end is refused by slurmd ("Job credential revoked") and
#     the job ends FAILED, not requeued -- the reason for Slurm's own ~121 s delay.
#  C. `scontrol requeue ID_TASK` on a RUNNING array task: the task gets SIGTERM at once (SIGKILL
#     KillWait seconds later if still alive), goes straight back to PENDING (never COMPLETED or
#     FAILED), and a job depending on the array with afterok still runs after the second run.
#  D. A job that ignores SIGTERM is killed KillWait seconds after it, and requeued all the same.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

step="cluster check"
fail() { echo "requeue-smoke: FAILED at step '$step': $*" >&2; exit 1; }
timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' \
    || fail "no idle Slurm node: run tests/slurm/start-cluster.sh first"
kill_wait=$(scontrol show config | sed -n 's/^KillWait *= *\([0-9]*\).*/\1/p')

work=$(mktemp -d "${TMPDIR:-/tmp}/geolife-requeue.XXXXXX")
chmod 0755 "$work"
cd "$work"
jobs_started=""
# shellcheck disable=SC2086 # a list of job ids
cleanup() { [ -z "$jobs_started" ] || scancel $jobs_started 2>/dev/null || true; }
trap 'rc=$?; cleanup; [ $rc -eq 0 ] || echo "requeue-smoke: FAILED at step '"'"'$step'"'"' (exit $rc); files in '"$work"'" >&2' EXIT

T0=$(date +%s.%N)
now() { date +%s.%N; }
el() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN{printf "%.2f", b-a}'; }
log() { echo "[$(el "$T0") s] $*"; }
# state JOB: the job's (or array task's) state, e.g. RUNNING, PENDING, COMPLETED
state() { squeue -h -t all -j "$1" -o '%T' 2>/dev/null | head -1; }
# wait_state JOB REGEX SECONDS: polls every 0.1 s until the state matches
wait_state() {
    local deadline s
    deadline=$(awk -v t="$(now)" -v d="$3" 'BEGIN{printf "%d", t+d}')
    while :; do
        s=$(state "$1")
        [[ "$s" =~ ^($2)$ ]] && return 0
        [ "$(date +%s)" -le "$deadline" ] || fail "job $1 is '$s' after $3 s (wanted $2)"
        sleep 0.1
    done
}
# wait_line FILE REGEX SECONDS: waits until FILE has a line matching REGEX
wait_line() {
    local _
    for _ in $(seq 1 $(( $3 * 10 ))); do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "no line '$2' in $1 after $3 s; it holds: $(cat "$1" 2>/dev/null)"
}

# The job of the brief: traps TERM, logs each start with SLURM_RESTART_COUNT.
cat >member.sh <<'EOF'
#!/bin/bash
echo "start $(date +%s.%N) restart=${SLURM_RESTART_COUNT:-unset} job=$SLURM_JOB_ID task=${SLURM_ARRAY_TASK_ID:-none}"
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then echo "resumed"; sleep 1; echo "done"; exit 0; fi
if [ "${SLURM_ARRAY_TASK_ID:-}" = 0 ]; then sleep 3; echo "done"; exit 0; fi
trap 'echo "got TERM $(date +%s.%N)"; exit ${EXIT_ON_TERM:-0}' TERM
sleep 100 & wait
EOF
cat >stubborn.sh <<'EOF'
#!/bin/bash
echo "start $(date +%s.%N) restart=${SLURM_RESTART_COUNT:-unset}"
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then echo "resumed"; exit 0; fi
trap 'echo "got TERM, ignoring it $(date +%s.%N)"' TERM
while :; do sleep 0.1; done
EOF
chmod +x member.sh stubborn.sh
# --open-mode=append: a requeued run would otherwise truncate the output file of the first one.
sb() { sbatch --parsable --requeue --open-mode=append -D "$work" "$@"; }

# ------------------------------------------------------------------ A + B
step="A: scancel -s TERM without --full"
a=$(sb -J rq-b -o b.out member.sh); jobs_started="$a"
wait_state "$a" RUNNING 30; wait_line b.out '^start' 10
log "job $a running"
scancel -s TERM "$a"
sleep 2
! grep -q 'got TERM' b.out || fail "scancel -s TERM (no --full) reached the batch script"
[ "$(state "$a")" = RUNNING ] || fail "job $a is $(state "$a") after scancel -s TERM without --full"
log "A: 'scancel -s TERM $a' (no --full): batch script got nothing, job still RUNNING after 2 s"

step="B: scancel --signal=TERM --full, then scontrol requeue"
t=$(now); scancel --signal=TERM --full "$a"
wait_line b.out '^got TERM' 10
wait_state "$a" COMPLETED 10
log "B: 'scancel --signal=TERM --full $a': TERM seen after $(el "$t" "$(grep '^got TERM' b.out | awk '{print $3}')") s, job COMPLETED after $(el "$t") s (the script exits 0)"
t=$(now); scontrol requeue "$a"
wait_state "$a" PENDING 10
begin=$(squeue -h -j "$a" -o '%S'); reason=$(squeue -h -j "$a" -o '%r')
log "B: 'scontrol requeue $a' on the COMPLETED job: PENDING ($reason) after $(el "$t") s, BeginTime=$begin ($(( $(date -d "$begin" +%s) - ${t%.*} )) s from now)"
t=$(now); scontrol update jobid="$a" StartTime=now+2
wait_line b.out 'restart=1' 20
log "B: 'scontrol update jobid=$a StartTime=now+2': second run started after $(el "$t") s, same job id, SLURM_RESTART_COUNT=1"
wait_state "$a" COMPLETED 20
[ "$(grep -c '^start' b.out)" = 2 ] || fail "job $a did not run exactly twice: $(cat b.out)"
grep -q 'restart=unset' b.out || fail "the first run saw SLURM_RESTART_COUNT set"

# ------------------------------------------------------------------ C
step="C: scontrol requeue of a running array task, afterok job"
arr=$(EXIT_ON_TERM=143 sb -J rq-c --array=0-1 -o 'c-%a.out' member.sh)
dep=$(sbatch --parsable -J rq-c-after -D "$work" -o c-after.out --dependency="afterok:$arr" \
    --wrap 'echo "after ran $(date +%s.%N)"; grep -h "^done" c-0.out c-1.out')
jobs_started="$jobs_started $arr $dep"
wait_state "${arr}_1" RUNNING 30; wait_line c-1.out '^start' 10
t=$(now); scontrol requeue "${arr}_1"
log "C: 'scontrol requeue ${arr}_1' returned after $(el "$t") s"
wait_line c-1.out '^got TERM' 10
log "C: task ${arr}_1 saw SIGTERM $(el "$t" "$(grep '^got TERM' c-1.out | awk '{print $3}')") s after the requeue (it exits 143)"
wait_state "${arr}_1" PENDING 15
log "C: task ${arr}_1 PENDING ($(squeue -h -j "${arr}_1" -o '%r'), BeginTime $(squeue -h -j "${arr}_1" -o '%S')) $(el "$t") s after; afterok job $dep: $(state "$dep") ($(squeue -h -j "$dep" -o '%r'))"
t=$(now); scontrol update jobid="${arr}_1" StartTime=now+2
wait_line c-1.out 'restart=1' 20
log "C: second run of ${arr}_1 started $(el "$t") s after StartTime=now+2"
wait_state "$dep" COMPLETED 30
grep -q '^after ran' c-after.out || fail "afterok job $dep did not run: $(cat c-after.out 2>/dev/null)"
[ "$(grep -c '^done' c-after.out)" = 2 ] || fail "afterok job $dep ran before both tasks were done: $(cat c-after.out)"
log "C: afterok job $dep ran after both tasks ($(el "$t") s after StartTime=now+2)"

# ------------------------------------------------------------------ D
step="D: requeue of a job that ignores SIGTERM"
d=$(sb -J rq-d -o d.out stubborn.sh); jobs_started="$jobs_started $d"
wait_state "$d" RUNNING 30; wait_line d.out '^start' 10
t=$(now); scontrol requeue "$d"
wait_line d.out 'got TERM' 10
wait_state "$d" PENDING "$(( kill_wait + 10 ))"
log "D: job $d ignored SIGTERM; PENDING (killed) $(el "$t") s after the requeue (KillWait=$kill_wait)"
scontrol update jobid="$d" StartTime=now+2
wait_line d.out 'restart=1' 20
wait_state "$d" COMPLETED 20
log "D: job $d ran again and completed"

step="done"
jobs_started=""
log "requeue smoke passed (files in $work)"
