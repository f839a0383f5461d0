#!/usr/bin/env bash
# tests/integration/test_mirror.sh: kscore-reconciler's mirror of Kubernetes
# state in the JetStream KV bucket KS_OBJECTS (DESIGN.md §4, docs/mirror.md),
# as kubectl and the nats CLI see it.
#
#   1. Against the control plane of scripts/test.sh (KS_NATS_URL,
#      KS_KUBECONFIG; without them the test starts its own):
#      - at start every watched resource is in the bucket, and a namespace
#        listed without a kind gets kind and apiVersion in its JSON;
#      - creating, updating and deleting a User (with a '.' in its name, so
#        its key is escaped), a GlobalRole, a RoleBinding in "default" and a
#        Workspace: the key appears, its ObjectEvent (decoded here) carries
#        the type, resource, namespace, name, uid, resourceVersion and the
#        object's JSON as the API returned it; a delete removes the key from
#        `nats kv ls` and `nats kv get` fails;
#      - restart: while the reconciler is down, users are created, changed
#        and deleted, stale keys are put into the bucket by hand and a value
#        is corrupted; after the restart the resync has made the bucket equal
#        to the API (names and resourceVersions of every watched resource);
#      - SIGTERM: exit status 0 within 2 s.
#   2. Outage, on a control plane of its own (scripts/controlplane.sh start in
#      a mktemp -d folder), since it stops kube-apiserver: kube-apiserver is
#      stopped for at least 10 s while a second kube-apiserver on the same
#      etcd deletes, changes and creates users; the first comes back on its
#      port; the bucket then equals the API, deletes included.
#
# The reconciler runs as in production, with leader election on the Lease
# kubesphere-system/kscore-reconciler (one replica: it leads; a Lease left
# by an earlier test is deleted first). Prints "PASS: <check>" or "FAIL: <check>"
# per check and exits non-zero if any failed. Every process it starts is
# stopped by PID on exit; every wait is a bounded poll.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_mirror
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
REC="$BUILD_DIR/bin/kscore-reconciler"
KUBECTL="${KUBECTL:-$KS_DEPS_BIN/kubectl}"
NATS_CLI="${KS_NATS_CLI:-$KS_DEPS_BIN/nats}"
KUBE_APISERVER="${KUBE_APISERVER:-$KS_DEPS_BIN/kube-apiserver}"
BUCKET=KS_OBJECTS
WAIT=20            # seconds, an ordinary wait
STOP_LIMIT_MS=2000

TMP="$(mktemp -d /tmp/kscore-test-mirror.XXXXXX)"
ID="$$"
declare -a OWN=()          # "PID START" of every process started here
OWN_CPS=()                 # control planes started here
FAILED=0
PASSED=0

