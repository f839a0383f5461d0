#!/usr/bin/env bash
# tests/integration/test_services.sh: the four services as an operator and an
# outside NATS client see them (docs/services.md).
#
#   - settings: a bad value or flag prints one line naming it and exits 2;
#     --help lists every KS_ variable; --check-config exits 0;
#   - each service starts, becomes ready, serves /healthz and /metrics, and
#     answers $SRV.* so that `nats micro ls|info|stats|ping` (natscli v0.5.0)
#     see it, with replies that pass natscli's io.nats.micro.v1 schemas;
#   - SIGTERM and SIGINT end it with status 0 within 2 s, leaving nothing;
#   - a start failure (admin port taken) exits 1;
#   - NATS away is not a start failure: a service started without it serves
#     /healthz, keeps running past its request timeout and stops at once on
#     SIGTERM; /readyz is 503 with a reason while NATS is away and turns 200
#     when NATS comes (back), without a restart.
#
# Prints "PASS: <check>" or "FAIL: <check>" per check (scripts/test.sh counts
# them) and exits non-zero if any failed. Uses the control plane in KS_NATS_URL
# and KS_KUBECONFIG when both are set (make test exports them); otherwise
# starts its own with scripts/controlplane.sh (nats-server with JetStream, etcd,
# kube-apiserver on free 127.0.0.1 ports: the reconciler needs Kubernetes).
# The services get the settings scripts/run.sh gives them. Every process it
# starts is stopped by PID on exit; every wait is a bounded poll.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_services
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
BIN="$BUILD_DIR/bin"
NATS_CLI="${KS_NATS_CLI:-$KS_DEPS_BIN/nats}"
NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
SERVICES=(apigw iam audit reconciler)
STOP_LIMIT_MS=2000
READY_TIMEOUT=15

TMP="$(mktemp -d /tmp/kscore-test-services.XXXXXX)"
export KS_AUDIT_SPOOL_DIR="$TMP/audit-spool"   # the gateways' audit spools (one per listen address)
MARK="kscore-test-services-$$"
declare -a OWN=()          # "PID START" of every process started here
FAILED=0
PASSED=0
SEQ=0

