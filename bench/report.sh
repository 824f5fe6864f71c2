# Part of bench/run.sh (sourced at its end, not run alone): turns the
# measurements into the report at $OUTPUT.
# shellcheck shell=bash disable=SC2154 # the arrays are run.sh's

# ------------------------------------------------------------ 5. report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
per_req_us() { awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }'; }
cores() { awk -v c="$1" -v w="$2" 'BEGIN { if (w > 0) printf "%.2f", c / w; else print "n/a" }'; }
fmt_rps() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }

nginx_peer() { # the nginx run with the same scheme (and connections)
    case $1 in
        *_many) echo nginx_many ;;
        *tls* | gh_full*) echo nginx_tls ;;
        *) echo nginx ;;
    esac
}

RESULTS="| Target | conns | Req/s | p50 ms | p99 ms | × direct | × nginx (same scheme) | proxy RSS MB | non-2xx | socket errors | req/s per round |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
CPU_TABLE="| Target | machine busy | wrk | proxy | backend | softirq | other processes | steal | proxy CPU µs/req | wrk + backend CPU µs/req |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
OTHER_NOTES=""
for k in "${KEYS[@]}"; do
    vs_nginx="—"
    if [[ $k != direct && $k != nginx* ]]; then
        vs_nginx=$(ratio "${RPS[$k]}" "${RPS[$(nginx_peer "$k")]}")
    fi
    RESULTS+="
| ${LABEL[$k]} | ${CONNS_OF[$k]} | $(fmt_rps "${RPS[$k]}") | ${P50[$k]} | ${P99[$k]} | $(ratio "${RPS[$k]}" "${RPS[direct]}") | $vs_nginx | ${RSS_MB[$k]} | ${ALL_NON2XX[$k]} | ${ALL_SOCKERR[$k]} | ${ALL_RPS[$k]} |"
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

if [[ -n ${RPS[gh_full_nousage]:-} && -n ${RPS[gh_full]:-} ]]; then
    LIMITS+="

