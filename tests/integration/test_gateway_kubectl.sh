#!/usr/bin/env bash
# tests/integration/test_gateway_kubectl.sh: a real kubectl through the
# gateway's kube-apiserver proxy (docs/gateway-proxy.md; "Works with
# kubectl" of the gateway issue).
#
# Starts kscore-reconciler (--leader-elect=false), kscore-iam and
# kscore-apigw over HTTPS (a self-signed certificate for 127.0.0.1: kubectl
# sends --token only over TLS) on free 127.0.0.1 ports, sharing one JWT
# secret. With a token from POST /oauth/token (admin / P@88w0rd, which iam
# bootstraps; a user of its own bound to platform-admin if that login does
# not work), `kubectl --server https://... --token $T` must:
#   - get users.iam.kubesphere.io, get ns, version;
#   - get users -w and see a change made elsewhere (with the admin kubeconfig);
#   - apply -f a User manifest, apply it again, delete it;
#   - for a user without rights, print kubectl's usual Forbidden message;
#   - --as: impersonation decided by kscore's RBAC;
# and the gateway ends a watch whose client left, and stops within 3 s with
# a watch in flight (libmicrohttpd must not be stopped with a suspended
# stream).
#
# Prints "PASS: <check>" or "FAIL: <check>" per check (scripts/test.sh counts
# them). Uses the control plane in KS_NATS_URL and KS_KUBECONFIG when both are
# set (make test exports them); otherwise starts its own. Every process it
# starts is stopped by PID on exit; every wait is a bounded poll.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_gateway_kubectl
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
BIN="$BUILD_DIR/bin"
KUBECTL="${KUBECTL:-$KS_DEPS_BIN/kubectl}"
READY_TIMEOUT=30

TMP="$(mktemp -d /tmp/kscore-test-gwkubectl.XXXXXX)"
export KS_AUDIT_SPOOL_DIR="$TMP/audit-spool"   # the gateways' audit spools (one per listen address)
SUFFIX="$$"
UW="gwk-watched-$SUFFIX"     # changed elsewhere while kubectl watches
UM="gwk-manifest-$SUFFIX"    # applied and deleted through the gateway
UB="gwk-nobody-$SUFFIX"      # no rights
UA="gwk-admin-$SUFFIX"       # only if admin / P@88w0rd does not log in
PASSWORD="Gw-Kubectl-Pa55"
declare -a OWN=()
FAILED=0
PASSED=0
CP_DIR=""
CREATED=0

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1${2:+ -- $(printf '%s' "$2" | tr '\n' ' ' | head -c 600)}"; FAILED=$((FAILED + 1)); }

# kc: the admin identity of the control plane, straight to kube-apiserver.
kc() { "$KUBECTL" --kubeconfig "$KS_KUBECONFIG" --request-timeout=10s "$@"; }