cleanup() {
    local rc=$? d
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=3 stop_pids "${OWN[@]}" 2>/dev/null
    for d in "${OWN_CPS[@]}"; do
        scripts/controlplane.sh stop "$d" >/dev/null 2>&1
        rm -rf "$d"
    done
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
# check NAME CMD...: PASS when CMD succeeds; CMD may set WHY.
check() {
    local name="$1"; shift
    WHY=""
    if "$@"; then pass "$name"; else fail "$name" "$WHY"; fi
}
# await SECONDS CMD...: poll CMD every 0.2 s until it succeeds.
await() {
    local end=$(( $(date +%s) + $1 )); shift
    while :; do
        "$@" && return 0
        [ "$(date +%s)" -ge "$end" ] && return 1
        sleep 0.2
    done
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
own() { OWN+=("$1 $(pid_start "$1" || echo 0)"); }

# ---- the environment of one control plane ----
# use_cp ENVFILE|-: set NATS_URL, KUBECONFIG_, CP_DIR from an env file, or
# from the caller's environment with "-".
use_cp() {
    if [ "$1" = - ]; then
        NATS_URL="$KS_NATS_URL" KUBECONFIG_="$KS_KUBECONFIG" CP_DIR="${KS_TEST_DIR:-}"
    else
        NATS_URL=$(. "$1"; echo "$KS_NATS_URL")
        KUBECONFIG_=$(. "$1"; echo "$KS_KUBECONFIG")
        CP_DIR="$(dirname "$1")"
    fi
}
kc() { timeout 30 "$KUBECTL" --kubeconfig "$KUBECONFIG_" "$@"; }
nats_() { timeout 10 "$NATS_CLI" --server "$NATS_URL" "$@"; }

start_own_cp() {
    local d
    d="$(mktemp -d /tmp/kscore-test-mirror-cp.XXXXXX)"
    OWN_CPS+=("$d")
    if ! scripts/controlplane.sh start "$d" >"$TMP/cp-$(basename "$d").log" 2>&1; then
        log_tail controlplane "$TMP/cp-$(basename "$d").log"
        return 1
    fi
    OWN_CP="$d"
}

# ---- keys: lib/subject.h ----
# esc_token S: bytes outside [A-Za-z0-9-] become =XX; "" becomes "_".
esc_token() {
    "$KS_PYTHON" -c '
import sys
s = sys.argv[1].encode()
ok = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
print("".join(chr(c) if c in ok else "=%02X" % c for c in s) if s else "_")' "$1"
}
# key GROUP RESOURCE NS NAME (NS "" for cluster-scoped, GROUP "" for core)
key() {
    local g
    if [ -z "$1" ]; then g=_; else g=$(esc_token "$1" | sed 's/=2E/_/g'); fi
    echo "$g.$(esc_token "$2").$(esc_token "$3").$(esc_token "$4")"
}

# ---- the bucket ----
kv_keys() { nats_ kv ls "$BUCKET" 2>/dev/null | grep -v ' ' | sort; }
kv_has() { kv_keys | grep -qxF "$1"; }
kv_has_all() {
    local k
    kv_keys >"$TMP/keys" || return 1
    for k in "$@"; do grep -qxF "$k" "$TMP/keys" || { WHY="no key $k"; return 1; }; done
}
kv_absent() {
    kv_keys >"$TMP/keys" || return 1
    ! grep -qxF "$1" "$TMP/keys" && ! nats_ kv get "$BUCKET" "$1" --raw >/dev/null 2>&1
}
# kv_decode KEY: the ObjectEvent of KEY as JSON (protobuf decoded here:
# fields 1 type, 2 resource, 3 namespace, 4 name, 5 uid, 6 resource_version,
# 7 object, 8 observed_unix_ms).
kv_decode() {
    nats_ kv get "$BUCKET" "$1" --raw 2>/dev/null | "$KS_PYTHON" -c '
import json, sys
b = sys.stdin.buffer.read()
names = {1: "type", 2: "resource", 3: "namespace", 4: "name", 5: "uid",
         6: "resource_version", 7: "object", 8: "observed_unix_ms"}
i = 0
def varint():
    global i
    v = s = 0
    while True:
        c = b[i]; i += 1
        v |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return v
out = {}
try:
    while i < len(b):
        k = varint(); f, w = k >> 3, k & 7
        if w == 0:
            out[names.get(f, str(f))] = varint()
        elif w == 2:
            n = varint(); out[names.get(f, str(f))] = b[i:i + n].decode(); i += n
        else:
            sys.exit(1)
    out["object"] = json.loads(out["object"])
except Exception:
    sys.exit(1)
print(json.dumps(out))'
}
# field JSON PATH: one value out of a JSON document (a dotted path).
field() {
    "$KS_PYTHON" -c '
import json, sys
v = json.loads(sys.argv[1])
for p in sys.argv[2].split("."):
    v = v.get(p, "") if isinstance(v, dict) else ""
print(v)' "$1" "$2"
}

# api_rv KIND NAME [NS]: the object's resourceVersion, "" when absent.
api_rv() {
    kc get "$1" "$2" ${3:+-n "$3"} -o 'jsonpath={.metadata.resourceVersion}' 2>/dev/null
}
api_uid() {
    kc get "$1" "$2" ${3:+-n "$3"} -o 'jsonpath={.metadata.uid}' 2>/dev/null
}

# in_mirror KIND GROUP RESOURCE NS NAME TYPE: the key holds an ObjectEvent of
# TYPE (1 ADDED, 2 MODIFIED, or "any") whose fields match the API's object.
in_mirror() {
    local kind="$1" group="$2" res="$3" ns="$4" name="$5" type="$6" k ev rv uid
    k=$(key "$group" "$res" "$ns" "$name")
    rv=$(api_rv "$kind" "$name" "$ns")
    uid=$(api_uid "$kind" "$name" "$ns")
    [ -n "$rv" ] || { WHY="$kind $name not in the API"; return 1; }
    ev=$(kv_decode "$k") || { WHY="no decodable value at $k"; return 1; }
    "$KS_PYTHON" - "$ev" "$group/$res" "$ns" "$name" "$uid" "$rv" "$type" <<'PY' || { WHY="value at $k: $ev"; return 1; }
import json, sys
ev = json.loads(sys.argv[1])
resource, ns, name, uid, rv, typ = sys.argv[2:]
obj = ev["object"]
meta = obj.get("metadata", {})
ok = (ev.get("resource") == resource and ev.get("namespace", "") == ns
      and ev.get("name") == name and ev.get("uid") == uid
      and ev.get("resource_version") == rv and ev.get("observed_unix_ms", 0) > 0
      and meta.get("name") == name and meta.get("namespace", "") == ns
      and meta.get("resourceVersion") == rv and meta.get("uid") == uid
      and obj.get("kind") and obj.get("apiVersion")
      and (typ == "any" or ev.get("type") == int(typ)))
sys.exit(0 if ok else 1)
PY
}
# raw_has KEY TEXT...: the raw value contains every TEXT (the object's JSON
# is in the value verbatim).
raw_has() {
    local k="$1" t; shift
    nats_ kv get "$BUCKET" "$k" --raw >"$TMP/raw" 2>/dev/null || { WHY="no value at $k"; return 1; }
    for t in "$@"; do
        grep -qaF -- "$t" "$TMP/raw" || { WHY="value at $k lacks $t"; return 1; }
    done
}

# ---- the reconciler ----
UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done
REC_PID=""
start_rec() {
    local logf="$TMP/reconciler-$1.log"
    REC_ADMIN=$(free_port)
    env "${UNSET_KS[@]}" KS_NATS_URL="$NATS_URL" KS_KUBECONFIG="$KUBECONFIG_" \
        KS_ADMIN_ADDR="127.0.0.1:$REC_ADMIN" KS_LOG_LEVEL=info \
        "$REC" </dev/null >>"$logf" 2>&1 &
    REC_PID=$!
    own "$REC_PID"
}
rec_ready() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$REC_ADMIN/readyz")" = 200 ]
}
rec_alive() { pid_alive "$REC_PID"; }
rec_leads() {
    curl -s --max-time 2 "http://127.0.0.1:$REC_ADMIN/metrics" | grep -qx 'ks_mirror_leader 1' ||
        { WHY="ks_mirror_leader is not 1"; return 1; }
}
# running PID: neither exited (a zombie) nor reaped (bash reaps its children
# in the background and keeps their status for `wait`).
running() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ]
}
# stop_rec_term: SIGTERM; sets STOP_MS and STOP_RC.
stop_rec_term() {
    local t0 i
    t0=$(now_ms)
    kill -TERM "$REC_PID" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        running "$REC_PID" || break
        sleep 0.05
    done
    STOP_MS=$(( $(now_ms) - t0 ))
    if running "$REC_PID"; then
        STOP_RC=timeout
        kill -KILL "$REC_PID" 2>/dev/null
    fi
    wait "$REC_PID" 2>/dev/null
    local rc=$?
    [ "${STOP_RC:-}" = timeout ] || STOP_RC=$rc
}
term_clean() {
    STOP_RC=""
    stop_rec_term
    echo "  (SIGTERM: exit $STOP_RC after $STOP_MS ms)"
    [ "$STOP_RC" = 0 ] && [ "$STOP_MS" -le "$STOP_LIMIT_MS" ] ||
        { WHY="exit $STOP_RC after $STOP_MS ms"; return 1; }
}

