#!/bin/bash
# kscore-kube-init: the one-shot job that prepares kube-apiserver for kscore,
# as scripts/controlplane.sh does locally: the namespace kubesphere-system,
# every CRD of config/crds (server-side apply, then wait until Established),
# then config/roles (retried while the new kinds reach discovery).
# Idempotent: runs on every `up` and `restart`.
set -euo pipefail
CONFIG="${KS_CONFIG_DIR:-/etc/kscore/config}"
export KUBECONFIG="${KUBECONFIG:-/pki/kubeconfig}"
TIMEOUT="${KUBE_INIT_TIMEOUT:-120}"
kc() { kubectl --cache-dir /tmp/kube-cache --request-timeout=20s "$@"; }
log() { echo "kscore-kube-init: $*" >&2; }

end=$((SECONDS + TIMEOUT))
until kc get --raw /readyz >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$end" ] && { log "kube-apiserver not ready after ${TIMEOUT}s"; exit 1; }
    sleep 1
done
kc create namespace kubesphere-system --dry-run=client -o yaml | kc apply --server-side -f -
shopt -s nullglob
crds=("$CONFIG"/crds/*.yaml "$CONFIG"/crds/*.yml)
roles=("$CONFIG"/roles/*.yaml "$CONFIG"/roles/*.yml)
if [ ${#crds[@]} -gt 0 ]; then
    args=()
    for f in "${crds[@]}"; do args+=(-f "$f"); done
    kc apply --server-side --force-conflicts "${args[@]}"
    kc wait --for=condition=Established --timeout="$((end - SECONDS > 5 ? end - SECONDS : 5))s" "${args[@]}"
    log "applied ${#crds[@]} CRD file(s); all Established"
fi
if [ ${#roles[@]} -gt 0 ]; then
    args=()
    for f in "${roles[@]}"; do args+=(-f "$f"); done
    until kc apply --server-side --force-conflicts "${args[@]}"; do
        [ "$SECONDS" -ge "$end" ] && { log "applying config/roles failed"; exit 1; }
        sleep 1
    done
    log "applied ${#roles[@]} role file(s)"
fi
log "done"
