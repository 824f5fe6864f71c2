#!/usr/bin/env bash
# Load benchmark for gatehouse: the whole request path under wrk, against the
# backend directly, nginx as a reverse proxy, and gatehouse (plain HTTP and
# HTTPS). Everything runs on loopback, on this machine, bounded in time.
#
#   bash bench/run.sh
#
# Settings (environment):
#   BENCH_DURATION     seconds per measured wrk run          (default 10)
#   BENCH_CONNECTIONS  wrk connections                       (default 64)
#   BENCH_THREADS      wrk threads                           (default 2)
#   BENCH_WARMUP       seconds of unmeasured warm-up per run (default 2)
#   BENCH_ROUNDS       rounds over all targets; each target's best round
#                      (highest req/s) is reported               (default 2)
#   BENCH_LOG_COMPARE  1: one extra gatehouse plain run at --log-level info
#                      to price the access log               (default 1)
#   BENCH_TELEMETRY_COMPARE 1: two extra gatehouse plain runs, one with
#                      metrics off (GATEHOUSE_METRICS=off) and one with
#                      metrics and OTLP traces, 10% sampled  (default 1)
#   BENCH_FULL         1: the full-pipeline row (TLS, API key, JWT, a rate
#                      limit, access log at info)           (default 1)
#   BENCH_USAGE_COMPARE 1: the full-pipeline row once more with usage
#                      metering off ([usage] enabled = false), next to the
#                      default (metering on)                 (default 1)
#   BENCH_MANY         connections of the many-connections rows (nginx and
#                      gatehouse under wrk) and of the idle-connections RSS
#                      figure; 0 skips them                 (default 1000)
#   BENCH_BEFORE       path of another gatehouse binary (say, a build of the
#                      previous commit): its plain, HTTPS, log-info and full
#                      rows are measured in the same run, labelled "(before)"
#   BENCH_PERF         1: after the rounds, profile gatehouse's plain and
#                      full-pipeline rows with perf (when installed) and
#                      list the top functions                 (default 1)
#   BENCH_QUIET_WAIT   seconds, in all, to wait for an idle machine before
#                      measuring (default 60; 0 skips the check)
#   BENCH_OUTPUT       report file            (default BENCHMARKS.md at the repo root)
#   BENCH_KEEP         1: keep the temp dir (configs, logs, raw wrk output)
#
# It installs nginx and wrk with apt-get when they are missing, builds the
# release binary and examples/bench_backend.rs, starts the three servers on
# free loopback ports, and stops exactly the processes it started (by PID)
# when it exits.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${BENCH_DURATION:-10}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
WARMUP="${BENCH_WARMUP:-2}"
ROUNDS="${BENCH_ROUNDS:-2}"
LOG_COMPARE="${BENCH_LOG_COMPARE:-1}"
TELEMETRY_COMPARE="${BENCH_TELEMETRY_COMPARE:-1}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-60}"
FULL="${BENCH_FULL:-1}"
USAGE_COMPARE="${BENCH_USAGE_COMPARE:-1}"
MANY="${BENCH_MANY:-1000}"
BEFORE="${BENCH_BEFORE:-}"
PERF="${BENCH_PERF:-1}"
OUTPUT="${BENCH_OUTPUT:-$ROOT/BENCHMARKS.md}"
KEEP="${BENCH_KEEP:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOOPBACK=127.0.0.1

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for v in DURATION CONNS THREADS WARMUP ROUNDS QUIET_WAIT MANY; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && CONNS > 0 && THREADS > 0 && ROUNDS > 0)) || die "duration, connections, threads and rounds must be positive"
((CONNS >= THREADS)) || die "wrk needs at least as many connections as threads"

# ---------------------------------------------------------------- 1. tools
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
WRK="$(command -v wrk)"

