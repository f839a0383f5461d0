#!/usr/bin/env bash
# make test / make unit / make integration / make valgrind.
#   scripts/test.sh unit|integration|all
# Unit tests are the cmocka binaries built from tests/unit/. Integration tests
# (cmocka binaries from tests/integration/ and scripts tests/integration/*.sh)
# run against one throwaway control plane (nats-server, etcd, kube-apiserver)
# started by scripts/controlplane.sh in a mktemp -d folder and stopped on exit.
# TEST_PREFIX (e.g. valgrind ...) wraps every C test binary. The last line is
# "N passed, N failed"; the exit status is non-zero if anything failed.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${BUILD:-build/default}"
MODE="${1:-all}"
TEST_PREFIX="${TEST_PREFIX:-}"
export KS_TEST_BUILD="$ROOT/$BUILD"
cd "$ROOT"

passed=0
failed=0
failed_names=()

# Count a cmocka run from its summary lines.
count_cmocka() {
    local name="$1" out="$2" rc="$3" p f
    p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$out" | awk '{s+=$4} END {print s+0}')
    f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$out" | awk '{s+=$4} END {print s+0}')
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$f" -gt 0 ]; then
        failed_names+=("$name")
    elif [ "$rc" -ne 0 ] || [ "$p" -eq 0 ]; then
        # crashed, a sanitizer or valgrind error, or ran nothing
        failed=$((failed + 1))
        failed_names+=("$name (exit $rc)")
    fi
}

run_c_tests() {
    local kind="$1" src bin name out rc
    for src in tests/"$kind"/test_*.c; do
        [ -e "$src" ] || continue
        name="$(basename "$src" .c)"
        bin="$BUILD/tests/$kind/$name"
        out="$(mktemp)"
        echo "== $kind/$name"
        if [ ! -x "$bin" ]; then
            echo "missing binary $bin (run make)" | tee "$out"
            rc=127
        else
            # shellcheck disable=SC2086
            timeout 600 $TEST_PREFIX "$bin" >"$out" 2>&1
            rc=$?
        fi
        cat "$out"
        count_cmocka "$kind/$name" "$out" "$rc"
        rm -f "$out"
    done
}

# Shell integration tests print "PASS: name" or "FAIL: name" per check.
run_sh_tests() {
    local t name out rc p f
    for t in tests/integration/test_*.sh; do
        [ -e "$t" ] || continue
        name="$(basename "$t" .sh)"
        out="$(mktemp)"
        echo "== integration/$name"
        timeout 600 bash "$t" >"$out" 2>&1
        rc=$?
        cat "$out"
        p=$(grep -c '^PASS: ' "$out")
        f=$(grep -c '^FAIL: ' "$out")
        passed=$((passed + p))
        failed=$((failed + f))
        if [ "$f" -gt 0 ]; then
            failed_names+=("integration/$name")
        elif [ "$rc" -ne 0 ] || [ "$p" -eq 0 ]; then
            failed=$((failed + 1))
            failed_names+=("integration/$name (exit $rc)")
        fi
        rm -f "$out"
    done
}

CP_DIR=""
stop_control_plane() {
    if [ -n "$CP_DIR" ]; then
        scripts/controlplane.sh stop "$CP_DIR" >/dev/null 2>&1 || true
        rm -rf "$CP_DIR"
    fi
}

start_control_plane() {
    CP_DIR="$(mktemp -d /tmp/kscore-test.XXXXXX)"
    trap stop_control_plane EXIT
    echo "== starting the control plane in $CP_DIR"
    if ! scripts/controlplane.sh start "$CP_DIR"; then
        echo "control plane did not start"
        failed=$((failed + 1))
        failed_names+=("control plane")
        return 1
    fi
    # shellcheck disable=SC1091
    source "$CP_DIR/env"
    export KS_TEST_DIR="$CP_DIR"
    return 0
}

case "$MODE" in
unit)
    run_c_tests unit
    ;;
integration)
    start_control_plane && { run_c_tests integration; run_sh_tests; }
    ;;
all)
    run_c_tests unit
    start_control_plane && { run_c_tests integration; run_sh_tests; }
    ;;
*)
    echo "usage: $0 unit|integration|all" >&2
    exit 2
    ;;
esac

stop_control_plane
CP_DIR=""
if [ "${#failed_names[@]}" -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
