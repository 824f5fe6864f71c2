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
OUTPUT="${BENCH_OUTPUT:-$ROOT/BENCHMARKS.md}"
KEEP="${BENCH_KEEP:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
LOOPBACK=127.0.0.1

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for v in DURATION CONNS THREADS WARMUP ROUNDS QUIET_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
((DURATION > 0 && CONNS > 0 && THREADS > 0 && ROUNDS > 0)) || die "duration, connections, threads and rounds must be positive"
((CONNS >= THREADS)) || die "wrk needs at least as many connections as threads"

# ---------------------------------------------------------------- 1. tools
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v curl >/dev/null 2>&1 || missing+=(curl)
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
# handed out already); sets REPLY.
USED_PORTS=" "
free_port() {
    local p i
    for i in $(seq 1 500); do
        p=$((20000 + RANDOM % 40000))
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
EOF
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
EOF

GH_PID=
# Extra environment for the next gatehouse start (telemetry rows).
GH_ENV=()
# start_gatehouse LEVEL LOGNAME
start_gatehouse() {
    local level=$1 name=$2
    log "gatehouse (--log-level $level${GH_ENV[*]:+, ${GH_ENV[*]}}) on $LOOPBACK:$GH_PORT, https $GH_TLS_PORT, admin $ADMIN_PORT"
    env "${GH_ENV[@]}" "$GATEHOUSE" serve --config "$WORK/gh/gatehouse.toml" --no-watch --log-level "$level" \
        >"$WORK/$name.log" 2>&1 &
    GH_PID=$!
    PIDS+=("$GH_PID")
    wait_http "$name" "$GH_PID" "http://$LOOPBACK:$ADMIN_PORT/readyz"
    wait_http "$name" "$GH_PID" "http://$LOOPBACK:$GH_PORT/"
    wait_http "$name" "$GH_PID" "https://$LOOPBACK:$GH_TLS_PORT/" -k
}
start_gatehouse warn gatehouse-warn-1

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

declare -A LABEL RPS REQS P50 P99 NON2XX SOCKERR WRK_CPU PROXY_CPU BACKEND_CPU BUSY STEAL SOFTIRQ WALL OTHERS OTHER_CORES
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

# measure KEY LABEL URL PROXY_KIND(none|nginx|gatehouse): one wrk run,
# stored under KEY.ROUND.
measure() {
    local base=$1 label=$2 url=$3 kind=$4
    local key="$base.$ROUND"
    local out="$WORK/wrk-$key.txt"
    local -a proxy_pids=()
    case $kind in
        nginx) mapfile -t proxy_pids < <(nginx_pids) ;;
        gatehouse) proxy_pids=("$GH_PID") ;;
    esac
    wait_quiet
    if ((WARMUP > 0)); then
        log "$label: warm-up ${WARMUP}s"
        timeout $((WARMUP + 30)) "$WRK" -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    fi
    log "$label: measuring ${DURATION}s ($url)"
    local p0 b0 m0 m1 st0 st1 si0 si1 p1 b1 s0 s1 rc=0 top_pid
    # A top snapshot half-way through, to name any other work on the machine.
    (sleep $((DURATION / 2)) && top -b -d 1 -n 2 -w 250 >"$WORK/top-$key.txt" 2>/dev/null) &
    top_pid=$!
    PIDS+=("$top_pid")
    p0=$(proc_ticks "${proxy_pids[@]}")
    b0=$(proc_ticks "${BACKEND_PIDS[@]}")
    read -r m0 _ st0 si0 < <(machine_ticks)
    s0=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    { time timeout $((DURATION + 30)) "$WRK" -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1; } 2>"$WORK/time-$key.txt" || rc=$?
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

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND of $ROUNDS"
    ((ROUND == 1)) || restart_gatehouse warn "gatehouse-warn-$ROUND"
    measure direct "backend (direct)" "http://$LOOPBACK:$BACKEND_PORT/" none
    measure nginx "nginx, HTTP" "http://$LOOPBACK:$NGINX_PORT/" nginx
    measure gh "gatehouse, HTTP" "http://$LOOPBACK:$GH_PORT/" gatehouse
    measure gh3 "gatehouse, HTTP, 3 targets" "http://$LOOPBACK:$GH_PORT/three/" gatehouse
    measure nginx_tls "nginx, HTTPS" "https://$LOOPBACK:$NGINX_TLS_PORT/" nginx
    measure gh_tls "gatehouse, HTTPS" "https://$LOOPBACK:$GH_TLS_PORT/" gatehouse
    if [[ $TELEMETRY_COMPARE == 1 ]]; then
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
    if [[ $LOG_COMPARE == 1 ]]; then
        restart_gatehouse info "gatehouse-info-$ROUND"
        measure gh_info "gatehouse, HTTP, log info" "http://$LOOPBACK:$GH_PORT/" gatehouse
        INFO_LINES=$(grep -c '"gatehouse::access"' "$WORK/gatehouse-info-$ROUND.log" || true)
        INFO_BYTES=$(stat -c %s "$WORK/gatehouse-info-$ROUND.log")
    fi
