#!/usr/bin/env bash
# tests/integration/test_reconciler_ha.sh: two kscore-reconciler replicas on
# the Lease kubesphere-system/kscore-reconciler (DESIGN.md §4, issue Mirror):
#   - exactly one leads (ks_mirror_leader 1);
#   - SIGKILL of the leader: the other leads within 20 s, and the bucket
#     stays exact (a user created after the takeover is mirrored, the users
#     keys equal the API's users);
#   - clean shutdown (SIGTERM) of the leader: a standby leads within 3 s.
# Uses the control plane of scripts/test.sh (KS_NATS_URL, KS_KUBECONFIG).
# Prints "PASS: <check>" / "FAIL: <check>"; every process it starts is
# stopped by PID; every wait is a bounded poll.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
REC="$BUILD_DIR/bin/kscore-reconciler"
KUBECTL="$KS_DEPS_BIN/kubectl --kubeconfig ${KS_KUBECONFIG:-}"
NATS_CLI="$KS_DEPS_BIN/nats --server ${KS_NATS_URL:-}"
TMP="$(mktemp -d /tmp/kscore-test-ha.XXXXXX)"
declare -A PID ADMIN
PASSED=0
FAILED=0

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1 -- ${2:-}"; FAILED=$((FAILED + 1)); }

cleanup() {
    for n in "${!PID[@]}"; do
        kill -TERM "${PID[$n]}" 2>/dev/null
    done
    for n in "${!PID[@]}"; do
        wait "${PID[$n]}" 2>/dev/null
    done
    $KUBECTL delete user ha-test-user --ignore-not-found >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT

if [ -z "${KS_NATS_URL:-}" ] || [ -z "${KS_KUBECONFIG:-}" ]; then
    fail "environment" "KS_NATS_URL and KS_KUBECONFIG must come from scripts/test.sh"
    exit 1
fi

start_rec() { # name
    local port
    port="$(free_port)"
    ADMIN[$1]=$port
    KS_ADMIN_ADDR="127.0.0.1:$port" KS_NATS_URL="$KS_NATS_URL" KS_KUBECONFIG="$KS_KUBECONFIG" \
        "$REC" >"$TMP/$1.log" 2>&1 &
    PID[$1]=$!
}

is_leader() { # name
    curl -s --max-time 2 "http://127.0.0.1:${ADMIN[$1]}/metrics" | grep -qx 'ks_mirror_leader 1'
}

# leader_of NAMES...: print the one that leads, if exactly one does.
leader_of() {
    local n found="" count=0
    for n in "$@"; do
        if is_leader "$n"; then found=$n; count=$((count + 1)); fi
    done
    [ "$count" -eq 1 ] && echo "$found"
}

# wait_leader SECONDS NAMES...: poll until exactly one leads; print it.
wait_leader() {
    local secs=$1 deadline l
    shift
    deadline=$(( $(date +%s%N) / 1000000 + secs * 1000 ))
    while [ $(( $(date +%s%N) / 1000000 )) -lt "$deadline" ]; do
        l="$(leader_of "$@")"
        [ -n "$l" ] && { echo "$l"; return 0; }
        sleep 0.1
    done
    return 1
}

users_equal() {
    local api kv
    api="$($KUBECTL get users.iam.kubesphere.io -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)"
    kv="$($NATS_CLI kv ls KS_OBJECTS 2>/dev/null | sed -n 's/^iam_kubesphere_io\.users\._\.//p' | sort)"
    [ "$api" = "$kv" ]
}

wait_for_cond() { # seconds cmd...
    local secs=$1 deadline
    shift
    deadline=$(( $(date +%s) + secs ))
    until "$@"; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

# A Lease left by an earlier test would delay the first election.
$KUBECTL -n kubesphere-system delete lease kscore-reconciler --ignore-not-found >/dev/null 2>&1

start_rec a
start_rec b
if first="$(wait_leader 30 a b)"; then
    pass "one of two replicas leads ($first)"
else
    fail "one of two replicas leads" "no single leader within 30 s"
    exit 1
fi
other=a
[ "$first" = a ] && other=b

# SIGKILL: no release; the standby takes over after the lease expires.
t0=$(date +%s%N)
kill -KILL "${PID[$first]}"
wait "${PID[$first]}" 2>/dev/null
unset "PID[$first]"
if l="$(wait_leader 25 "$other")" && [ "$l" = "$other" ]; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ "$ms" -le 20000 ]; then
        pass "after SIGKILL of the leader, the standby leads within 20 s ($ms ms)"
    else
        fail "after SIGKILL of the leader, the standby leads within 20 s" "$ms ms"
    fi
else
    fail "after SIGKILL of the leader, the standby leads" "no leader"
fi

$KUBECTL apply -f - >/dev/null <<'YAML'
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: ha-test-user
spec:
  email: ha@example.com
YAML
if wait_for_cond 10 users_equal; then
    pass "the new leader keeps the bucket exact (users keys equal the API)"
else
    fail "the new leader keeps the bucket exact" "users in the bucket differ from the API"
fi

# Clean shutdown: the leader releases the Lease; a standby leads within 3 s.
start_rec c
wait_for_cond 20 curl -sf --max-time 2 "http://127.0.0.1:${ADMIN[c]}/readyz" -o /dev/null
t0=$(date +%s%N)
kill -TERM "${PID[$other]}"
if l="$(wait_leader 10 c)" && [ "$l" = c ]; then
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    if [ "$ms" -le 3000 ]; then
        pass "after SIGTERM of the leader, the standby leads within 3 s ($ms ms)"
    else
        fail "after SIGTERM of the leader, the standby leads within 3 s" "$ms ms"
    fi
else
    fail "after SIGTERM of the leader, the standby leads" "no leader within 10 s"
fi
wait "${PID[$other]}" 2>/dev/null
rc=$?
unset "PID[$other]"
[ "$rc" -eq 0 ] && pass "the old leader exits 0" || fail "the old leader exits 0" "status $rc"

$KUBECTL delete user ha-test-user >/dev/null 2>&1
if wait_for_cond 10 users_equal; then
    pass "after the handover the bucket follows a delete"
else
    fail "after the handover the bucket follows a delete" "users differ"
fi

echo "test_reconciler_ha: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