CP_DIR=""
cleanup() {
    local rc=$?
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=3 stop_pids "${OWN[@]}" 2>/dev/null
    [ -n "$CP_DIR" ] && "$ROOT/scripts/controlplane.sh" stop "$CP_DIR" >/dev/null 2>&1
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() {
    echo "FAIL: $1${2:+ -- $2}"
    FAILED=$((FAILED + 1))
}
# check NAME CMD...: PASS when CMD succeeds. CMD may set WHY to explain a failure.
WHY=""
check() {
    local name="$1"; shift
    WHY=""
    if "$@"; then pass "$name"; else fail "$name" "$WHY"; fi
}

own() { OWN+=("$1 $(pid_start "$1" || echo 0)"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Environment for a service: the caller's, less every KS_ variable (only what a
# check sets counts), plus a marker that finds the process in /proc.
UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done

# start_service NAME LOG [VAR=VALUE...] [-- FLAG...]: start bin/kscore-NAME in
# the background; sets SVC_PID and SVC_MARK.
start_service() {
    local name="$1" logf="$2"; shift 2
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    SEQ=$((SEQ + 1))
    SVC_MARK="$MARK-$name-$SEQ"
    env "${UNSET_KS[@]}" KSCORE_TEST_MARK="$SVC_MARK" KS_AUDIT_SPOOL_DIR="$TMP/audit-spool" \
        "${vars[@]}" "$BIN/kscore-$name" "$@" </dev/null >>"$logf" 2>&1 &
    SVC_PID=$!
    own "$SVC_PID"
}

# run_service NAME OUT ERR [VAR=VALUE...] [-- FLAG...]: run to completion
# (bounded by 10 s); sets RUN_RC.
run_service() {
    local name="$1" out="$2" err="$3"; shift 3
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    timeout -k 2 10 env "${UNSET_KS[@]}" "${vars[@]}" "$BIN/kscore-$name" "$@" \
        </dev/null >"$out" 2>"$err"
    RUN_RC=$?
}

# Process state without reaping it: running (not a zombie) or not.
proc_running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

# Any process (ours or not) that carries marker $1 in its environment.
marker_alive() {
    local f
    for f in /proc/[0-9]*/environ; do
        grep -qsxzF "KSCORE_TEST_MARK=$1" "$f" 2>/dev/null && return 0
    done
    return 1
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null; }
http_body() { curl -s --max-time 2 "$1" 2>/dev/null; }

# wait_code URL CODE SECONDS [PID]: poll until URL answers CODE; fails early
# when PID exits.
wait_code() {
    local url="$1" want="$2" end=$(( $(now_ms) + $3 * 1000 )) pid="${4:-}" got=""
    while :; do
        got=$(http_code "$url")
        [ "$got" = "$want" ] && return 0
        if [ -n "$pid" ] && ! proc_running "$pid"; then
            WHY="process $pid exited while waiting for $want from $url"
            return 1
        fi
        if [ "$(now_ms)" -ge "$end" ]; then
            WHY="$url answered '$got', not $want, for $3 s"
            return 1
        fi
        sleep 0.05
    done
}

# stop_check NAME PID SIGNAL MARK ADMIN_PORT LOG: send SIGNAL, then the
# process must exit with status 0 within STOP_LIMIT_MS, leave no process with
# its marker, and close its admin port.
stop_check() {
    local name="$1" pid="$2" sig="$3" mark="$4" port="$5" logf="$6" t0 dt rc end
    t0=$(now_ms)
    kill "-$sig" "$pid" 2>/dev/null
    end=$(( t0 + STOP_LIMIT_MS + 3000 ))
    while proc_running "$pid" && [ "$(now_ms)" -lt "$end" ]; do sleep 0.02; done
    dt=$(( $(now_ms) - t0 ))
    if proc_running "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        fail "$name exits on SIG$sig within ${STOP_LIMIT_MS} ms" "still running after ${dt} ms"
        log_tail "$name" "$logf" 10
        return
    fi
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 0 ] && [ "$dt" -le "$STOP_LIMIT_MS" ]; then
        pass "$name exits 0 on SIG$sig within ${STOP_LIMIT_MS} ms (${dt} ms)"
    else
        fail "$name exits 0 on SIG$sig within ${STOP_LIMIT_MS} ms" "status $rc after ${dt} ms"
        log_tail "$name" "$logf" 10
    fi
    if [ ! -e "/proc/$pid" ] && ! marker_alive "$mark" && [ "$(http_code "http://127.0.0.1:$port/healthz")" = 000 ]; then
        pass "$name leaves no process behind after SIG$sig"
    else
        fail "$name leaves no process behind after SIG$sig"
    fi
}

# ---- the NATS CLI, with replies checked ----

natscli() { timeout -k 2 20 "$NATS_CLI" --server "$NATS_URL" "$@" </dev/null; }

# cli_ok ARGS...: natscli exits 0 and prints nothing that looks like a
# validation failure or an error.
cli_ok() {
    local out="$TMP/cli.out" rc
    natscli "$@" >"$out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
        WHY="nats $* exited $rc: $(head -c 300 "$out")"
        return 1
    fi
    if grep -Eiq 'validat|schema|invalid|warning|error:|failed' "$out"; then
        WHY="nats $* printed: $(grep -Ei 'validat|schema|invalid|warning|error:|failed' "$out" | head -3)"
        return 1
    fi
    return 0
}

# json_check FILE PYTHON-EXPR: evaluate EXPR with `d` = the parsed JSON.
json_check() {
    "$KS_PYTHON" - "$1" "$2" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
ok = eval(sys.argv[2], {"d": d})
sys.exit(0 if ok else 1)
PY
}

# schema_ok VERB SERVICE: the raw $SRV.VERB.SERVICE reply validates against
# natscli's io.nats.micro.v1.<verb>_response schema (`nats schema validate`
# exits 0 either way; with --json it prints the violations, "[]" for none).
schema_ok() {
    local verb="$1" svc="$2" lower out="$TMP/schema.out" data="$TMP/reply.json"
    lower=$(tr 'A-Z' 'a-z' <<<"$verb")
    if ! natscli request --raw "\$SRV.$verb.$svc" "" >"$data" 2>"$TMP/req.err"; then
        WHY="no reply on \$SRV.$verb.$svc: $(head -c 200 "$TMP/req.err")"
        return 1
    fi
    natscli schema validate --json "io.nats.micro.v1.${lower}_response" "$data" >"$out" 2>&1
    if [ "$(tr -d ' \n' <"$out")" != "[]" ]; then
        WHY="$(head -c 400 "$out")"
        return 1
    fi
    json_check "$data" "d['name'] == '$svc' and len(d['id']) == 22" || {
        WHY="name or id wrong in $(head -c 300 "$data")"; return 1; }
}

# ---- preflight ----

missing=0
for s in "${SERVICES[@]}"; do
    [ -x "$BIN/kscore-$s" ] || { fail "binary $BIN/kscore-$s exists" "run make"; missing=1; }
done
[ -x "$NATS_CLI" ] || { fail "nats CLI at $NATS_CLI" "run make deps"; missing=1; }
[ -x "$NATS_SERVER" ] || { fail "nats-server found" "apt install nats-server"; missing=1; }
[ "$missing" -eq 0 ] || exit 1

# ---- NATS: the control plane's, or our own ----

start_nats() {  # start_nats PORT DIR: sets NATS_PID
    mkdir -p "$2"
    "$NATS_SERVER" -a 127.0.0.1 -p "$1" -js -sd "$2" </dev/null >>"$2/nats.log" 2>&1 &
    NATS_PID=$!
    own "$NATS_PID"
}
nats_up() { natscli rtt >/dev/null 2>&1; }

if [ -n "${KS_NATS_URL:-}" ] && [ -n "${KS_KUBECONFIG:-}" ]; then
    NATS_URL="$KS_NATS_URL"
    KUBECONFIG_FILE="$KS_KUBECONFIG"
else
    CP_DIR="$TMP/cp"
    if ! "$ROOT/scripts/controlplane.sh" start "$CP_DIR" >"$TMP/cp.log" 2>&1; then
        fail "own control plane starts" "$(tail -n 5 "$TMP/cp.log" | tr '\n' '|')"
        exit 1
    fi
    NATS_URL=$(. "$CP_DIR/env" && echo "$KS_NATS_URL")
    KUBECONFIG_FILE=$(. "$CP_DIR/env" && echo "$KS_KUBECONFIG")
fi
if ! wait_for nats 10 -- nats_up; then
    fail "NATS at $NATS_URL answers"
    exit 1
fi
# The secret iam signs tokens with, as scripts/run.sh makes it.
JWT_SECRET="$TMP/jwt-secret"
(umask 077; openssl rand -hex 32 | tr -d '\n' >"$JWT_SECRET")

# svc_env NAME: the VAR=value settings a service gets besides NATS and admin
# (scripts/run.sh's contract), one a line.
svc_env() {
    echo "KS_KUBECONFIG=$KUBECONFIG_FILE"
    case "$1" in
        apigw) echo "KS_HTTP_ADDR=127.0.0.1:$HTTP_PORT"
               echo "KS_JWT_SECRET_FILE=$JWT_SECRET" ;;
        iam) echo "KS_JWT_SECRET_FILE=$JWT_SECRET" ;;
        audit) echo "KS_AUDIT_DB=$TMP/audit-$SEQ.db" ;;
    esac
}
HTTP_PORT=$(free_port)
# host:port of the (first) NATS server, to provoke "address in use"
NATS_HOSTPORT="${NATS_URL%%,*}"
NATS_HOSTPORT="${NATS_HOSTPORT#*://}"
NATS_HOSTPORT="${NATS_HOSTPORT##*@}"
NATS_HOSTPORT="${NATS_HOSTPORT%%/*}"

