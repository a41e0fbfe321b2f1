#!/usr/bin/env bash
# Stop the one-host Slurm cluster that start_cluster.sh started under $WORK/slurm:
# cancel its jobs, then TERM (and after 5 s KILL) exactly the PIDs it recorded.
set -uo pipefail

: "${WORK:?set WORK to the directory start_cluster.sh used}"
D=$WORK/slurm
export SLURM_CONF=$D/slurm.conf
[ -d "$D/run" ] || { echo "nothing to stop under $D"; exit 0; }

pid_of() { local f=$D/run/$1.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

# the watchdog runs this script itself when its runner is gone: never kill ourselves
watchdog=$(pid_of watchdog) && [ "$watchdog" != "$$" ] && [ "$watchdog" != "$PPID" ] && kill "$watchdog" 2>/dev/null

# jobs' slurmstepd processes outlive slurmd: cancel the jobs while the controller still runs
if [ -n "$(pid_of slurmctld)" ] && [ -n "$(pid_of slurmd)" ]; then
    jobs=$(timeout 5 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        timeout 5 scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -z "$(timeout 5 squeue -h -t PD,R,CG,S -o %A 2>/dev/null)" ] && break
            sleep 0.05
        done
    fi
fi

pids=""
for name in slurmrestd slurmd slurmctld munged; do
    p=$(pid_of "$name") && pids="$pids $p"
done
if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 1 50); do
        left=""
        for p in $pids; do
            kill -0 "$p" 2>/dev/null && [ "$(ps -o stat= -p "$p" | cut -c1)" != Z ] && left="$left $p"
        done
        [ -z "$left" ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -n "$left" ] && kill -KILL $left 2>/dev/null
fi
rm -f "$D"/run/*.pid
echo "stopped:${pids:- nothing was running}"