# ---- bucket == API ----
# The watched resources: "kind group resource namespaced".
RESOURCES=(
    "namespaces - namespaces 0"
    "users.iam.kubesphere.io iam.kubesphere.io users 0"
    "globalroles.iam.kubesphere.io iam.kubesphere.io globalroles 0"
    "globalrolebindings.iam.kubesphere.io iam.kubesphere.io globalrolebindings 0"
    "workspaceroles.iam.kubesphere.io iam.kubesphere.io workspaceroles 0"
    "workspacerolebindings.iam.kubesphere.io iam.kubesphere.io workspacerolebindings 0"
    "clusterroles.iam.kubesphere.io iam.kubesphere.io clusterroles 0"
    "clusterrolebindings.iam.kubesphere.io iam.kubesphere.io clusterrolebindings 0"
    "roles.iam.kubesphere.io iam.kubesphere.io roles 1"
    "rolebindings.iam.kubesphere.io iam.kubesphere.io rolebindings 1"
    "roletemplates.iam.kubesphere.io iam.kubesphere.io roletemplates 0"
    "loginrecords.iam.kubesphere.io iam.kubesphere.io loginrecords 0"
    "groups.iam.kubesphere.io iam.kubesphere.io groups 0"
    "groupbindings.iam.kubesphere.io iam.kubesphere.io groupbindings 0"
    "workspaces.tenant.kubesphere.io tenant.kubesphere.io workspaces 0"
    "workspacetemplates.tenant.kubesphere.io tenant.kubesphere.io workspacetemplates 0"
)
# api_state KIND GROUP RESOURCE NAMESPACED: "key rv" lines of the API.
api_state() {
    local kind="$1" group="$2" res="$3" nsd="$4"
    local -a all=()
    [ "$group" = - ] && group=""
    [ "$nsd" = 1 ] && all=(-A)
    kc get "$kind" "${all[@]}" -o json 2>/dev/null |
        "$KS_PYTHON" -c '
import json, sys
g, r = sys.argv[1], sys.argv[2]
ok = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"
def tok(s):
    s = s.encode()
    return "".join(chr(c) if c in ok else "=%02X" % c for c in s) if s else "_"
grp = tok(g).replace("=2E", "_") if g else "_"
for it in json.load(sys.stdin)["items"]:
    m = it["metadata"]
    print("%s.%s.%s.%s %s" % (grp, tok(r), tok(m.get("namespace", "")), tok(m["name"]), m["resourceVersion"]))
' "$group" "$res" | sort
}
# kv_state GROUP RESOURCE: "key rv" lines of the bucket for one resource.
kv_state() {
    local group="$1" res="$2" prefix k ev
    [ "$group" = - ] && group=""
    if [ -z "$group" ]; then prefix="_.$(esc_token "$res")."
    else prefix="$(esc_token "$group" | sed 's/=2E/_/g').$(esc_token "$res")."; fi
    for k in $(kv_keys | awk -v p="$prefix" 'index($0, p) == 1'); do
        ev=$(kv_decode "$k") || { echo "$k undecodable"; continue; }
        echo "$k $(field "$ev" resource_version)"
    done | sort
}
# bucket_equals_api [RESOURCE...]: every watched resource (or those named).
bucket_equals_api() {
    local r kind group res nsd a b
    for r in "${RESOURCES[@]}"; do
        read -r kind group res nsd <<<"$r"
        if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qxF "$res"; then continue; fi
        a=$(api_state "$kind" "$group" "$res" "$nsd") || { WHY="cannot list $kind"; return 1; }
        b=$(kv_state "$group" "$res")
        if [ "$a" != "$b" ]; then
            WHY="$res differs: $(diff <(echo "$a") <(echo "$b") | grep '^[<>]' | head -5 | tr '\n' ' ')"
            return 1
        fi
    done
}
# users_names_match: `kubectl get users -o name` against the users keys.
users_names_match() {
    local a b
    a=$(kc get users -o name 2>/dev/null | sed 's|^.*/||' | while read -r n; do key iam.kubesphere.io users "" "$n"; done | sort)
    b=$(kv_keys | grep '^iam_kubesphere_io\.users\.' | sort)
    [ "$a" = "$b" ] || { WHY="api: $(echo $a) bucket: $(echo $b)"; return 1; }
}

