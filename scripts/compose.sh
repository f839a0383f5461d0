#!/usr/bin/env bash
# scripts/compose.sh: the docker-compose stack of deploy/compose/.
#
#   compose.sh build        build the images that are missing or out of date
#   compose.sh up           make compose-up: build, start, wait until every
#                           service is healthy, print the gateway URL
#   compose.sh down [-v]    make compose-down: stop and remove the containers
#                           (-v: and the volumes, i.e. every piece of data)
#   compose.sh test         make compose-test: a throwaway stack of its own
#                           (project kscore-test, free ports), the suite
#                           tests/compose/test_compose.sh, then down -v
#   compose.sh status       the containers and their health
#   compose.sh wait [SECS]  wait until every service is healthy again
#   compose.sh dc ARGS...   docker compose (or docker-compose) with the
#                           stack's file, .env and project name
#
# Environment (deploy/compose/.env has the stack's own settings):
#   KS_COMPOSE_PROJECT      project name (kscore; compose-test: kscore-test)
#   KS_COMPOSE_HTTP_PORT    published gateway port (9090), KS_COMPOSE_HTTPS_PORT (9443)
#   KS_COMPOSE_TIMEOUT      seconds `up` waits for health (300)
#   KS_COMPOSE_SRC          build context of the kscore image (the repository)
#   KS_COMPOSE_BASE_IMAGE   base image (kscore/debian:trixie, made by
#                           scripts/compose-image-base.sh when missing)
#   KS_COMPOSE_KEEP=1       compose-test leaves its stack running
#   KS_COMPOSE_SMOKE=1      compose-test runs the short smoke subset
# State for clients (the CA, env lines) goes to .run/compose/<project>/.
# See docs/operations.md, "The compose stack".
set -euo pipefail
KS_LOG_TAG=compose
. "$(dirname "$0")/lib.sh"

CDIR="$KS_ROOT/deploy/compose"
COMPOSE_FILE="$CDIR/docker-compose.yml"
ENV_FILE="$CDIR/.env"
BASE_IMAGE="${KS_COMPOSE_BASE_IMAGE:-kscore/debian:trixie}"
TIMEOUT="${KS_COMPOSE_TIMEOUT:-300}"

# .env value of NAME unless the environment sets it
envval() {
    local name="$1" def="${2:-}" v
    if [ -n "${!name:-}" ]; then echo "${!name}"; return; fi
    v=$(sed -n "s/^$name=//p" "$ENV_FILE" 2>/dev/null | tail -n1)
    echo "${v:-$def}"
}
PROJECT="${KS_COMPOSE_PROJECT:-$(envval COMPOSE_PROJECT_NAME kscore)}"
REGISTRY=$(envval KS_COMPOSE_REGISTRY kscore)
TAG=$(envval KS_COMPOSE_TAG dev)
STATE="$KS_ROOT/.run/compose/$PROJECT"

