# scripts/lib.sh: helpers shared by the kscore scripts. Source it; it sets no
# shell options of its own, so the caller keeps control of `set -e` and traps.
#
#   log_info/log_warn/log_error MSG...   one line on stderr, prefixed "$KS_LOG_TAG:"
#   die MSG...                           log_error, then exit 1
#   free_port / free_ports N             ask the kernel for free 127.0.0.1 ports
#   port_is_free PORT                    true when 127.0.0.1:PORT can be bound
#   deadline_set SECONDS / deadline_left overall time budget shared with children
#   wait_for NAME TIMEOUT [--pid PID] [--log FILE] -- CMD...
#                                        poll CMD until it succeeds
#   start_daemon LOG CMD...              start CMD in its own session, sets DAEMON_PID
#   pid_alive PID [START]                true while PID runs (and is the same process)
#   pid_start PID                        the process start time, to tell PIDs apart
#   stop_pid PID [START]                 TERM, wait up to 5 s, then KILL
#   stop_pids "PID START"...             the same for several at once
#   pidfile_add FILE NAME PID / pidfile_stop FILE / pidfile_alive FILE
#   log_tail NAME FILE                   print the last lines of a log, indented

KS_ROOT="${KS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
KS_DEPS_BIN="${KS_DEPS_BIN:-$KS_ROOT/.deps/bin}"
KS_LOG_TAG="${KS_LOG_TAG:-$(basename "$0" .sh)}"
# Debian's python3 starts in 25 ms; a pyenv shim can take ten times that.
if [ -z "${KS_PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then KS_PYTHON=/usr/bin/python3; else KS_PYTHON=python3; fi
fi

# ---- logging ----
log_info()  { printf '%s: %s\n' "$KS_LOG_TAG" "$*" >&2; }
log_warn()  { printf '%s: warning: %s\n' "$KS_LOG_TAG" "$*" >&2; }
log_error() { printf '%s: error: %s\n' "$KS_LOG_TAG" "$*" >&2; }
die() { log_error "$@"; exit 1; }

# log_tail NAME FILE [LINES]: show why NAME failed.
log_tail() {
    local name="$1" file="$2" n="${3:-25}"
    if [ -s "$file" ]; then
        printf '%s: --- last %s lines of %s (%s) ---\n' "$KS_LOG_TAG" "$n" "$name" "$file" >&2
        tail -n "$n" "$file" | sed 's/^/    /' >&2
        printf '%s: --- end of %s ---\n' "$KS_LOG_TAG" "$name" >&2
    else
        printf '%s: (%s wrote no log to %s)\n' "$KS_LOG_TAG" "$name" "$file" >&2
    fi
}

# ---- ports ----
# free_ports N: N distinct free ports, one a line. All N sockets stay bound
# until every port is chosen, so the kernel never hands out one twice.
free_ports() {
    "$KS_PYTHON" - "${1:-1}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}
free_port() { free_ports 1; }

# port_is_free PORT: binds like a server would (SO_REUSEADDR, so a socket in
# TIME_WAIT does not count as taken).
port_is_free() {
    "$KS_PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# ---- time budget ----
# KSCORE_DEADLINE is an absolute time (epoch seconds) exported to child scripts, so
# a caller's 120 s covers everything its children do.
deadline_set() {
    local now; now=$(date +%s)
    # keep an inherited deadline only while it is in the future and sooner
    if [ -z "${KSCORE_DEADLINE:-}" ] || [ "$KSCORE_DEADLINE" -le "$now" ] ||
       [ "$KSCORE_DEADLINE" -gt $((now + $1)) ]; then
        KSCORE_DEADLINE=$((now + $1))
    fi
    export KSCORE_DEADLINE
}
deadline_left() {
    local left=$(( ${KSCORE_DEADLINE:-$(( $(date +%s) + 120 ))} - $(date +%s) ))
    [ "$left" -lt 1 ] && left=1
    echo "$left"
}

# ---- processes ----
# pid_start PID: field 22 of /proc/PID/stat (start time in clock ticks). A PID
# recorded with its start time cannot be confused with a later process that
# happens to get the same number.
pid_start() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"            # drop "pid (comm) ", comm may hold spaces
    set -- $stat                   # now $1 is field 3 (state)
    echo "${20}"
}

# pid_alive PID [START]: running, not a zombie, and (if given) the same process.
pid_alive() {
    local pid="$1" start="${2:-}" stat state
    [ -n "$pid" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat="${stat##*) }"
    state="${stat%% *}"
    [ "$state" = Z ] && { wait "$pid" 2>/dev/null; return 1; }   # reap our own child
    if [ -n "$start" ]; then
        [ "$(pid_start "$pid")" = "$start" ] || return 1
    fi
    return 0
}

# stop_pids "PID START" ...: TERM all, wait up to KS_STOP_GRACE (5) s for all,
# then KILL what is left. Returns once every one is gone.
stop_pids() {
    local grace="${KS_STOP_GRACE:-5}" p pid start left i
    local -a live=()
    for p in "$@"; do
        read -r pid start <<<"$p"
        pid_alive "$pid" "$start" || continue
        kill -TERM "$pid" 2>/dev/null && live+=("$pid $start")
    done
    [ ${#live[@]} -eq 0 ] && return 0
    for ((i = 0; i < grace * 10; i++)); do
        left=0
        for p in "${live[@]}"; do
            read -r pid start <<<"$p"
            pid_alive "$pid" "$start" && left=1
        done
        [ "$left" -eq 0 ] && return 0
        sleep 0.1
    done
    for p in "${live[@]}"; do
        read -r pid start <<<"$p"
        if pid_alive "$pid" "$start"; then
            log_warn "pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-60)) ignored TERM for ${grace}s; killing it"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    for ((i = 0; i < 50; i++)); do
        left=0
        for p in "${live[@]}"; do
            read -r pid start <<<"$p"
            pid_alive "$pid" "$start" && left=1
        done
        [ "$left" -eq 0 ] && return 0
        sleep 0.1
    done
    log_error "some processes survived KILL: ${live[*]}"
    return 1
}
stop_pid() { stop_pids "$1 ${2:-}"; }

# start_daemon LOG CMD...: run CMD in a session of its own (so a terminal's
# Ctrl-C or hang-up reaches it only through us), stdin from /dev/null, stdout
# and stderr appended to LOG. Sets DAEMON_PID. `setsid` execs in place because
# a background job of a non-interactive shell is not a group leader, and env
# execs too, so the PID is CMD's own.
start_daemon() {
    local logf="$1"; shift
    setsid env -u KSCORE_DEADLINE "$@" </dev/null >>"$logf" 2>&1 &
    DAEMON_PID=$!
}

# pidfile_add FILE NAME PID: append "NAME PID START".
pidfile_add() {
    local start; start=$(pid_start "$3") || start=0
    printf '%s %s %s\n' "$2" "$3" "$start" >>"$1"
}

# pidfile_alive FILE: true when any process listed in FILE still runs.
pidfile_alive() {
    local name pid start
    [ -f "$1" ] || return 1
    while read -r name pid start; do
        [ -n "$pid" ] && pid_alive "$pid" "$start" && return 0
    done <"$1"
    return 1
}

# pidfile_all_alive FILE: true when FILE lists processes and all of them run.
pidfile_all_alive() {
    local name pid start n=0
    [ -f "$1" ] || return 1
    while read -r name pid start; do
        [ -n "$pid" ] || continue
        n=$((n + 1))
        pid_alive "$pid" "$start" || return 1
    done <"$1"
    [ "$n" -gt 0 ]
}

# pidfile_stop FILE [parallel]: stop every process in FILE, last started first
# (or all at once with "parallel"), then remove FILE. Idempotent.
pidfile_stop() {
    local f="$1" mode="${2:-}" name pid start rc=0
    local -a entries=()
    [ -f "$f" ] || return 0
    while read -r name pid start; do
        [ -n "$pid" ] && entries=("$pid $start" "${entries[@]}")
    done <"$f"
    if [ "$mode" = parallel ]; then
        stop_pids "${entries[@]}" || rc=1
    else
        for e in "${entries[@]}"; do stop_pids "$e" || rc=1; done
    fi
    [ "$rc" -eq 0 ] && rm -f "$f"
    return "$rc"
}

# wait_for NAME TIMEOUT [--pid PID] [--log FILE] -- CMD...
# Runs CMD every 0.2 s until it succeeds. Fails (non-zero, after naming NAME
# and printing the tail of FILE) when TIMEOUT seconds pass, or at once when
# PID exits.
wait_for() {
    local name="$1" timeout="$2" pid="" logf="" end
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            --pid) pid="$2"; shift 2 ;;
            --log) logf="$2"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    end=$(( $(date +%s) + timeout ))
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [ -n "$pid" ] && ! pid_alive "$pid"; then
            log_error "$name exited during start-up"
            [ -n "$logf" ] && log_tail "$name" "$logf"
            return 1
        fi
        if [ "$(date +%s)" -ge "$end" ]; then
            log_error "$name did not become ready within ${timeout}s"
            [ -n "$logf" ] && log_tail "$name" "$logf"
            return 1
        fi
        sleep 0.2
    done
}

# abspath PATH: the absolute form of an existing directory.
abspath() { (cd "$1" && pwd); }