# ---- objects ----
user_yaml() {
    cat <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: $1
spec:
  email: $1@example.com
EOF
}
mk_user() { user_yaml "$1" | kc apply -f - >/dev/null; }
mk_globalrole() {
    kc apply -f - >/dev/null <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: $1
rules:
  - apiGroups: ["iam.kubesphere.io"]
    resources: ["users"]
    verbs: ["get"]
EOF
}
mk_rolebinding() {
    kc apply -f - >/dev/null <<EOF
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleBinding
metadata:
  name: $2
  namespace: $1
roleRef:
  apiGroup: iam.kubesphere.io
  kind: Role
  name: viewer
subjects:
  - apiGroup: iam.kubesphere.io
    kind: User
    name: someone
EOF
}
mk_workspace() {
    kc apply -f - >/dev/null <<EOF
apiVersion: tenant.kubesphere.io/v1beta1
kind: Workspace
metadata:
  name: $1
spec: {}
EOF
}

# ======================================================================
# Part 1
# ======================================================================
if [ -n "${KS_NATS_URL:-}" ] && [ -n "${KS_KUBECONFIG:-}" ]; then
    use_cp -
else
    log_info "KS_NATS_URL or KS_KUBECONFIG unset: starting a control plane of its own"
    start_own_cp || { fail "control plane starts"; exit 1; }
    use_cp "$OWN_CP/env"
