#!/bin/bash
# kscore-pki: the one-shot `pki` job of the compose stack. Fills the pki
# volume (PKI_DIR, default /pki) once; later runs keep what exists, so
# tokens, keys and certificates survive restarts and upgrades.
#
#   ca.crt, ca.key                   a private CA
#   apiserver.crt/.key               kube-apiserver's serving certificate
#                                    (kube-apiserver, kubernetes.default.svc, localhost, 127.0.0.1)
#   sa.key, sa.pub                   service-account signing keys
#   admin.token, tokens.csv          kube-apiserver's static token (group system:masters)
#   kubeconfig                       what the kscore services use (KS_KUBECONFIG)
#   jwt-secret                       the HMAC key of iam's tokens (KS_JWT_SECRET_FILE)
#   gateway.crt/.key, haproxy.pem    haproxy's TLS certificate for the gateway
#                                    (localhost, 127.0.0.1, haproxy, PKI_GATEWAY_SANS)
set -euo pipefail
umask 077
D="${PKI_DIR:-/pki}"
KUBE_URL="${PKI_KUBE_URL:-https://kube-apiserver:6443}"
mkdir -p "$D"
cd "$D"

log() { echo "kscore-pki: $*" >&2; }

cat >openssl.cnf <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = kscore-compose-ca
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[apiserver]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:kube-apiserver, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:10.96.0.1
authorityKeyIdentifier = keyid
[gateway]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:haproxy, DNS:gateway, IP:127.0.0.1${PKI_GATEWAY_SANS:+, $PKI_GATEWAY_SANS}
authorityKeyIdentifier = keyid
CNF

# issue NAME EXT CN: NAME.key and NAME.crt signed by the CA
issue() {
    openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
    openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
        -extfile openssl.cnf -extensions "$2" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr"
}

if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -config openssl.cnf -extensions ca \
        -out ca.crt 2>/dev/null
    rm -f apiserver.crt gateway.crt
    log "made a new CA"
fi
[ -s apiserver.crt ] || { issue apiserver apiserver kube-apiserver; log "issued apiserver.crt"; }
[ -s gateway.crt ] || { issue gateway gateway kscore-gateway; log "issued gateway.crt"; }
cat gateway.crt gateway.key >haproxy.pem
if [ ! -s sa.key ]; then
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
fi
[ -s admin.token ] || openssl rand -hex 32 >admin.token
printf '%s,admin,kscore-admin,"system:masters"\n' "$(cat admin.token)" >tokens.csv
[ -s jwt-secret ] || { openssl rand -hex 32 | tr -d '\n' >jwt-secret; log "made jwt-secret"; }

cat >kubeconfig.tmp <<KC
apiVersion: v1
kind: Config
clusters:
- name: kscore
  cluster:
    server: $KUBE_URL
    certificate-authority-data: $(base64 -w0 <ca.crt)
users:
- name: admin
  user:
    token: $(cat admin.token)
contexts:
- name: kscore
  context:
    cluster: kscore
    user: admin
    namespace: default
current-context: kscore
KC
mv kubeconfig.tmp kubeconfig
# everything is read by the services' user only; the CA and the
# certificates by anyone
chmod 600 ./*.key admin.token tokens.csv jwt-secret kubeconfig haproxy.pem
chmod 644 ./*.crt sa.pub
log "pki ready in $D"