# ---- settings ----

# The KS_ variables a service has, read from its option table (the common
# rows in lib/service.h, its own in services/NAME/main.c).
ks_vars() {
    cat lib/service.h "services/$1/main.c" |
        grep -oE '\{"[a-z0-9-]+", KS_CFG_' | cut -d'"' -f2 |
        tr 'a-z-' 'A-Z_' | sed 's/^/KS_/' | sort -u
}

# bad_setting NAME WHAT NEEDLE [VAR=VALUE...] [-- FLAG...]: exit 2, nothing on
# stdout, exactly one line on stderr, and that line names the setting.
bad_setting() {
    local name="$1" what="$2" needle="$3"; shift 3
    local out="$TMP/bad.out" err="$TMP/bad.err" lines
    run_service "$name" "$out" "$err" "$@"
    lines=$(wc -l <"$err")
    if [ "$RUN_RC" -eq 2 ] && [ "$lines" -eq 1 ] && grep -qF -- "$needle" "$err" && [ ! -s "$out" ]; then
        pass "$name: $what exits 2 with one line naming $needle"
    else
        fail "$name: $what exits 2 with one line naming $needle" \
            "status $RUN_RC, $lines stderr lines: $(tr '\n' '|' <"$err" | head -c 300)"
    fi
}

for s in "${SERVICES[@]}"; do
    bad_setting "$s" "KS_ADMIN_ADDR=127.0.0.1:70000" KS_ADMIN_ADDR KS_ADMIN_ADDR=127.0.0.1:70000
    bad_setting "$s" "--log-level=loud" log-level -- --log-level=loud
    bad_setting "$s" "an unknown flag" --no-such-flag -- --no-such-flag
    bad_setting "$s" "KS_REQUEST_TIMEOUT=soon" KS_REQUEST_TIMEOUT KS_REQUEST_TIMEOUT=soon

    run_service "$s" "$TMP/help.out" "$TMP/help.err" -- --help
    want=$(ks_vars "$s")
    missing_vars=""
    for v in $want; do grep -qw "$v" "$TMP/help.out" || missing_vars+=" $v"; done
    if [ "$RUN_RC" -eq 0 ] && [ -n "$want" ] && [ -z "$missing_vars" ]; then
        pass "$s: --help exits 0 and lists $(echo $want | wc -w) KS_ variables"
    else
        fail "$s: --help exits 0 and lists every KS_ variable" "status $RUN_RC, missing:${missing_vars:- none}"
    fi

    run_service "$s" "$TMP/check.out" "$TMP/check.err" KS_NATS_URL="$NATS_URL" -- --check-config
    if [ "$RUN_RC" -eq 0 ] && grep -q "configuration ok" "$TMP/check.out"; then
        pass "$s: --check-config exits 0"
    else
        fail "$s: --check-config exits 0" "status $RUN_RC: $(head -c 200 "$TMP/check.err")"
    fi