fi

U="ks-mirror-$ID.dot"       # a '.' in the name: escaped in the key
GR="ks-mirror-gr-$ID"
RB="ks-mirror-rb-$ID"
WS="ks-mirror-ws-$ID"
KU=$(key iam.kubesphere.io users "" "$U")
KGR=$(key iam.kubesphere.io globalroles "" "$GR")
KRB=$(key iam.kubesphere.io rolebindings default "$RB")
KWS=$(key tenant.kubesphere.io workspaces "" "$WS")

check "key format: user $U is $KU" [ "$KU" = "iam_kubesphere_io.users._.ks-mirror-$ID=2Edot" ]
check "key format: rolebinding in default is $KRB" [ "$KRB" = "iam_kubesphere_io.rolebindings.default.ks-mirror-rb-$ID" ]

kc -n kubesphere-system delete lease kscore-reconciler --ignore-not-found >/dev/null 2>&1
start_rec 1
check "reconciler becomes ready" await "$WAIT" rec_ready
check "reconciler leads (ks_mirror_leader 1)" await "$WAIT" rec_leads
check "namespaces default and kube-system are in the bucket" \
    await "$WAIT" kv_has_all "_.namespaces._.default" "_.namespaces._.kube-system"
check "a namespace (listed without kind) has kind and apiVersion in its JSON" \
    raw_has "_.namespaces._.default" '"kind":"Namespace"' '"apiVersion":"v1"' '"name":"default"'
check "at start the bucket equals the API (every watched resource)" await "$WAIT" bucket_equals_api

# create
mk_user "$U" && mk_globalrole "$GR" && mk_rolebinding default "$RB" && mk_workspace "$WS" ||
    fail "create objects"
# the user controller adds its finalizer at once: the mirrored event may
# already be the MODIFIED that followed
check "create User: in the mirror at $KU" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$U" any
check "create GlobalRole: ADDED at $KGR" await "$WAIT" in_mirror globalroles "iam.kubesphere.io" globalroles "" "$GR" 1
check "create RoleBinding (namespaced): ADDED at $KRB" await "$WAIT" in_mirror rolebindings.iam.kubesphere.io "iam.kubesphere.io" rolebindings default "$RB" 1
check "create Workspace: ADDED at $KWS" await "$WAIT" in_mirror workspaces "tenant.kubesphere.io" workspaces "" "$WS" 1
check "raw value holds the object's JSON with name and resourceVersion" \
    raw_has "$KU" "\"name\":\"$U\"" "\"resourceVersion\":\"$(api_rv users "$U")\"" "\"email\":\"$U@example.com\""

# update
kc label users "$U" kscore-test=updated >/dev/null &&
    kc label globalroles "$GR" kscore-test=updated >/dev/null &&
    kc label rolebindings.iam.kubesphere.io -n default "$RB" kscore-test=updated >/dev/null &&
    kc label workspaces "$WS" kscore-test=updated >/dev/null || fail "update objects"
