#!/usr/bin/env bash
# scripts/run.sh: the local control plane plus the four kscore services.
#
#   run.sh foreground   make run:  logs on the terminal, "name | line"; Ctrl-C stops all
#   run.sh background   make up:   logs in .run/logs/, returns once everything is ready
#   run.sh stop         make down: stops everything by PID; idempotent
#   run.sh status       what runs
#
# Everything lives in .run/ at the repository root (git-ignored): the control
# plane of scripts/controlplane.sh, .run/jwt-secret, .run/audit.db,
# .run/logs/<name>.log, .run/services.pids and .run/env (source it).
# Services run from $BUILD/bin (default build/default). The gateway listens on
# KS_HTTP_ADDR (default 127.0.0.1:9090). Start fails within KS_START_TIMEOUT
# (120) seconds naming the part that did not come up. See docs/operations.md.
set -euo pipefail
KS_LOG_TAG=run
. "$(dirname "$0")/lib.sh"

RUN_DIR="${KS_RUN_DIR:-$KS_ROOT/.run}"   # KS_RUN_DIR: for tests only
R="${RUN_DIR#"$KS_ROOT"/}"                # for messages: .run
BUILD="${BUILD:-build/default}"
case "$BUILD" in /*) BIN_DIR="$BUILD/bin" ;; *) BIN_DIR="$KS_ROOT/$BUILD/bin" ;; esac
SERVICES=(apigw iam audit reconciler)
SVC_PIDS_FILE="$RUN_DIR/services.pids"
CONTROLPLANE="$KS_ROOT/scripts/controlplane.sh"

# Variables the scripts write or read for themselves. Services get none of
# them, only their contract (KS_NATS_URL, KS_ADMIN_ADDR, KS_LOG_LEVEL,
# KS_KUBECONFIG, ...), so a shell that sourced .run/env changes nothing.
SCRIPT_ONLY_VARS=(KS_NATS_MONITOR_URL KS_ETCD_URL KS_KUBE_URL KS_KUBE_TOKEN_FILE
    KS_KUBE_CA_FILE KS_GATEWAY_URL KS_APIGW_ADMIN_ADDR KS_IAM_ADMIN_ADDR
    KS_AUDIT_ADMIN_ADDR KS_RECONCILER_ADMIN_ADDR KS_START_TIMEOUT KS_STOP_GRACE
    KS_ETCD_UNSAFE_NO_FSYNC KS_ETCD_LOG_LEVEL KS_KUBE_LOG_V KS_SERVICE_CIDR
    KS_RUN_DIR KSCORE_DEADLINE)

rel() { echo "${1#"$KS_ROOT"/}"; }

check_binaries() {
    local s missing=0
    for s in "${SERVICES[@]}"; do
        if [ ! -x "$BIN_DIR/kscore-$s" ]; then
            log_error "service binary missing: $(rel "$BIN_DIR")/kscore-$s"
            missing=1
        fi
    done
    [ "$missing" -eq 0 ] ||
        die "cannot start without them: build with make (make run and make up do), or point BUILD at a built tree"
}

stop_services() {
    [ -f "$SVC_PIDS_FILE" ] || return 0
    pidfile_stop "$SVC_PIDS_FILE" parallel
}

stop_all() {
    local rc=0
    stop_services || rc=1
    "$CONTROLPLANE" stop "$RUN_DIR" 2>/dev/null || rc=1
    return "$rc"
}

# service_env NAME: prints "VAR=value" lines for the service NAME.
service_env() {
    local name="$1"
    echo "KS_NATS_URL=$KS_NATS_URL"
    echo "KS_ADMIN_ADDR=${ADMIN[$name]}"
    echo "KS_LOG_LEVEL=${KS_LOG_LEVEL:-info}"
    echo "KS_KUBECONFIG=$RUN_DIR/kubeconfig"
    case "$name" in
        apigw) echo "KS_HTTP_ADDR=$HTTP_ADDR"
               echo "KS_JWT_SECRET_FILE=$RUN_DIR/jwt-secret"
               echo "KS_AUDIT_SPOOL_DIR=$RUN_DIR/audit-spool" ;;
        iam) echo "KS_JWT_SECRET_FILE=$RUN_DIR/jwt-secret" ;;
        audit) echo "KS_AUDIT_DB=$RUN_DIR/audit.db" ;;
    esac
}

# start_service NAME MODE: starts $BIN_DIR/kscore-NAME in a session of its own,
# records "NAME PID START" in .run/services.pids.
start_service() {
    local name="$1" mode="$2" logf="$RUN_DIR/logs/$1.log" v
    local -a envargs=() unset=()
    for v in "${SCRIPT_ONLY_VARS[@]}"; do unset+=(-u "$v"); done
    [ "$name" != apigw ] && unset+=(-u KS_HTTP_ADDR)
    while IFS= read -r v; do envargs+=("$v"); done < <(service_env "$name")
    : >"$logf"
    if [ "$mode" = foreground ]; then
        local prefix
        prefix=$(printf '%-10s | ' "$name")
        # The log filter ignores INT and TERM so a Ctrl-C on the terminal does
        # not cut off the services' last lines; it ends when they close stderr.
        setsid env "${unset[@]}" "${envargs[@]}" "$BIN_DIR/kscore-$name" </dev/null \
            > >(trap '' INT TERM; tee -a "$logf" | sed -u "s/^/$prefix/") 2>&1 &
    else
        setsid env "${unset[@]}" "${envargs[@]}" "$BIN_DIR/kscore-$name" </dev/null >>"$logf" 2>&1 &
    fi
    SVC_PID[$name]=$!
    pidfile_add "$SVC_PIDS_FILE" "$name" "$!"
}

service_ready() { curl -sf --max-time 2 "http://$1/readyz"; }

write_env() {
    local s up
    {
        cat "$RUN_DIR/env"
        echo "# written by scripts/run.sh"
        printf 'export KS_GATEWAY_URL=%q\n' "http://$HTTP_ADDR"
        for s in "${SERVICES[@]}"; do
            up=$(echo "$s" | tr '[:lower:]' '[:upper:]')
            printf 'export KS_%s_ADMIN_ADDR=%q\n' "$up" "${ADMIN[$s]}"
        done
    } >"$RUN_DIR/env.tmp"
    mv "$RUN_DIR/env.tmp" "$RUN_DIR/env"
}

print_summary() {
    local s
    cat >&2 <<EOF

kscore is up ($(( SECONDS - T0 ))s), state in $R/:
  gateway          $KS_GATEWAY_URL
  nats             $KS_NATS_URL   (monitor $KS_NATS_MONITOR_URL)
  kube-apiserver   $KS_KUBE_URL   (admin kubeconfig $R/kubeconfig)
EOF
    for s in "${SERVICES[@]}"; do
        printf '  %-16s pid %-8s admin http://%s  log %s\n' \
            "$s" "${SVC_PID[$s]}" "${ADMIN[$s]}" "$R/logs/$s.log" >&2
    done
    cat >&2 <<EOF

Try:
  source $R/env
  .deps/bin/kubectl --kubeconfig $R/kubeconfig get crd
  .deps/bin/nats --server \$KS_NATS_URL micro ls
  curl -s http://\$KS_APIGW_ADMIN_ADDR/readyz; curl -s http://\$KS_IAM_ADMIN_ADDR/metrics
EOF
}

FOREGROUND_STOPPING=0
on_foreground_signal() {
    trap '' INT TERM
    FOREGROUND_STOPPING=1
    echo >&2
    log_info "stopping services and control plane"
    stop_all || true
    log_info "stopped"
    exit 0
}

cmd_start() {
    local mode="$1" s addr
    T0=$SECONDS
    check_binaries
    mkdir -p "$RUN_DIR/logs"
    if pidfile_all_alive "$SVC_PIDS_FILE" && pidfile_all_alive "$RUN_DIR/pids"; then
        if [ "$mode" = background ]; then
            log_info "kscore is already running (make down stops it)"
            cmd_status; return 0
        fi
        die "kscore is already running in the background; make down first"
    fi
    if pidfile_alive "$SVC_PIDS_FILE" || pidfile_alive "$RUN_DIR/pids"; then
        log_warn "stopping the remains of an earlier run"
        stop_all || die "could not stop the earlier run; see $R/pids and $R/services.pids"
    fi
    rm -f "$SVC_PIDS_FILE"

    HTTP_ADDR="${KS_HTTP_ADDR:-127.0.0.1:9090}"
    port_is_free "${HTTP_ADDR##*:}" ||
        die "the gateway address $HTTP_ADDR is in use; stop what holds it or set KS_HTTP_ADDR=127.0.0.1:PORT"

    deadline_set "${KS_START_TIMEOUT:-120}"
    if [ "$mode" = foreground ]; then
        trap on_foreground_signal INT TERM
    else
        trap 'trap "" INT TERM; log_error "interrupted"; stop_all || true; exit 1' INT TERM
    fi

    "$CONTROLPLANE" start "$RUN_DIR" || die "the control plane did not come up (logs in $R/logs/)"
    . "$RUN_DIR/env"

    if [ ! -s "$RUN_DIR/jwt-secret" ]; then
        (umask 077; openssl rand -hex 32 | tr -d '\n' >"$RUN_DIR/jwt-secret")
        log_info "generated $R/jwt-secret"
    fi
    chmod 600 "$RUN_DIR/jwt-secret"

    declare -gA ADMIN=() SVC_PID=()
    local -a ports
    mapfile -t ports < <(free_ports ${#SERVICES[@]})
    for i in "${!SERVICES[@]}"; do ADMIN[${SERVICES[$i]}]="127.0.0.1:${ports[$i]}"; done

    for s in "${SERVICES[@]}"; do start_service "$s" "$mode"; done
    write_env
    . "$RUN_DIR/env"

    for s in "${SERVICES[@]}"; do
        if ! wait_for "$s" "$(deadline_left)" --pid "${SVC_PID[$s]}" --log "$RUN_DIR/logs/$s.log" -- \
                service_ready "${ADMIN[$s]}"; then
            log_error "$s did not come up (admin http://${ADMIN[$s]}/readyz); stopping everything"
            trap '' INT TERM
            stop_all || true
            exit 1
        fi
        log_info "$s ready (admin http://${ADMIN[$s]}) after $((SECONDS - T0))s"
    done
    print_summary

    if [ "$mode" = background ]; then
        trap - INT TERM
        echo "Stop: make down (or scripts/run.sh stop)" >&2
        return 0
    fi

    echo "Ctrl-C stops everything." >&2
    local -a pids=() ; local done_pid="" rc=0
    for s in "${SERVICES[@]}"; do pids+=("${SVC_PID[$s]}"); done
    wait -n -p done_pid "${pids[@]}" || rc=$?
    [ "$FOREGROUND_STOPPING" -eq 1 ] && exit 0
    trap '' INT TERM
    for s in "${SERVICES[@]}"; do [ "${SVC_PID[$s]}" = "$done_pid" ] && break; done
    if [ "$rc" -eq 0 ]; then
        log_info "$s (pid $done_pid) stopped; stopping everything"
    else
        log_error "$s (pid $done_pid) exited with status $rc; stopping everything (log: $R/logs/$s.log)"
    fi
    stop_all || true
    exit $(( rc == 0 ? 0 : 1 ))
}

cmd_stop() {
    local any=0
    { [ -f "$SVC_PIDS_FILE" ] || [ -f "$RUN_DIR/pids" ]; } && any=1
    stop_all || die "could not stop everything; see $R/pids and $R/services.pids"
    if [ "$any" -eq 1 ]; then log_info "kscore stopped"; else log_info "nothing was running"; fi
}

cmd_status() {
    local name pid start rc=1
    if [ -f "$SVC_PIDS_FILE" ]; then
        while read -r name pid start; do
            if pid_alive "$pid" "$start"; then echo "$name running (pid $pid)"; rc=0
            else echo "$name stopped (was pid $pid)"; fi
        done <"$SVC_PIDS_FILE"
    fi
    "$CONTROLPLANE" status "$RUN_DIR" && rc=0
    return "$rc"
}

case "${1:-}" in
    foreground|background) cmd_start "$1" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 foreground|background|stop|status" >&2; exit 2 ;;
esac