done

# ---- the four services, running ----

declare -A PID=() ADMIN=() SMARK=() LOGF=()
ports=($(free_ports 4))
i=0
for s in "${SERVICES[@]}"; do
    ADMIN[$s]=${ports[$i]}
    LOGF[$s]="$TMP/$s.log"
    mapfile -t extra < <(svc_env "$s")
    start_service "$s" "${LOGF[$s]}" KS_NATS_URL="$NATS_URL" \
        KS_ADMIN_ADDR="127.0.0.1:${ADMIN[$s]}" "${extra[@]}"
    PID[$s]=$SVC_PID
    SMARK[$s]=$SVC_MARK
    i=$((i + 1))
done

for s in "${SERVICES[@]}"; do
    base="http://127.0.0.1:${ADMIN[$s]}"
    if wait_code "$base/readyz" 200 "$READY_TIMEOUT" "${PID[$s]}"; then
        pass "$s: /readyz 200"
    else
        fail "$s: /readyz 200" "$WHY"
        log_tail "$s" "${LOGF[$s]}" 10
    fi
    check "$s: /healthz 200" test "$(http_code "$base/healthz")" = 200
    http_body "$base/metrics" >"$TMP/metrics.txt"
    check "$s: /metrics has ks_bus_connected 1" grep -qx 'ks_bus_connected 1' "$TMP/metrics.txt"
done

