#!/usr/bin/env bash
# scripts/controlplane.sh: a local control plane in one folder.
#
#   controlplane.sh start DIR [PART...]   PART: nats, etcd, kube (default: all)
#   controlplane.sh stop DIR
#   controlplane.sh status DIR
#
# start runs nats-server (JetStream), etcd and kube-apiserver on free
# 127.0.0.1 ports, waits until each is healthy, applies config/crds/ (and waits
# for every CRD to be Established), config/roles/ and the kubesphere-system
# namespace, then writes:
#   DIR/env          `export KS_...=` lines: source it
#   DIR/kubeconfig   the admin identity (static token, group system:masters)
#   DIR/pids         "NAME PID START" per process, for stop
#   DIR/ports        "NAME PORT"; the same ports are reused on the next start
#                    while they are free
#   DIR/logs/        one log per part
#   DIR/pki/         CA, serving certificate, service account keys, admin token
#   DIR/nats/, DIR/etcd/   data, kept across restarts
# Everything is up within KS_START_TIMEOUT seconds (120) or start names the
# part that is not, prints its log tail, stops what it started and exits 1.
# stop stops every recorded process by PID (TERM, then KILL after 5 s) and is
# idempotent. See docs/operations.md.
set -euo pipefail
KS_LOG_TAG=controlplane
. "$(dirname "$0")/lib.sh"

NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
ETCD="${ETCD:-$KS_DEPS_BIN/etcd}"
KUBE_APISERVER="${KUBE_APISERVER:-$KS_DEPS_BIN/kube-apiserver}"
KUBECTL="${KUBECTL:-$KS_DEPS_BIN/kubectl}"
SERVICE_CIDR="${KS_SERVICE_CIDR:-10.96.0.0/24}"

usage() {
    echo "usage: $0 start DIR [nats|etcd|kube]... | stop DIR | status DIR" >&2
    exit 2
}

# ---- ports, persisted in DIR/ports ----
# pick_port NAME: the port NAME had last time if it is still free, else a new one.
pick_port() {
    local name="$1" old=""
    [ -f "$DIR/ports" ] && old=$(awk -v n="$name" '$1 == n { print $2 }' "$DIR/ports")
    if [ -n "$old" ] && [ -z "${USED_PORTS[$old]:-}" ] && port_is_free "$old"; then
        echo "$old"; return
    fi
    local p
    while :; do
        p=$(free_port)
        [ -z "${USED_PORTS[$p]:-}" ] && break
    done
    echo "$p"
}
declare -A USED_PORTS=()
declare -A PORT=()
assign_port() {
    PORT[$1]=$(pick_port "$1")
    USED_PORTS[${PORT[$1]}]=1
}
save_ports() {
    local n
    : >"$DIR/ports.tmp"
    for n in "${!PORT[@]}"; do echo "$n ${PORT[$n]}" >>"$DIR/ports.tmp"; done
    # keep ports of parts not started this time
    if [ -f "$DIR/ports" ]; then
        while read -r n p; do
            [ -z "${PORT[$n]:-}" ] && echo "$n $p" >>"$DIR/ports.tmp"
        done <"$DIR/ports"
    fi
    sort -o "$DIR/ports" "$DIR/ports.tmp" && rm -f "$DIR/ports.tmp"
}

# ---- failure: name the part, show its log, undo ----
STARTED=0
fail() {
    log_error "$@"
    if [ "$STARTED" -eq 1 ]; then
        log_info "stopping what was started in $DIR"
        pidfile_stop "$DIR/pids" || true
    fi
    exit 1
}
on_signal() { trap - INT TERM; STARTED=1; fail "interrupted"; }

