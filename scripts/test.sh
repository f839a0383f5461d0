#!/usr/bin/env bash
# make test / make unit / make integration / make valgrind.
#   scripts/test.sh unit|integration|compose|all
# Unit tests are the cmocka binaries built from tests/unit/. Integration tests
# (cmocka binaries from tests/integration/ and scripts tests/integration/*.sh)
# run against one throwaway control plane (nats-server, etcd, kube-apiserver)
# started by scripts/controlplane.sh in a mktemp -d folder and stopped on exit.
# "all" then runs the docker-compose suite (KS_TEST_COMPOSE=smoke|full|off,
# default smoke; skipped with a line saying so where no Docker engine runs).
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
# run_sh_suite NAME LIMIT_S CMD...: one suite that prints PASS:/FAIL: lines.
run_sh_suite() {
    local name="$1" limit="$2" out rc p f
    shift 2
    out="$(mktemp)"
    echo "== $name"
    timeout "$limit" "$@" >"$out" 2>&1
    rc=$?
    cat "$out"
    p=$(grep -c '^PASS: ' "$out")
    f=$(grep -c '^FAIL: ' "$out")
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$f" -gt 0 ]; then
        failed_names+=("$name")
    elif [ "$rc" -ne 0 ] || [ "$p" -eq 0 ]; then
        failed=$((failed + 1))
        failed_names+=("$name (exit $rc)")
    fi
    rm -f "$out"
}

run_sh_tests() {
    local t
    for t in tests/integration/test_*.sh; do
        [ -e "$t" ] || continue
        run_sh_suite "integration/$(basename "$t" .sh)" 600 bash "$t"
    done
}

# The docker-compose stack (tests/compose/test_compose.sh through
# scripts/compose.sh, which builds the images when missing): the smoke subset
# by default, KS_TEST_COMPOSE=full for all of it, KS_TEST_COMPOSE=off to skip.
run_compose_tests() {
    local mode="${KS_TEST_COMPOSE:-smoke}" smoke=1
    case "$mode" in
    off | 0 | no) echo "== compose: skipped (KS_TEST_COMPOSE=$mode)"; return 0 ;;
    full) smoke=0 ;;
    smoke) ;;
    *) echo "KS_TEST_COMPOSE must be smoke, full or off (got $mode)" >&2; failed=$((failed + 1)); return 1 ;;
    esac
    if ! docker info >/dev/null 2>&1; then
        echo "== compose: skipped: no Docker engine answers here (docker info failed)"
        return 0
    fi
    KS_COMPOSE_SMOKE=$smoke run_sh_suite "compose/test_compose ($mode)" 2400 scripts/compose.sh test
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
    stop_control_plane
    CP_DIR=""
    # the stack builds its own images: once, from the default build only
    [ "$BUILD" = build/default ] && run_compose_tests
    ;;
compose)
    run_compose_tests
    ;;
*)
    echo "usage: $0 unit|integration|compose|all" >&2
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