check "update User: MODIFIED with the new resourceVersion" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$U" 2
check "update GlobalRole: MODIFIED" await "$WAIT" in_mirror globalroles "iam.kubesphere.io" globalroles "" "$GR" 2
check "update RoleBinding: MODIFIED" await "$WAIT" in_mirror rolebindings.iam.kubesphere.io "iam.kubesphere.io" rolebindings default "$RB" 2
check "update Workspace: MODIFIED" await "$WAIT" in_mirror workspaces "tenant.kubesphere.io" workspaces "" "$WS" 2
check "updated value holds the new label" raw_has "$KU" '"kscore-test":"updated"'

# delete
kc delete users "$U" --wait=false >/dev/null &&
    kc delete globalroles "$GR" --wait=false >/dev/null &&
    kc delete rolebindings.iam.kubesphere.io -n default "$RB" --wait=false >/dev/null &&
    kc delete workspaces "$WS" --wait=false >/dev/null || fail "delete objects"
check "delete User: key gone from kv ls and kv get" await "$WAIT" kv_absent "$KU"
check "delete GlobalRole: key gone" await "$WAIT" kv_absent "$KGR"
check "delete RoleBinding: key gone" await "$WAIT" kv_absent "$KRB"
check "delete Workspace: key gone" await "$WAIT" kv_absent "$KWS"
check "users: kubectl get users -o name equals the users keys" await "$WAIT" users_names_match

# restart with changes, stale keys and a corrupt value while down
U2="ks-mirror-$ID-u2" U3="ks-mirror-$ID-u3" U4="ks-mirror-$ID-u4"
mk_user "$U3" && mk_user "$U4" || fail "create users before the restart"
check "users made before the restart are mirrored" await "$WAIT" \
    kv_has_all "$(key iam.kubesphere.io users "" "$U3")" "$(key iam.kubesphere.io users "" "$U4")"
check "SIGTERM: reconciler exits 0 within 2 s" term_clean
mk_user "$U2" >/dev/null
kc label users "$U3" kscore-test=while-down >/dev/null
kc delete users "$U4" --wait=false >/dev/null
STALE_U=$(key iam.kubesphere.io users "" "ks-mirror-$ID-stale")
STALE_RB=$(key iam.kubesphere.io rolebindings default "ks-mirror-$ID-stale")
STALE_NS=$(key "" namespaces "" "ks-mirror-$ID-stale")
CORRUPT=$(key iam.kubesphere.io globalroles "" platform-admin)
for k in "$STALE_U" "$STALE_RB" "$STALE_NS"; do
    nats_ kv put "$BUCKET" "$k" "not an ObjectEvent" >/dev/null || fail "put stale key $k"
done
nats_ kv put "$BUCKET" "$CORRUPT" "garbage" >/dev/null || fail "corrupt $CORRUPT"
check "stale keys are in the bucket while the reconciler is down" kv_has "$STALE_U"

start_rec 2
check "reconciler becomes ready after the restart" await "$WAIT" rec_ready
check "reconciler leads again at once (the Lease was released)" await 5 rec_leads
check "resync at start deletes a stale users key" await "$WAIT" kv_absent "$STALE_U"
check "resync at start deletes a stale rolebindings key" await "$WAIT" kv_absent "$STALE_RB"
check "resync at start deletes a stale namespaces key" await "$WAIT" kv_absent "$STALE_NS"
check "resync rewrites an undecodable value" await "$WAIT" in_mirror globalroles "iam.kubesphere.io" globalroles "" platform-admin any
check "user created while down is mirrored" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$U2" any
check "user changed while down has its new resourceVersion" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$U3" any
check "user deleted while down is gone" await "$WAIT" kv_absent "$(key iam.kubesphere.io users "" "$U4")"
check "after the restart the bucket equals the API (every watched resource)" await "$WAIT" bucket_equals_api
check "users: kubectl get users -o name equals the users keys after the restart" users_names_match
check "SIGTERM after the restart: exits 0 within 2 s" term_clean
kc delete users "$U2" "$U3" --wait=false >/dev/null 2>&1

# ======================================================================
# Part 2: kube-apiserver outage, on a control plane of its own
# ======================================================================
if [ ! -x "$KUBE_APISERVER" ]; then
    fail "outage: kube-apiserver binary" "not found at $KUBE_APISERVER"
    exit 1
fi
if ! start_own_cp; then
    fail "outage: own control plane starts"
    exit 1