# ---------------------------------------------------------------- 2. build
log "building (cargo build --release --bin gatehouse --example bench_backend)"
(cd "$ROOT" && cargo build --release --bin gatehouse --example bench_backend)
GATEHOUSE="$TARGET_DIR/release/gatehouse"
BACKEND="$TARGET_DIR/release/examples/bench_backend"
[[ -x $GATEHOUSE ]] || die "no binary at $GATEHOUSE"
[[ -x $BACKEND ]] || die "no binary at $BACKEND"
[[ -z $BEFORE || -x $BEFORE ]] || die "BENCH_BEFORE: no binary at $BEFORE"
# The binary the next gatehouse start runs (BEFORE for the "(before)" rows).
GH_BIN="$GATEHOUSE"

# ------------------------------------------------- process bookkeeping
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")"
PIDS=()

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid did not stop on TERM; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    if [[ $KEEP == 1 || $rc != 0 ]]; then
        log "temp dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Picks a loopback port nothing listens on (and that this run has not
# handed out already); sets REPLY. Below the kernel's ephemeral range: the
# 1,000-connection runs use a thousand ephemeral ports, and one of them may
# be a port picked here before a server (re)starts on it.
USED_PORTS=" "
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
((EPHEMERAL_LOW > 12000)) || die "ephemeral port range starts at $EPHEMERAL_LOW; need free ports below it"
free_port() {
    local p i
    for i in $(seq 1 500); do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/$LOOPBACK/$p") 2>/dev/null; then
            USED_PORTS+="$p "
            REPLY=$p
            return 0
        fi
    done
    die "no free loopback port found"
}

# wait_http NAME PID URL [curl args...]: until URL answers 2xx, bounded.
wait_http() {
    local name=$1 pid=$2 url=$3 i
    shift 3
    for i in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; its log:"
            tail -n 30 "$WORK/$name.log" >&2 || true
            die "$name did not start"
        fi
        if curl -sf -o /dev/null --max-time 2 "$@" "$url"; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 30 "$WORK/$name.log" >&2 || true
    die "$name not ready at $url after 30 s"
}

# --------------------------------------------------------- 3. the servers
free_port
BACKEND_PORT=$REPLY
free_port
NGINX_PORT=$REPLY
free_port
NGINX_TLS_PORT=$REPLY
free_port
GH_PORT=$REPLY
free_port
GH_TLS_PORT=$REPLY
free_port
ADMIN_PORT=$REPLY
free_port
BACKEND2_PORT=$REPLY
free_port
BACKEND3_PORT=$REPLY

log "backend on $LOOPBACK:$BACKEND_PORT"
"$BACKEND" "$LOOPBACK:$BACKEND_PORT" >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_http backend "$BACKEND_PID" "http://$LOOPBACK:$BACKEND_PORT/"
# Two more backends for the three-target upstream (idle in the other rows).
BACKEND_PIDS=("$BACKEND_PID")
for port in "$BACKEND2_PORT" "$BACKEND3_PORT"; do
    "$BACKEND" "$LOOPBACK:$port" >"$WORK/backend-$port.log" 2>&1 &
    BACKEND_PIDS+=("$!")
    PIDS+=("$!")
    wait_http "backend-$port" "$!" "http://$LOOPBACK:$port/"
done

# One dev certificate for localhost/127.0.0.1, used by nginx and gatehouse.
"$GATEHOUSE" certs dev --dir "$WORK/certs" >"$WORK/certs.log" 2>&1 ||
    die "gatehouse certs dev failed: $(cat "$WORK/certs.log")"

