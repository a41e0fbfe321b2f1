#!/usr/bin/env bash
# Start a one-host Slurm cluster for vi_flow: a private munged, slurmctld, slurmd and
# slurmrestd (as the `slurm` user, JWT auth) on 127.0.0.1, with fake GPUs declared as
# character devices. Every file lives under $WORK/slurm; the PIDs go to $WORK/slurm/run/
# and stop_cluster.sh stops exactly those. Running it again while the cluster is up only
# refreshes the token.
#
# Needs root and: apt-get install -y --no-install-recommends slurm-wlm slurmrestd slurm-wlm-jwt-plugin munge
#
# Environment (defaults in brackets):
#   WORK                      scratch dir (required; must be traversable by the slurm and munge users)
#   VI_FLOW_SLURM_REST_PORT   slurmrestd port on 127.0.0.1 [6820]
#   VI_FLOW_SLURMCTLD_PORT    slurmctld port [6817]
#   VI_FLOW_SLURMD_PORT       slurmd port [6818]
#   VI_FLOW_SLURM_USER        user the JWT token is issued for; jobs run as this user [root]
#   VI_FLOW_SLURM_TOKEN_LIFESPAN  token lifetime in seconds [86400]
#   VI_FLOW_SLURM_GPUS        number of fake GPUs [4]
#   VI_FLOW_SLURM_GPU_TYPE    their type [h100]
#   VI_FLOW_SLURM_WATCH_PID   stop the cluster by itself once this process is gone [unset]
#
# Writes $WORK/slurm/env (shell syntax) with SLURM_CONF, VI_FLOW_SLURM_URL,
# VI_FLOW_SLURM_USER and VI_FLOW_SLURM_TOKEN_FILE for clients and tests.
set -euo pipefail

