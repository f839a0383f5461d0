#!/usr/bin/env bash
# scripts/bench.sh: run every benchmark and write bench/REPORT.md (make bench).
#
# Starts its own nats-server (JetStream, file store in a mktemp -d folder, a
# free 127.0.0.1 port), runs each $BUILD/bench/bench_* binary against it with
# KS_NATS_URL set (each bounded by KS_BENCH_TIMEOUT seconds, 300), and writes
# bench/REPORT.md: date, machine (nproc, CPU model, memory, kernel), versions,
# the figures measured before (DESIGN.md §11) and each benchmark's output.
# The server is stopped by PID and the folder removed on exit. Exits non-zero
# if a benchmark failed (the report still says which).
#
# Benchmarks that need Kubernetes (bench_mirror) get a throwaway etcd and
# kube-apiserver: `scripts/controlplane.sh start $DIR/cp kube` (CRDs and roles
# applied), whose env is exported (KS_KUBECONFIG, KS_KUBE_URL, ...; not
# KS_NATS_URL, which stays this script's server), and which is stopped by PID
# on exit. Without .deps/bin/kube-apiserver (make deps) or with KS_BENCH_KUBE=0
# it is not started: those benchmarks use KS_KUBECONFIG from the environment if
# it is set, else report "skipped". A control plane that fails to start fails
# the run (and those benchmarks are skipped).
#   KS_BENCH_SECONDS   length of one run inside a benchmark (default 2)
#   KS_BENCH_REPORT    where to write the report (default bench/REPORT.md)
#   KS_BENCH_KUBE      0: no control plane (default 1)
set -uo pipefail
KS_LOG_TAG=bench
. "$(dirname "$0")/lib.sh"
cd "$KS_ROOT"

BUILD="${BUILD:-build/default}"
REPORT="${KS_BENCH_REPORT:-$KS_ROOT/bench/REPORT.md}"
NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
TIMEOUT="${KS_BENCH_TIMEOUT:-300}"

shopt -s nullglob
BENCHES=()
for f in "$BUILD"/bench/bench_*; do
    # the binaries only: objects (.o) and dependency files (.d) sit beside them
    case "$f" in *.*) continue ;; esac
    [ -f "$f" ] && [ -x "$f" ] && BENCHES+=("$f")