NPROC="$(nproc)"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes $NPROC;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $WORK/nginx/client_body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    # gatehouse does not cap requests per connection; neither does nginx here.
    keepalive_requests 1000000;
    upstream backend {
        server $LOOPBACK:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $LOOPBACK:$NGINX_PORT;
        listen $LOOPBACK:$NGINX_TLS_PORT ssl;
        ssl_certificate $WORK/certs/localhost.pem;
        ssl_certificate_key $WORK/certs/localhost-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
log "nginx on $LOOPBACK:$NGINX_PORT (https $NGINX_TLS_PORT), $NPROC workers"
"$NGINX" -p "$WORK/nginx/" -e "$WORK/nginx.log" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http nginx "$NGINX_PID" "http://$LOOPBACK:$NGINX_PORT/"
wait_http nginx "$NGINX_PID" "https://$LOOPBACK:$NGINX_TLS_PORT/" -k

mkdir -p "$WORK/gh/policies"
cat >"$WORK/gh/gatehouse.toml" <<EOF
# Generated by bench/run.sh.
policies = "policies"

[[listener]]
name = "http"
addr = "$LOOPBACK:$GH_PORT"

[[listener]]
name = "https"
addr = "$LOOPBACK:$GH_TLS_PORT"
[listener.tls]
dev_certs = true
certs = [{ cert = "$WORK/certs/localhost.pem", key = "$WORK/certs/localhost-key.pem" }]

[admin]
addr = "$LOOPBACK:$ADMIN_PORT"

[server]
shutdown_grace = "1s"
# Every load connection comes from one loopback address.
max_connections_per_ip = 4096

# The full-pipeline row: API keys from this store, tokens from this issuer.
[store]
url = "$WORK/gh/gatehouse.db"

[[jwt_issuer]]
name = "bench"
issuer = "https://bench.gatehouse.local"
audiences = ["bench"]
algorithms = ["HS256"]
hmac_secret_env = "BENCH_JWT_SECRET"
EOF
# The same with usage metering off, for the metering-off row.
{ cat "$WORK/gh/gatehouse.toml"; printf '\n[usage]\nenabled = false\n'; } >"$WORK/gh/gatehouse-nousage.toml"
cat >"$WORK/gh/policies/bench.toml" <<EOF
[[upstream]]
name = "backend"
targets = ["http://$LOOPBACK:$BACKEND_PORT"]

[[route]]
name = "all"
prefix = "/"
upstream = "backend"

# The three-target row: balancing, health checks, outlier detection and
# retries on, against one target above. The three targets are three base
# paths on the same backend process, so the row prices the gateway's work,
# not three backend processes competing for the same cores.
[[upstream]]
name = "three"
targets = ["http://$LOOPBACK:$BACKEND_PORT/a", "http://$LOOPBACK:$BACKEND_PORT/b", "http://$LOOPBACK:$BACKEND_PORT/c"]
[upstream.health]
path = "/"
interval = "1s"
[upstream.retry]
attempts = 2
[upstream.breaker]
failure_threshold = 50

[[route]]
name = "three"
prefix = "/three"
upstream = "three"

# The full-pipeline row: an API-key route and a JWT route, each under a
# per-consumer rate limit that never trips.
[[route]]
name = "full-key"
prefix = "/full/key"
upstream = "backend"
auth = "api_key"

[[route]]
name = "full-jwt"
prefix = "/full/jwt"
upstream = "backend"
auth = "jwt"
jwt_issuers = ["bench"]

[[rate_limit]]
name = "full-per-consumer"
rate = "1000000/s"
burst = 1000000
key = "consumer"
routes = ["full-key", "full-jwt"]
EOF

# A consumer with an API key, and a token, for the full-pipeline row. wrk
# reads them from its environment (bench/full_pipeline.lua); they are never
# printed.
BENCH_JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BENCH_JWT_SECRET
"$GATEHOUSE" consumers --config "$WORK/gh/gatehouse.toml" create --name bench >"$WORK/consumer.log" 2>&1 ||
    die "creating the bench consumer failed: $(cat "$WORK/consumer.log")"
BENCH_API_KEY="$("$GATEHOUSE" keys --config "$WORK/gh/gatehouse.toml" --output json create --consumer bench 2>"$WORK/key.log" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')" ||
    die "creating the bench API key failed: $(cat "$WORK/key.log")"
BENCH_JWT="$("$GATEHOUSE" token --config "$WORK/gh/gatehouse.toml" --issuer bench --sub bench-jwt --ttl 24h 2>"$WORK/token.log")" ||
    die "making the bench token failed: $(cat "$WORK/token.log")"
export BENCH_API_KEY BENCH_JWT

GH_PID=
# Extra environment for the next gatehouse start (telemetry rows).
GH_ENV=()
# start_gatehouse LEVEL LOGNAME
start_gatehouse() {
    local level=$1 name=$2
    log "gatehouse (--log-level $level${GH_ENV[*]:+, ${GH_ENV[*]}}) on $LOOPBACK:$GH_PORT, https $GH_TLS_PORT, admin $ADMIN_PORT"
    env "${GH_ENV[@]}" "$GH_BIN" serve --config "${GH_CONFIG:-$WORK/gh/gatehouse.toml}" --no-watch --log-level "$level" \
        >"$WORK/$name.log" 2>&1 &
    GH_PID=$!
    PIDS+=("$GH_PID")
    wait_http "$name" "$GH_PID" "http://$LOOPBACK:$ADMIN_PORT/readyz"
    wait_http "$name" "$GH_PID" "http://$LOOPBACK:$GH_PORT/"
    wait_http "$name" "$GH_PID" "https://$LOOPBACK:$GH_TLS_PORT/" -k
}

# ------------------------------------------------------- 4. measurements
CLK_TCK="$(getconf CLK_TCK)"

# CPU ticks (user + system) used so far by the given PIDs, threads included.
proc_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}

