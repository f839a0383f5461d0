#!/usr/bin/env bash
# tests/integration/test_gateway.sh: kscore-apigw as curl sees it
# (DESIGN.md §3, docs/gateway.md), with the real reconciler and iam behind
# it on the control plane of scripts/test.sh (KS_NATS_URL, KS_KUBECONFIG;
# without them the test starts its own).
#
#   - the chain: /readyz, POST /oauth/token (password and refresh_token
#     grants, RFC 6749 errors), GET /kapis/iam.kubesphere.io/v1beta1/users
#     with the token (200, items), anonymous (403), a bad token (401 with
#     WWW-Authenticate), /clusters/host/... (local) and another cluster (404),
#     an API group nobody serves (503 Status), /api (the proxy, or 501 until
#     proxy.c exists), /oauth/logout (the token is refused afterwards);
#   - limits: X-Request-Id echoed when well-formed, generated otherwise, on
#     every answer; 413 for a 2 MiB body (Content-Length and chunked); 431
#     for 20 KiB of headers; path confusion (.., %2e%2e, //, %2F, %00, a raw
#     NUL) and a body on GET get 400; keep-alive across a NATS round trip;
#     256 requests from 32 concurrent clients all answered;
#   - a second gateway with tight limits: the connection cap (503 with
#     Retry-After), a slow client (408), an idle client (closed), the
#     deadline (504, against a subscriber that never answers), SIGTERM with
#     requests in flight (each answered 503, exit 0 within 2 s);
#   - HTTPS with KS_TLS_CERT_FILE/KS_TLS_KEY_FILE;
#   - metrics: requests by code, verb and resource, in flight back to 0.
#
# Prints "PASS: <check>" or "FAIL: <check>" per check and exits non-zero if
# any failed. Every process it starts is stopped by PID on exit; every wait
# is a bounded poll; everything listens on 127.0.0.1.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_gateway
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
BIN="$BUILD_DIR/bin"
NATS_CLI="${KS_NATS_CLI:-$KS_DEPS_BIN/nats}"
WAIT=20
STOP_LIMIT_MS=2000

TMP="$(mktemp -d /tmp/kscore-test-gateway.XXXXXX)"
export KS_AUDIT_SPOOL_DIR="$TMP/audit-spool"   # the gateways' audit spools (one per listen address)
declare -a OWN=()
FAILED=0
PASSED=0
CP_DIR=""

