#!/usr/bin/env bash
# Stop the Ray head that start_ray.sh started under $WORK/ray: TERM the `ray start --block`
# process it recorded (Ray then drains and stops its own children), and after 20 s KILL
# whatever is left in that process's session. Nothing else is touched.
set -uo pipefail

: "${WORK:?set WORK to the directory start_ray.sh used}"
D=$WORK/ray
[ -d "$D/run" ] || { echo "nothing to stop under $D"; exit 0; }

pid_of() { local f=$D/run/$1.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

# the watchdog runs this script itself when its runner is gone: never kill ourselves
watchdog=$(pid_of watchdog) && [ "$watchdog" != "$$" ] && [ "$watchdog" != "$PPID" ] && kill "$watchdog" 2>/dev/null

head=$(pid_of ray)
if [ -n "$head" ]; then
    kill -TERM "$head" 2>/dev/null
    for _ in $(seq 1 200); do
        kill -0 "$head" 2>/dev/null || break
        sleep 0.1
    done
    # setsid made the head its session leader: what is left in the session is its own
    left=$(ps -eo pid=,sid= | awk -v s="$head" '$2 == s {print $1}')
    # shellcheck disable=SC2086
    [ -n "$left" ] && kill -KILL $left 2>/dev/null
fi
rm -f "$D"/run/*.pid
echo "stopped:${head:- nothing was running}"