done

((${#KEYS[@]} > 0)) || die "no measurement was made"

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
    for arr in RPS REQS P50 P99 NON2XX SOCKERR WRK_CPU PROXY_CPU BACKEND_CPU BUSY STEAL SOFTIRQ WALL OTHERS OTHER_CORES; do
        declare -n ref=$arr
        # shellcheck disable=SC2004 # ref is an associative array
        ref[$base]=${ref[$best]}
        unset -n ref
    done
done

# ------------------------------------------------------------ 5. report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
per_req_us() { awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }'; }
cores() { awk -v c="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.2f", c / w; else print "n/a" }'; }
fmt_rps() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }

nginx_peer() { # the nginx run with the same scheme
    case $1 in
        *tls) echo nginx_tls ;;
        *) echo nginx ;;
    esac
}

RESULTS="| Target | Req/s | p50 ms | p99 ms | × direct | × nginx (same scheme) | non-2xx | socket errors | req/s per round |
|---|---:|---:|---:|---:|---:|---:|---:|---|"
CPU_TABLE="| Target | machine busy | wrk | proxy | backend | softirq | other processes | steal | proxy CPU µs/req | wrk + backend CPU µs/req |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
OTHER_NOTES=""
for k in "${KEYS[@]}"; do
    vs_nginx="—"
    [[ $k != direct && $k != nginx* ]] && vs_nginx=$(ratio "${RPS[$k]}" "${RPS[$(nginx_peer "$k")]}")
    RESULTS+="
| ${LABEL[$k]} | $(fmt_rps "${RPS[$k]}") | ${P50[$k]} | ${P99[$k]} | $(ratio "${RPS[$k]}" "${RPS[direct]}") | $vs_nginx | ${ALL_NON2XX[$k]} | ${ALL_SOCKERR[$k]} | ${ALL_RPS[$k]} |"
    wb=$(awk -v w="${WRK_CPU[$k]}" -v k="${BACKEND_CPU[$k]}" 'BEGIN { print w + k }')
    CPU_TABLE+="
| ${LABEL[$k]} | $(cores "${BUSY[$k]}" "${WALL[$k]}") | $(cores "${WRK_CPU[$k]}" "${WALL[$k]}") | $(cores "${PROXY_CPU[$k]}" "${WALL[$k]}") | $(cores "${BACKEND_CPU[$k]}" "${WALL[$k]}") | $(cores "${SOFTIRQ[$k]}" "${WALL[$k]}") | ${OTHER_CORES[$k]} | $(cores "${STEAL[$k]}" "${WALL[$k]}") | $(per_req_us "${PROXY_CPU[$k]}" "${REQS[$k]}") | $(per_req_us "$wb" "${REQS[$k]}") |"
    if awk -v o="${OTHER_CORES[$k]}" 'BEGIN { exit !(o >= 0.1) }' && [[ -n ${OTHERS[$k]} ]]; then
        OTHER_NOTES+="- ${LABEL[$k]}: top saw ${OTHERS[$k]}.
"
    fi
done

