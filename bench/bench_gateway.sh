#!/usr/bin/env bash
# bench/bench_gateway.sh HELLO_BIN: the gateway under wrk -c64 (the gateway
# issue's "Benchmark"; run by build/<variant>/bench/bench_gateway, which
# scripts/bench.sh runs with the others).
#
# Starts kscore-reconciler (--leader-elect=false), kscore-iam and
# kscore-apigw (plain HTTP) on free 127.0.0.1 ports, plus HELLO_BIN hello
# (the gateway's libmicrohttpd set-up with no filters) and HELLO_BIN echo (a
# NATS API service that answers at once), takes admin's token from POST
# /oauth/token, warms up, then runs wrk once on each of:
#   (a)  GET /kapis/iam.kubesphere.io/v1beta1/users/admin  (JWT, cached
#        authz, NATS to iam, iam's answer from its mirror after its read
#        barrier)
#   (a0) GET /kapis/bench.kscore.io/v1/echo: the same gateway path to the
#        echo service, to tell the gateway's cost from iam's
#   (b)  GET /api/v1/namespaces  (JWT, cached authz, proxied to kube-apiserver)
#   (c)  GET / on hello  (the baseline)
# and prints Markdown: req/s, p50, p99, errors; the ratio a/c; the CPU each
# process spent per request, from utime+stime in /proc/<pid>/stat before and
# after each run (wrk's from bash's `time`); and, when the NATS monitor is
# known (KS_NATS_MONITOR_URL), NATS messages and JetStream API calls per
# request. Targets: a/c >= 0.15, p99(a) <= 10 ms, gateway CPU <= 55 us per
# request of (a).
#
# Needs KS_NATS_URL and KS_KUBECONFIG (scripts/bench.sh exports both);
# without them it starts its own control plane (scripts/controlplane.sh).
#   KS_BENCH_GATEWAY_SECONDS  length of each wrk run (default 10)
#   KS_BENCH_GATEWAY_PERF     1: also `perf record` the gateway during a
#                             second run of (a) and print its top symbols
# Every process it starts is stopped by PID on exit. Exits non-zero when a
# run cannot be made (not when a target is missed: the report says so).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=bench_gateway
# shellcheck source=../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

