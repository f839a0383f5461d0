#!/usr/bin/env bash
# scripts/compose-image-base.sh: the Debian 13 (trixie) base image of the
# compose stack, built from Debian's packages, for an engine without a
# registry.
#
#   compose-image-base.sh          build the image unless it exists
#   compose-image-base.sh --force  rebuild it (and the cached root file system)
#
# debootstrap (minbase) makes a minimal trixie root file system, which is
# cached as .deps/compose/debian-trixie.tar, and `docker import` turns it into
# the image KS_COMPOSE_BASE_IMAGE (default kscore/debian:trixie). The
# Dockerfiles in deploy/compose/ start FROM that name; on an engine with a
# registry, `docker pull debian:trixie-slim && docker tag debian:trixie-slim
# kscore/debian:trixie` does the same job.
#
# Environment:
#   KS_COMPOSE_BASE_IMAGE   image name (kscore/debian:trixie)
#   KS_DEBIAN_MIRROR        Debian mirror (the first deb.debian.org-style URI of
#                           /etc/apt/sources.list*, else http://deb.debian.org/debian)
#   KS_DEBIAN_SECURITY_MIRROR  security mirror (http://deb.debian.org/debian-security)
#   http_proxy, https_proxy pass through to debootstrap and into the image's apt
set -euo pipefail
KS_LOG_TAG=compose-image-base
. "$(dirname "$0")/lib.sh"

IMAGE="${KS_COMPOSE_BASE_IMAGE:-kscore/debian:trixie}"
SUITE=trixie
CACHE="$KS_ROOT/.deps/compose"
TARBALL="$CACHE/debian-$SUITE.tar"
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The mirror apt already uses on this machine (proxies and local mirrors keep
# working), else Debian's CDN.
default_mirror() {
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
            /etc/apt/sources.list.d/*.list 2>/dev/null |
          grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ') || true
    echo "${uri:-http://deb.debian.org/debian}"
}

if [ "$FORCE" -eq 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log_info "$IMAGE present"
    exit 0
fi

MIRROR="${KS_DEBIAN_MIRROR:-$(default_mirror)}"
MIRROR="${MIRROR%/}"
SEC_MIRROR="${KS_DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}"
mkdir -p "$CACHE"
T0=$SECONDS

if [ "$FORCE" -eq 1 ] || [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] ||
        die "debootstrap is missing: run make deps (or apt-get install debootstrap)"
    ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    # debootstrap mounts /proc and /sys inside; unmount and remove on any exit
    cleanup() {
        local m
        for m in proc sys dev/pts dev; do
            mountpoint -q "$ROOTFS/$m" 2>/dev/null && sudo_ umount -l "$ROOTFS/$m" || true
        done
        sudo_ rm -rf "$ROOTFS"
    }
    trap cleanup EXIT
    log_info "debootstrap $SUITE (minbase) from $MIRROR; this takes a few minutes"
    if ! sudo_ env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase \
            --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
            "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        log_tail debootstrap "$CACHE/debootstrap.log" 40
        [ -f "$ROOTFS/debootstrap/debootstrap.log" ] &&
            log_tail debootstrap-inner "$ROOTFS/debootstrap/debootstrap.log" 40
        die "debootstrap failed"
    fi
    # apt inside the image: the same mirror, updates and security; no
    # recommends, no translations, no package cache left in layers.
    sudo_ rm -f "$ROOTFS/etc/apt/sources.list"
    sudo_ tee "$ROOTFS/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SEC_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    sudo_ tee "$ROOTFS/etc/apt/apt.conf.d/90kscore-image" >/dev/null <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    sudo_ tee "$ROOTFS/etc/dpkg/dpkg.cfg.d/90kscore-image" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    sudo_ rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/var/log/*.log "$ROOTFS"/debootstrap "$ROOTFS"/usr/share/doc/*/changelog* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
    echo "kscore" | sudo_ tee "$ROOTFS/etc/hostname" >/dev/null
    sudo_ tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
    sudo_ chown "$(id -u):$(id -g)" "$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
    cleanup
    trap - EXIT
    log_info "root file system cached in ${TARBALL#"$KS_ROOT"/} ($(du -h "$TARBALL" | cut -f1)) after $((SECONDS - T0))s"
fi

docker import \
    -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' \
    -m "debootstrap --variant=minbase $SUITE $MIRROR (scripts/compose-image-base.sh)" \
    "$TARBALL" "$IMAGE" >/dev/null
log_info "$IMAGE imported after $((SECONDS - T0))s"