# nats micro ls: all four, each of ours by name (poll: a reply may be late)
ls_all() {
    natscli micro ls --json >"$TMP/ls.json" 2>"$TMP/ls.err" || { WHY="$(head -c 200 "$TMP/ls.err")"; return 1; }
    json_check "$TMP/ls.json" "{'apigw','iam','audit','reconciler'} <= {x.get('name') for x in d}" ||
        { WHY="listed: $(head -c 300 "$TMP/ls.json")"; return 1; }
}
poll() {  # poll SECONDS CMD...: retry CMD until it succeeds
    local end=$(( $(now_ms) + $1 * 1000 )); shift
    until "$@"; do [ "$(now_ms)" -ge "$end" ] && return 1; sleep 0.1; done
}
check "nats micro ls --json lists apigw, iam, audit and reconciler" poll 5 ls_all
ls_table() {
    cli_ok micro ls || return 1
    for s in "${SERVICES[@]}"; do
        grep -qw "$s" "$TMP/cli.out" || { WHY="$s not in the table"; return 1; }
    done
}
check "nats micro ls lists all four" ls_table

for s in "${SERVICES[@]}"; do
    check "$s: nats micro info" cli_ok micro info "$s"
    info_json() {
        cli_ok micro info --json "$1" || return 1
        cp "$TMP/cli.out" "$TMP/info.json"
        json_check "$TMP/info.json" \
            "d['info']['name'] == '$1' and d['info']['type'] == 'io.nats.micro.v1.info_response' and len(d['info']['id']) == 22" ||
            { WHY="$(head -c 300 "$TMP/info.json")"; return 1; }
    }
    check "$s: nats micro info --json" info_json "$s"
    check "$s: nats micro stats" cli_ok micro stats "$s"
    stats_json() {
        cli_ok micro stats --json "$1" || return 1
        cp "$TMP/cli.out" "$TMP/stats.json"
        json_check "$TMP/stats.json" \
            "len(d) >= 1 and all(x['name'] == '$1' and x['type'] == 'io.nats.micro.v1.stats_response' for x in d)" ||
            { WHY="$(head -c 300 "$TMP/stats.json")"; return 1; }
    }
    check "$s: nats micro stats --json" stats_json "$s"
    for verb in PING INFO STATS; do
        check "$s: \$SRV.$verb reply passes natscli's schema" schema_ok "$verb" "$s"
    done
done

ping_all() {
    cli_ok --timeout 1s micro ping || return 1
    for s in "${SERVICES[@]}"; do
        grep -qE "^$s [A-Za-z0-9]{22} +rtt=" "$TMP/cli.out" || { WHY="no answer from $s: $(head -c 300 "$TMP/cli.out")"; return 1; }
    done
}
check "nats micro ping gets answers from all four" ping_all

# The metadata the gateway routes by.
meta_ok() {
    natscli request --raw "\$SRV.INFO.$1" "" >"$TMP/info-$1.json" 2>/dev/null &&
        json_check "$TMP/info-$1.json" "d.get('metadata', {}).get('ks.api.groups') == '$2'"
}
check "iam: \$SRV.INFO metadata ks.api.groups" meta_ok iam iam.kubesphere.io/v1beta1
check "audit: \$SRV.INFO metadata ks.api.groups" meta_ok audit tenant.kubesphere.io/v1alpha2/auditing,auditing.kubesphere.io/v1alpha1

# ---- stop: SIGTERM each ----

for s in "${SERVICES[@]}"; do
    stop_check "$s" "${PID[$s]}" TERM "${SMARK[$s]}" "${ADMIN[$s]}" "${LOGF[$s]}"
done
gone() {
    if ! natscli micro ls --json >"$TMP/ls.json" 2>"$TMP/ls.err"; then
        grep -q "no service instances found" "$TMP/ls.err" && return 0
        WHY="$(head -c 200 "$TMP/ls.err")"
        return 1
    fi
    # only ids of ours would count; without them no instance of ours answers
    json_check "$TMP/ls.json" "not ({'apigw','iam','audit','reconciler'} & {x.get('name') for x in d})" ||
        { WHY="still listed (another control plane's services on $NATS_URL?): $(head -c 200 "$TMP/ls.json")"; return 1; }
}
if [ -n "${KS_NATS_URL:-}" ] && [ -z "${KS_TEST_DIR:-}" ]; then
    : # a shared server (make up) may run its own services: skip