printf '\n%s\n\n%s\n\n' "$RESULTS" "$CPU_TABLE"

# Errors under load, and what gatehouse logged besides access lines.
GH_LOGS=("$WORK"/gatehouse-*.log)
ERRORS=""
for k in "${KEYS[@]}"; do
    if [[ ${ALL_NON2XX[$k]} != 0 || ${ALL_SOCKERR[$k]} != 0 ]]; then
        ERRORS+="- **${LABEL[$k]}**: ${ALL_NON2XX[$k]} non-2xx/3xx responses, ${ALL_SOCKERR[$k]} socket errors (all rounds).
"
    fi
done
GH_WARNINGS=$(cat "${GH_LOGS[@]}" | grep -c '"level":"\(WARN\|ERROR\)"' || true)
GH_WARN_TOP=$(cat "${GH_LOGS[@]}" | grep '"level":"\(WARN\|ERROR\)"' |
    sed -n 's/.*"level":"\([A-Z]*\)","message":"\([^"]*\)".*/\1: \2/p' |
    sort | uniq -c | sort -rn | head -n 5 | awk '{ n = $1; $1 = ""; printf "- %d × %s\n", n, substr($0, 2) }' || true)
GH_LOG_TAIL=""
if [[ -n $ERRORS ]]; then
    log "!!! ERRORS UNDER LOAD:"
    printf '%s' "$ERRORS" >&2
    GH_LOG_TAIL=$(cat "${GH_LOGS[@]}" | grep -v '"gatehouse::access"' | tail -n 20 || true)
    log "gatehouse log (last lines other than access lines):"
    printf '%s\n' "$GH_LOG_TAIL" >&2
fi

# Machine and versions.
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
KERNEL=$(uname -sr)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
WRK_VERSION=$("$WRK" -v 2>&1 | head -n 1 | awk '{ print $1, $2 }' || true)
RUSTC_VERSION=$(rustc -V 2>/dev/null || echo unknown)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    COMMIT+=" (with uncommitted changes in src/ or Cargo.*)"
fi
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')

# What limits it: numbers for the paragraphs.
per_req() { # component key -> CPU µs per request
    local c
    case $1 in
        proxy) c=${PROXY_CPU[$2]} ;;
        wrk) c=${WRK_CPU[$2]} ;;
        backend) c=${BACKEND_CPU[$2]} ;;
    esac
    per_req_us "$c" "${REQS[$2]}"
}
busy_pct() { awk -v b="${BUSY[$1]}" -v w="${WALL[$1]}" -v n="$NPROC" 'BEGIN { printf "%.0f", 100 * b / (w * n) }'; }
GH_US=$(per_req proxy gh)
NGINX_US=$(per_req proxy nginx)
GH_TLS_US=$(per_req proxy gh_tls)
NGINX_TLS_US=$(per_req proxy nginx_tls)
LIMITS="All three programs and the load generator share the same $NPROC cores, so this is a
CPU-bound test, not a network one: in the reported runs the machine was $(busy_pct direct)% busy
(direct), $(busy_pct nginx)% (nginx HTTP), $(busy_pct gh)% (gatehouse HTTP) and $(busy_pct gh_tls)% (gatehouse
HTTPS). Throughput is then roughly the number of cores divided by the CPU time one request costs
across wrk, the proxy and the backend, and a proxy that costs more CPU per request also takes cores
away from wrk and the backend. The fairest single figure is the proxy's own CPU time per request:
gatehouse spent $GH_US µs per plain request against nginx's $NGINX_US µs
($(ratio "$GH_US" "$NGINX_US")×), and $GH_TLS_US µs against $NGINX_TLS_US µs over HTTPS
($(ratio "$GH_TLS_US" "$NGINX_TLS_US")×). wrk itself needs about $(per_req wrk direct) µs and the backend
about $(per_req backend direct) µs per request (direct run), which caps the direct figure. The kernel's
loopback TCP receive path runs as softirq ($(cores "${SOFTIRQ[direct]}" "${WALL[direct]}") cores in the direct run), only partly charged to
the processes, and a proxy adds a second TCP connection's worth of it per request. Latency follows
from the saturation: with $CONNS connections and every core busy, p50 is mostly queueing
(connections ÷ throughput), not processing time.

