#!/usr/bin/env bash
# make deps: install everything a fresh Debian 12 machine needs to build, run
# and test kscore. Idempotent: a second run only checks and finishes in seconds.
#   - system packages through apt (C libraries, protobuf-c compiler, nats-server)
#   - etcd, kube-apiserver, kubectl and the nats CLI built from the Go module
#     proxy into .deps/bin (git-ignored)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEPS="$ROOT/.deps"
BIN="$DEPS/bin"
mkdir -p "$BIN"

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
NATSCLI_VERSION="${NATSCLI_VERSION:-v0.5.0}"

APT_PACKAGES="build-essential pkg-config libnats-dev libprotobuf-c-dev
protobuf-c-compiler libmicrohttpd-dev libjansson-dev libsqlite3-dev
libcmocka-dev libcurl4-openssl-dev libcrypt-dev libssl-dev nats-server curl
ca-certificates openssl valgrind python3 iproute2 clang wrk debootstrap"

log() { printf 'deps: %s\n' "$*" >&2; }

install_apt() {
    local missing=""
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && { log "apt packages present"; return; }
    log "installing:$missing"
    local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
}

need_go() {
    command -v go >/dev/null || { [ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"; }
    command -v go >/dev/null || { log "Go is required to build etcd and kube-apiserver"; exit 1; }
}

# stamp NAME VERSION: true when .deps/bin/NAME was built for VERSION.
stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$DEPS/$1.version" 2>/dev/null)" = "$2" ]; }
stamp_set() { echo "$2" > "$DEPS/$1.version"; }

build_etcd() {
    stamp_ok etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION present"; return; }
    need_go
    local w="$DEPS/src/etcd"; mkdir -p "$w"
    log "building etcd $ETCD_VERSION"
    cat > "$w/go.mod" <<MOD
module kscore.local/deps/etcd
go 1.24
require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
    cat > "$w/tools.go" <<'GO'
//go:build tools
package tools
import _ "go.etcd.io/etcd/server/v3"
GO
    (cd "$w" && go mod tidy >/dev/null 2>&1 || true
     cd "$w" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
     go build -trimpath -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
    stamp_set etcd "$ETCD_VERSION"
}

# kube-apiserver and kubectl: a wrapper module requiring k8s.io/kubernetes,
# with every k8s.io staging module replaced by its v0.X.Y tag. The staging list
# is read from the kubernetes go.mod itself so a version bump needs no edit.
build_kube() {
    stamp_ok kube-apiserver "$K8S_VERSION" && stamp_ok kubectl "$K8S_VERSION" && {
        log "kube-apiserver and kubectl $K8S_VERSION present"; return; }
    need_go
    local w="$DEPS/src/kube"; mkdir -p "$w"
    local staging="v0.${K8S_VERSION#v1.}"
    log "building kube-apiserver and kubectl $K8S_VERSION (staging $staging); this takes several minutes"
    local gomod
    gomod="$(cd "$w" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
    {
        echo "module kscore.local/deps/kube"
        echo "go 1.25"
        echo "require k8s.io/kubernetes $K8S_VERSION"
        grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
    } > "$w/go.mod"
    cat > "$w/tools.go" <<'GO'
//go:build tools
package tools
import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    local ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    (cd "$w" && go mod tidy >/dev/null &&
     go build -trimpath -ldflags "$ld" -o "$BIN/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
     go build -trimpath -ldflags "$ld" -o "$BIN/kubectl" k8s.io/kubernetes/cmd/kubectl)
    stamp_set kube-apiserver "$K8S_VERSION"
    stamp_set kubectl "$K8S_VERSION"
}

build_natscli() {
    stamp_ok nats "$NATSCLI_VERSION" && { log "nats CLI $NATSCLI_VERSION present"; return; }
    need_go
    log "building nats CLI $NATSCLI_VERSION"
    GOBIN="$BIN" go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION"
    stamp_set nats "$NATSCLI_VERSION"
}

install_apt
build_etcd
build_natscli
build_kube
command -v nats-server >/dev/null || { log "nats-server missing after apt"; exit 1; }
log "ready: $(ls "$BIN" | tr '\n' ' ')"