# ---- docker compose v2 or docker-compose v1 ----
DC_BIN=()
dc_detect() {
    [ ${#DC_BIN[@]} -gt 0 ] && return 0
    if docker compose version >/dev/null 2>&1; then DC_BIN=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then DC_BIN=(docker-compose)
    else die "neither 'docker compose' nor 'docker-compose' works; install Docker Compose"; fi
}
dc() {
    dc_detect
    "${DC_BIN[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE" --env-file "$ENV_FILE" "$@"
}
# dc_timeout SECONDS ARGS...: dc under timeout(1)
dc_timeout() {
    local t="$1"; shift
    dc_detect
    timeout "$t" "${DC_BIN[@]}" --project-name "$PROJECT" --file "$COMPOSE_FILE" \
        --env-file "$ENV_FILE" "$@"
}

# ---- images ----
# inputs_hash FILE...: one hash over the files' paths and contents
inputs_hash() {
    local f
    for f in "$@"; do
        if [ -d "$f" ]; then
            find "$f" -type f ! -name '*.o' ! -name '*.d' -print0 | sort -z |
                xargs -0 -r sha256sum
        else
            sha256sum "$f"
        fi
    done | sed "s#$KS_ROOT/##" | sha256sum | cut -c1-32
}

image_label() {
    docker image inspect -f '{{index .Config.Labels "org.kscore.inputs"}}' "$1" 2>/dev/null || true
}

# stage DIR SRC...: hard links (copies across file systems) of SRC in DIR
stage() {
    local dir="$1" s; shift
    rm -rf "$dir"; mkdir -p "$dir"
    for s in "$@"; do
        if [ -d "$s" ]; then cp -al "$s" "$dir/" 2>/dev/null || cp -a "$s" "$dir/"
        else ln -f "$s" "$dir/" 2>/dev/null || cp -a "$s" "$dir/"; fi
    done
}

# build_one NAME DOCKERFILE CONTEXT HASH: docker build unless the image has HASH
BUILD_PIDS=()
BUILD_NAMES=()
build_one() {
    local name="$1" dockerfile="$2" context="$3" hash="$4" image="$REGISTRY/$1:$TAG"
    if [ "$(image_label "$image")" = "$hash" ]; then
        log_info "$image is up to date"
        return 0
    fi
    log_info "building $image (log: ${STATE#"$KS_ROOT"/}/build-$name.log)"
    mkdir -p "$STATE"
    ( cd "$context" &&
      DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --force-rm --label "org.kscore.inputs=$hash" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "MAKE_JOBS=$(nproc)" \
        -f "$dockerfile" -t "$image" . ) >"$STATE/build-$name.log" 2>&1 &
    BUILD_PIDS+=("$!")
    BUILD_NAMES+=("$name")
}

cmd_build() {
    local t0=$SECONDS bin="$KS_DEPS_BIN" b src base_id i rc=0
    for b in etcd kube-apiserver kubectl nats; do
        [ -x "$bin/$b" ] || die "$bin/$b is missing: run make deps first"
    done
    "$KS_ROOT/scripts/compose-image-base.sh"
    base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
    src="${KS_COMPOSE_SRC:-$KS_ROOT}"
    local sb="$KS_ROOT/build/compose"
    mkdir -p "$sb" "$STATE"

    # the services: the repository is the context (.dockerignore)
    build_one kscore "$CDIR/Dockerfile" "$src" "$(
        { echo "$base_id"; inputs_hash "$src/Makefile" "$src/proto" "$src/lib" "$src/services" \
            "$src/tools" "$src/deploy/compose/Dockerfile" "$src/deploy/compose/entrypoint.sh"; } |
        sha256sum | cut -c1-32)"
    # infrastructure: staged contexts with only what each image needs
    stage "$sb/nats"
    build_one nats "$CDIR/Dockerfile.nats" "$sb/nats" "$(
        { echo "$base_id"; inputs_hash "$CDIR/Dockerfile.nats"; } | sha256sum | cut -c1-32)"
    stage "$sb/haproxy"
    build_one haproxy "$CDIR/Dockerfile.haproxy" "$sb/haproxy" "$(
        { echo "$base_id"; inputs_hash "$CDIR/Dockerfile.haproxy"; } | sha256sum | cut -c1-32)"
    stage "$sb/etcd" "$bin/etcd"
    build_one etcd "$CDIR/Dockerfile.etcd" "$sb/etcd" "$(
        { echo "$base_id"; inputs_hash "$CDIR/Dockerfile.etcd" "$bin/etcd"; } | sha256sum | cut -c1-32)"
    stage "$sb/kube-apiserver" "$bin/kube-apiserver"
    build_one kube-apiserver "$CDIR/Dockerfile.kube-apiserver" "$sb/kube-apiserver" "$(
        { echo "$base_id"; inputs_hash "$CDIR/Dockerfile.kube-apiserver" "$bin/kube-apiserver"; } |
        sha256sum | cut -c1-32)"
    stage "$sb/tools" "$bin/kubectl" "$bin/nats" "$CDIR/pki.sh" "$CDIR/kube-init.sh" "$KS_ROOT/config"
    build_one tools "$CDIR/Dockerfile.tools" "$sb/tools" "$(
        { echo "$base_id"; inputs_hash "$CDIR/Dockerfile.tools" "$sb/tools"; } | sha256sum | cut -c1-32)"

    for i in "${!BUILD_PIDS[@]}"; do
        if ! wait "${BUILD_PIDS[$i]}"; then
            log_tail "build of ${BUILD_NAMES[$i]}" "$STATE/build-${BUILD_NAMES[$i]}.log" 30
            rc=1
        fi
    done
    [ "$rc" -eq 0 ] || die "image build failed"
    log_info "images ready after $((SECONDS - t0))s"
}

# ---- health ----
# every container of the project as "service state exitcode health", one a line
containers() {
    local ids
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086
    docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.Name}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $ids
}