Usage metering (per consumer and key, in memory, flushed every 10 s): the full pipeline cost
$(per_req proxy gh_full) µs of CPU per request with metering on (the default, the \"full pipeline\"
row) and $(per_req proxy gh_full_nousage) µs with \`[usage] enabled = false\`;
$(fmt_rps "${RPS[gh_full]}") against $(fmt_rps "${RPS[gh_full_nousage]}") req/s
($(ratio "${RPS[gh_full]}" "${RPS[gh_full_nousage]}")×)."
fi

# The goals of issue 16, each from this run.
has() { [[ -n ${RPS[$1]:-} ]]; }
us_of() { per_req proxy "$1"; }
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else if (a <= b) print "met"; else print "**not met**" }'; }
GOALS="| Goal | Measured | Limit | |
|---|---:|---:|---|
| plain HTTP: proxy CPU per request ≤ nginx's | $GH_US µs | $NGINX_US µs | $(verdict "$GH_US" "$NGINX_US") |
| HTTPS: proxy CPU per request ≤ nginx HTTPS | $GH_TLS_US µs | $NGINX_TLS_US µs | $(verdict "$GH_TLS_US" "$NGINX_TLS_US") |"
if has gh_full; then
    FULL_US=$(us_of gh_full)
    FULL_LIMIT=$(awk -v n="$NGINX_US" 'BEGIN { printf "%.1f", 1.3 * n }')
    GOALS+="
| full pipeline, access log on: ≤ 1.3 × nginx plain \`proxy_pass\` | $FULL_US µs | $FULL_LIMIT µs | $(verdict "$FULL_US" "$FULL_LIMIT") |"
fi
if has gh_info; then
    INFO_LIMIT=$(awk -v n="$GH_US" 'BEGIN { printf "%.1f", 1.1 * n }')
    GOALS+="
| access log at \`info\` ≤ 10% over \`warn\` | $(us_of gh_info) µs | $INFO_LIMIT µs | $(verdict "$(us_of gh_info)" "$INFO_LIMIT") |"
fi
if [[ -n ${IDLE_RSS[gh]:-} ]]; then
    GOALS+="
| RSS at $MANY idle keep-alive connections ≤ 50 MB | ${IDLE_RSS[gh]} MB | 50 MB | $(verdict "${IDLE_RSS[gh]}" 50) |"
fi
GOALS+="
| p99 at $CONNS connections ≤ nginx's | ${P99[gh]} ms | ${P99[nginx]} ms | $(verdict "${P99[gh]}" "${P99[nginx]}") |"

IDLE_SECTION=""
if [[ -n ${IDLE_RSS[gh]:-} ]]; then
    IDLE_SECTION="
## Memory with $MANY idle connections

\`bench/hold_conns.py\` opens $MANY keep-alive connections, sends one \`GET /\` on each and
reads the answer, then leaves them all open and idle; resident memory (VmRSS) is read one second
later, from a freshly started gatehouse (and from nginx, master plus workers, shared pages counted
in each): gatehouse ${IDLE_RSS[gh]} MB, nginx ${IDLE_RSS[nginx]:-n/a} MB. The \`proxy RSS MB\`
column above is the same figure half-way through each loaded run.
"
fi

BEFORE_SECTION=""
if [[ -n $BEFORE ]]; then
    BEFORE_SECTION="
## Before and after, in this run

The \"(before)\" rows ran \`$BEFORE\` on the same config, in the same rounds, right after
the current binary's rows.

| Row | before µs/req | after µs/req | change | before req/s | after req/s |
|---|---:|---:|---:|---:|---:|"
    for k in gh gh_tls gh_info gh_full; do
        has "${k}_before" && has "$k" || continue
        BEFORE_SECTION+="
| ${LABEL[$k]} | $(us_of "${k}_before") | $(us_of "$k") | $(awk -v a="$(us_of "${k}_before")" -v b="$(us_of "$k")" 'BEGIN { printf "%+.1f µs", b - a }') | $(fmt_rps "${RPS[${k}_before]}") | $(fmt_rps "${RPS[$k]}") |"
    done
    BEFORE_SECTION+="
"
fi

PROFILE_SECTION=""
for k in gh gh_full; do
    [[ -n ${PROFILE[$k]:-} ]] || continue
    PROFILE_SECTION+="
### ${LABEL[$k]}

\`perf record -F 499 -g\` on the gatehouse process for one unmeasured ${DURATION} s run of this
row (same load); self time by library and function, top entries:

\`\`\`
${PROFILE[$k]}
\`\`\`

By library: ${PROFILE_DSO[$k]:-n/a}. Under \`writev\` (children included): ${PROFILE_WRITEV[$k]:-n/a}.
"
done
[[ -n $PROFILE_SECTION ]] && PROFILE_SECTION="
## Where gatehouse's CPU goes
$PROFILE_SECTION
### Reading the profile, and the next steps

These notes come from profiling this code on this machine (issue 16); the figures they rest on
are the ones above. Most of gatehouse's time is the kernel's: a forwarded request is two
\`recvfrom\` and two \`writev\` calls (counted with \`strace -c\`: 2.0 of each per request,
futex and epoll under 0.1), the minimum for a proxy and what nginx makes too, and on loopback a
\`writev\` also runs the peer's TCP receive path and wakes it (\`tcp_v4_rcv\` →
\`sock_def_readable\`), then the scheduler switches. User space is flat: tokio's scheduler,
the allocator, \`http\`'s header map, hyper's HTTP/1 code and hyper-util's pooled client each
take a few per cent; no function of gatehouse's own is above 2%.

Suspects from issue 16, by measurement: the framing guard's \`examine\` with \`httparse\` is
under 1% of samples, so parsing each head twice is not where the gap is (kept: it is what refuses
ambiguous framing); what it did cost was memory, a zeroed 16 KiB buffer per connection, now gone.
The access log through tracing-subscriber's JSON formatter is replaced by one serialised line
and a writer thread woken every 20 ms (compare the \"log info\" rows). Per-request allocations:
the allocator takes about 5% of samples, spread over many small allocations with none standing
out. Metric updates go through handles resolved once per route; the \"metrics off\" row differs
from the default by less than this bench's run-to-run noise.

Next steps where a goal is not met: (1) a thread-per-core mode (a current-thread runtime per
core, \`SO_REUSEPORT\` listeners, a pool per core), as nginx's workers are, so a request and
its upstream exchange never cross threads; (2) in it, hyper's \`client::conn::http1\` senders
in our own per-core pool instead of hyper-util's legacy client, whose connection task is one
more task wake-up per exchange; (3) the 1,000-connection figure, some 28 KB per idle
connection over the memory at start, is not broken down yet: boxing a connection's serve
futures (its task is 10 KB) changed nothing measurable; hyper's per-connection read and
write buffers (8 KiB each, kept while idle) and the upstream pool's connections are the
next suspects, for a heap profiler.
"

LOG_NOTE=""
[[ $TELEMETRY_COMPARE == 1 ]] && LOG_NOTE+="
- \"gatehouse, HTTP, metrics off\" is \"gatehouse, HTTP\" started with \`GATEHOUSE_METRICS=off\`
  (every metric handle a no-op); \"metrics + traces 10%\" adds \`OTEL_EXPORTER_OTLP_ENDPOINT\`
  (the third backend, answering 200 to the exports) and \`OTEL_TRACES_SAMPLER=traceidratio\` with
  \`OTEL_TRACES_SAMPLER_ARG=0.1\`."
[[ $FULL == 1 ]] && LOG_NOTE+="
- \"gatehouse, HTTPS, full pipeline, log info\" is the production path: the TLS listener,
  \`--log-level info\` (the JSON access log to a file), and requests alternating between an
  API-key route (the key verified once, then served from the verified-key cache) and a JWT
  route (HS256, then the token cache), both under a per-consumer rate limit that never trips
  (\`bench/full_pipeline.lua\`)."
((MANY > 0)) && LOG_NOTE+="
- The \"$MANY connections\" rows are the plain rows with \`wrk -c$MANY\`."
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

## Goals

$GOALS
$BEFORE_SECTION$IDLE_SECTION
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
$PROFILE_SECTION
## gatehouse's own log

$WARN_SECTION

## What limits it

$LIMITS
EOF
log "wrote $OUTPUT"