else
    check "stopped services are gone from nats micro ls" gone
fi

# ---- SIGINT, once ----

s=iam
ADMIN[$s]=$(free_port)
mapfile -t extra < <(svc_env "$s")
start_service "$s" "${LOGF[$s]}" KS_NATS_URL="$NATS_URL" KS_ADMIN_ADDR="127.0.0.1:${ADMIN[$s]}" \
    "${extra[@]}"
PID[$s]=$SVC_PID
SMARK[$s]=$SVC_MARK
check "$s (again): /readyz 200" wait_code "http://127.0.0.1:${ADMIN[$s]}/readyz" 200 "$READY_TIMEOUT" "${PID[$s]}"
stop_check "$s" "${PID[$s]}" INT "${SMARK[$s]}" "${ADMIN[$s]}" "${LOGF[$s]}"

# ---- a start failure exits 1 ----

mapfile -t extra < <(svc_env reconciler)
run_service reconciler "$TMP/busy.out" "$TMP/busy.err" KS_NATS_URL="$NATS_URL" \
    KS_ADMIN_ADDR="$NATS_HOSTPORT" "${extra[@]}"
if [ "$RUN_RC" -eq 1 ]; then
    pass "reconciler: admin address in use exits 1"
else
    fail "reconciler: admin address in use exits 1" "status $RUN_RC: $(tail -c 200 "$TMP/busy.err")"
fi

# ---- a service that never reached NATS stops at once ----
# Started against a port where no NATS runs, with the default settings; a
# SIGTERM soon after start must end it within 2 s with status 0, whatever its
# start is waiting for.

QPORT=$(free_port)
QURL="nats://127.0.0.1:$QPORT"
for s in "${SERVICES[@]}"; do
    A=$(free_port)
    mapfile -t extra < <(svc_env "$s")
    start_service "$s" "$TMP/$s-never.log" KS_NATS_URL="$QURL" KS_ADMIN_ADDR="127.0.0.1:$A" \
        "${extra[@]}"
    if wait_code "http://127.0.0.1:$A/healthz" 200 "$READY_TIMEOUT" "$SVC_PID"; then
        pass "NATS never up: $s /healthz 200"
    else
        fail "NATS never up: $s /healthz 200" "$WHY"
    fi
    stop_check "$s (NATS never up)" "$SVC_PID" TERM "$SVC_MARK" "$A" "$TMP/$s-never.log"
done

# ---- readiness follows NATS ----
# All four start against a port where no NATS runs, with a 1 s request
# timeout. They must keep running past it (NATS away is not a start failure);
# then a nats-server comes on that port, goes away, and comes back. /healthz
# stays 200 throughout.

DOWN_TIMEOUT_MS=1000
ports=($(free_ports 4))
i=0
t_start=$(now_ms)
for s in "${SERVICES[@]}"; do
    ADMIN[$s]=${ports[$i]}
    LOGF[$s]="$TMP/$s-nonats.log"
    mapfile -t extra < <(svc_env "$s")
    start_service "$s" "${LOGF[$s]}" KS_NATS_URL="$QURL" KS_ADMIN_ADDR="127.0.0.1:${ADMIN[$s]}" \
        KS_REQUEST_TIMEOUT="${DOWN_TIMEOUT_MS}ms" "${extra[@]}"
    PID[$s]=$SVC_PID
    SMARK[$s]=$SVC_MARK
    i=$((i + 1))
done