cleanup() {
    local rc=$?
    if [ "$CREATED" -eq 1 ]; then
        kc delete users.iam.kubesphere.io "$UW" "$UM" "$UB" "$UA" --ignore-not-found \
            --wait=false >/dev/null 2>&1
        kc delete globalrolebindings.iam.kubesphere.io "$UA-platform-admin" "$UB-discovery" \
            --ignore-not-found --wait=false >/dev/null 2>&1
        kc delete globalroles.iam.kubesphere.io "gwk-discovery-$SUFFIX" --ignore-not-found \
            --wait=false >/dev/null 2>&1
    fi
    [ -n "${WATCH_PID:-}" ] && kill "$WATCH_PID" 2>/dev/null
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=3 stop_pids "${OWN[@]}" 2>/dev/null
    [ -n "$CP_DIR" ] && "$ROOT/scripts/controlplane.sh" stop "$CP_DIR" >/dev/null 2>&1
    if [ "$FAILED" -gt 0 ] && [ -d "$TMP/logs" ]; then
        for f in "$TMP"/logs/*.log; do log_tail "$(basename "$f" .log)" "$f" 15; done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in apigw iam reconciler; do
    [ -x "$BIN/kscore-$b" ] || { fail "binaries" "missing $BIN/kscore-$b (run make)"; exit 1; }
done
[ -x "$KUBECTL" ] || { fail "kubectl" "missing $KUBECTL (run make deps)"; exit 1; }

# ---- the control plane ----
if [ -z "${KS_NATS_URL:-}" ] || [ -z "${KS_KUBECONFIG:-}" ]; then
    CP_DIR="$TMP/cp"
    if ! "$ROOT/scripts/controlplane.sh" start "$CP_DIR" >"$TMP/cp.log" 2>&1; then
        fail "control plane" "did not start: $(tail -3 "$TMP/cp.log")"
        exit 1
    fi
    # shellcheck disable=SC1091
    . "$CP_DIR/env"
fi

mkdir -p "$TMP/logs"
(umask 077; openssl rand -hex 32 | tr -d '\n' >"$TMP/jwt-secret")   # 64 bytes
mapfile -t PORTS < <(free_ports 4)
GW="127.0.0.1:${PORTS[0]}"
GW_ADMIN="127.0.0.1:${PORTS[1]}"
IAM_ADMIN="127.0.0.1:${PORTS[2]}"
REC_ADMIN="127.0.0.1:${PORTS[3]}"
URL="https://$GW"
if ! openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$TMP/tls.key" -out "$TMP/tls.crt" \
        >"$TMP/openssl.log" 2>&1; then
    fail "a TLS certificate for the gateway" "$(tail -2 "$TMP/openssl.log")"
    exit 1
fi

# Environment for a service: the caller's, less every KS_ variable.
UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done

# start NAME VAR=VALUE... [-- FLAG...]: sets SVC_PID.
start() {
    local name="$1"; shift
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    env "${UNSET_KS[@]}" KS_NATS_URL="$KS_NATS_URL" KS_KUBECONFIG="$KS_KUBECONFIG" \
        KS_LOG_LEVEL=info "${vars[@]}" "$BIN/kscore-$name" "$@" \
        </dev/null >>"$TMP/logs/$name.log" 2>&1 &
    SVC_PID=$!
    OWN+=("$SVC_PID $(pid_start "$SVC_PID" || echo 0)")
}
ready() { curl -sf --max-time 2 "http://$1/readyz" >/dev/null; }

start reconciler KS_ADMIN_ADDR="$REC_ADMIN" -- --leader-elect=false
REC_PID=$SVC_PID
start iam KS_ADMIN_ADDR="$IAM_ADMIN" KS_JWT_SECRET_FILE="$TMP/jwt-secret" KS_BCRYPT_COST=4
IAM_PID=$SVC_PID
start apigw KS_ADMIN_ADDR="$GW_ADMIN" KS_HTTP_ADDR="$GW" KS_JWT_SECRET_FILE="$TMP/jwt-secret" \
    KS_TLS_CERT_FILE="$TMP/tls.crt" KS_TLS_KEY_FILE="$TMP/tls.key"
GW_PID=$SVC_PID
GW_OWN="${OWN[-1]}"
for s in "reconciler $REC_ADMIN $REC_PID" "iam $IAM_ADMIN $IAM_PID" "apigw $GW_ADMIN $GW_PID"; do
    read -r name addr pid <<<"$s"
    if ! wait_for "$name" "$READY_TIMEOUT" --pid "$pid" --log "$TMP/logs/$name.log" -- \
            ready "$addr"; then
        fail "$name starts and becomes ready"
        exit 1
    fi
done
pass "reconciler, iam and apigw (HTTPS) start and become ready"

json_get() { "$KS_PYTHON" -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2" 2>/dev/null; }

# token USER PASSWORD TRIES: prints the access token (polls: iam may not
# know the user yet).
token() {
    local i code
    for ((i = 0; i < $3; i++)); do
        code=$(curl -s --max-time 10 --cacert "$TMP/tls.crt" -o "$TMP/token.json" \
            -w '%{http_code}' -X POST "$URL/oauth/token" \
            -H 'Content-Type: application/x-www-form-urlencoded' \
            --data-urlencode grant_type=password --data-urlencode "username=$1" \
            --data-urlencode "password=$2")
        if [ "$code" = 200 ]; then
            json_get "$TMP/token.json" access_token
            return 0
        fi
        sleep 0.1
    done
    return 1
}

HASH=$("$KS_PYTHON" -W ignore -c 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))' "$PASSWORD")
case "$HASH" in '$2'*) ;; *) fail "bcrypt hash for the test users" "python3 crypt gave '$HASH'"; exit 1 ;; esac
CREATED=1
if ! kc apply -f - >"$TMP/apply.log" 2>&1 <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: $UW
spec:
  email: $UW@example.com
---
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: $UB
spec:
  email: $UB@example.com
  password: '$HASH'
EOF
then
    fail "create the test users" "$(tail -3 "$TMP/apply.log")"
    exit 1
fi

ADMIN=admin
if T=$(token admin 'P@88w0rd' 100) && [ -n "$T" ]; then
    pass "POST /oauth/token: admin / P@88w0rd (iam's bootstrap) gets a token"
else
    # iam's bootstrap is not there, or admin's password was changed: an
    # admin of our own
    ADMIN="$UA"
    kc apply -f - >"$TMP/apply.log" 2>&1 <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: $UA
spec:
  email: $UA@example.com
  password: '$HASH'
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRoleBinding
metadata:
  name: $UA-platform-admin
roleRef:
  apiGroup: iam.kubesphere.io
  kind: GlobalRole
  name: platform-admin
subjects:
  - apiGroup: iam.kubesphere.io
    kind: User
    name: $UA
EOF
    if T=$(token "$UA" "$PASSWORD" 100) && [ -n "$T" ]; then
        pass "POST /oauth/token: a platform-admin user of the test gets a token (admin / P@88w0rd did not log in)"
    else
        fail "POST /oauth/token gives an admin a token" "$(head -c 300 "$TMP/token.json" 2>/dev/null)"
        exit 1
    fi
fi
if TB=$(token "$UB" "$PASSWORD" 100) && [ -n "$TB" ]; then
    pass "POST /oauth/token: the user without rights gets a token"
else
    fail "POST /oauth/token: the user without rights gets a token" "$(head -c 300 "$TMP/token.json")"
    exit 1
fi

# kubectl through the gateway: no kubeconfig of its own, its own discovery
# cache (so every run really asks the gateway).
printf 'apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts: []\n' >"$TMP/empty-kubeconfig"
# gk_args TOKEN: the arguments in GKA (a background kubectl is started
# directly with them, so that $! is kubectl itself).
gk_args() {
    local cache=admin
    [ "$1" = "$T" ] || cache=nobody
    GKA=(--kubeconfig "$TMP/empty-kubeconfig" --cache-dir "$TMP/kcache-$cache" --server "$URL"
         --certificate-authority "$TMP/tls.crt" --token "$1")
}
gk() {
    gk_args "$1"; shift
    "$KUBECTL" "${GKA[@]}" --request-timeout=15s "$@"
}

# ---- reads ----
out=$(gk "$T" get users.iam.kubesphere.io 2>&1)
if [[ "$out" == *NAME*EMAIL* ]] && grep -q "^$ADMIN " <<<"$out" && grep -q "^$UW " <<<"$out"; then
    pass "kubectl get users.iam.kubesphere.io lists the users"
else
    fail "kubectl get users.iam.kubesphere.io lists the users" "$out"
fi
out=$(gk "$T" get ns 2>&1)
if grep -q '^default ' <<<"$out" && grep -q '^kube-system ' <<<"$out"; then
    pass "kubectl get ns lists the namespaces"
else
    fail "kubectl get ns lists the namespaces" "$out"
fi
out=$(gk "$T" version 2>&1)
[[ "$out" == *"Server Version: v"* ]] && pass "kubectl version reads /version through the gateway" ||
    fail "kubectl version reads /version through the gateway" "$out"
out=$(gk "$T" get users.iam.kubesphere.io "no-such-user-$SUFFIX" 2>&1)
[[ "$out" == *'Error from server (NotFound): users.iam.kubesphere.io "no-such-user-'*'" not found'* ]] &&
    pass "kube-apiserver's 404 Status reaches kubectl as is" ||
    fail "kube-apiserver's 404 Status reaches kubectl as is" "$out"

# ---- headers and bodiless answers, compared with kube-apiserver itself ----
KUBE_TOKEN=$(cat "${KS_KUBE_TOKEN_FILE:-/nonexistent}" 2>/dev/null ||
             awk '$1 == "token:" { print $2; exit }' "$KS_KUBECONFIG")
DISC='Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json'
hdr_of() { awk -F': ' -v n="$2" 'tolower($1) == tolower(n) { sub(/\r$/, "", $2); print $2 }' "$1"; }
curl -s --max-time 10 --cacert "$TMP/tls.crt" -D "$TMP/gw.h" -o /dev/null -H "Authorization: Bearer $T" \
    -H "$DISC" "$URL/apis"
curl -s --max-time 10 -k -D "$TMP/kube.h" -o /dev/null -H "Authorization: Bearer $KUBE_TOKEN" \
    -H "$DISC" --http1.1 "${KS_KUBE_URL:-https://no-kube-url}/apis"
ok=1
for h in Content-Type Vary Etag Cache-Control; do
    [ -n "$(hdr_of "$TMP/gw.h" "$h")" ] && [ "$(hdr_of "$TMP/gw.h" "$h")" = "$(hdr_of "$TMP/kube.h" "$h")" ] ||
        { ok=0; WHY="$h: '$(hdr_of "$TMP/gw.h" "$h")' vs kube-apiserver's '$(hdr_of "$TMP/kube.h" "$h")'"; }
done
[ "$ok" = 1 ] && pass "end-to-end headers pass through (Content-Type $(hdr_of "$TMP/gw.h" Content-Type), Vary, ETag)" ||
    fail "end-to-end headers pass through" "$WHY"
code=$(curl -s --max-time 10 --cacert "$TMP/tls.crt" -o "$TMP/304.body" -w '%{http_code}' \
    -H "Authorization: Bearer $T" -H "$DISC" -H "If-None-Match: $(hdr_of "$TMP/gw.h" Etag)" "$URL/apis")
[ "$code" = 304 ] && [ ! -s "$TMP/304.body" ] && pass "If-None-Match: kube-apiserver's 304 passes through, no body" ||
    fail "If-None-Match: kube-apiserver's 304 passes through" "$code"
code=$(curl -s --max-time 10 --cacert "$TMP/tls.crt" -I -D "$TMP/head.h" -o /dev/null -w '%{http_code}' \
    -H "Authorization: Bearer $T" "$URL/api")
kcode=$(curl -s --max-time 10 -k -I -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KUBE_TOKEN" \
    "${KS_KUBE_URL:-https://no-kube-url}/api")
[ "$code" = "$kcode" ] && [ -n "$(hdr_of "$TMP/head.h" Content-Length)" ] &&
    pass "HEAD: kube-apiserver's answer ($code) with its Content-Length, no body" ||
    fail "HEAD: kube-apiserver's answer with its Content-Length" "gateway $code, kube-apiserver $kcode"

# ---- a watch sees a change made elsewhere ----
gk_args "$T"
"$KUBECTL" "${GKA[@]}" get users.iam.kubesphere.io -w >"$TMP/watch.out" 2>&1 &
WATCH_PID=$!
seen=0
for _ in $(seq 1 100); do   # the initial list
    grep -q "^$UW " "$TMP/watch.out" && { seen=1; break; }
    sleep 0.1
done
before=$(grep -c "^$UW " "$TMP/watch.out")
kc label users.iam.kubesphere.io "$UW" "gwk-change=$SUFFIX" --overwrite >"$TMP/label.log" 2>&1
t0=$(date +%s%N)
changed=0
for _ in $(seq 1 100); do
    [ "$(grep -c "^$UW " "$TMP/watch.out")" -gt "$before" ] && { changed=1; break; }
    sleep 0.1
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if [ "$seen" = 1 ] && [ "$changed" = 1 ] && kill -0 "$WATCH_PID" 2>/dev/null; then
    pass "kubectl get users -w sees a change made with the admin kubeconfig (${ms} ms)"
else
    fail "kubectl get users -w sees a change made with the admin kubeconfig" \
        "initial list seen: $seen, changed: $changed; $(cat "$TMP/watch.out") $(cat "$TMP/label.log")"
fi

metric() {
    curl -s --max-time 2 "http://$GW_ADMIN/metrics" |
        awk -v n="$1" '$1 == n { v = $2 } END { print v + 0 }'
}
streams=$(metric ks_gateway_kube_streams)
kill "$WATCH_PID" 2>/dev/null
wait "$WATCH_PID" 2>/dev/null
WATCH_PID=""
# The watch's connection is suspended while no event comes; the gateway
# notices the hang-up on its own (once a second).
for _ in $(seq 1 40); do
    [ "$(metric ks_gateway_kube_streams)" = 0 ] && break
    sleep 0.1
done
after=$(metric ks_gateway_kube_streams)
if [ "$streams" -ge 1 ] && [ "$after" = 0 ]; then
    pass "the gateway ends a watch whose client left, without waiting for an event"
else
    fail "the gateway ends a watch whose client left" "streams $streams while watching, $after after"
fi

# ---- apply and delete a manifest ----
cat >"$TMP/user.yaml" <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: $UM
  labels:
    gwk: "$SUFFIX"
spec:
  email: $UM@example.com
  description: applied through the kscore gateway
EOF
out=$(gk "$T" apply -f "$TMP/user.yaml" 2>&1)
if [[ "$out" == "user.iam.kubesphere.io/$UM created" ]] &&
   [ "$(kc get users.iam.kubesphere.io "$UM" -o 'jsonpath={.spec.description}' 2>&1)" = "applied through the kscore gateway" ]; then
    pass "kubectl apply -f creates a User (POST body forwarded)"
else
    fail "kubectl apply -f creates a User" "$out"
fi
sed -i 's/applied through the kscore gateway/applied twice/' "$TMP/user.yaml"
out=$(gk "$T" apply -f "$TMP/user.yaml" 2>&1)
if [[ "$out" == "user.iam.kubesphere.io/$UM configured" ]] &&
   [ "$(kc get users.iam.kubesphere.io "$UM" -o 'jsonpath={.spec.description}' 2>&1)" = "applied twice" ]; then
    pass "kubectl apply -f again patches it (PATCH body and content type forwarded)"
else
    fail "kubectl apply -f again patches it" "$out"
fi
out=$(gk "$T" delete -f "$TMP/user.yaml" 2>&1)
if [[ "$out" == "user.iam.kubesphere.io \"$UM\" deleted"* ]]; then
    gone=0
    for _ in $(seq 1 50); do
        kc get users.iam.kubesphere.io "$UM" >/dev/null 2>&1 || { gone=1; break; }
        sleep 0.1
    done
    [ "$gone" = 1 ] && pass "kubectl delete -f deletes it" ||
        fail "kubectl delete -f deletes it" "the user is still there"
else
    fail "kubectl delete -f deletes it" "$out"
fi

# ---- a user without rights ----
out=$(gk "$TB" get users.iam.kubesphere.io "$ADMIN" 2>&1)
if [[ "$out" == *"Error from server (Forbidden)"* ]]; then
    pass "no rights at all: kubectl prints Error from server (Forbidden)"
else
    fail "no rights at all: kubectl prints Error from server (Forbidden)" "$out"
fi
# Kubernetes gives every signed-in user discovery (system:discovery); with
# that alone kubectl reaches the request and prints the full message.
kc apply -f - >"$TMP/apply.log" 2>&1 <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: gwk-discovery-$SUFFIX
rules:
  - nonResourceURLs: [/api, /api/*, /apis, /apis/*, /openapi, /openapi/*, /version]
    verbs: [get]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRoleBinding
metadata:
  name: $UB-discovery
roleRef:
  apiGroup: iam.kubesphere.io
  kind: GlobalRole
  name: gwk-discovery-$SUFFIX
subjects:
  - apiGroup: iam.kubesphere.io
    kind: User
    name: $UB
EOF
WANT="Error from server (Forbidden): users.iam.kubesphere.io \"$ADMIN\" is forbidden: User \"$UB\" cannot get resource \"users\" in API group \"iam.kubesphere.io\" at the cluster scope"
ok=0
for _ in $(seq 1 50); do   # until the binding is in iam's policy
    out=$(gk "$TB" get users.iam.kubesphere.io "$ADMIN" 2>&1)
    [ "$out" = "$WANT" ] && { ok=1; break; }
    sleep 0.2
done
[ "$ok" = 1 ] && pass "a user without rights: kubectl prints its usual Forbidden message" ||
    fail "a user without rights: kubectl prints its usual Forbidden message" "$out"
WANT="Error from server (Forbidden): namespaces is forbidden: User \"$UB\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
out=$(gk "$TB" get ns 2>&1)
[ "$out" = "$WANT" ] && pass "kubectl get ns without rights: Forbidden on the core group" ||
    fail "kubectl get ns without rights: Forbidden on the core group" "$out"

# ---- impersonation (kubectl --as) ----
# --raw: kubectl impersonates on its discovery requests too, and a refused
# discovery prints only "Forbidden: unknown".
out=$(gk "$TB" --as "$ADMIN" get --raw /apis/iam.kubesphere.io/v1beta1/users 2>&1)
WANT="users \"$ADMIN\" is forbidden: User \"$UB\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
[[ "$out" == *"Error from server (Forbidden): $WANT"* ]] &&
    pass "impersonation without the impersonate verb: 403" ||
    fail "impersonation without the impersonate verb: 403" "$out"
out=$(gk "$T" --as "$UB" get ns 2>&1)
WANT="Error from server (Forbidden): namespaces is forbidden: User \"$UB\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
[ "$out" = "$WANT" ] && pass "a platform-admin may impersonate; the request is then decided as the impersonated user" ||
    fail "a platform-admin may impersonate; the request is then decided as the impersonated user" "$out"

# ---- metrics ----
n=$(metric ks_gateway_kube_response_head_seconds_count)
e=$(curl -s --max-time 2 "http://$GW_ADMIN/metrics" | awk '$1 ~ /^ks_gateway_kube_errors_total/ { s += $2 } END { print s + 0 }')
if [ "$n" -gt 5 ] && [ "$e" = 0 ]; then
    pass "metrics: $n proxied answers, no upstream errors"
else
    fail "metrics: proxied answers counted, no upstream errors" "heads $n, errors $e"
fi

# ---- upstream failures, and what goes upstream ----
# Four more gateways whose kubeconfig points at: a closed port (503), this
# test's own HTTPS gateway (a certificate the cluster CA did not sign: 502),
# a listener that never answers (504 at a 2 s request deadline), and a
# plain-HTTP server that answers with the request it got (what the proxy
# sends: headers dropped and added, the body).
mapfile -t XP < <(free_ports 10)
"$KS_PYTHON" - "${XP[7]}" <<'PY' &
import socket, sys, threading, time
def serve(c):
    try:
        req = b""
        while b"\r\n\r\n" not in req:
            d = c.recv(65536)
            if not d:
                return
            req += d
        head, _, body = req.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                while len(body) < int(line.split(b":")[1]):
                    body += c.recv(65536)
        out = head + b"\r\n\r\n" + body
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: echo\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(out) + out)
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
s.settimeout(1)
end = time.time() + 60
while time.time() < end:
    try:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
    except OSError:
        pass
PY
ECHO_PID=$!
OWN+=("$ECHO_PID $(pid_start "$ECHO_PID" || echo 0)")
"$KS_PYTHON" - "${XP[6]}" <<'PY' &
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
held = []
end = time.time() + 60
s.settimeout(1)
while time.time() < end:
    try:
        held.append(s.accept()[0])
    except OSError:
        pass
PY
HOLE_PID=$!
OWN+=("$HOLE_PID $(pid_start "$HOLE_PID" || echo 0)")
# kubeconfig_to URL: the admin kubeconfig with another server
kubeconfig_to() {
    sed "s#^\( *server:\).*#\1 $1#" "$KS_KUBECONFIG" >"$TMP/kubeconfig-$2"
}
kubeconfig_to "https://127.0.0.1:${XP[0]}" dead   # XP[0] is free: nobody listens
kubeconfig_to "$URL" tls
kubeconfig_to "https://127.0.0.1:${XP[6]}" hole
kubeconfig_to "http://127.0.0.1:${XP[7]}" echo
declare -A XGW=([dead]="${XP[1]} ${XP[2]}" [tls]="${XP[3]} ${XP[4]}" [hole]="${XP[5]} ${XP[8]}"
                [echo]="${XP[9]} $(free_port)")
declare -a XPIDS=()
for k in dead tls hole echo; do
    read -r port aport <<<"${XGW[$k]}"
    env "${UNSET_KS[@]}" KS_NATS_URL="$KS_NATS_URL" KS_KUBECONFIG="$TMP/kubeconfig-$k" \
        KS_ADMIN_ADDR="127.0.0.1:$aport" KS_HTTP_ADDR="127.0.0.1:$port" \
        KS_JWT_SECRET_FILE="$TMP/jwt-secret" KS_HTTP_REQUEST_TIMEOUT=2s KS_LOG_LEVEL=info \
        "$BIN/kscore-apigw" </dev/null >>"$TMP/logs/apigw-$k.log" 2>&1 &
    XPIDS+=("$!")
    OWN+=("$! $(pid_start "$!" || echo 0)")
done
i=0
for k in dead tls hole echo; do
    read -r port aport <<<"${XGW[$k]}"
    wait_for "apigw-$k" "$READY_TIMEOUT" --pid "${XPIDS[$i]}" --log "$TMP/logs/apigw-$k.log" -- \
        ready "127.0.0.1:$aport" || fail "the gateway towards '$k' starts"
    i=$((i + 1))
done
# upstream KIND CODE MESSAGE-PART METRIC-KIND
upstream() {
    local k="$1" want="$2" words="$3" mkind="$4" port aport code msg m
    read -r port aport <<<"${XGW[$k]}"
    code=$(curl -s --max-time 10 -o "$TMP/up.json" -w '%{http_code}' \
        -H "Authorization: Bearer $T" "http://127.0.0.1:$port/api/v1/namespaces")
    msg=$(json_get "$TMP/up.json" message)
    m=$(curl -s --max-time 2 "http://127.0.0.1:$aport/metrics" |
        awk -v n="ks_gateway_kube_errors_total{kind=\"$mkind\"}" '$1 == n { print $2 }')
    if [ "$code" = "$want" ] && [ "$(json_get "$TMP/up.json" kind)" = Status ] &&
       [[ "$msg" == *"$words"* ]] && [ "${m:-0}" = 1 ]; then
        pass "kube-apiserver $5: $code Status ($msg), counted as $mkind"
    else
        fail "kube-apiserver $5: $want Status, counted as $mkind" "$code $(head -c 300 "$TMP/up.json") metric ${m:-absent}"
    fi
}
upstream dead 503 "cannot be reached" connect "unreachable"
upstream tls 502 "TLS connection" tls "with a certificate the cluster CA did not sign"
upstream hole 504 "did not answer" timeout "silent"

read -r port _ <<<"${XGW[echo]}"
code=$(curl -s --max-time 10 -o "$TMP/echo.out" -D "$TMP/echo.h" -w '%{http_code}' -X PUT \
    -H "Authorization: Bearer $T" -H 'Cookie: session=s3cret' -H 'X-Remote-User: mallory' \
    -H 'Connection: keep-alive, X-Hop' -H 'X-Hop: 1' -H 'X-Forwarded-For: 192.0.2.7' \
    -H 'Content-Type: application/merge-patch+json' --data-binary '{"spec":{"x":"y z"}}' \
    "http://127.0.0.1:$port/api/v1/namespaces/default?fieldManager=kubectl%20x&dryRun=All")
up=$(tr -d '\r' <"$TMP/echo.out")
ok=1; WHY=""
want() { grep -qx -- "$1" <<<"$up" || { ok=0; WHY="$WHY [missing: $1]"; }; }
never() { ! grep -qi -- "$1" <<<"$up" || { ok=0; WHY="$WHY [present: $1]"; }; }
want "PUT /api/v1/namespaces/default?fieldManager=kubectl%20x&dryRun=All HTTP/1.1"
want "Authorization: Bearer $KUBE_TOKEN"
want "Content-Type: application/merge-patch+json"
want "X-Forwarded-For: 192.0.2.7, 127.0.0.1"
want '{"spec":{"x":"y z"}}'
never "Bearer $T"
never "^Cookie:"
never "^X-Remote-User:"
never "^X-Hop:"
[ "$(grep -ci '^Authorization:' <<<"$up")" = 1 ] || { ok=0; WHY="$WHY [not one Authorization]"; }
if [ "$code" = 200 ] && [ "$ok" = 1 ] && [ "$(hdr_of "$TMP/echo.h" X-Upstream)" = echo ]; then
    pass "upstream gets the gateway's credentials, the raw path and query, the body; never the client's Authorization, Cookie, X-Remote-* or hop-by-hop headers"
else
    fail "what goes upstream" "$code$WHY"
fi

# ---- a stop with a watch in flight ----
gk_args "$T"
"$KUBECTL" "${GKA[@]}" get users.iam.kubesphere.io -w >"$TMP/watch2.out" 2>&1 &
WATCH_PID=$!
for _ in $(seq 1 100); do
    grep -q "^$UW " "$TMP/watch2.out" && break
    sleep 0.1
done
t0=$(date +%s%N)
kill -TERM "$GW_PID"
# exited: gone, or a zombie not reaped yet (wait reaps it and gives the code)
exited() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    st="${st##*) }"
    [ "${st%% *}" = Z ]
}
stopped=0
for _ in $(seq 1 60); do
    exited "$GW_PID" && { stopped=1; break; }
    sleep 0.05
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait "$GW_PID" 2>/dev/null
gw_rc=$?
if [ "$stopped" = 1 ] && [ "$gw_rc" = 0 ]; then
    pass "SIGTERM with a watch in flight: the gateway exits 0 after ${ms} ms"
else
    fail "SIGTERM with a watch in flight: the gateway exits 0 within 3 s" "stopped $stopped rc $gw_rc after ${ms} ms"
fi
kill "$WATCH_PID" 2>/dev/null
wait "$WATCH_PID" 2>/dev/null
WATCH_PID=""

# ---- a sanitized build reports in the logs ----
KS_STOP_GRACE=5 stop_pids "${OWN[@]}"
OWN=()
if grep -l -E 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|MHD_stop_daemon|Assertion' "$TMP"/logs/*.log >/dev/null 2>&1; then
    fail "no sanitizer report or abort in the service logs" "$(grep -h -m3 -E 'ERROR: |runtime error:|MHD_stop_daemon|Assertion' "$TMP"/logs/*.log)"
else
    pass "no sanitizer report or abort in the service logs"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