ONESHOT="pki kube-init"
# stack_ready: true when every service has a container and all are healthy
# (one-shot jobs: exited 0). Sets NOT_READY to what is missing.
stack_ready() {
    local svc name state code health s ok=1
    local lines; lines=$(containers)
    NOT_READY=""
    for s in $SERVICES; do
        if ! grep -q "^$s " <<<"$lines"; then NOT_READY+=" $s(no container)"; ok=0; fi
    done
    while read -r svc name state code health; do
        [ -n "$svc" ] || continue
        if [[ " $ONESHOT " == *" $svc "* ]]; then
            if [ "$state" = exited ] && [ "$code" != 0 ]; then
                NOT_READY+=" ${name#/}(exited $code)"; ok=0; FATAL="${name#/}"
            elif [ "$state" != exited ]; then
                NOT_READY+=" ${name#/}($state)"; ok=0
            fi
        elif [ "$state" != running ]; then
            NOT_READY+=" ${name#/}($state)"; ok=0
        elif [ "$health" != healthy ] && [ "$health" != none ]; then
            NOT_READY+=" ${name#/}($health)"; ok=0
        fi
    done <<<"$lines"
    [ "$ok" -eq 1 ]
}

wait_healthy() {
    local timeout="$1" end last="" 
    SERVICES=$(dc config --services | tr '\n' ' ')
    end=$(( $(date +%s) + timeout ))
    FATAL=""
    while ! stack_ready; do
        if [ -n "$FATAL" ]; then
            log_error "$FATAL failed"
            docker logs --tail 30 "$FATAL" 2>&1 | sed 's/^/    /' >&2
            return 1
        fi
        if [ "$(date +%s)" -ge "$end" ]; then
            log_error "not healthy after ${timeout}s:$NOT_READY"
            local n
            for n in $NOT_READY; do
                n="${n%%(*}"
                docker inspect "$n" >/dev/null 2>&1 || continue
                log_info "--- last lines of $n ---"
                docker logs --tail 15 "$n" 2>&1 | sed 's/^/    /' >&2
            done
            return 1
        fi
        if [ "$NOT_READY" != "$last" ]; then
            log_info "waiting for:$NOT_READY"
            last="$NOT_READY"
        fi
        sleep 1
    done
}

# ---- client state: CA certificate and env lines ----
write_state() {
    local bind http https
    bind=$(envval KS_COMPOSE_BIND 127.0.0.1)
    http=$(envval KS_COMPOSE_HTTP_PORT 9090)
    https=$(envval KS_COMPOSE_HTTPS_PORT 9443)
    mkdir -p "$STATE"
    docker run --rm -v "${PROJECT}_pki:/pki:ro" "$REGISTRY/tools:$TAG" cat /pki/ca.crt >"$STATE/ca.crt"
    KS_GATEWAY_URL="http://$bind:$http"
    KS_GATEWAY_HTTPS_URL="https://$bind:$https"
    {
        echo "# written by scripts/compose.sh up; source it"
        printf 'export KS_COMPOSE_PROJECT=%q\n' "$PROJECT"
        printf 'export KS_GATEWAY_URL=%q\n' "$KS_GATEWAY_URL"
        printf 'export KS_GATEWAY_HTTPS_URL=%q\n' "$KS_GATEWAY_HTTPS_URL"
        printf 'export KS_GATEWAY_CA_FILE=%q\n' "$STATE/ca.crt"
    } >"$STATE/env"
}

check_ports() {
    local p
    # our own haproxy may already hold them
    [ -n "$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
              --filter "label=com.docker.compose.service=haproxy")" ] && return 0
    for p in "$(envval KS_COMPOSE_HTTP_PORT 9090)" "$(envval KS_COMPOSE_HTTPS_PORT 9443)"; do
        port_is_free "$p" ||
            die "port $p is in use; stop what holds it or set KS_COMPOSE_HTTP_PORT / KS_COMPOSE_HTTPS_PORT (deploy/compose/.env)"
    done
}