# readyz_all CODE SECONDS: every service's /readyz answers CODE.
readyz_all() {
    local s bad=""
    for s in "${ALIVE[@]}"; do
        wait_code "http://127.0.0.1:${ADMIN[$s]}/readyz" "$1" "$2" "${PID[$s]}" ||
            bad+=" $s ($(http_code "http://127.0.0.1:${ADMIN[$s]}/readyz"): $(http_body "http://127.0.0.1:${ADMIN[$s]}/readyz"))"
    done
    [ -z "$bad" ] || { WHY="not$bad"; return 1; }
}
healthz_all() {
    local s bad=""
    for s in "${ALIVE[@]}"; do
        [ "$(http_code "http://127.0.0.1:${ADMIN[$s]}/healthz")" = 200 ] || bad+=" $s"
    done
    [ -z "$bad" ] || { WHY="not 200:$bad"; return 1; }
}

for s in "${SERVICES[@]}"; do
    base="http://127.0.0.1:${ADMIN[$s]}"
    if ! wait_code "$base/healthz" 200 "$READY_TIMEOUT" "${PID[$s]}"; then
        fail "NATS down: $s /healthz 200" "$WHY"
        log_tail "$s" "${LOGF[$s]}" 10
        continue
    fi
    pass "NATS down: $s /healthz 200"
    code=$(http_code "$base/readyz")
    body=$(http_body "$base/readyz")
    if [ "$code" = 503 ] && grep -qi 'nats' <<<"$body"; then
        pass "NATS down: $s /readyz 503 with a reason ($body)"
    else
        fail "NATS down: $s /readyz 503 with a reason" "got $code: $body"
    fi
    check "NATS down: $s /metrics does not say connected" \
        bash -c "! curl -s --max-time 2 '$base/metrics' | grep -qx 'ks_bus_connected 1'"
done

# Nothing to await here: the check is that nothing happens. Wait until twice
# the request timeout has passed since the start, then look.
until [ $(( $(now_ms) - t_start )) -ge $((2 * DOWN_TIMEOUT_MS + 500)) ]; do sleep 0.1; done
# The rest of the cycle follows the services still running (ALIVE): one that
# died has failed here already.
ALIVE=()
for s in "${SERVICES[@]}"; do
    if proc_running "${PID[$s]}" && [ "$(http_code "http://127.0.0.1:${ADMIN[$s]}/healthz")" = 200 ]; then
        pass "NATS down: $s keeps running past its request timeout"
        ALIVE+=("$s")
    else
        fail "NATS down: $s keeps running past its request timeout" \
            "$(tail -n 1 "${LOGF[$s]}" | cut -c1-200)"
        wait "${PID[$s]}" 2>/dev/null
    fi
done

NATS_URL_SAVED="$NATS_URL"
NATS_URL="$QURL"
start_nats "$QPORT" "$TMP/nats-q"
Q_PID=$NATS_PID
check "NATS started later: every /readyz turns 200" readyz_all 200 "$READY_TIMEOUT"
for s in "${ALIVE[@]}"; do
    check "NATS started later: $s /metrics has ks_bus_connected 1" \
        bash -c "curl -s --max-time 2 'http://127.0.0.1:${ADMIN[$s]}/metrics' | grep -qx 'ks_bus_connected 1'"
    check "NATS started later: \$SRV.PING.$s answers" schema_ok PING "$s"
done

kill -TERM "$Q_PID"
wait "$Q_PID" 2>/dev/null
check "NATS stopped: every /readyz turns 503" readyz_all 503 "$READY_TIMEOUT"
check "NATS stopped: every /healthz stays 200" healthz_all
start_nats "$QPORT" "$TMP/nats-q"
Q_PID=$NATS_PID
check "NATS restarted: every /readyz turns 200 again" readyz_all 200 "$READY_TIMEOUT"
for s in "${ALIVE[@]}"; do
    check "NATS restarted: \$SRV.INFO.$s answers" schema_ok INFO "$s"
done

# Stop them while NATS is away again: a service that cannot reach NATS still
# stops at once.
kill -TERM "$Q_PID"
wait "$Q_PID" 2>/dev/null
check "NATS stopped again: every /readyz turns 503" readyz_all 503 "$READY_TIMEOUT"
for s in "${ALIVE[@]}"; do
    stop_check "$s (NATS down)" "${PID[$s]}" TERM "${SMARK[$s]}" "${ADMIN[$s]}" "${LOGF[$s]}"
done
NATS_URL="$NATS_URL_SAVED"

echo "test_services: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