fi
use_cp "$OWN_CP/env"
KPORT=$(awk '$1 == "kube" {print $2}' "$CP_DIR/ports")
EPORT=$(awk '$1 == "etcd" {print $2}' "$CP_DIR/ports")
KUBE_PID=$(awk '$1 == "kube-apiserver" {print $2}' "$CP_DIR/pids")

# start_apiserver PORT NAME: kube-apiserver on the control plane's etcd with
# the flags of scripts/controlplane.sh; sets APISERVER_PID.
start_apiserver() {
    local port="$1" name="$2" pki="$CP_DIR/pki"
    mkdir -p "$CP_DIR/kube/certs-$name"
    start_daemon "$TMP/$name.log" "$KUBE_APISERVER" \
        --bind-address=127.0.0.1 \
        --secure-port="$port" \
        --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --etcd-servers="http://127.0.0.1:$EPORT" \
        --cert-dir="$CP_DIR/kube/certs-$name" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --token-auth-file="$pki/tokens.csv" \
        --authorization-mode=Node,RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range="${KS_SERVICE_CIDR:-10.96.0.0/24}" \
        --allow-privileged=false \
        --profiling=false \
        --v=0
    APISERVER_PID=$DAEMON_PID
    own "$APISERVER_PID"
}
apiserver_ready() {
    curl -sf --max-time 3 --cacert "$CP_DIR/pki/ca.crt" -H "@$CP_DIR/pki/admin.header" \
        "https://127.0.0.1:$1/readyz" >/dev/null
}

O1="ks-outage-1" O2="ks-outage-2" O3="ks-outage-3" O4="ks-outage-4"
start_rec 3
check "outage: reconciler ready on its own control plane" await "$WAIT" rec_ready
check "outage: reconciler leads" await "$WAIT" rec_leads
mk_user "$O1" && mk_user "$O2" && mk_user "$O3" || fail "outage: create users"
check "outage: users mirrored before the outage" await "$WAIT" bucket_equals_api users

T_STOP=$(date +%s)
KUBE_START=$(awk '$1 == "kube-apiserver" {print $3}' "$CP_DIR/pids")
KS_STOP_GRACE=3 stop_pid "$KUBE_PID" "$KUBE_START" 2>/dev/null
gone() { ! pid_alive "$1" "$2"; }
check "outage: kube-apiserver stopped" gone "$KUBE_PID" "$KUBE_START"
P2=$(free_port)
start_apiserver "$P2" second
check "outage: a second kube-apiserver on the same etcd is ready" await 60 apiserver_ready "$P2"
kc2() { timeout 30 "$KUBECTL" --kubeconfig "$KUBECONFIG_" --server "https://127.0.0.1:$P2" "$@"; }
kc2 delete users "$O1" --wait=false >/dev/null &&
    kc2 label users "$O2" kscore-test=outage >/dev/null &&
    user_yaml "$O4" | kc2 apply -f - >/dev/null || fail "outage: change users through the second kube-apiserver"
check "outage: the reconciler survives the outage" rec_alive
# kube-apiserver stays away for at least 10 s
while [ $(( $(date +%s) - T_STOP )) -lt 10 ]; do sleep 0.2; done
KS_STOP_GRACE=3 stop_pid "$APISERVER_PID" 2>/dev/null
start_apiserver "$KPORT" first-again
check "outage: kube-apiserver is back on its port" await 60 apiserver_ready "$KPORT"
check "outage: the reconciler is still alive" rec_alive
check "outage: the reconciler leads again" await 60 rec_leads
check "outage: the deleted user's key is gone" await 60 kv_absent "$(key iam.kubesphere.io users "" "$O1")"
check "outage: the changed user has its new resourceVersion" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$O2" any
check "outage: the created user is mirrored" await "$WAIT" in_mirror users "iam.kubesphere.io" users "" "$O4" any
check "outage: after the restart the bucket equals the API (every watched resource)" await "$WAIT" bucket_equals_api
check "outage: kubectl get users -o name equals the users keys" users_names_match
check "outage: SIGTERM, exits 0 within 2 s" term_clean
KS_STOP_GRACE=3 stop_pid "$APISERVER_PID" 2>/dev/null

echo "test_mirror: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
