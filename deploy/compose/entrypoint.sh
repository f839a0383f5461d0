#!/bin/bash
# kscore-entrypoint: starts one kscore program (the command) in a container.
#
# Replicas of a scaled compose service share their environment and their
# named volume. A service whose replicas each need state of their own (the
# audit store with its durable consumer, the gateway's audit spool) sets
# KS_REPLICA_ROOT to a folder on that volume: the entrypoint claims the
# lowest-numbered free slot KS_REPLICA_ROOT/replica-N (an flock held for the
# life of the process, so a slot is never used twice at once and is freed
# when the container stops), then replaces "{replica}" in the value of every
# KS_* variable by N. A store and its consumer name therefore always travel
# together, whichever container picks the slot up after a restart.
#
#   KS_REPLICA_ROOT=/var/lib/kscore/audit
#   KS_AUDIT_DB=/var/lib/kscore/audit/replica-{replica}/audit.db
#   KS_AUDIT_CONSUMER=audit-{replica}
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "kscore-entrypoint: no command (kscore-apigw, kscore-iam, kscore-audit, kscore-reconciler)" >&2
    exit 2
fi

if [ -n "${KS_REPLICA_ROOT:-}" ]; then
    mkdir -p "$KS_REPLICA_ROOT"
    max="${KS_REPLICA_MAX:-64}"
    n=1
    while :; do
        d="$KS_REPLICA_ROOT/replica-$n"
        mkdir -p "$d"
        exec 9>>"$d/.lock"
        if flock -n 9; then break; fi
        exec 9>&-
        n=$((n + 1))
        if [ "$n" -gt "$max" ]; then
            echo "kscore-entrypoint: no free slot among $max in $KS_REPLICA_ROOT" >&2
            exit 1
        fi
    done
    # fd 9 stays open (and locked) in the program exec'd below
    export KS_REPLICA="$n"
    for name in $(compgen -e); do
        case "$name" in
            KS_*) val="${!name}"
                  if [[ "$val" == *"{replica}"* ]]; then export "$name=${val//\{replica\}/$n}"; fi ;;
        esac
    done
    echo "kscore-entrypoint: $(hostname) holds slot $d" >&2
fi

exec "$@"