# "busy total steal softirq" ticks of the whole machine from /proc/stat;
# busy is user + nice + system + irq + softirq, steal is time the hypervisor
# took. Loopback TCP's receive path runs as softirq, which the kernel may
# account to no process, hence its own figure.
machine_ticks() {
    awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8; t = b + $5 + $6 + $9; print b, t, $9, $8; exit }' /proc/stat
}

# PIDs of a target's proxy: nginx is its master plus workers.
nginx_pids() {
    echo "$NGINX_PID"
    ps -o pid= --ppid "$NGINX_PID" 2>/dev/null | tr -d ' '
}

# Waits (bounded) until the machine is mostly idle, so that other work on
# it does not skew the numbers. QUIET_WAIT is a budget for the whole script.
wait_quiet() {
    ((QUIET_WAIT > 0)) || return 0
    local waited=0 b0 t0 b1 t1 busy
    while :; do
        read -r b0 t0 _ < <(machine_ticks)
        sleep 1
        read -r b1 t1 _ < <(machine_ticks)
        busy=$(((b1 - b0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1)))
        if ((busy < 25)); then
            return 0
        fi
        if ((waited >= QUIET_WAIT)); then
            log "machine still ${busy}% busy; wait budget used up, measuring anyway (see 'other' CPU)"
            QUIET_WAIT=0
            return 0
        fi
        ((waited == 0)) && log "machine ${busy}% busy with other work; waiting up to ${QUIET_WAIT}s for it to calm down"
        waited=$((waited + 1))
        QUIET_WAIT=$((QUIET_WAIT - 1))
    done
}

to_ms() { # wrk latency like 812.00us / 1.23ms / 2.01s -> milliseconds
    awk -v v="$1" 'BEGIN {
        if (v == "") { print "n/a"; exit }
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /m$/) n = n * 60000
        else if (v ~ /s$/) n = n * 1000
        printf "%.2f", n
    }'
}

declare -A LABEL RPS REQS P50 P99 NON2XX SOCKERR WRK_CPU PROXY_CPU BACKEND_CPU BUSY STEAL SOFTIRQ WALL OTHERS OTHER_CORES RSS_MB CONNS_OF
KEYS=()
ROUND=1