: "${WORK:?set WORK to a scratch directory}"
REST_PORT=${VI_FLOW_SLURM_REST_PORT:-6820}
CTLD_PORT=${VI_FLOW_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${VI_FLOW_SLURMD_PORT:-6818}
TOKEN_USER=${VI_FLOW_SLURM_USER:-root}
LIFESPAN=${VI_FLOW_SLURM_TOKEN_LIFESPAN:-86400}
GPUS=${VI_FLOW_SLURM_GPUS:-4}
GPU_TYPE=${VI_FLOW_SLURM_GPU_TYPE:-h100}

HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(cd "$WORK" && pwd)
D=$WORK/slurm
HOST=$(hostname -s)
URL=http://127.0.0.1:$REST_PORT
export SLURM_CONF=$D/slurm.conf

die() { echo "start_cluster.sh: $*" >&2; exit 1; }
log_tail() { for f in "$D"/log/*; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd and mknod need it)"
for bin in munged slurmctld slurmd slurmrestd scontrol sinfo setpriv mknod python3; do
    command -v "$bin" >/dev/null || die "'$bin' not found; apt-get install -y --no-install-recommends slurm-wlm slurmrestd slurm-wlm-jwt-plugin munge"
done
id slurm >/dev/null 2>&1 || die "no 'slurm' user (the slurm-wlm package creates it)"
id munge >/dev/null 2>&1 || die "no 'munge' user (the munge package creates it)"

write_token() {
    local tmp=$D/token.tmp
    ( umask 077; scontrol token username="$TOKEN_USER" lifespan="$LIFESPAN" | sed -n 's/^SLURM_JWT=//p' > "$tmp" )
    [ -s "$tmp" ] || die "scontrol token gave no token"
    mv -f "$tmp" "$D/token"
}

rest_ready() {
    python3 - "$URL" "$TOKEN_USER" "$D/token" <<'PY'
import sys, urllib.request
url, user, token_file = sys.argv[1:]
req = urllib.request.Request(url + "/openapi/v3", headers={
    "X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": open(token_file).read().strip()})
try:
    with urllib.request.urlopen(req, timeout=2) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

alive() {  # alive NAME: the PID recorded for NAME still runs
    local f=$D/run/$1.pid
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

port_busy() { (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_idle() { timeout 3 sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

wait_for() {  # wait_for WHAT SECONDS CMD...: fail fast when a daemon died or time is up
    local what=$1 limit=$2 name
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        for name in munged slurmctld slurmd slurmrestd; do
            [ -f "$D/run/$name.pid" ] && ! alive "$name" && { log_tail; die "$name exited while waiting for $what"; }
        done
        [ "$SECONDS" -ge "$deadline" ] && { log_tail; die "$what did not happen in $limit s"; }
        sleep 0.05
    done
}

if alive slurmctld && alive slurmd && alive slurmrestd && alive munged; then
    write_token
    rest_ready || die "cluster under $D runs but $URL does not answer"
    echo "already running: $URL"
    exit 0
fi
"$HERE/stop_cluster.sh" >/dev/null 2>&1 || true
for port in "$REST_PORT" "$CTLD_PORT" "$SLURMD_PORT"; do
    port_busy "$port" && die "port $port on 127.0.0.1 is taken; choose free ones with VI_FLOW_SLURM*_PORT"
done

mkdir -p "$D"/state "$D"/spool "$D"/log "$D"/run "$D"/jobs "$D"/munge
rm -rf "${D:?}"/state/* "${D:?}"/spool/* "${D:?}"/log/*
chmod 755 "$D" "$D"/log "$D"/run
chmod 1777 "$D"/jobs

MEMORY_MB=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
sed -e "s#@WORK@#$WORK#g" -e "s#@HOST@#$HOST#g" -e "s#@CPUS@#$(nproc)#g" \
    -e "s#@MEMORY_MB@#$MEMORY_MB#g" -e "s#@GPUS@#$GPUS#g" -e "s#@GPU_TYPE@#$GPU_TYPE#g" \
    -e "s#@CTLD_PORT@#$CTLD_PORT#g" -e "s#@SLURMD_PORT@#$SLURMD_PORT#g" \
    "$HERE/slurm.conf.in" > "$D/slurm.conf"
# gres/gpu wants File= entries that are character devices; a count-only GPU drains the node
for ((i = 0; i < GPUS; i++)); do [ -c "$D/fakegpu$i" ] || mknod "$D/fakegpu$i" c 1 3; done
echo "NodeName=$HOST Name=gpu Type=$GPU_TYPE File=$D/fakegpu[0-$((GPUS - 1))]" > "$D/gres.conf"
chmod 644 "$D/slurm.conf" "$D/gres.conf"
if [ ! -s "$D/jwt_hs256.key" ]; then
    ( umask 077; head -c 32 /dev/urandom > "$D/jwt_hs256.key" )
fi
runuser -u slurm -- test -r "$D/slurm.conf" \
    || die "the slurm user cannot read $D/slurm.conf: make every parent of WORK traversable (chmod o+x)"

# private munged: own key, socket, pid, log and seed files, run as the munge user
chown munge:munge "$D/munge"; chmod 755 "$D/munge"
if [ ! -s "$D/munge/munge.key" ]; then
    ( umask 077; head -c 1024 /dev/urandom > "$D/munge/munge.key" )
fi
chown munge:munge "$D/munge/munge.key"; chmod 400 "$D/munge/munge.key"
setsid setpriv --reuid=munge --regid=munge --init-groups munged --foreground \
    --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
    --pid-file="$D/munge/munged.pid" --seed-file="$D/munge/munged.seed" \
    --log-file="$D/log/munged.log" > "$D/log/munged.out" 2>&1 < /dev/null &
echo $! > "$D/run/munged.pid"
wait_for "munged's socket" 10 test -S "$D/munge/munge.socket"

setsid slurmctld -D -i > "$D/log/slurmctld.out" 2>&1 < /dev/null &
echo $! > "$D/run/slurmctld.pid"
setsid slurmd -D -N "$HOST" > "$D/log/slurmd.out" 2>&1 < /dev/null &
echo $! > "$D/run/slurmd.pid"
# slurmrestd refuses root: run it as `slurm`, JWT tokens forwarded to slurmctld, loopback only
setsid setpriv --reuid=slurm --regid=slurm --init-groups \
    env SLURM_CONF="$SLURM_CONF" SLURM_JWT=daemon \
    slurmrestd -a rest_auth/jwt -s openapi/v0.0.38,openapi/v0.0.37 "127.0.0.1:$REST_PORT" \
    > "$D/log/slurmrestd.out" 2>&1 < /dev/null &
echo $! > "$D/run/slurmrestd.pid"

wait_for "node $HOST to be idle" 30 node_idle
write_token
wait_for "slurmrestd on $URL" 15 rest_ready

# the first job after a cold start waits for the scheduler's first pass: take that wait here
timeout 30 sbatch --wait --quiet --job-name=warmup --mem=64 --output=/dev/null --wrap=true \
    || { log_tail; die "the warm-up job did not run"; }

cat > "$D/env" <<ENV
SLURM_CONF=$SLURM_CONF
VI_FLOW_SLURM_URL=$URL
VI_FLOW_SLURM_USER=$TOKEN_USER
VI_FLOW_SLURM_TOKEN_FILE=$D/token
VI_FLOW_SLURM_JOBS_DIR=$D/jobs
ENV
# a test runner that dies without its teardown must not leave the cluster running
if [ -n "${VI_FLOW_SLURM_WATCH_PID:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; WORK=$2 "$3"' watchdog \
        "$VI_FLOW_SLURM_WATCH_PID" "$WORK" "$HERE/stop_cluster.sh" > /dev/null 2>&1 < /dev/null &
    echo $! > "$D/run/watchdog.pid"
fi
echo "started: $URL (node $HOST, $GPUS x $GPU_TYPE, state in $D)"