# ---- PKI: a CA, the apiserver's serving certificate, service account keys ----
make_pki() {
    local pki="$DIR/pki"
    mkdir -p "$pki"; chmod 700 "$pki"
    if [ ! -s "$pki/ca.crt" ] || [ ! -s "$pki/apiserver.crt" ]; then
        cat >"$pki/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kscore-local-ca
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:10.96.0.1
authorityKeyIdentifier = keyid
CNF
        openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
        openssl req -x509 -new -key "$pki/ca.key" -sha256 -days 3650 \
            -config "$pki/openssl.cnf" -extensions ca -out "$pki/ca.crt" 2>/dev/null
        openssl ecparam -name prime256v1 -genkey -noout -out "$pki/apiserver.key" 2>/dev/null
        openssl req -new -key "$pki/apiserver.key" -subj "/CN=kube-apiserver" \
            -out "$pki/apiserver.csr" 2>/dev/null
        openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
            -extfile "$pki/openssl.cnf" -extensions server -out "$pki/apiserver.crt" 2>/dev/null
        rm -f "$pki/apiserver.csr"
    fi
    if [ ! -s "$pki/sa.key" ]; then
        openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
        openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    fi
    if [ ! -s "$pki/admin.token" ]; then
        (umask 077; openssl rand -hex 32 >"$pki/admin.token")
    fi
    ADMIN_TOKEN=$(cat "$pki/admin.token")
    (umask 077
     printf '%s,admin,kscore-admin,"system:masters"\n' "$ADMIN_TOKEN" >"$pki/tokens.csv"
     printf 'Authorization: Bearer %s\n' "$ADMIN_TOKEN" >"$pki/admin.header")
    chmod 600 "$pki"/*.key "$pki/admin.token" "$pki/tokens.csv"
}

write_kubeconfig() {
    local ca_data
    ca_data=$(base64 -w0 <"$DIR/pki/ca.crt")
    (umask 077; cat >"$DIR/kubeconfig.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kscore
  cluster:
    server: https://127.0.0.1:${PORT[kube]}
    certificate-authority-data: $ca_data
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: kscore
  context:
    cluster: kscore
    user: admin
    namespace: default
current-context: kscore
KC
    )
    mv "$DIR/kubeconfig.tmp" "$DIR/kubeconfig"
}

kubectl_() {
    timeout "$(deadline_left)" "$KUBECTL" --kubeconfig "$DIR/kubeconfig" \
        --cache-dir "$DIR/kube/cache" "$@"
}

# ---- the parts ----
start_nats() {
    mkdir -p "$DIR/nats"
    [ -x "$NATS_SERVER" ] || fail "nats-server not found (apt install nats-server, or run make deps)"
    cat >"$DIR/nats.conf" <<CONF
# written by scripts/controlplane.sh
server_name: kscore-${PORT[nats]}
listen: 127.0.0.1:${PORT[nats]}
http: 127.0.0.1:${PORT[nats_monitor]}
# An ApiRequest carries a body of up to 1 MiB plus its envelope.
max_payload: 4MB
jetstream {
    store_dir: "$DIR/nats"
}
CONF
    : >"$DIR/logs/nats.log"
    start_daemon "$DIR/logs/nats.log" "$NATS_SERVER" -c "$DIR/nats.conf"
    pidfile_add "$DIR/pids" nats "$DAEMON_PID"
    NATS_PID=$DAEMON_PID
}
nats_healthy() {
    curl -sf --max-time 2 "http://127.0.0.1:${PORT[nats_monitor]}/healthz?js-enabled-only=true"
}

start_etcd() {
    [ -x "$ETCD" ] || fail "etcd not found at $ETCD (run make deps)"
    mkdir -p "$DIR/etcd"; chmod 700 "$DIR/etcd"
    local extra=()
    [ "${KS_ETCD_UNSAFE_NO_FSYNC:-0}" = 1 ] && extra+=(--unsafe-no-fsync)
    : >"$DIR/logs/etcd.log"
    start_daemon "$DIR/logs/etcd.log" "$ETCD" \
        --name kscore \
        --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:${PORT[etcd]}" \
        --advertise-client-urls "http://127.0.0.1:${PORT[etcd]}" \
        --listen-peer-urls "http://127.0.0.1:${PORT[etcd_peer]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${PORT[etcd_peer]}" \
        --initial-cluster "kscore=http://127.0.0.1:${PORT[etcd_peer]}" \
        --log-level "${KS_ETCD_LOG_LEVEL:-warn}" \
        "${extra[@]}"
    pidfile_add "$DIR/pids" etcd "$DAEMON_PID"
    ETCD_PID=$DAEMON_PID
}
etcd_healthy() {
    curl -sf --max-time 2 "http://127.0.0.1:${PORT[etcd]}/health" | grep -q '"health":"true"'
}

start_kube() {
    [ -x "$KUBE_APISERVER" ] || fail "kube-apiserver not found at $KUBE_APISERVER (run make deps; building it takes 20-30 minutes)"
    local pki="$DIR/pki"
    mkdir -p "$DIR/kube/certs"
    : >"$DIR/logs/kube-apiserver.log"
    start_daemon "$DIR/logs/kube-apiserver.log" "$KUBE_APISERVER" \
        --bind-address=127.0.0.1 \
        --secure-port="${PORT[kube]}" \
        --advertise-address=127.0.0.1 \
        --endpoint-reconciler-type=none \
        --etcd-servers="http://127.0.0.1:${PORT[etcd]}" \
        --cert-dir="$DIR/kube/certs" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --token-auth-file="$pki/tokens.csv" \
        --authorization-mode=Node,RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allow-privileged=false \
        --profiling=false \
        --v="${KS_KUBE_LOG_V:-0}"
    pidfile_add "$DIR/pids" kube-apiserver "$DAEMON_PID"
    KUBE_PID=$DAEMON_PID
}
kube_ready() {
    curl -sf --max-time 3 --cacert "$DIR/pki/ca.crt" -H "@$DIR/pki/admin.header" \
        "https://127.0.0.1:${PORT[kube]}/readyz"
}

# kube_why: the /readyz checks that fail, if the apiserver answers at all.
kube_why() {
    local out
    out=$(curl -s --max-time 2 --cacert "$DIR/pki/ca.crt" -H "@$DIR/pki/admin.header" \
        "https://127.0.0.1:${PORT[kube]}/readyz?verbose" 2>/dev/null | grep '^\[-\]') || return 0
    log_error "kube-apiserver /readyz checks failing:"
    printf '%s\n' "$out" | sed 's/^/    /' >&2
}

apply_config() {
    local crds=() roles=() left
    shopt -s nullglob
    crds=("$KS_ROOT"/config/crds/*.yaml "$KS_ROOT"/config/crds/*.yml)
    roles=("$KS_ROOT"/config/roles/*.yaml "$KS_ROOT"/config/roles/*.yml)
    shopt -u nullglob
    : >"$DIR/logs/kubectl.log"
    kubectl_ create namespace kubesphere-system --dry-run=client -o yaml 2>>"$DIR/logs/kubectl.log" |
        kubectl_ apply --server-side -f - >>"$DIR/logs/kubectl.log" 2>&1 ||
        { log_tail kubectl "$DIR/logs/kubectl.log"; fail "creating namespace kubesphere-system failed"; }
    if [ ${#crds[@]} -gt 0 ]; then
        local args=()
        for f in "${crds[@]}"; do args+=(-f "$f"); done
        # server-side: large CRD schemas overflow the client-side
        # last-applied annotation.
        kubectl_ apply --server-side --force-conflicts "${args[@]}" >>"$DIR/logs/kubectl.log" 2>&1 ||
            { log_tail kubectl "$DIR/logs/kubectl.log"; fail "applying config/crds/ failed"; }
        left=$(deadline_left)
        kubectl_ wait --for=condition=Established --timeout="${left}s" "${args[@]}" \
            >>"$DIR/logs/kubectl.log" 2>&1 ||
            { log_tail kubectl "$DIR/logs/kubectl.log"; fail "CRDs in config/crds/ did not become Established"; }
        log_info "applied ${#crds[@]} CRD file(s); all Established"
    else
        log_info "config/crds/ holds no *.yaml yet; no CRDs applied"
    fi
    if [ ${#roles[@]} -gt 0 ]; then
        local args=()
        for f in "${roles[@]}"; do args+=(-f "$f"); done
        # An Established CRD can take a moment to appear in discovery; retry
        # "no matches for kind" for a few seconds.
        local try
        for try in 1 2 3 4 5 6 7 8 9 10; do
            kubectl_ apply --server-side --force-conflicts "${args[@]}" >>"$DIR/logs/kubectl.log" 2>&1 && break
            [ "$try" -eq 10 ] &&
                { log_tail kubectl "$DIR/logs/kubectl.log"; fail "applying config/roles/ failed"; }
            sleep 1
        done
        log_info "applied ${#roles[@]} role file(s)"
    fi
}

write_env() {
    local f="$DIR/env.tmp"
    {
        echo "# written by scripts/controlplane.sh start; source it"
        if [ "$WANT_NATS" = 1 ]; then
            printf 'export KS_NATS_URL=%q\n' "nats://127.0.0.1:${PORT[nats]}"
            printf 'export KS_NATS_MONITOR_URL=%q\n' "http://127.0.0.1:${PORT[nats_monitor]}"
        fi
        if [ "$WANT_ETCD" = 1 ]; then
            printf 'export KS_ETCD_URL=%q\n' "http://127.0.0.1:${PORT[etcd]}"
        fi
        if [ "$WANT_KUBE" = 1 ]; then
            printf 'export KS_KUBE_URL=%q\n' "https://127.0.0.1:${PORT[kube]}"
            printf 'export KS_KUBECONFIG=%q\n' "$DIR/kubeconfig"
            printf 'export KS_KUBE_TOKEN_FILE=%q\n' "$DIR/pki/admin.token"
            printf 'export KS_KUBE_CA_FILE=%q\n' "$DIR/pki/ca.crt"
        fi
    } >"$f"
    mv "$f" "$DIR/env"
}

cmd_start() {
    local t0=$SECONDS part
    WANT_NATS=0 WANT_ETCD=0 WANT_KUBE=0
    [ $# -eq 0 ] && set -- nats etcd kube
    for part in "$@"; do
        case "$part" in
            nats) WANT_NATS=1 ;;
            etcd) WANT_ETCD=1 ;;
            kube) WANT_KUBE=1; WANT_ETCD=1 ;;
            *) usage ;;
        esac
    done
    deadline_set "${KS_START_TIMEOUT:-120}"
    mkdir -p "$DIR" "$DIR/logs"
    DIR=$(abspath "$DIR")
    if pidfile_alive "$DIR/pids"; then
        die "a control plane already runs in $DIR (stop it: $0 stop $DIR)"
    fi
    rm -f "$DIR/pids" "$DIR/env"
    # binaries first, so a missing one fails before anything starts
    [ "$WANT_ETCD" = 1 ] && [ ! -x "$ETCD" ] && die "etcd not found at $ETCD (run make deps)"
    [ "$WANT_KUBE" = 1 ] && [ ! -x "$KUBE_APISERVER" ] &&
        die "kube-apiserver not found at $KUBE_APISERVER (run make deps; building it takes 20-30 minutes)"
    [ "$WANT_KUBE" = 1 ] && [ ! -x "$KUBECTL" ] && die "kubectl not found at $KUBECTL (run make deps)"

    STARTED=1
    trap on_signal INT TERM
    [ "$WANT_NATS" = 1 ] && { assign_port nats; assign_port nats_monitor; }
    [ "$WANT_ETCD" = 1 ] && { assign_port etcd; assign_port etcd_peer; }
    [ "$WANT_KUBE" = 1 ] && assign_port kube
    save_ports
    [ "$WANT_KUBE" = 1 ] && make_pki

    # nats and etcd start side by side; kube-apiserver needs etcd
    [ "$WANT_NATS" = 1 ] && start_nats
    [ "$WANT_ETCD" = 1 ] && start_etcd
    if [ "$WANT_NATS" = 1 ]; then
        wait_for nats-server "$(deadline_left)" --pid "$NATS_PID" --log "$DIR/logs/nats.log" -- nats_healthy ||
            fail "nats-server did not come up on 127.0.0.1:${PORT[nats]}"
        log_info "nats-server ready: nats://127.0.0.1:${PORT[nats]} (monitor :${PORT[nats_monitor]}) after $((SECONDS - t0))s"
    fi
    if [ "$WANT_ETCD" = 1 ]; then
        wait_for etcd "$(deadline_left)" --pid "$ETCD_PID" --log "$DIR/logs/etcd.log" -- etcd_healthy ||
            fail "etcd did not come up on 127.0.0.1:${PORT[etcd]}"
        log_info "etcd ready: http://127.0.0.1:${PORT[etcd]} after $((SECONDS - t0))s"
    fi
    if [ "$WANT_KUBE" = 1 ]; then
        write_kubeconfig
        start_kube
        wait_for kube-apiserver "$(deadline_left)" --pid "$KUBE_PID" --log "$DIR/logs/kube-apiserver.log" -- kube_ready ||
            { kube_why; fail "kube-apiserver did not come up on 127.0.0.1:${PORT[kube]}"; }
        log_info "kube-apiserver ready: https://127.0.0.1:${PORT[kube]} after $((SECONDS - t0))s"
        apply_config
    fi
    write_env
    trap - INT TERM
    log_info "control plane up in $DIR after $((SECONDS - t0))s; source $DIR/env"
}

cmd_stop() {
    [ -d "$DIR" ] || { log_info "$DIR does not exist; nothing to stop"; return 0; }
    DIR=$(abspath "$DIR")
    [ -f "$DIR/pids" ] || { log_info "nothing recorded in $DIR/pids; nothing to stop"; return 0; }
    pidfile_stop "$DIR/pids" || die "could not stop every process listed in $DIR/pids"
    log_info "control plane in $DIR stopped"
}

cmd_status() {
    local name pid start rc=1
    DIR=$(abspath "$DIR" 2>/dev/null) || { echo "not running"; return 1; }
    [ -f "$DIR/pids" ] || { echo "not running"; return 1; }
    while read -r name pid start; do
        if pid_alive "$pid" "$start"; then echo "$name running (pid $pid)"; rc=0
        else echo "$name stopped (was pid $pid)"; fi
    done <"$DIR/pids"
    return "$rc"
}

[ $# -ge 2 ] || usage
CMD="$1" DIR="$2"; shift 2
case "$CMD" in
    start) cmd_start "$@" ;;
    stop) [ $# -eq 0 ] || usage; cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