# Drops a PID that has been reaped from the cleanup list.
forget_pid() {
    local pid=$1 p
    local -a keep=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

# top_others FILE "PIDS": from top's second frame (a 1 s sample), the cores
# used by processes that are not part of the benchmark, then the busiest of
# them, as "0.95 rustc 95%, cargo 10%". ksoftirqd counts as ours: it runs
# the loopback network work.
top_others() {
    [[ -s $1 ]] || {
        printf '0.00 '
        return 0
    }
    awk -v ours=" $2 " '
        /^top - / { frame++ }
        frame == 2 && $1 == "PID" { table = 1; next }
        frame == 2 && table && NF >= 12 {
            if (index(ours, " " $1 " ") || $12 ~ /^(wrk|top|timeout|ksoftirqd)/) next
            total += $9
            if ($9 + 0 >= 5 && shown < 3) { names = names sprintf("%s%s %.0f%%", (shown ? ", " : ""), $12, $9); shown++ }
        }
        END { printf "%.2f %s", total / 100, names }' "$1"
}

# Resident memory (VmRSS) of the given PIDs, summed, in MB. nginx's master
# and workers share pages, so its sum overstates it a little.
rss_mb() {
    local total=0 pid kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }'
}

# Options of the next measure call, reset after it: WRK_SCRIPT (a wrk Lua
# script) and MEASURE_CONNS (connections instead of CONNS).
WRK_SCRIPT=""
MEASURE_CONNS=""

# measure KEY LABEL URL PROXY_KIND(none|nginx|gatehouse): one wrk run,
# stored under KEY.ROUND.
measure() {
    local base=$1 label=$2 url=$3 kind=$4
    local key="$base.$ROUND"
    local conns=${MEASURE_CONNS:-$CONNS}
    local -a extra=()
    [[ -n $WRK_SCRIPT ]] && extra=(-s "$WRK_SCRIPT")
    WRK_SCRIPT=""
    MEASURE_CONNS=""
    local out="$WORK/wrk-$key.txt"
    local -a proxy_pids=()
    case $kind in
        nginx) mapfile -t proxy_pids < <(nginx_pids) ;;
        gatehouse) proxy_pids=("$GH_PID") ;;
    esac
    wait_quiet
    if ((WARMUP > 0)); then
        log "$label: warm-up ${WARMUP}s"
        timeout $((WARMUP + 30)) "$WRK" -t"$THREADS" -c"$conns" -d"${WARMUP}s" "${extra[@]}" "$url" >/dev/null 2>&1 || true
    fi
    log "$label: measuring ${DURATION}s ($url)"
    local p0 b0 m0 m1 st0 st1 si0 si1 p1 b1 s0 s1 rc=0 top_pid
    # A top snapshot half-way through, to name any other work on the machine.
    # And the proxy's resident memory at that point.
    (sleep $((DURATION / 2)) && rss_mb "${proxy_pids[@]}" >"$WORK/rss-$key.txt" &&
        top -b -d 1 -n 2 -w 250 >"$WORK/top-$key.txt" 2>/dev/null) &
    top_pid=$!
    PIDS+=("$top_pid")
    p0=$(proc_ticks "${proxy_pids[@]}")
    b0=$(proc_ticks "${BACKEND_PIDS[@]}")
    read -r m0 _ st0 si0 < <(machine_ticks)
    s0=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    { time timeout $((DURATION + 30)) "$WRK" -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency "${extra[@]}" "$url" >"$out" 2>&1; } 2>"$WORK/time-$key.txt" || rc=$?
    s1=$(date +%s.%N)
    read -r m1 _ st1 si1 < <(machine_ticks)
    b1=$(proc_ticks "${BACKEND_PIDS[@]}")
    p1=$(proc_ticks "${proxy_pids[@]}")
    wait "$top_pid" 2>/dev/null || true
    forget_pid "$top_pid"
    if ((rc != 0)); then
        cat "$out" >&2
        die "wrk failed against $label (exit $rc)"
    fi

    ((ROUND == 1)) && KEYS+=("$base")
    LABEL[$base]=$label
    CONNS_OF[$key]=$conns
    RSS_MB[$key]=$(cat "$WORK/rss-$key.txt" 2>/dev/null || echo n/a)
    [[ $kind == none ]] && RSS_MB[$key]="—"
    RPS[$key]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    REQS[$key]=$(awk '/ requests in / { print $1 }' "$out")
    P50[$key]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99[$key]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    NON2XX[$key]=$(awk -F: '/Non-2xx or 3xx responses/ { gsub(/ /, "", $2); print $2 }' "$out")
    NON2XX[$key]=${NON2XX[$key]:-0}
    SOCKERR[$key]=$(awk '/Socket errors:/ { s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s }' "$out")
    SOCKERR[$key]=${SOCKERR[$key]:-0}
    [[ -n ${RPS[$key]} && -n ${REQS[$key]} ]] || {
        cat "$out" >&2
        die "could not parse wrk output for $label"
    }
    WALL[$key]=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.3f", b - a }')
    WRK_CPU[$key]=$(awk '{ printf "%.3f", $1 + $2 }' "$WORK/time-$key.txt")
    PROXY_CPU[$key]=$(awk -v t=$((p1 - p0)) -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }')
    BACKEND_CPU[$key]=$(awk -v t=$((b1 - b0)) -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }')
    BUSY[$key]=$(awk -v t=$((m1 - m0)) -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }')
    STEAL[$key]=$(awk -v t=$((st1 - st0)) -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }')
    SOFTIRQ[$key]=$(awk -v t=$((si1 - si0)) -v h="$CLK_TCK" 'BEGIN { printf "%.3f", t / h }')
    [[ $kind == none ]] && PROXY_CPU[$key]=0
    local others
    others=$(top_others "$WORK/top-$key.txt" "$BACKEND_PID ${proxy_pids[*]}")
    OTHER_CORES[$key]=${others%% *}
    OTHERS[$key]=${others#* }
    log "$label: ${RPS[$key]} req/s, p50 ${P50[$key]} ms, p99 ${P99[$key]} ms, non-2xx ${NON2XX[$key]}, socket errors ${SOCKERR[$key]}"
}