cleanup() {
    local rc=$?
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=3 stop_pids "${OWN[@]}" 2>/dev/null
    [ -n "$CP_DIR" ] && scripts/controlplane.sh stop "$CP_DIR" >/dev/null 2>&1
    if [ "$FAILED" -gt 0 ]; then
        for f in "$TMP"/*.log; do [ -f "$f" ] && log_tail "$(basename "$f")" "$f" 15; done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1${2:+ -- $2}"; FAILED=$((FAILED + 1)); }
WHY=""
check() {
    local name="$1"; shift
    WHY=""
    if "$@"; then pass "$name"; else fail "$name" "$WHY"; fi
}
own() { OWN+=("$1 $(pid_start "$1" || echo 0)"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
poll() {  # poll SECONDS CMD...: retry CMD until it succeeds
    local end=$(( $(now_ms) + $1 * 1000 )); shift
    until "$@"; do [ "$(now_ms)" -ge "$end" ] && return 1; sleep 0.1; done
}
# json FILE EXPR: python EXPR over d = the parsed JSON file
json() {
    "$KS_PYTHON" - "$1" "$2" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as f:
        d = json.load(f)
except Exception:
    sys.exit(1)
sys.exit(0 if eval(sys.argv[2], {"d": d}) else 1)
PY
}

# ---- preflight and control plane ----

for b in kscore-apigw kscore-iam kscore-reconciler; do
    [ -x "$BIN/$b" ] || { fail "binary $BIN/$b exists" "run make"; exit 1; }
done
if [ -n "${KS_NATS_URL:-}" ] && [ -n "${KS_KUBECONFIG:-}" ]; then
    NATS_URL="$KS_NATS_URL"
    KUBECONFIG_FILE="$KS_KUBECONFIG"
else
    CP_DIR="$TMP/cp"
    if ! scripts/controlplane.sh start "$CP_DIR" >"$TMP/cp.log" 2>&1; then
        fail "own control plane starts" "$(tail -n 5 "$TMP/cp.log" | tr '\n' '|')"
        exit 1
    fi
    NATS_URL=$(. "$CP_DIR/env" && echo "$KS_NATS_URL")
    KUBECONFIG_FILE=$(. "$CP_DIR/env" && echo "$KS_KUBECONFIG")
fi

SECRET="$TMP/jwt-secret"
(umask 077; head -c 64 /dev/urandom >"$SECRET")

# Environment for a service: none of the caller's KS_ variables.
UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done
# start NAME LOG VAR=VALUE... [-- FLAGS]: sets SVC_PID
start() {
    local name="$1" logf="$2"; shift 2
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    env "${UNSET_KS[@]}" KS_NATS_URL="$NATS_URL" KS_KUBECONFIG="$KUBECONFIG_FILE" "${vars[@]}" \
        "$BIN/kscore-$name" "$@" </dev/null >>"$logf" 2>&1 &
    SVC_PID=$!
    own "$SVC_PID"
}
code_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null; }
ready() { [ "$(code_of "http://$1/readyz")" = 200 ]; }

PORTS=($(free_ports 9))
GW="127.0.0.1:${PORTS[0]}"     # the gateway under test
GW2="127.0.0.1:${PORTS[1]}"    # tight limits
GW3="127.0.0.1:${PORTS[2]}"    # HTTPS
ADM=(127.0.0.1:${PORTS[3]} 127.0.0.1:${PORTS[4]} 127.0.0.1:${PORTS[5]} 127.0.0.1:${PORTS[6]} 127.0.0.1:${PORTS[7]} 127.0.0.1:${PORTS[8]})

start reconciler "$TMP/reconciler.log" KS_ADMIN_ADDR="${ADM[0]}" -- --leader-elect=false
REC_PID=$SVC_PID
start iam "$TMP/iam.log" KS_ADMIN_ADDR="${ADM[1]}" KS_JWT_SECRET_FILE="$SECRET" KS_BCRYPT_COST=4
IAM_PID=$SVC_PID
start apigw "$TMP/apigw.log" KS_ADMIN_ADDR="${ADM[2]}" KS_JWT_SECRET_FILE="$SECRET" \
    KS_HTTP_ADDR="$GW"
GW_PID=$SVC_PID

check "reconciler ready" poll $WAIT ready "${ADM[0]}"
check "iam ready" poll $WAIT ready "${ADM[1]}"
check "gateway /readyz on its HTTP port is 200" poll $WAIT ready "$GW"
H="http://$GW"

# ---- tokens ----

# token USER PASS: prints the access token or nothing
get_token() {
    curl -s --max-time 5 -X POST "$H/oauth/token" \
        --data-urlencode grant_type=password --data-urlencode "username=$1" \
        --data-urlencode "password=$2" >"$TMP/token.json" 2>/dev/null
    json "$TMP/token.json" "d.get('token_type') == 'Bearer' and d['expires_in'] > 0 and d['refresh_token']" ||
        return 1
    "$KS_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$TMP/token.json"
}
have_admin_token() { TOKEN=$(get_token admin 'P@88w0rd') && [ -n "$TOKEN" ]; }
# iam's bootstrap creates admin; it may take a moment to reach the mirror.
TOKEN=""
if ! poll $WAIT have_admin_token; then
    # not bootstrapped (an older iam): create admin with a bcrypt hash
    HASH=$("$KS_PYTHON" -c 'import crypt; print(crypt.crypt("P@88w0rd", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' 2>/dev/null)
    cat >"$TMP/admin.yaml" <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: admin
  annotations:
    iam.kubesphere.io/globalrole: platform-admin
spec:
  email: admin@kubesphere.io
  password: "$HASH"
EOF
    "$KS_DEPS_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" apply -f "$TMP/admin.yaml" >/dev/null 2>&1
    poll $WAIT have_admin_token
fi
if [ -n "$TOKEN" ]; then pass "POST /oauth/token as admin: 200 with access, refresh, expires_in"
else fail "POST /oauth/token as admin" "$(head -c 300 "$TMP/token.json")"; fi
AUTH=(-H "Authorization: Bearer $TOKEN")

token_error() {  # token_error WANT_CODE WANT_ERROR CURL-ARGS...
    local want="$1" err="$2" got; shift 2
    got=$(curl -s -o "$TMP/te.json" -w '%{http_code}' --max-time 5 "$@")
    [ "$got" = "$want" ] && json "$TMP/te.json" "d['error'] == '$err' and 'error_description' in d" ||
        { WHY="got $got $(head -c 200 "$TMP/te.json")"; return 1; }
}
check "wrong password: 400 invalid_grant (RFC 6749 JSON)" token_error 400 invalid_grant \
    -X POST "$H/oauth/token" -d 'grant_type=password&username=admin&password=nope'
check "no grant_type: 400 invalid_request" token_error 400 invalid_request \
    -X POST "$H/oauth/token" -d 'username=admin'
check "JSON body: 400 invalid_request" token_error 400 invalid_request \
    -X POST "$H/oauth/token" -H 'Content-Type: application/json' -d '{"grant_type":"password"}'
check "grant_type twice: 400 invalid_request" token_error 400 invalid_request \
    -X POST "$H/oauth/token" -d 'grant_type=password&grant_type=password&username=admin&password=x'
check "GET /oauth/token: 405" test "$(code_of "$H/oauth/token")" = 405
refresh_ok() {
    local rt
    rt=$("$KS_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["refresh_token"])' "$TMP/token.json" 2>/dev/null)
    curl -s --max-time 5 -X POST "$H/oauth/token" --data-urlencode grant_type=refresh_token \
        --data-urlencode "refresh_token=$rt" >"$TMP/refresh.json"
    json "$TMP/refresh.json" "d['access_token'] and d['refresh_token']" ||
        { WHY="$(head -c 200 "$TMP/refresh.json")"; return 1; }
}
check "grant_type=refresh_token: new tokens" refresh_ok

# ---- dispatch ----

users_ok() {
    local got
    got=$(curl -s -o "$TMP/users.json" -w '%{http_code}' --max-time 5 "${AUTH[@]}" "$@")
    [ "$got" = 200 ] && json "$TMP/users.json" "any(u['metadata']['name'] == 'admin' for u in d['items'])" ||
        { WHY="got $got $(head -c 200 "$TMP/users.json")"; return 1; }
}
check "GET /kapis/iam.kubesphere.io/v1beta1/users with the token: 200, items hold admin" \
    users_ok "$H/kapis/iam.kubesphere.io/v1beta1/users"
check "/clusters/host/kapis/...: the local cluster" \
    users_ok "$H/clusters/host/kapis/iam.kubesphere.io/v1beta1/users"
status_is() {  # status_is CODE REASON CURL-ARGS...: a metav1.Status with that code
    local want="$1" reason="$2" got; shift 2
    got=$(curl -s -o "$TMP/st.json" -w '%{http_code}' --max-time 5 "$@")
    [ "$got" = "$want" ] && json "$TMP/st.json" \
        "d['kind'] == 'Status' and d['status'] == 'Failure' and d['code'] == $want and d['reason'] == '$reason'" ||
        { WHY="got $got $(head -c 200 "$TMP/st.json")"; return 1; }
}
check "another cluster: 404 NotFound Status" status_is 404 NotFound "${AUTH[@]}" \
    "$H/clusters/member1/kapis/iam.kubesphere.io/v1beta1/users"
check "anonymous list of users: 403 Forbidden Status" status_is 403 Forbidden \
    "$H/kapis/iam.kubesphere.io/v1beta1/users"
www_auth() {
    curl -s -D "$TMP/h401" -o /dev/null --max-time 5 -H 'Authorization: Bearer not.a.token' \
        "$H/kapis/iam.kubesphere.io/v1beta1/users"
    head -1 "$TMP/h401" | grep -q ' 401' && grep -qi '^WWW-Authenticate:' "$TMP/h401"
}
check "a bad token: 401 with WWW-Authenticate" www_auth
check "an API group nobody serves: 503 ServiceUnavailable Status" status_is 503 ServiceUnavailable \
    "${AUTH[@]}" "$H/kapis/nobody.example.io/v1/things"
check "no version: 404 Status" status_is 404 NotFound "${AUTH[@]}" "$H/kapis/iam.kubesphere.io"
check "a path nothing serves: 404 Status" status_is 404 NotFound "${AUTH[@]}" "$H/nothing/here"
proxy_or_501() {
    local got
    got=$(curl -s -o "$TMP/api.json" -w '%{http_code}' --max-time 5 "${AUTH[@]}" "$H/api/v1/namespaces")
    if [ -e services/apigw/proxy.c ]; then
        [ "$got" = 200 ] || { WHY="proxy.c exists but got $got"; return 1; }
    else
        [ "$got" = 501 ] && grep -q 'proxy not built yet' "$TMP/api.json" ||
            { WHY="got $got $(head -c 200 "$TMP/api.json")"; return 1; }
    fi
}
check "/api/v1/namespaces: the kube proxy (501 until proxy.c exists)" proxy_or_501
health() { [ "$(curl -s --max-time 5 "$H/healthz")" = ok ] && [ "$(code_of -I "$H/livez")" = 200 ]; }
check "/healthz and HEAD /livez on the HTTP port" health

# ---- request ids ----

rid() {  # rid CURL-ARGS...: the X-Request-Id of the answer
    curl -s -D - -o /dev/null --max-time 5 "$@" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-request-id" {print $2}'
}
check "X-Request-Id: a well-formed one is echoed" test "$(rid -H 'X-Request-Id: abc-123.X_y' "$H/healthz")" = abc-123.X_y
is_uuid() { [[ "$1" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]] || { WHY="'$1'"; return 1; }; }
check "X-Request-Id: a malformed one is replaced by a UUIDv7" is_uuid "$(rid -H 'X-Request-Id: bad id <x>' "$H/healthz")"
check "X-Request-Id: one is made when none is sent" is_uuid "$(rid "$H/healthz")"
check "X-Request-Id: on a 404" is_uuid "$(rid "$H/nothing")"

# ---- limits ----

head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' 'a' >"$TMP/big.bin"
check "a 2 MiB body: 413 Status" status_is 413 RequestEntityTooLarge -X POST \
    -H 'Content-Type: application/json' --data-binary @"$TMP/big.bin" "${AUTH[@]}" \
    "$H/kapis/iam.kubesphere.io/v1beta1/users"
check "a 2 MiB chunked body: 413 Status" status_is 413 RequestEntityTooLarge -X POST \
    -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' \
    --data-binary @"$TMP/big.bin" "${AUTH[@]}" "$H/kapis/iam.kubesphere.io/v1beta1/users"
BIGH=$(head -c 20480 /dev/zero | tr '\0' 'h')
check "20 KiB of headers: 431 Status" status_is 431 RequestHeaderFieldsTooLarge -H "X-Big: $BIGH" "$H/healthz"
check "431 carries X-Request-Id" is_uuid "$(rid -H "X-Big: $BIGH" "$H/healthz")"
for p in '/kapis/iam.kubesphere.io/v1beta1/../v1beta1/users' \
         '/kapis/iam.kubesphere.io/v1beta1/%2e%2e/users' \
         '/kapis/iam.kubesphere.io/v1beta1/%2E%2e/users' \
         '/kapis//iam.kubesphere.io/v1beta1/users' \
         '/kapis/iam.kubesphere.io%2Fv1beta1/users' \
         '/kapis/iam.kubesphere.io/v1beta1/users/admin%00x' \
         '/api/v1/namespaces/./default'; do
    check "path confusion $p: 400 Status" status_is 400 BadRequest --path-as-is "${AUTH[@]}" "$H$p"
done
LONG=$(head -c 9000 /dev/zero | tr '\0' 'x')
check "a 9000-byte path: 414 Status" status_is 414 RequestURITooLong "${AUTH[@]}" \
    "$H/kapis/iam.kubesphere.io/v1beta1/users/$LONG"
check "invalid UTF-8 in the path: 400 Status" status_is 400 BadRequest "${AUTH[@]}" \
    "$H/kapis/iam.kubesphere.io/v1beta1/users/%C3%28"
raw_nul() {
    "$KS_PYTHON" - "${GW%:*}" "${GW#*:}" >"$TMP/nul.out" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET /healthz\x00/../kapis HTTP/1.1\r\nHost: x\r\n\r\n")
print(s.recv(4096).decode(errors="replace").splitlines()[0])
PY
    grep -q ' 400 ' "$TMP/nul.out" || { WHY="$(cat "$TMP/nul.out")"; return 1; }
}
check "a raw NUL in the request target: 400" raw_nul
check "a body on GET: 400 Status" status_is 400 BadRequest -X GET -d 'x=1' "${AUTH[@]}" \
    "$H/kapis/iam.kubesphere.io/v1beta1/users"
check "a duplicate Content-Type: 400 Status" status_is 400 BadRequest -X POST -H 'Content-Type: a/b' \
    -H 'Content-Type: c/d' -d 'x' "$H/oauth/token"
keepalive() {
    curl -sv --max-time 5 -o /dev/null -o /dev/null "${AUTH[@]}" \
        "$H/kapis/iam.kubesphere.io/v1beta1/users" "$H/kapis/iam.kubesphere.io/v1beta1/users" \
        >"$TMP/ka.out" 2>&1
    grep -q 'Re-using existing connection' "$TMP/ka.out" && [ "$(grep -c '< HTTP/1.1 200' "$TMP/ka.out")" = 2 ] ||
        { WHY="$(grep -E 'HTTP/1.1|Connection|connect' "$TMP/ka.out" | head -5 | tr '\n' '|')"; return 1; }
}
check "keep-alive: two requests through NATS on one connection" keepalive
concurrent() {
    seq 256 | xargs -P 32 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "${AUTH[@]}" \
        "$H/kapis/iam.kubesphere.io/v1beta1/users" >"$TMP/conc.out"
    [ "$(grep -c '^200$' "$TMP/conc.out")" = 256 ] ||
        { WHY="$(sort "$TMP/conc.out" | uniq -c | tr '\n' ' ')"; return 1; }
}
check "256 requests from 32 concurrent clients: all 200" concurrent
check "the gateway still serves after all that" ready "$GW"

# ---- metrics ----

metrics_ok() {
    curl -s --max-time 5 "http://${ADM[2]}/metrics" >"$TMP/metrics.txt"
    grep -qE '^ks_gateway_requests_total\{code="200",resource="users",verb="list"\} [0-9]+' "$TMP/metrics.txt" &&
        grep -qE '^ks_gateway_request_duration_seconds_count [1-9]' "$TMP/metrics.txt" &&
        grep -qE '^ks_gateway_nats_request_duration_seconds_count\{call="api"\} [1-9]' "$TMP/metrics.txt" &&
        grep -qE '^ks_gateway_upstream_errors_total\{call="api",kind="no_responders"\} [1-9]' "$TMP/metrics.txt" &&
        grep -qE '^ks_gateway_limit_rejections_total\{limit="headers"\} [1-9]' "$TMP/metrics.txt" &&
        grep -qE '^ks_gateway_discovery_routes [1-9]' "$TMP/metrics.txt" &&
        grep -qx 'ks_gateway_requests_in_flight 0' "$TMP/metrics.txt" ||
        { WHY="$(grep -E '^ks_gateway_(requests_total|requests_in_flight|discovery_routes)' "$TMP/metrics.txt" | head -5 | tr '\n' '|')"; return 1; }
}
check "metrics: by code/verb/resource, latency, NATS round trip, upstream errors, limits, in flight 0" \
    poll 3 metrics_ok

# ---- logout ----

logout_ok() {
    local t got
    t=$(get_token admin 'P@88w0rd') || { WHY="no token"; return 1; }
    [ "$(code_of -H "Authorization: Bearer $t" "$H/kapis/iam.kubesphere.io/v1beta1/users")" = 200 ] ||
        { WHY="fresh token refused"; return 1; }
    got=$(curl -s -o "$TMP/logout.json" -w '%{http_code}' --max-time 5 -X POST \
        -H "Authorization: Bearer $t" "$H/oauth/logout")
    [ "$got" = 200 ] || { WHY="logout: $got $(head -c 200 "$TMP/logout.json")"; return 1; }
    refused() { [ "$(code_of -H "Authorization: Bearer $t" "$H/kapis/iam.kubesphere.io/v1beta1/users")" = 401 ]; }
    poll 3 refused || { WHY="the token still works after logout"; return 1; }
}
check "POST /oauth/logout with a bearer token: 200, then the token gets 401" logout_ok

# ---- a gateway with tight limits ----

start apigw "$TMP/apigw2.log" KS_ADMIN_ADDR="${ADM[3]}" KS_JWT_SECRET_FILE="$SECRET" \
    KS_HTTP_ADDR="$GW2" KS_MAX_CONNECTIONS=16 KS_IDLE_TIMEOUT=2s KS_HTTP_REQUEST_TIMEOUT=2s
GW2_PID=$SVC_PID
check "second gateway ready" poll $WAIT ready "$GW2"
conn_cap() {
    "$KS_PYTHON" - "${GW2%:*}" "${GW2#*:}" >"$TMP/cap.out" <<'PY'
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
held = [socket.create_connection((host, port), timeout=5) for _ in range(17)]
time.sleep(0.3)
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
head = s.recv(4096).decode(errors="replace")
lines = head.split("\r\n")
print(lines[0])
print("retry-after" if any(l.lower().startswith("retry-after:") for l in lines) else "no retry-after")
for c in held:
    c.close()
time.sleep(0.3)
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
print(s.recv(4096).decode(errors="replace").split("\r\n")[0])
PY
    [ "$(sed -n 1p "$TMP/cap.out" | awk '{print $2}')" = 503 ] &&
        [ "$(sed -n 2p "$TMP/cap.out")" = retry-after ] &&
        [ "$(sed -n 3p "$TMP/cap.out" | awk '{print $2}')" = 200 ] ||
        { WHY="$(tr '\n' '|' <"$TMP/cap.out")"; return 1; }
}
check "over the connection cap: 503 with Retry-After; served again once connections close" conn_cap
slow_client() {
    "$KS_PYTHON" - "${GW2%:*}" "${GW2#*:}" >"$TMP/slow.out" <<'PY'
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
for _ in range(4):          # a header line every 0.7 s: never idle, always slow
    time.sleep(0.7)
    s.sendall(b"X-Slow: 1\r\n")
s.sendall(b"\r\n")
print(s.recv(4096).decode(errors="replace").split("\r\n")[0])
PY
    grep -q ' 408 ' "$TMP/slow.out" || { WHY="$(cat "$TMP/slow.out")"; return 1; }
}
check "headers trickling in for longer than the idle timeout: 408" slow_client
idle_client() {
    "$KS_PYTHON" - "${GW2%:*}" "${GW2#*:}" >"$TMP/idle.out" <<'PY'
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /healthz HTTP/1.1\r\n")
t = time.time()
d = s.recv(4096)
print("%.1f %d" % (time.time() - t, len(d)))
PY
    awk '{exit !($1 >= 1.5 && $1 <= 5)}' "$TMP/idle.out" || { WHY="$(cat "$TMP/idle.out")"; return 1; }
}
check "a client that stops sending is closed after the idle timeout" idle_client
SUB_PID=""
silent_subscriber() {  # a subscriber on the subject that never answers
    "$NATS_CLI" --server "$NATS_URL" sub "$1" >"$TMP/sub.log" 2>&1 </dev/null &
    SUB_PID=$!
    own "$SUB_PID"
    poll 5 grep -q 'Subscribing' "$TMP/sub.log"
}
if [ -x "$NATS_CLI" ]; then
    silent_subscriber 'ks.api.silent_example_io.v1'
    deadline() {
        local t0 got dt
        t0=$(now_ms)
        got=$(curl -s -o "$TMP/504.json" -w '%{http_code}' --max-time 10 "${AUTH[@]}" "http://$GW2/kapis/silent.example.io/v1/things")
        dt=$(( $(now_ms) - t0 ))
        [ "$got" = 504 ] && [ "$dt" -ge 1800 ] && [ "$dt" -le 4000 ] &&
            json "$TMP/504.json" "d['kind'] == 'Status' and d['code'] == 504" ||
            { WHY="got $got after ${dt} ms: $(head -c 200 "$TMP/504.json")"; return 1; }
    }
    check "no answer within the 2 s deadline: 504 Status" deadline
    drain() {
        local i t0 dt rc
        local -a curls=()
        for i in 1 2 3; do
            curl -s -o "$TMP/drain$i.json" -w '%{http_code}' --max-time 10 "${AUTH[@]}" \
                "http://$GW2/kapis/silent.example.io/v1/things" >"$TMP/drain$i.code" 2>/dev/null &
            curls+=($!)
        done
        sleep 0.5
        t0=$(now_ms)
        kill -TERM "$GW2_PID"
        while pid_alive "$GW2_PID" && [ $(( $(now_ms) - t0 )) -lt $((STOP_LIMIT_MS + 3000)) ]; do sleep 0.02; done
        dt=$(( $(now_ms) - t0 ))
        wait "$GW2_PID"; rc=$?
        wait "${curls[@]}"
        for i in 1 2 3; do
            [ "$(cat "$TMP/drain$i.code")" = 503 ] && grep -q 'shutting down' "$TMP/drain$i.json" ||
                { WHY="request $i: $(cat "$TMP/drain$i.code") $(head -c 150 "$TMP/drain$i.json")"; return 1; }
        done
        [ "$rc" = 0 ] && [ "$dt" -le "$STOP_LIMIT_MS" ] || { WHY="exit $rc after ${dt} ms"; return 1; }
    }
    check "SIGTERM with 3 requests in flight: each gets 503, exit 0 within 2 s" drain
else
    fail "nats CLI at $NATS_CLI" "run make deps"
fi

# ---- HTTPS ----

if command -v openssl >/dev/null; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
        -keyout "$TMP/tls.key" -out "$TMP/tls.crt" >/dev/null 2>&1
    start apigw "$TMP/apigw3.log" KS_ADMIN_ADDR="${ADM[4]}" KS_JWT_SECRET_FILE="$SECRET" \
        KS_HTTP_ADDR="$GW3" KS_TLS_CERT_FILE="$TMP/tls.crt" KS_TLS_KEY_FILE="$TMP/tls.key"
    tls_ready() { [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://$GW3/readyz")" = 200 ]; }
    check "HTTPS with KS_TLS_CERT_FILE and KS_TLS_KEY_FILE" poll $WAIT tls_ready
    tls_users() {
        [ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "${AUTH[@]}" \
            "https://$GW3/kapis/iam.kubesphere.io/v1beta1/users")" = 200 ]
    }
    check "HTTPS: a request through NATS" tls_users
fi

# ---- stop ----

stop_ok() {
    local t0 dt rc
    t0=$(now_ms)
    kill -TERM "$GW_PID"
    while pid_alive "$GW_PID" && [ $(( $(now_ms) - t0 )) -lt $((STOP_LIMIT_MS + 3000)) ]; do sleep 0.02; done
    dt=$(( $(now_ms) - t0 ))
    wait "$GW_PID"; rc=$?
    [ "$rc" = 0 ] && [ "$dt" -le "$STOP_LIMIT_MS" ] || { WHY="exit $rc after ${dt} ms"; return 1; }
}
check "the gateway exits 0 on SIGTERM within 2 s" stop_ok

echo "test_gateway: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