done
[ ${#BENCHES[@]} -gt 0 ] || die "no benchmark binaries in $BUILD/bench (run make bench)"
[ -x "$NATS_SERVER" ] || die "nats-server not found (run make deps)"

DIR="$(mktemp -d /tmp/kscore-bench.XXXXXX)"
NATS_PID=""
CP_DIR=""
cleanup() {
    # controlplane.sh stops what it recorded in $CP_DIR/pids, by PID
    [ -n "$CP_DIR" ] && "$KS_ROOT/scripts/controlplane.sh" stop "$CP_DIR" >/dev/null 2>&1
    [ -n "$NATS_PID" ] && stop_pid "$NATS_PID"
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r PORT MPORT < <(free_ports 2 | tr '\n' ' ')
mkdir -p "$DIR/js"
"$NATS_SERVER" -a 127.0.0.1 -p "$PORT" -m "$MPORT" -js -sd "$DIR/js" \
    </dev/null >"$DIR/nats.log" 2>&1 &
NATS_PID=$!
wait_for nats-server 15 --pid "$NATS_PID" --log "$DIR/nats.log" -- \
    curl -sf --max-time 1 "http://127.0.0.1:$MPORT/healthz?js-enabled-only=true" ||
    die "nats-server did not start"
export KS_NATS_URL="nats://127.0.0.1:$PORT"
export KS_BENCH_NATS_PID="$NATS_PID"   # bench_gateway accounts its CPU...
export KS_NATS_MONITOR_URL="http://127.0.0.1:$MPORT"   # ...and its messages
log_info "nats-server $KS_NATS_URL (pid $NATS_PID, store $DIR/js)"

rc=0
kube_note="none (KS_BENCH_KUBE=0)"
if [ "${KS_BENCH_KUBE:-1}" = 0 ]; then
    :
elif [ ! -x "$KS_DEPS_BIN/kube-apiserver" ] || [ ! -x "$KS_DEPS_BIN/etcd" ] ||
     [ ! -x "$KS_DEPS_BIN/kubectl" ]; then
    kube_note="none (no etcd, kube-apiserver or kubectl in $KS_DEPS_BIN: run make deps)"
    log_warn "$kube_note; benchmarks that need Kubernetes are skipped"
else
    log_info "starting etcd and kube-apiserver in $DIR/cp"
    if "$KS_ROOT/scripts/controlplane.sh" start "$DIR/cp" kube >"$DIR/controlplane.log" 2>&1; then
        CP_DIR="$DIR/cp"
        # shellcheck disable=SC1091
        . "$CP_DIR/env"
        export KS_BENCH_MIRROR_CLEANUP=0   # the control plane is thrown away
        kube_note="$("$KS_DEPS_BIN/kube-apiserver" --version 2>&1 | head -1), etcd $("$KS_DEPS_BIN/etcd" --version 2>&1 | awk 'NR == 1 { print $3 }'), started for the run (scripts/controlplane.sh, fsync on)"
        log_info "kube-apiserver $KS_KUBE_URL"
    else
        CP_DIR="$DIR/cp"   # stop whatever it left
        unset KS_KUBECONFIG
        log_error "the control plane did not start; benchmarks that need Kubernetes are skipped"
        tail -n 20 "$DIR/controlplane.log" >&2
        kube_note="**failed to start** (benchmarks that need it were skipped)"
        rc=1
    fi
fi

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
[ -n "$cpu_model" ] || cpu_model=$(uname -m)
mem_total=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)

{
    echo "# kscore benchmarks"
    echo
    echo "Written by \`make bench\` (scripts/bench.sh). Each benchmark runs against a nats-server"
    echo "started for the run (JetStream, file store in a temp folder on 127.0.0.1), on the same machine."
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- machine: $(nproc) CPUs, $cpu_model, $mem_total RAM, Linux $(uname -r)"
    echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
    echo "- nats-server: $("$NATS_SERVER" --version 2>&1 | head -1)"
    echo "- cnats (libnats): $(pkg-config --modversion libnats 2>/dev/null || echo unknown)"
    echo "- Kubernetes: $kube_note"
    echo "- build: $BUILD, run length KS_BENCH_SECONDS=${KS_BENCH_SECONDS:-2}"
    echo
    echo "Measured before on these machines (DESIGN.md §11): NATS request/reply p50 about 0.24 ms"
    echo "synchronous; JetStream async publish about 140k msg/s; without SendAsap every reply"
    echo "waits about 1 ms. JetStream KV with 10,000 values of 1.5 KB: sequential puts 5.4k/s,"
    echo "pipelined publishes to \$KV.<bucket>.<key> 63k/s, a watcher loads all 10,000 in about 80 ms,"
    echo "put-to-watcher latency p50 0.25 ms, p99 0.5 ms."
} >"$DIR/report.md"

for b in "${BENCHES[@]}"; do
    name=$(basename "$b")
    log_info "running $name"
    echo "== $name"
    timeout -k 5 "$TIMEOUT" "$b" >"$DIR/$name.out" 2>"$DIR/$name.err"
    brc=$?
    cat "$DIR/$name.out"
    {
        echo
        echo "## $name"
        echo
        cat "$DIR/$name.out"
        if [ "$brc" -ne 0 ]; then
            echo
            echo "**FAILED** (exit $brc):"
            echo
            echo '```'
            tail -n 20 "$DIR/$name.err"
            echo '```'
        fi
    } >>"$DIR/report.md"
    if [ "$brc" -ne 0 ]; then
        log_error "$name failed (exit $brc)"
        tail -n 20 "$DIR/$name.err" >&2
        rc=1
    fi
done

mkdir -p "$(dirname "$REPORT")"
mv "$DIR/report.md" "$REPORT"
log_info "wrote $REPORT"
exit "$rc"