HELLO_BIN="${1:-}"
BUILD="${BUILD:-build/default}"
case "$BUILD" in /*) BIN="$BUILD/bin" ;; *) BIN="$ROOT/$BUILD/bin" ;; esac
SECS="${KS_BENCH_GATEWAY_SECONDS:-10}"
CONNS=64
WRK="${WRK:-$(command -v wrk || echo /usr/bin/wrk)}"
HZ=$(getconf CLK_TCK)

[ -x "$HELLO_BIN" ] || die "usage: $0 HELLO_BIN (build/<variant>/bench/bench_gateway runs this)"
for b in apigw iam reconciler; do
    [ -x "$BIN/kscore-$b" ] || die "missing $BIN/kscore-$b (run make)"
done
if [ ! -x "$WRK" ]; then
    log_warn "wrk not found; installing Debian's (apt-get install -y wrk)"
    apt-get install -y wrk >/dev/null 2>&1 || die "wrk is not installed (make deps installs it)"
    WRK=$(command -v wrk) || die "wrk is not installed"
fi

TMP="$(mktemp -d /tmp/kscore-bench-gw.XXXXXX)"
export KS_AUDIT_SPOOL_DIR="$TMP/audit-spool"   # the gateways' audit spools (one per listen address)
declare -a OWN=()
CP_DIR=""
cleanup() {
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=3 stop_pids "${OWN[@]}" 2>/dev/null
    [ -n "$CP_DIR" ] && "$ROOT/scripts/controlplane.sh" stop "$CP_DIR" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${KS_NATS_URL:-}" ] || [ -z "${KS_KUBECONFIG:-}" ]; then
    CP_DIR="$TMP/cp"
    "$ROOT/scripts/controlplane.sh" start "$CP_DIR" >"$TMP/cp.log" 2>&1 ||
        { tail -5 "$TMP/cp.log" >&2; die "the control plane did not start"; }
    # shellcheck disable=SC1091
    . "$CP_DIR/env"
fi

mkdir -p "$TMP/logs"
(umask 077; openssl rand -hex 32 | tr -d '\n' >"$TMP/jwt-secret")
mapfile -t PORTS < <(free_ports 5)
GW="127.0.0.1:${PORTS[0]}"
GW_ADMIN="127.0.0.1:${PORTS[1]}"
IAM_ADMIN="127.0.0.1:${PORTS[2]}"
REC_ADMIN="127.0.0.1:${PORTS[3]}"
HELLO="127.0.0.1:${PORTS[4]}"

UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done
start() {
    local name="$1"; shift
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    env "${UNSET_KS[@]}" KS_NATS_URL="$KS_NATS_URL" KS_KUBECONFIG="$KS_KUBECONFIG" \
        KS_LOG_LEVEL=warn "${vars[@]}" "$BIN/kscore-$name" "$@" \
        </dev/null >>"$TMP/logs/$name.log" 2>&1 &
    SVC_PID=$!
    OWN+=("$SVC_PID $(pid_start "$SVC_PID" || echo 0)")
}
ready() { curl -sf --max-time 2 "http://$1/readyz" >/dev/null; }

start reconciler KS_ADMIN_ADDR="$REC_ADMIN" -- --leader-elect=false
REC_PID=$SVC_PID
start iam KS_ADMIN_ADDR="$IAM_ADMIN" KS_JWT_SECRET_FILE="$TMP/jwt-secret" KS_BCRYPT_COST=4
IAM_PID=$SVC_PID
start apigw KS_ADMIN_ADDR="$GW_ADMIN" KS_HTTP_ADDR="$GW" KS_JWT_SECRET_FILE="$TMP/jwt-secret"
GW_PID=$SVC_PID
"$HELLO_BIN" hello "$HELLO" </dev/null >"$TMP/logs/hello.log" 2>&1 &
HELLO_PID=$!
OWN+=("$HELLO_PID $(pid_start "$HELLO_PID" || echo 0)")
"$HELLO_BIN" echo "$KS_NATS_URL" </dev/null >"$TMP/logs/echo.log" 2>&1 &
ECHO_PID=$!
OWN+=("$ECHO_PID $(pid_start "$ECHO_PID" || echo 0)")
for s in "reconciler $REC_ADMIN $REC_PID" "iam $IAM_ADMIN $IAM_PID" "apigw $GW_ADMIN $GW_PID"; do
    read -r name addr pid <<<"$s"
    wait_for "$name" 30 --pid "$pid" --log "$TMP/logs/$name.log" -- ready "$addr" ||
        die "$name did not become ready"
done
wait_for hello 10 --pid "$HELLO_PID" --log "$TMP/logs/hello.log" -- \
    curl -sf --max-time 1 "http://$HELLO/" -o /dev/null || die "the baseline server did not start"

# The processes to account: nats-server (scripts/bench.sh exports its pid)
# and kube-apiserver, else the ones listening on their 127.0.0.1 ports.
listener_pid() { # listener_pid PORT: the pid listening on 127.0.0.1:PORT (reading only)
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}
NATS_PORT="${KS_NATS_URL##*:}"
NATS_PORT="${NATS_PORT%%,*}"
NATS_PID="${KS_BENCH_NATS_PID:-$(listener_pid "$NATS_PORT")}"
KUBE_PORT="${KS_KUBE_URL:-}"
KUBE_PORT="${KUBE_PORT##*:}"
KUBE_PID=""
[ -n "$KUBE_PORT" ] && KUBE_PID=$(listener_pid "$KUBE_PORT")
[ -n "$NATS_PID" ] || log_warn "nats-server's pid is unknown: its CPU reads 0"
[ -n "$KUBE_PID" ] || log_warn "kube-apiserver's pid is unknown: its CPU reads 0"

# ---- the token ----
TOKEN=""
for _ in $(seq 1 100); do
    TOKEN=$(curl -s --max-time 5 -X POST "http://$GW/oauth/token" \
        --data-urlencode grant_type=password --data-urlencode username=admin \
        --data-urlencode 'password=P@88w0rd' |
        "$KS_PYTHON" -c 'import json,sys; print(json.load(sys.stdin).get("access_token",""))' 2>/dev/null)
    [ -n "$TOKEN" ] && break
    sleep 0.1
done
[ -n "$TOKEN" ] || die "no token for admin / P@88w0rd (is iam's bootstrap there?)"
AUTH="Authorization: Bearer $TOKEN"
URL_A="http://$GW/kapis/iam.kubesphere.io/v1beta1/users/admin"
URL_A0="http://$GW/kapis/bench.kscore.io/v1/echo"
URL_B="http://$GW/api/v1/namespaces"
URL_C="http://$HELLO/"
for u in "$URL_A" "$URL_A0" "$URL_B"; do
    code=""
    for _ in $(seq 1 50); do   # the echo service may still be subscribing
        code=$(curl -s -o "$TMP/probe" -w '%{http_code}' -H "$AUTH" "$u")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ] || die "GET $u answers $code: $(head -c 300 "$TMP/probe")"
done
nats_totals() { # "in_msgs js_api_total" from the NATS monitor, or "0 0"
    local m="${KS_NATS_MONITOR_URL:-}"
    [ -n "$m" ] || { echo "0 0"; return; }
    "$KS_PYTHON" - "$m" <<'PY' 2>/dev/null || echo "0 0"
import json, sys, urllib.request
m = sys.argv[1]
v = json.load(urllib.request.urlopen(m + "/varz", timeout=2))
j = json.load(urllib.request.urlopen(m + "/jsz", timeout=2))
print(v["in_msgs"], j.get("api", {}).get("total", 0))
PY
}

# ---- measuring ----
cpu_ticks() { # utime + stime of a pid (0 when unknown)
    local s
    [ -n "$1" ] && s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s="${s##*) }"
    read -r -a f <<<"$s"
    echo $(( f[11] + f[12] ))
}
# to_ms 1.23ms|456.00us|1.02s -> milliseconds
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) ; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }

# run NAME URL AUTH?: fills R[NAME.*]: reqs rps p50 p99 errs, and per
# request: the CPU microseconds of each process, NATS messages, JS API calls.
declare -A R
run() {
    local name="$1" url="$2" with_auth="$3" out="$TMP/wrk-$1.out" t="$TMP/wrk-$1.time"
    local -a hdr=()
    [ "$with_auth" = 1 ] && hdr=(-H "$AUTH")
    local g0 i0 n0 k0 h0 e0 g1 i1 n1 k1 h1 e1 m0 a0 m1 a1
    read -r m0 a0 < <(nats_totals)
    g0=$(cpu_ticks "$GW_PID"); i0=$(cpu_ticks "$IAM_PID"); n0=$(cpu_ticks "$NATS_PID")
    k0=$(cpu_ticks "$KUBE_PID"); h0=$(cpu_ticks "$HELLO_PID"); e0=$(cpu_ticks "$ECHO_PID")
    { TIMEFORMAT='%3U %3S'; time "$WRK" -t2 -c"$CONNS" -d"${SECS}s" --latency "${hdr[@]}" "$url" \
        >"$out" 2>&1; } 2>"$t"
    g1=$(cpu_ticks "$GW_PID"); i1=$(cpu_ticks "$IAM_PID"); n1=$(cpu_ticks "$NATS_PID")
    k1=$(cpu_ticks "$KUBE_PID"); h1=$(cpu_ticks "$HELLO_PID"); e1=$(cpu_ticks "$ECHO_PID")
    read -r m1 a1 < <(nats_totals)
    local reqs rps p50 p99 errs wrk_s
    reqs=$(awk '/ requests in / { print $1 }' "$out")
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    errs=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' "$out")
    wrk_s=$(awk '{ print $1 + $2 }' "$t")
    [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { cat "$out" >&2; die "wrk made no requests on $url"; }
    R[$name.reqs]=$reqs; R[$name.rps]=$rps; R[$name.p50]=$p50; R[$name.p99]=$p99; R[$name.errs]=$errs
    per() { awk -v d="$1" -v hz="$HZ" -v n="$reqs" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }'; }
    R[$name.gw]=$(per $((g1 - g0))); R[$name.iam]=$(per $((i1 - i0)))
    R[$name.nats]=$(per $((n1 - n0))); R[$name.kube]=$(per $((k1 - k0)))
    R[$name.hello]=$(per $((h1 - h0))); R[$name.echo]=$(per $((e1 - e0)))
    R[$name.msgs]=$(awk -v d=$((m1 - m0)) -v n="$reqs" 'BEGIN { printf "%.2f", d / n }')
    R[$name.jsapi]=$(awk -v d=$((a1 - a0)) -v n="$reqs" 'BEGIN { printf "%.2f", d / n }')
    R[$name.wrk]=$(awk -v s="$wrk_s" -v n="$reqs" 'BEGIN { printf "%.1f", s * 1e6 / n }')
}

log_info "warming up"
"$WRK" -t2 -c"$CONNS" -d2s -H "$AUTH" "$URL_A" >/dev/null 2>&1
"$WRK" -t2 -c"$CONNS" -d1s -H "$AUTH" "$URL_A0" >/dev/null 2>&1
"$WRK" -t2 -c"$CONNS" -d1s -H "$AUTH" "$URL_B" >/dev/null 2>&1
"$WRK" -t2 -c"$CONNS" -d1s "$URL_C" >/dev/null 2>&1
log_info "running (a), (a0), (b), (c) for ${SECS} s each"
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
run a "$URL_A" 1
run a0 "$URL_A0" 1
run b "$URL_B" 1
run c "$URL_C" 0

ratio=$(awk -v a="${R[a.rps]}" -v c="${R[c.rps]}" 'BEGIN { printf "%.3f", (c > 0 ? a / c : 0) }')
verdict() { awk -v v="$1" -v lim="$2" -v op="$3" 'BEGIN { ok = op == ">=" ? v >= lim : v <= lim; print ok ? "met" : "**missed**" }'; }

echo "bench_gateway: wrk -t2 -c$CONNS, ${SECS} s per run, after a warm-up; every process on"
echo "this machine's $(nproc) cores (gateway 2 HTTP workers). Load average before the runs: $LOAD."
echo
echo "| run | requests | req/s | p50 ms | p99 ms | errors | gateway µs/req | iam (echo) µs/req | nats-server µs/req | kube-apiserver µs/req | wrk µs/req | NATS msgs in/req | JS API calls/req |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in a a0 b c; do
    case $n in
    a) label="(a) GET a user via NATS to iam" ;;
    a0) label="(a0) the same path to an echo service (not a target; the gateway without iam's work)" ;;
    b) label="(b) list namespaces, proxied to kube-apiserver" ;;
    c) label="(c) baseline: same MHD set-up, fixed 200 (hello's CPU in the gateway column)" ;;
    esac
    gw=${R[$n.gw]}
    svc=${R[$n.iam]}
    [ "$n" = c ] && gw=${R[$n.hello]}
    [ "$n" = a0 ] && svc="(${R[$n.echo]})"
    echo "| $label | ${R[$n.reqs]} | ${R[$n.rps]} | ${R[$n.p50]} | ${R[$n.p99]} | ${R[$n.errs]} | $gw | $svc | ${R[$n.nats]} | ${R[$n.kube]} | ${R[$n.wrk]} | ${R[$n.msgs]} | ${R[$n.jsapi]} |"
done
echo
echo "| target | value | |"
echo "|---|---:|---|"
echo "| a/c ≥ 0.15 | $ratio | $(verdict "$ratio" 0.15 ">=") |"
echo "| p99 of (a) ≤ 10 ms | ${R[a.p99]} ms | $(verdict "${R[a.p99]}" 10 "<=") |"
echo "| gateway CPU per request of (a) ≤ 55 µs | ${R[a.gw]} µs | $(verdict "${R[a.gw]}" 55 "<=") |"
echo "| (for reference) a0/c, p99 and gateway CPU of (a0) | $(awk -v a="${R[a0.rps]}" -v c="${R[c.rps]}" 'BEGIN { printf "%.3f", (c > 0 ? a / c : 0) }'), ${R[a0.p99]} ms, ${R[a0.gw]} µs | |"
echo
echo "CPU per request is (utime + stime) / requests from /proc/<pid>/stat (clock ticks of"
echo "$((1000000 / HZ)) µs), all threads of the process; wrk's from bash's \`time\`. With 2 cores the"
echo "processes compete: what one spends, another cannot."

if [ "${KS_BENCH_GATEWAY_PERF:-0}" = 1 ] && command -v perf >/dev/null; then
    log_info "profiling the gateway during (a)"
    "$WRK" -t2 -c"$CONNS" -d6s -H "$AUTH" "$URL_A" >/dev/null 2>&1 &
    wp=$!
    sleep 1
    perf record -q -F 999 -g -p "$GW_PID" -o "$TMP/perf.data" -- sleep 4 >/dev/null 2>&1
    wait "$wp"
    echo
    echo "Where the gateway's time goes in (a) (perf, self time, top 25):"
    echo
    echo '```'
    perf report -i "$TMP/perf.data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null |
        grep -E '^ +[0-9.]+%' | sed 's/ *$//' | head -25
    echo '```'
fi
exit 0