Per request, gatehouse also does more than nginx as configured here: it validates framing and
normalises the path, takes or makes a request id, builds an access record even when the access
log is off, adds \`X-Forwarded-For\`, \`X-Forwarded-Proto\`, \`X-Forwarded-Host\`, \`Forwarded\`,
\`Via\` and \`X-Request-Id\` upstream and \`Via\` and \`X-Request-Id\` to the response, and hands
each upstream exchange to the pooled client's connection task. nginx here adds no forwarding
headers and no access log."
if [[ $LOG_COMPARE == 1 ]]; then
    INFO_US=$(per_req proxy gh_info)
    LIMITS+="

The access log costs throughput: at \`--log-level info\` gatehouse writes one JSON line per request
(${INFO_LINES} lines, $((INFO_BYTES / (INFO_LINES > 0 ? INFO_LINES : 1))) bytes each on average, to a file in the last round), and
its CPU per request went from $GH_US µs (warn) to $INFO_US µs (info), throughput from
$(fmt_rps "${RPS[gh]}") to $(fmt_rps "${RPS[gh_info]}") req/s ($(ratio "${RPS[gh_info]}" "${RPS[gh]}")×)."
    if awk -v a="${OTHER_CORES[gh]}" -v b="${OTHER_CORES[gh_info]}" 'BEGIN { exit !(a >= 0.1 || b >= 0.1) }'; then
        LIMITS+=" Other processes took ${OTHER_CORES[gh]} and ${OTHER_CORES[gh_info]} cores during
those two runs, so the throughput ratio is skewed by them; the CPU per request is the steadier figure."
    fi
fi

if [[ $TELEMETRY_COMPARE == 1 ]]; then
    OFF_US=$(per_req proxy gh_nometrics)
    TRACED_US=$(per_req proxy gh_traced)
    LIMITS+="

Metrics and traces: with metrics off (\`GATEHOUSE_METRICS=off\`) gatehouse spent $OFF_US µs of CPU
per request and served $(fmt_rps "${RPS[gh_nometrics]}") req/s; with metrics on (the default, the
\"gatehouse, HTTP\" row) $GH_US µs and $(fmt_rps "${RPS[gh]}") req/s
($(ratio "${RPS[gh]}" "${RPS[gh_nometrics]}")× the throughput without metrics); with metrics and OTLP
traces for 10% of requests $TRACED_US µs and $(fmt_rps "${RPS[gh_traced]}") req/s
($(ratio "${RPS[gh_traced]}" "${RPS[gh_nometrics]}")×)."
fi

LOG_NOTE=""
[[ $TELEMETRY_COMPARE == 1 ]] && LOG_NOTE+="
- \"gatehouse, HTTP, metrics off\" is \"gatehouse, HTTP\" started with \`GATEHOUSE_METRICS=off\`
  (every metric handle a no-op); \"metrics + traces 10%\" adds \`OTEL_EXPORTER_OTLP_ENDPOINT\`
  (the third backend, answering 200 to the exports) and \`OTEL_TRACES_SAMPLER=traceidratio\` with
  \`OTEL_TRACES_SAMPLER_ARG=0.1\`."
[[ $LOG_COMPARE == 1 ]] && LOG_NOTE+="
- \"gatehouse, HTTP, log info\" is the same as \"gatehouse, HTTP\" but started with
  \`--log-level info\` (JSON access log on stdout, redirected to a file), to price the access log."

ERROR_SECTION=""
if [[ -n $ERRORS ]]; then
    ERROR_SECTION="
## ⚠ Errors under load

$ERRORS
Last gatehouse log lines (access lines left out):

\`\`\`
$GH_LOG_TAIL
\`\`\`
"
fi

OTHER_SECTION=""
[[ -n $OTHER_NOTES ]] && OTHER_SECTION="
Runs where other processes took 0.1 core or more, with the busiest of them:

$OTHER_NOTES"

WARN_SECTION="gatehouse wrote no warning or error lines during the benchmark."
((GH_WARNINGS > 0)) && WARN_SECTION="gatehouse wrote $GH_WARNINGS warning or error lines during the benchmark
(all rounds, every level of run). The most frequent:

$GH_WARN_TOP"

cat >"$OUTPUT" <<EOF
# Benchmarks

Generated by \`bench/run.sh\` on $DATE, from commit $COMMIT.
Re-run with \`bash bench/run.sh\`; it overwrites this file. Every figure below was measured on
the machine described here. Expect some noise between runs, and more when other work shares the
machine (the "other" column below).

## Machine

- CPU: $CPU_MODEL, $NPROC cores (\`nproc\`)
- Memory: $MEM
- Kernel: $KERNEL
- Tools: $NGINX_VERSION, $WRK_VERSION, $RUSTC_VERSION

## Settings

- Load: \`wrk -t$THREADS -c$CONNS -d${DURATION}s --latency URL\`, after a ${WARMUP} s unmeasured
  warm-up; \`GET /\` with wrk's default headers; HTTP/1.1 with keep-alive.
- $ROUNDS round(s) over all targets; each row reports the target's best round (highest req/s)
  and lists every round's req/s; non-2xx and socket errors are summed over all rounds.
- Everything on loopback ($LOOPBACK), on the same $NPROC cores: wrk, the proxy and the backend
  compete for CPU; nothing is pinned.
- Backend: \`examples/bench_backend.rs\` (hyper 1, tokio multi-thread runtime), answers every request
  with 200 and \`{"ok":true}\` (11 bytes, \`content-type: application/json\`).
- nginx: \`worker_processes $NPROC\`, \`access_log off\`, \`proxy_pass\` to an \`upstream\` with
  \`keepalive 64\`, \`proxy_http_version 1.1\`, \`proxy_set_header Connection ""\`,
  \`keepalive_requests 1000000\` on both sides (gatehouse has no per-connection request cap);
  HTTPS on a second \`listen ... ssl\` with the same certificate as gatehouse.
- gatehouse: release build (\`lto = "thin"\`, \`codegen-units = 4\`),
  \`gatehouse serve --config gatehouse.toml --no-watch --log-level warn\`, a plain listener, a TLS
  listener (\`dev_certs\` certificate for localhost), default \`[server]\` and \`[defaults]\`
  limits, one upstream \`http://$LOOPBACK:<port>\` (default pool) and one route
  \`prefix = "/"\` to it. At \`warn\` no access line is written.$LOG_NOTE
- "gatehouse, HTTP, 3 targets" goes to an upstream of three targets (round robin, active
  health checks every 1 s, outlier detection, \`retry.attempts = 2\`, a breaker) on
  \`/three/\`; the targets are three base paths (\`/a\`, \`/b\`, \`/c\`) on the same backend
  process, so that the row prices the gateway's balancing and health checking, not three
  backend processes sharing the cores. Compare it with "gatehouse, HTTP" (one target).
- "× direct" is req/s divided by the direct run's; "× nginx" divides by the nginx run with the
  same scheme (HTTP or HTTPS).
$ERROR_SECTION
## Results

$RESULTS

## Where the CPU went

Measured from \`/proc\` over each reported run, in cores (CPU seconds ÷ wall seconds): machine busy
from \`/proc/stat\`, wrk from its rusage, proxy (nginx master and workers, or gatehouse) and
backend from their \`/proc/PID/stat\` user + system time. "softirq" is the machine's time in soft
interrupts, mostly loopback TCP receive work; the kernel charges part of it to whichever process it
interrupted, so the columns overlap and need not add up to "machine busy". "other processes" is
what everything else used in a 1 s \`top\` sample half-way through the run; "steal" is time the
hypervisor gave to someone else. CPU µs/req divides CPU seconds by the requests wrk completed.

$CPU_TABLE
$OTHER_SECTION
## gatehouse's own log

$WARN_SECTION

## What limits it

$LIMITS
EOF
log "wrote $OUTPUT"
