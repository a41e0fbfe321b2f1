#!/usr/bin/env bash
# Start a one-host Ray head for vi_flow's Ray provider: GCS, raylet, dashboard (with the
# Jobs REST API) and agents, all on 127.0.0.1, with fake GPUs declared as resources.
# Every file lives under $WORK/ray; `ray start --block` runs in its own session and its
# PID goes to $WORK/ray/run/ray.pid, so stop_ray.sh stops exactly this head (never
# `ray stop`, which stops every Ray process of the user on the machine).
#
# Needs: pip install "ray[default]" (the `ray` CLI on PATH) and python3.
#
# Loopback only: `--node-ip-address=127.0.0.1` alone is not enough, Ray replaces a
# loopback node IP by the host's routable one (services.resolve_ip_for_localhost), and
# then the GCS, the raylet's two gRPC ports, the dashboard agent, the runtime-env agent,
# the client server and the metrics ports listen on 0.0.0.0 or that IP. Setting
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's switch for single-machine mode) makes the node
# IP 127.0.0.1, and with it every TCP port of Ray 2.60's head binds 127.0.0.1 (checked
# with `ss -ltnp`). The price: no other node can join this head.
#
# Environment (defaults in brackets):
#   WORK                          scratch dir (required); Ray's unix sockets live under it,
#                                 so keep it short (sockets are limited to 107 bytes)
#   VI_FLOW_RAY_DASHBOARD_PORT    dashboard / Jobs API port on 127.0.0.1 [8265]
#   VI_FLOW_RAY_CPUS              logical CPUs [2]
#   VI_FLOW_RAY_GPUS              fake GPUs [4]
#   VI_FLOW_RAY_GPU_TYPE          their accelerator type, as Ray names it [H100]
#   VI_FLOW_RAY_OBJECT_STORE_MB   object store size [80]
#   VI_FLOW_RAY_WATCH_PID         stop the head by itself once this process is gone [unset]
#
# Writes $WORK/ray/env (shell syntax) with VI_FLOW_RAY_URL for clients and tests.
set -euo pipefail

: "${WORK:?set WORK to a scratch directory}"
DASHBOARD_PORT=${VI_FLOW_RAY_DASHBOARD_PORT:-8265}
CPUS=${VI_FLOW_RAY_CPUS:-2}
GPUS=${VI_FLOW_RAY_GPUS:-4}
GPU_TYPE=${VI_FLOW_RAY_GPU_TYPE:-H100}
OBJECT_STORE_MB=${VI_FLOW_RAY_OBJECT_STORE_MB:-80}

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(cd "$WORK" && pwd)
D=$WORK/ray
URL=http://127.0.0.1:$DASHBOARD_PORT

die() { echo "start_ray.sh: $*" >&2; exit 1; }
log_tail() { tail -n 30 "$D/log/ray-start.out" >&2 2>/dev/null || true; }

for bin in ray python3 setsid; do
    command -v "$bin" >/dev/null || die "'$bin' not found; pip install 'ray[default]'"
done
# sockets go to $D/tmp/session_<date>_<pid>/sockets/plasma_store (64 bytes after $D/tmp)
[ $((${#D} + 68)) -le 107 ] || die "WORK=$WORK is too long for Ray's unix socket paths; use a shorter one"

alive() { [ -f "$D/run/ray.pid" ] && kill -0 "$(cat "$D/run/ray.pid")" 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

http_ok() {  # http_ok PATH [PYTHON-CHECK on the decoded JSON answer `a`]
    python3 - "$URL$1" "${2:-True}" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as resp:
        a = json.load(resp)
    sys.exit(0 if eval(sys.argv[2]) else 1)
except Exception:
    sys.exit(1)
PY
}

node_ready() {  # the raylet registered with its GPUs
    http_ok "/api/v0/nodes" "any(n['state'] == 'ALIVE' and n['resources_total'].get('GPU', 0) >= $GPUS for n in a['data']['result']['result'])"
}

wait_for() {  # wait_for WHAT SECONDS CMD...: fail fast when the head died or time is up
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        alive || { log_tail; die "ray start exited while waiting for $what"; }
        [ "$SECONDS" -ge "$deadline" ] && { log_tail; die "$what did not happen in $limit s"; }
        sleep 0.1
    done
}

if alive && http_ok /api/version; then
    echo "already running: $URL"
    exit 0
fi
"$HERE/stop_ray.sh" >/dev/null 2>&1 || true
(exec 3<> "/dev/tcp/127.0.0.1/$DASHBOARD_PORT") 2>/dev/null \
    && die "port $DASHBOARD_PORT on 127.0.0.1 is taken; choose a free one with VI_FLOW_RAY_DASHBOARD_PORT"

mkdir -p "$D/tmp" "$D/log" "$D/run"
RESOURCES="{}"
[ "$GPUS" -gt 0 ] && RESOURCES="{\"accelerator_type:$GPU_TYPE\": 1}"  # as Ray sets it on a real GPU node

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 setsid ray start --head --block \
    --node-ip-address=127.0.0.1 --port="$(free_port)" \
    --ray-client-server-port="$(free_port)" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --dashboard-agent-listen-port="$(free_port)" \
    --include-dashboard=true --disable-usage-stats \
    --num-cpus="$CPUS" --num-gpus="$GPUS" --resources="$RESOURCES" \
    --object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024)) \
    --temp-dir="$D/tmp" > "$D/log/ray-start.out" 2>&1 < /dev/null &
echo $! > "$D/run/ray.pid"

wait_for "the Jobs API on $URL" 60 http_ok /api/version
wait_for "the node to register its $GPUS GPUs" 60 node_ready

echo "VI_FLOW_RAY_URL=$URL" > "$D/env"
# a test runner that dies without its teardown must not leave the head running
if [ -n "${VI_FLOW_RAY_WATCH_PID:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; WORK=$2 "$3"' watchdog \
        "$VI_FLOW_RAY_WATCH_PID" "$WORK" "$HERE/stop_ray.sh" > /dev/null 2>&1 < /dev/null &
    echo $! > "$D/run/watchdog.pid"
fi
echo "started: $URL ($CPUS CPUs, $GPUS x $GPU_TYPE, state in $D)"
