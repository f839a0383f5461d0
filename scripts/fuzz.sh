#!/usr/bin/env bash
# scripts/fuzz.sh [seconds] [target]: build a libFuzzer target with
# clang -fsanitize=fuzzer,address,undefined and run it for `seconds` (default
# 60) on its corpus, then merge what it found into the kept corpus.
#   target: requestinfo (tests/fuzz/fuzz_<target>.c); the only one so far.
# Not part of `make test` (too long). tests/fuzz/README.md explains.
#
# Layout:
#   tests/fuzz/corpus/<target>/   the kept corpus (committed, small)
#   tests/fuzz/<target>.dict      the dictionary, if any
#   build/fuzz/                   binary, generated code, work corpus, logs,
#                                 crash artifacts (crash-*, leak-*, timeout-*)
# Environment: FUZZ_NICE (default 19), FUZZ_MAX_LEN (default 4096),
# FUZZ_MERGE=0 to skip the merge. Exit status: 0 clean, 1 a crash or a
# sanitizer report (the artifact's path is printed), 2 a build failure.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${1:-60}"
TARGET="${2:-requestinfo}"
NICE="${FUZZ_NICE:-19}"
MAX_LEN="${FUZZ_MAX_LEN:-4096}"
OUT="$ROOT/build/fuzz"
CORPUS="$ROOT/tests/fuzz/corpus/$TARGET"
WORK="$OUT/corpus-$TARGET"
DICT="$ROOT/tests/fuzz/$TARGET.dict"
BIN="$OUT/fuzz_$TARGET"
LOG="$OUT/fuzz-$TARGET.log"

case "$DURATION" in
'' | *[!0-9]*) echo "usage: $0 [seconds] [target]" >&2; exit 2 ;;
esac
cd "$ROOT"
command -v clang >/dev/null || { echo "clang not found (apt-get install -y clang)" >&2; exit 2; }

# Sources of each target: the harness and the library files it needs.
case "$TARGET" in
requestinfo)
    SRC=(tests/fuzz/fuzz_requestinfo.c lib/requestinfo.c lib/status.c
         "$OUT/gen/kscore/v1/common.pb-c.c")
    PROTOS=(proto/kscore/v1/common.proto)
    ;;
*) echo "unknown fuzz target $TARGET" >&2; exit 2 ;;
esac

mkdir -p "$OUT/gen" "$WORK" "$CORPUS"
for p in "${PROTOS[@]}"; do
    protoc-c --proto_path=proto --c_out="$OUT/gen" "$p" || exit 2
done
echo "== building $BIN"
# shellcheck disable=SC2046
clang -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Wno-unused-parameter \
    -Ilib -I"$OUT/gen" $(pkg-config --cflags libprotobuf-c) \
    "${SRC[@]}" -o "$BIN" $(pkg-config --libs libprotobuf-c) || exit 2

DICT_ARG=()
[ -f "$DICT" ] && DICT_ARG=(-dict="$DICT")

# One job, one worker (the machine's cores are shared): the job runs in a
# child whose output goes to fuzz-0.log in the current folder.
echo "== fuzzing $TARGET for ${DURATION}s (nice $NICE), log in $LOG"
rm -f "$OUT/fuzz-0.log"
(
    cd "$OUT" &&
        nice -n "$NICE" "$BIN" -jobs=1 -workers=1 -max_total_time="$DURATION" \
            -max_len="$MAX_LEN" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$OUT/" "${DICT_ARG[@]}" "$WORK" "$CORPUS"
)
rc=$?
[ -f "$OUT/fuzz-0.log" ] && mv "$OUT/fuzz-0.log" "$LOG"
tail -n 25 "$LOG" 2>/dev/null
if [ "$rc" -ne 0 ] || grep -qE 'ERROR: (libFuzzer|AddressSanitizer|UndefinedBehaviorSanitizer)|runtime error:|check failed' "$LOG" 2>/dev/null; then
    echo "== FAILED: see $LOG and the artifacts:" >&2
    ls -1 "$OUT"/crash-* "$OUT"/leak-* "$OUT"/timeout-* "$OUT"/oom-* 2>/dev/null >&2
    exit 1
fi
execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$LOG" | grep -oE '[0-9]+$' | tail -1)
echo "== $TARGET: ${execs:-?} executions in ${DURATION}s, no crash, no sanitizer report"

if [ "${FUZZ_MERGE:-1}" != 0 ]; then
    # Keep only inputs that add coverage to the kept corpus.
    before=$(ls "$CORPUS" | wc -l)
    nice -n "$NICE" "$BIN" -merge=1 -max_len="$MAX_LEN" "$CORPUS" "$WORK" >"$OUT/merge-$TARGET.log" 2>&1 ||
        { echo "merge failed: $OUT/merge-$TARGET.log" >&2; exit 1; }
    after=$(ls "$CORPUS" | wc -l)
    echo "== corpus $CORPUS: $before -> $after files, $(du -sh "$CORPUS" | cut -f1)"
fi
exit 0