restart_gatehouse() { # LEVEL LOGNAME
    stop_pid "$GH_PID"
    forget_pid "$GH_PID"
    start_gatehouse "$1" "$2"
}

# hold_idle KEY PORT PIDS...: opens MANY keep-alive connections to PORT,
# one request on each, and records the PIDs' RSS while they sit idle.
declare -A IDLE_RSS
hold_idle() {
    local key=$1 port=$2 holder i
    shift 2
    python3 "$ROOT/bench/hold_conns.py" "$LOOPBACK" "$port" "$MANY" 30 >"$WORK/hold-$key.txt" 2>&1 &
    holder=$!
    PIDS+=("$holder")
    for i in $(seq 1 300); do
        grep -q '^ready' "$WORK/hold-$key.txt" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q '^ready' "$WORK/hold-$key.txt"; then
        sleep 1
        IDLE_RSS[$key]=$(rss_mb "$@")
    else
        log "idle connections to $port: $(tail -n 3 "$WORK/hold-$key.txt")"
        IDLE_RSS[$key]="n/a"
    fi
    stop_pid "$holder"
    forget_pid "$holder"
}

# The gatehouse rows on GH_BIN; KEY and LABEL get SUFFIX (for "(before)").
gatehouse_rows() {
    local k=$1 l=$2 all=$3
    restart_gatehouse warn "gatehouse-warn$k-$ROUND"
    measure "gh$k" "gatehouse, HTTP$l" "http://$LOOPBACK:$GH_PORT/" gatehouse
    if [[ $all == 1 ]]; then
        measure "gh3$k" "gatehouse, HTTP, 3 targets$l" "http://$LOOPBACK:$GH_PORT/three/" gatehouse
    fi
    measure "gh_tls$k" "gatehouse, HTTPS$l" "https://$LOOPBACK:$GH_TLS_PORT/" gatehouse
    if ((MANY > 0)) && [[ $all == 1 ]]; then
        MEASURE_CONNS=$MANY
        measure gh_many "gatehouse, HTTP, $MANY connections" "http://$LOOPBACK:$GH_PORT/" gatehouse
        # A fresh process, so that the figure is the idle connections', not
        # what the load left behind.
        restart_gatehouse warn "gatehouse-idle-$ROUND"
        if ((ROUND == ROUNDS)); then hold_idle gh "$GH_PORT" "$GH_PID"; fi
    fi
    if [[ $TELEMETRY_COMPARE == 1 && $all == 1 ]]; then
        GH_ENV=(GATEHOUSE_METRICS=off)
        restart_gatehouse warn "gatehouse-nometrics-$ROUND"
        measure gh_nometrics "gatehouse, HTTP, metrics off" "http://$LOOPBACK:$GH_PORT/" gatehouse
        # The third backend doubles as the OTLP collector: it answers 200
        # to the span exports (its CPU shows in the backend column).
        GH_ENV=("OTEL_EXPORTER_OTLP_ENDPOINT=http://$LOOPBACK:$BACKEND3_PORT"
            OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)
        restart_gatehouse warn "gatehouse-traced-$ROUND"
        measure gh_traced "gatehouse, HTTP, metrics + traces 10%" "http://$LOOPBACK:$GH_PORT/" gatehouse
        GH_ENV=()
    fi
    if [[ $LOG_COMPARE == 1 || $FULL == 1 ]]; then
        restart_gatehouse info "gatehouse-info$k-$ROUND"
    fi
    if [[ $LOG_COMPARE == 1 ]]; then
        measure "gh_info$k" "gatehouse, HTTP, log info$l" "http://$LOOPBACK:$GH_PORT/" gatehouse
        if [[ $all == 1 ]]; then
            INFO_LINES=$(grep -c '"gatehouse::access"' "$WORK/gatehouse-info$k-$ROUND.log" || true)
            INFO_BYTES=$(stat -c %s "$WORK/gatehouse-info$k-$ROUND.log")
        fi
    fi
    if [[ $FULL == 1 ]]; then
        WRK_SCRIPT="$ROOT/bench/full_pipeline.lua"
        measure "gh_full$k" "gatehouse, HTTPS, full pipeline, log info$l" "https://$LOOPBACK:$GH_TLS_PORT/" gatehouse
        if [[ $USAGE_COMPARE == 1 && $all == 1 ]]; then
            # The same config with usage metering off.
            GH_CONFIG="$WORK/gh/gatehouse-nousage.toml"
            restart_gatehouse info "gatehouse-nousage-$ROUND"
            measure gh_full_nousage "gatehouse, HTTPS, full pipeline, log info, usage metering off" \
                "https://$LOOPBACK:$GH_TLS_PORT/" gatehouse
            GH_CONFIG=""
        fi
    fi
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND of $ROUNDS"
    measure direct "backend (direct)" "http://$LOOPBACK:$BACKEND_PORT/" none
    measure nginx "nginx, HTTP" "http://$LOOPBACK:$NGINX_PORT/" nginx
    measure nginx_tls "nginx, HTTPS" "https://$LOOPBACK:$NGINX_TLS_PORT/" nginx
    if ((MANY > 0)); then
        MEASURE_CONNS=$MANY
        measure nginx_many "nginx, HTTP, $MANY connections" "http://$LOOPBACK:$NGINX_PORT/" nginx
        if ((ROUND == ROUNDS)); then
            # shellcheck disable=SC2046 # one PID a word
            hold_idle nginx "$NGINX_PORT" $(nginx_pids)
        fi
    fi
    GH_BIN="$GATEHOUSE"
    gatehouse_rows "" "" 1
    if [[ -n $BEFORE ]]; then
        GH_BIN="$BEFORE"
        gatehouse_rows "_before" " (before)" 0
        GH_BIN="$GATEHOUSE"
    fi
done

((${#KEYS[@]} > 0)) || die "no measurement was made"

# Profiles (unmeasured runs): where gatehouse's own CPU goes, by function.
declare -A PROFILE PROFILE_DSO PROFILE_WRITEV
profile() { # KEY URL [WRK SCRIPT]
    local key=$1 url=$2 perf_pid
    local -a extra=()
    [[ -n ${3:-} ]] && extra=(-s "$3")
    log "profiling $key with perf for ${DURATION}s"
    perf record -F 499 -g -p "$GH_PID" -o "$WORK/perf-$key.data" -- sleep "$DURATION" >"$WORK/perf-$key.log" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    timeout $((DURATION + 30)) "$WRK" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "${extra[@]}" "$url" >/dev/null 2>&1 || true
    wait "$perf_pid" 2>/dev/null || true
    forget_pid "$perf_pid"
    PROFILE[$key]=$(perf report -i "$WORK/perf-$key.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ && n < 25 { sub(/^ +/, ""); sub(/[ -]+$/, ""); print "    " $0; n++ }' || true)
    # Kernel against user space, and the share under writev (which, on
    # loopback, includes delivering the bytes to the peer and waking it).
    PROFILE_DSO[$key]=$(perf report -i "$WORK/perf-$key.data" --no-children --sort dso --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ { sub(/^ +/, ""); sub(/[ -]+$/, ""); printf "%s%s", (n++ ? ", " : ""), $0 }' || true)
    PROFILE_WRITEV[$key]=$(perf report -i "$WORK/perf-$key.data" --children --sort symbol --stdio -g none 2>/dev/null |
        awk '/__GI___writev|\] __writev$/ { print $1; exit }' || true)
}
if [[ $PERF == 1 ]] && command -v perf >/dev/null 2>&1; then
    GH_BIN="$GATEHOUSE"
    restart_gatehouse warn gatehouse-perf-warn
    profile gh "http://$LOOPBACK:$GH_PORT/"
    if [[ $FULL == 1 ]]; then
        restart_gatehouse info gatehouse-perf-info
        profile gh_full "https://$LOOPBACK:$GH_TLS_PORT/" "$ROOT/bench/full_pipeline.lua"
    fi
fi

# Keep each target's best round (highest req/s); errors count over all rounds.
declare -A ALL_RPS ALL_NON2XX ALL_SOCKERR
for base in "${KEYS[@]}"; do
    best="$base.1"
    ALL_RPS[$base]=""
    ALL_NON2XX[$base]=0
    ALL_SOCKERR[$base]=0
    for ((r = 1; r <= ROUNDS; r++)); do
        k="$base.$r"
        ALL_RPS[$base]+="${ALL_RPS[$base]:+ / }$(awk -v v="${RPS[$k]}" 'BEGIN { printf "%.0f", v }')"
        ALL_NON2XX[$base]=$((ALL_NON2XX[$base] + NON2XX[$k]))
        ALL_SOCKERR[$base]=$((ALL_SOCKERR[$base] + SOCKERR[$k]))
        if awk -v a="${RPS[$k]}" -v b="${RPS[$best]}" 'BEGIN { exit !(a > b) }'; then
            best=$k
        fi
    done
    for arr in RPS REQS P50 P99 NON2XX SOCKERR WRK_CPU PROXY_CPU BACKEND_CPU BUSY STEAL SOFTIRQ WALL OTHERS OTHER_CORES RSS_MB CONNS_OF; do
        declare -n ref=$arr
        # shellcheck disable=SC2004 # ref is an associative array
        ref[$base]=${ref[$best]}
        unset -n ref
    done
done

# ------------------------------------------------------------ 5. report
# shellcheck source=bench/report.sh
source "$ROOT/bench/report.sh"