cmd_up() {
    local t0=$SECONDS
    check_ports
    cmd_build
    log_info "starting project $PROJECT"
    mkdir -p "$STATE"
    # docker-compose v1 gives up on a dependency that is unhealthy for a
    # moment (a service still waiting for its peers): `up` is idempotent, so
    # run it again while the time lasts; the health wait below decides.
    local end=$((SECONDS + TIMEOUT)) try=1
    : >"$STATE/up.log"
    until dc_timeout "$((end - SECONDS > 10 ? end - SECONDS : 10))" up -d --remove-orphans \
            >>"$STATE/up.log" 2>&1; do
        if [ "$SECONDS" -ge "$end" ] || [ "$try" -ge 5 ]; then
            log_tail "docker compose up" "$STATE/up.log" 30
            wait_healthy 1 || true
            die "the stack did not start (project $PROJECT)"
        fi
        try=$((try + 1))
        log_info "docker compose up: $(grep -E '^ERROR' "$STATE/up.log" | tail -n1); retrying ($try)"
        sleep 2
    done
    wait_healthy "$((end - SECONDS > 10 ? end - SECONDS : 10))" ||
        die "the stack did not become healthy (project $PROJECT)"
    write_state
    local pw login pwarg
    pw=$(envval KS_ADMIN_PASSWORD 'P@88w0rd')
    if [ "$pw" = 'P@88w0rd' ]; then
        login="admin / P@88w0rd (the default: set KS_ADMIN_PASSWORD in deploy/compose/.env)"
        pwarg="$pw"
    else
        login="admin / the password in KS_ADMIN_PASSWORD"
        pwarg="<KS_ADMIN_PASSWORD>"
    fi
    cat >&2 <<EOF

kscore is up ($((SECONDS - t0))s), project $PROJECT:
$(containers | awk '{h = ($5 == "none") ? $3 : $5; if ($3 == "exited") h = "done (exit " $4 ")";
                     printf "  %-16s %-30s %s\n", $1, substr($2, 2), h}' | sort)

  gateway   $KS_GATEWAY_URL    (haproxy -> the apigw replicas)
  https     $KS_GATEWAY_HTTPS_URL   (kubectl; CA in ${STATE#"$KS_ROOT"/}/ca.crt)
  log in    $login

  source ${STATE#"$KS_ROOT"/}/env
  T=\$(curl -s -X POST "\$KS_GATEWAY_URL/oauth/token" --data-urlencode grant_type=password \\
        --data-urlencode username=admin --data-urlencode 'password=$pwarg' |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s -H "Authorization: Bearer \$T" "\$KS_GATEWAY_URL/kapis/iam.kubesphere.io/v1beta1/users"
  kubectl --server "\$KS_GATEWAY_HTTPS_URL" --certificate-authority "\$KS_GATEWAY_CA_FILE" \\
      --token "\$T" get users.iam.kubesphere.io

Scale:  scripts/compose.sh dc up -d --scale iam=4    Status: scripts/compose.sh status
Stop:   make compose-down (data stays; scripts/compose.sh down -v removes it)
EOF
}

cmd_down() {
    local t0=$SECONDS
    if [ "${1:-}" = -v ]; then
        dc down --remove-orphans --volumes --timeout 15
        rm -f "$STATE/env" "$STATE/ca.crt"
        log_info "project $PROJECT removed with its volumes after $((SECONDS - t0))s"
    else
        dc down --remove-orphans --timeout 15
        log_info "project $PROJECT stopped after $((SECONDS - t0))s; data kept in its volumes (down -v removes them)"
    fi
}

cmd_status() {
    SERVICES=$(dc config --services | tr '\n' ' ')
    containers | awk '{printf "%-16s %-30s %-8s exit=%-3s health=%s\n", $1, substr($2,2), $3, $4, $5}' | sort
    stack_ready && echo "all healthy" || { echo "not ready:$NOT_READY"; return 1; }
}

cmd_test() {
    local rc=0 t0=$SECONDS
    export KS_COMPOSE_PROJECT="${KS_COMPOSE_PROJECT:-kscore-test}"
    PROJECT="$KS_COMPOSE_PROJECT"
    STATE="$KS_ROOT/.run/compose/$PROJECT"
    if [ -z "${KS_COMPOSE_HTTP_PORT:-}" ]; then
        local -a pp; mapfile -t pp < <(free_ports 2)
        export KS_COMPOSE_HTTP_PORT="${pp[0]}" KS_COMPOSE_HTTPS_PORT="${pp[1]}"
    fi
    [ "${KS_COMPOSE_KEEP:-0}" = 1 ] || trap 'trap - INT TERM; cmd_down -v >/dev/null 2>&1 || true' EXIT
    trap 'exit 130' INT TERM
    # a stack left over from an earlier run starts from scratch
    dc down --remove-orphans --volumes --timeout 5 >/dev/null 2>&1 || true
    if ! cmd_up; then
        echo "FAIL: the compose stack comes up healthy"
        echo "0 passed, 1 failed"
        return 1
    fi
    echo "PASS: the compose stack comes up healthy ($((SECONDS - t0))s)"
    bash "$KS_ROOT/tests/compose/test_compose.sh" || rc=$?
    log_info "compose-test took $((SECONDS - t0))s"
    return "$rc"
}

case "${1:-}" in
    build) cmd_build ;;
    up) cmd_up ;;
    down) shift; cmd_down "$@" ;;
    test) cmd_test ;;
    status) cmd_status ;;
    wait) wait_healthy "${2:-$TIMEOUT}" ;;
    dc) shift; dc "$@" ;;
    *) echo "usage: $0 build|up|down [-v]|test|status|wait [SECONDS]|dc ARGS..." >&2; exit 2 ;;
esac
