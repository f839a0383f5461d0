#!/usr/bin/env bash
# tests/integration/test_audit_chain.sh: the whole audit chain (Audit issue,
# "Tests"; docs/audit.md): HTTP request -> kscore-apigw's producer -> the
# stream KS_AUDIT -> kscore-audit's store, through real processes.
#
# The suite runs its OWN nats-server (JetStream, its own store folder, a free
# port) so it can stop and restart it; the reconciler and iam use the shared
# kube-apiserver of scripts/test.sh (KS_KUBECONFIG; without it the suite
# starts a control plane of its own). It starts reconciler, iam, audit and
# three gateways against that nats-server: GW (async, default policy), GWS
# (KS_AUDIT_MODE=strict) and GWP (a policy file). The load comes from
# audit_chain_client.py (keep-alive http.client connections, a few threads),
# which writes the Audit-ID header of every answer in the order received.
#
#   1. N requests (KS_AUDIT_CHAIN_N, default 100,000; a mix of an
#      authenticated GET, an anonymous 403 and /healthz) through GW: exactly
#      N rows, their audit_ids are exactly the Audit-ID headers received, no
#      foreign row among them, the stream holds exactly the rows (no
#      duplicate, no gap), nothing lost (lost_total 0); timed.
#   2. SIGKILL of kscore-audit while the client runs, restart: exactly the
#      client's events stored, `kscore-audit verify` ok.
#   3. nats-server stopped (SIGTERM) while a sequential client goes on: GW
#      answers every request, spooled_total rises, spool_pending > 0;
#      nats-server restarted on the same port and store: the spool drains,
#      exactly the client's events stored, in the order received.
#   4. The spool survives a gateway restart: NATS down, M requests, SIGTERM
#      GW, the spool on disk holds all M events; NATS and GW started again:
#      all M stored.
#   5. Strict mode (GWS): with NATS up an answer comes after its event is in
#      the stream; with NATS down 503 (Retry-After) within a bound and the
#      strict counters rise (those events are stored later); after the
#      restart 200 again.
#   6. Redaction (GWP, RequestResponse for everything): the password grant,
#      the refresh grant, a user created with a password, a password change,
#      the User read through the kube proxy: no password, bcrypt hash or
#      token in any row, blob, the store's files, the stream's files or the
#      spool; the user names are there.
#   7. Policy (GWP): level None by user and by path stores nothing (counted
#      as skipped), the rest is stored; a Request-level rule stores the
#      request body, not the response body.
#   8. The fields of one known request (X-Forwarded-For, User-Agent):
#      verb, user, resource, name, code, source IPs, user agent, request
#      URI, and audit_id = the Audit-ID header; also through the query API.
#
# Settings: KS_AUDIT_CHAIN_N (case 1; case 2 sends N/4, case 3 N/10, at
# least 2,000 each), KS_AUDIT_CHAIN_RATE3 (case 3's requests per second,
# 500), KS_AUDIT_CHAIN_STORE_WAIT (longest wait for events to be stored,
# 120 s), KS_TEST_KEEP=1 (keep the folder). About 2-2.5 minutes with the
# default N on 2 busy cores (case 1 alone about 60 s, ~1,600 requests/s).
#
# Prints "PASS: <check>" or "FAIL: <check>" per check, "# ..." lines with
# timings, and exits non-zero if any failed. Every process it starts is
# stopped by PID; every wait is a bounded poll; everything is on 127.0.0.1;
# the temporary folder is removed at the end (KS_TEST_KEEP=1 keeps it).
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_audit_chain
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
BIN="$BUILD_DIR/bin"
NATS_CLI="${KS_NATS_CLI:-$KS_DEPS_BIN/nats}"
KUBECTL="${KUBECTL:-$KS_DEPS_BIN/kubectl}"
NATS_SERVER="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
CLIENT="$ROOT/tests/integration/audit_chain_client.py"
N="${KS_AUDIT_CHAIN_N:-100000}"
N2=$(( N / 4 > 2000 ? N / 4 : 2000 ))            # case 2
N3=$(( N / 10 > 2000 ? N / 10 : 2000 ))          # case 3 (sequential)
RATE3="${KS_AUDIT_CHAIN_RATE3:-500}"             # case 3 requests per second
M4=300                                           # case 4
WAIT=30
STORE_WAIT="${KS_AUDIT_CHAIN_STORE_WAIT:-120}"   # longest wait for events to be stored
SUITE_T0=$(date +%s%N)

TMP="$(mktemp -d /tmp/kscore-test-audit-chain.XXXXXX)"
declare -a OWN=()
FAILED=0
PASSED=0
CP_DIR=""
CHAIN_USERS=()

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

cleanup() {
    local rc=$?
    if [ ${#CHAIN_USERS[@]} -gt 0 ] && [ -x "$KUBECTL" ]; then
        kc delete users.iam.kubesphere.io "${CHAIN_USERS[@]}" --ignore-not-found --wait=false \
            >/dev/null 2>&1
    fi
    [ ${#OWN[@]} -gt 0 ] && KS_STOP_GRACE=5 stop_pids "${OWN[@]}" 2>/dev/null
    [ -n "$CP_DIR" ] && scripts/controlplane.sh stop "$CP_DIR" >/dev/null 2>&1
    if [ "$FAILED" -gt 0 ]; then
        for f in "$TMP"/logs/*.log; do [ -f "$f" ] && log_tail "$(basename "$f")" "$f" 15; done
    fi
    if [ "${KS_TEST_KEEP:-}" = 1 ]; then
        echo "# kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1${2:+ -- $2}"; FAILED=$((FAILED + 1)); }
info() { echo "# $*"; }
WHY=""
check() {
    local name="$1"; shift
    WHY=""
    if "$@"; then pass "$name"; else fail "$name" "$WHY"; fi
}
own() { OWN+=("$1 $(pid_start "$1" || echo 0)"); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
poll() {  # poll SECONDS CMD...: retry CMD until it succeeds
    local end=$(( $(now_ms) + $1 * 1000 )); shift
    until "$@"; do [ "$(now_ms)" -ge "$end" ] && return 1; sleep 0.1; done
}
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# ---- preflight and control plane ----

for b in kscore-apigw kscore-iam kscore-reconciler kscore-audit; do
    [ -x "$BIN/$b" ] || { fail "binary $BIN/$b exists" "run make"; exit 1; }
done
[ -x "$NATS_SERVER" ] || { fail "nats-server exists" "run make deps"; exit 1; }
[ -x "$NATS_CLI" ] || { fail "nats CLI at $NATS_CLI" "run make deps"; exit 1; }
mkdir -p "$TMP/logs"
if [ -n "${KS_KUBECONFIG:-}" ]; then
    KUBECONFIG_FILE="$KS_KUBECONFIG"
else
    CP_DIR="$TMP/cp"
    if ! scripts/controlplane.sh start "$CP_DIR" >"$TMP/logs/cp.log" 2>&1; then
        fail "own control plane starts" "$(tail -n 5 "$TMP/logs/cp.log" | tr '\n' '|')"
        exit 1
    fi
    KUBECONFIG_FILE=$(. "$CP_DIR/env" && echo "$KS_KUBECONFIG")
fi

SECRET="$TMP/jwt-secret"
(umask 077; head -c 64 /dev/urandom >"$SECRET")
DB="$TMP/audit.db"
SPOOL_ROOT="$TMP/spool"
mkdir -p "$SPOOL_ROOT"
CONSUMER="chain-$$"

# Environment for a service: none of the caller's KS_ variables.
UNSET_KS=()
for v in $(compgen -e); do
    case "$v" in KS_*) UNSET_KS+=(-u "$v") ;; esac
done

PORTS=($(free_ports 11))
NATS_PORT=${PORTS[0]}
NATS_URL="nats://127.0.0.1:$NATS_PORT"
GW="127.0.0.1:${PORTS[1]}"      # async, default policy
GWS="127.0.0.1:${PORTS[2]}"     # strict
GWP="127.0.0.1:${PORTS[3]}"     # policy file
ADM_REC="127.0.0.1:${PORTS[4]}"
ADM_IAM="127.0.0.1:${PORTS[5]}"
ADM_AUD="127.0.0.1:${PORTS[6]}"
ADM_GW="127.0.0.1:${PORTS[7]}"
ADM_GWS="127.0.0.1:${PORTS[8]}"
ADM_GWP="127.0.0.1:${PORTS[9]}"
ADM_AUD2="127.0.0.1:${PORTS[10]}"   # the audit service after its restart

# start NAME LOG VAR=VALUE... [-- FLAGS]: sets SVC_PID
start() {
    local name="$1" logf="$2"; shift 2
    local -a vars=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do vars+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    env "${UNSET_KS[@]}" KS_NATS_URL="$NATS_URL" KS_KUBECONFIG="$KUBECONFIG_FILE" \
        KS_LOG_LEVEL=info "${vars[@]}" "$BIN/kscore-$name" "$@" </dev/null >>"$logf" 2>&1 &
    SVC_PID=$!
    own "$SVC_PID"
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$1/readyz")" = 200 ]; }

NATS_PID=""
nats_up() { "$NATS_CLI" --server "$NATS_URL" --timeout 1s account info >/dev/null 2>&1; }
start_nats() {
    "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMP/js" </dev/null \
        >>"$TMP/logs/nats.log" 2>&1 &
    NATS_PID=$!
    own "$NATS_PID"
    poll 15 nats_up
}
# stop_pid_wait PID SIGNAL SECONDS: signal PID, wait until it is gone; its exit status in EXIT_RC
EXIT_RC=""
stop_pid_wait() {
    local pid="$1" sig="$2" end=$(( $(now_ms) + $3 * 1000 ))
    EXIT_RC=""
    kill "-$sig" "$pid" 2>/dev/null || return 1
    while [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
        [ "$(now_ms)" -ge "$end" ] && return 1
        sleep 0.05
    done
    wait "$pid" 2>/dev/null
    EXIT_RC=$?
    return 0
}
stop_nats() { stop_pid_wait "$NATS_PID" TERM 15; }

# ---- helpers: metrics, the store ----

# metric ADDR NAME: the sum of NAME's series on ADDR/metrics (-1 when unreadable)
metric() {
    curl -s --max-time 3 "http://$1/metrics" 2>/dev/null | awk -v n="$2" '
        { name = $1; sub(/\{.*/, "", name) }
        name == n { s += $2; f = 1 }
        END { if (f) printf "%.0f\n", s; else print -1 }'
}
lost() { metric "$1" ks_gateway_audit_events_lost_total; }
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }

cat >"$TMP/chaindb.py" <<'PY'
"""The store, the spool and files, read for test_audit_chain.sh."""
import json
import os
import re
import sqlite3
import struct
import sys

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def connect(path):
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def read_ids(path):
    ids = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts:
                ids.append(parts[0])
    return ids


def with_ids(db, ids):
    db.execute("CREATE TEMP TABLE c (id TEXT PRIMARY KEY, i INTEGER)")
    db.executemany("INSERT OR IGNORE INTO temp.c VALUES (?, ?)", [(x, i) for i, x in enumerate(ids)])


# ---- protobuf, just enough for AuditEvent ----
def varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return v, i


def fields(b):
    out = {}
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v = bytes(b[i:i + n])
            i += n
        elif wt == 1:
            v = b[i:i + 8]
            i += 8
        elif wt == 5:
            v = b[i:i + 4]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def s(f, n):
    return f[n][0].decode() if n in f else ""


def decode_event(blob):
    f = fields(blob)
    ev = {"audit_id": s(f, 1), "level": s(f, 2), "stage": s(f, 3), "request_uri": s(f, 4),
          "verb": s(f, 5), "source_ips": [x.decode() for x in f.get(8, [])],
          "user_agent": s(f, 9), "workspace": s(f, 14), "cluster": s(f, 15),
          "request_object": f[16][0].decode(errors="replace") if 16 in f else None,
          "response_object": f[17][0].decode(errors="replace") if 17 in f else None,
          "received_us": f[12][0] if 12 in f else 0, "stage_us": f[13][0] if 13 in f else 0}
    if 6 in f:
        u = fields(f[6][0])
        ev["user"] = {"username": s(u, 1), "uid": s(u, 2), "groups": [x.decode() for x in u.get(3, [])]}
    if 10 in f:
        r = fields(f[10][0])
        ev["object_ref"] = {"resource": s(r, 1), "namespace": s(r, 2), "name": s(r, 3),
                            "api_group": s(r, 5), "api_version": s(r, 6), "subresource": s(r, 8)}
    if 11 in f:
        st = fields(f[11][0])
        ev["response_status"] = {"code": st[1][0] if 1 in st else 0, "reason": s(st, 2),
                                 "status": s(st, 4)}
    ann = {}
    for e in f.get(18, []):
        kv = fields(e)
        ann[s(kv, 1)] = s(kv, 2)
    ev["annotations"] = ann
    return ev


def cmd_count(db):
    n, mx = db.execute("SELECT count(*), coalesce(max(seq), 0) FROM aud_events").fetchone()
    gaps = db.execute("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM aud_gaps").fetchone()[0]
    print(json.dumps({"rows": n, "max_seq": mx, "gap_seqs": gaps}))
    return 0


def cmd_stored(db, ids_file):
    """exit 0 when every id of the file is stored; prints how many are"""
    ids = [x for x in read_ids(ids_file) if x != "-"]
    with_ids(db, ids)
    n = db.execute("SELECT count(*) FROM aud_events JOIN temp.c ON c.id = audit_id").fetchone()[0]
    print(n)
    return 0 if n == len(set(ids)) and ids else 1


def cmd_check(db, ids_file, order, allow_file=None):
    """the events of the ids file: all stored, each once, nothing else among
    them (but the ids of allow_file, events of another gateway that may
    interleave)"""
    ids = read_ids(ids_file)
    rep = {"answers": len(ids), "no_header": ids.count("-")}
    ids = [x for x in ids if x != "-"]
    rep["distinct"] = len(set(ids))
    rep["not_uuidv7"] = sum(1 for x in ids if not UUID7.match(x))
    with_ids(db, ids)
    rows = db.execute("SELECT seq, audit_id FROM aud_events JOIN temp.c ON c.id = audit_id "
                      "ORDER BY seq").fetchall()
    rep["stored"] = len(rows)
    stored = set(r[1] for r in rows)
    missing = [x for x in ids if x not in stored]
    rep["missing"] = len(missing)
    rep["missing_sample"] = missing[:3]
    if rows:
        lo, hi = rows[0][0], rows[-1][0]
        rep["seq_range"] = [lo, hi]
        allow = set(x for x in read_ids(allow_file) if x != "-") if allow_file else set()
        foreign = [r[0] for r in db.execute(
            "SELECT audit_id FROM aud_events WHERE seq BETWEEN ? AND ? AND audit_id NOT IN "
            "(SELECT id FROM temp.c)", (lo, hi))]
        rep["foreign_in_range"] = len([x for x in foreign if x not in allow])
        rep["allowed_in_range"] = len(foreign) - rep["foreign_in_range"]
        rep["gaps_in_range"] = db.execute(
            "SELECT count(*) FROM aud_gaps WHERE last_seq >= ? AND first_seq <= ?", (lo, hi)).fetchone()[0]
    else:
        rep["seq_range"] = None
        rep["foreign_in_range"] = 0
        rep["gaps_in_range"] = 0
    ok = (rep["no_header"] == 0 and rep["distinct"] == len(ids) and rep["not_uuidv7"] == 0
          and rep["stored"] == len(ids) and rep["missing"] == 0 and rep["foreign_in_range"] == 0
          and rep["gaps_in_range"] == 0 and len(ids) > 0)
    if order:
        got = [r[1] for r in rows]
        rep["in_order"] = got == ids
        if not rep["in_order"]:
            first = next((k for k in range(min(len(got), len(ids))) if got[k] != ids[k]), None)
            rep["first_out_of_order"] = first
        ok = ok and rep["in_order"]
    print(json.dumps(rep))
    return 0 if ok else 1


def cmd_row(db, audit_id):
    db.row_factory = sqlite3.Row
    r = db.execute("SELECT * FROM aud_events WHERE audit_id = ?", (audit_id,)).fetchone()
    if r is None:
        return 1
    d = {k: r[k] for k in r.keys() if k not in ("blob", "chain")}
    d["event"] = decode_event(r["blob"])
    print(json.dumps(d))
    return 0


def variants(secret):
    import urllib.parse
    out = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
           json.dumps(secret)[1:-1], secret.replace("/", "\\/")}
    return [v for v in out if v]


def cmd_secrets(db, secrets_file, *paths):
    """no secret (one a line: LABEL<TAB>VALUE) in any row or blob, nor in the
    raw bytes of the files under paths; prints what was found where"""
    secrets = []
    with open(secrets_file) as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" in line:
                label, value = line.split("\t", 1)
                if value:
                    secrets.append((label, [v.encode() for v in variants(value)]))
    found = []
    nrows = 0
    for row in db.execute("SELECT * FROM aud_events"):
        nrows += 1
        parts = []
        for v in row:
            if isinstance(v, bytes):
                parts.append(v)
            elif v is not None:
                parts.append(str(v).encode())
        hay = b"\0".join(parts)
        for label, vs in secrets:
            if any(v in hay for v in vs):
                found.append("%s in the row of %s" % (label, row[1]))
    nfiles = 0
    for p in paths:
        walk = [(p, [], [""])] if os.path.isfile(p) else os.walk(p)
        for dirpath, _, names in walk:
            for name in names:
                fp = os.path.join(dirpath, name) if name else dirpath
                try:
                    with open(fp, "rb") as fh:
                        data = fh.read()
                except OSError:
                    continue
                nfiles += 1
                for label, vs in secrets:
                    if any(v in data for v in vs):
                        found.append("%s in %s" % (label, fp))
    print(json.dumps({"rows": nrows, "files": nfiles, "secrets": len(secrets), "found": found[:10]}))
    return 0 if not found and nrows > 0 and secrets else 1


def cmd_spool(spool_dir, ids_file):
    """the records after spool.pos: how many, and whether every id of the file is among them"""
    log = os.path.join(spool_dir, "spool.log")
    pos = 0
    try:
        with open(os.path.join(spool_dir, "spool.pos"), "rb") as f:
            b = f.read()
            if len(b) == 8:
                pos = struct.unpack("<Q", b)[0]
    except OSError:
        pass
    with open(log, "rb") as f:
        data = f.read()
    i = pos
    ids = set()
    n = 0
    while i + 12 <= len(data):
        magic, ln, _crc = data[i:i + 4], *struct.unpack("<II", data[i + 4:i + 12])
        if magic != b"KSA1" or i + 12 + ln > len(data):
            break
        rec = data[i + 12:i + 12 + ln]
        z1 = rec.index(b"\0")
        z2 = rec.index(b"\0", z1 + 1)
        ids.add(rec[z1 + 1:z2].decode())
        n += 1
        i += 12 + ln
    want = set(x for x in read_ids(ids_file) if x != "-")
    miss = len(want - ids)
    print(json.dumps({"log_bytes": len(data), "pos": pos, "records": n, "wanted": len(want),
                      "missing": miss}))
    return 0 if n > 0 and miss == 0 and want else 1


def main():
    cmd = sys.argv[1]
    if cmd == "spool":
        return cmd_spool(sys.argv[2], sys.argv[3])
    db = connect(sys.argv[2])
    args = sys.argv[3:]
    if cmd == "count":
        return cmd_count(db)
    if cmd == "stored":
        return cmd_stored(db, args[0])
    if cmd == "check":
        allow = [a[6:] for a in args[1:] if a.startswith("allow=")]
        return cmd_check(db, args[0], "order" in args[1:], allow[0] if allow else None)
    if cmd == "row":
        return cmd_row(db, args[0])
    if cmd == "secrets":
        return cmd_secrets(db, *args)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except sqlite3.Error as e:
        print(json.dumps({"sqlite_error": str(e)}))
        sys.exit(3)
PY
chaindb() { "$KS_PYTHON" "$TMP/chaindb.py" "$@"; }
# json_eval JSON EXPR: python EXPR over d = the parsed JSON text
json_eval() {
    "$KS_PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$1" "$2" 2>/dev/null
}
all_stored() { chaindb stored "$DB" "$1" >/dev/null 2>&1; }
# stream_state: "messages last_seq" of KS_AUDIT
stream_state() {
    "$NATS_CLI" --server "$NATS_URL" --timeout 3s stream info KS_AUDIT -j 2>/dev/null |
        "$KS_PYTHON" -c 'import json,sys; s=json.load(sys.stdin)["state"]; print(s["messages"], s["last_seq"])'
}
# store_settled: the store holds every sequence of the stream
store_settled() {
    local st rows
    st=$(stream_state) || return 1
    rows=$(chaindb count "$DB" | "$KS_PYTHON" -c 'import json,sys; d=json.load(sys.stdin); print(d["max_seq"])') || return 1
    [ "${st#* }" = "$rows" ]
}

# client NAME N THREADS ADDR [extra client args...]: runs the load in the
# foreground; ids in $TMP/NAME.ids, summary in $TMP/NAME.json
client() {
    local name="$1" n="$2" threads="$3" addr="$4"; shift 4
    "$KS_PYTHON" "$CLIENT" --addr "$addr" --n "$n" --threads "$threads" --out "$TMP/$name.ids" \
        --progress "$TMP/$name.progress" "$@" >"$TMP/$name.json" 2>"$TMP/logs/client-$name.log"
}
CLIENT_PID=""
client_bg() {
    local name="$1" n="$2" threads="$3" addr="$4"; shift 4
    rm -f "$TMP/$name.progress"
    "$KS_PYTHON" "$CLIENT" --addr "$addr" --n "$n" --threads "$threads" --out "$TMP/$name.ids" \
        --progress "$TMP/$name.progress" "$@" >"$TMP/$name.json" 2>"$TMP/logs/client-$name.log" &
    CLIENT_PID=$!
    own "$CLIENT_PID"
}
progress() { cat "$TMP/$1.progress" 2>/dev/null || echo 0; }
progress_at_least() { [ "$(progress "$1")" -ge "$2" ]; }
client_done() { ! pid_alive "$CLIENT_PID"; }
# client_ok NAME N CODES: the summary says N answered, no error, only the given codes
client_ok() {
    local s; s=$(cat "$TMP/$1.json" 2>/dev/null)
    json_eval "$s" "d['answered'] == $2 and d['errors'] == 0 and set(d['codes']) <= set('$3'.split(','))" ||
        { WHY="client: ${s:-no summary} $(tail -2 "$TMP/logs/client-$1.log" | tr '\n' '|')"; return 1; }
}
# audit_ids HEADERS-FILE: every Audit-ID header value, one a line
audit_ids() { tr -d '\r' <"$1" | awk -F': ' 'tolower($1) == "audit-id" {print $2}'; }
client_field() { "$KS_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$TMP/$1.json" "$2"; }

# ---- start everything ----

start_nats || { fail "own nats-server (JetStream) starts on $NATS_URL" "$(tail -3 "$TMP/logs/nats.log" | tr '\n' '|')"; exit 1; }
pass "own nats-server (JetStream) starts on 127.0.0.1:$NATS_PORT"

start reconciler "$TMP/logs/reconciler.log" KS_ADMIN_ADDR="$ADM_REC" -- --leader-elect=false
start iam "$TMP/logs/iam.log" KS_ADMIN_ADDR="$ADM_IAM" KS_JWT_SECRET_FILE="$SECRET" KS_BCRYPT_COST=4
AUD_ADM="$ADM_AUD"
start_audit() {
    start audit "$TMP/logs/audit.log" KS_ADMIN_ADDR="$AUD_ADM" KS_AUDIT_DB="$DB" \
        KS_AUDIT_CONSUMER="$CONSUMER" KS_AUDIT_SYNC_FULL=false KS_AUDIT_SCOPE_CACHE_TTL=0
    AUD_PID=$SVC_PID
}
start_audit
cat >"$TMP/policy.json" <<'EOF'
{
  "apiVersion": "audit.k8s.io/v1",
  "kind": "Policy",
  "level": "RequestResponse",
  "rules": [
    {"level": "None", "users": ["system:anonymous"], "verbs": ["list"]},
    {"level": "None", "nonResourceURLs": ["/livez"]},
    {"level": "Request", "verbs": ["patch"], "resources": [{"group": "iam.kubesphere.io", "resources": ["users"]}]}
  ]
}
EOF
start_gw() {
    start apigw "$TMP/logs/apigw.log" KS_ADMIN_ADDR="$ADM_GW" KS_HTTP_ADDR="$GW" \
        KS_JWT_SECRET_FILE="$SECRET" KS_AUDIT_SPOOL_DIR="$SPOOL_ROOT" KS_WORKERS=2
    GW_PID=$SVC_PID
}
start_gw
start apigw "$TMP/logs/apigw-strict.log" KS_ADMIN_ADDR="$ADM_GWS" KS_HTTP_ADDR="$GWS" \
    KS_JWT_SECRET_FILE="$SECRET" KS_AUDIT_SPOOL_DIR="$SPOOL_ROOT" KS_AUDIT_MODE=strict
GWS_PID=$SVC_PID
start apigw "$TMP/logs/apigw-policy.log" KS_ADMIN_ADDR="$ADM_GWP" KS_HTTP_ADDR="$GWP" \
    KS_JWT_SECRET_FILE="$SECRET" KS_AUDIT_SPOOL_DIR="$SPOOL_ROOT" KS_AUDIT_POLICY_FILE="$TMP/policy.json"
GWP_PID=$SVC_PID
SPOOL_GW="$SPOOL_ROOT/${GW//:/_}"

check "reconciler ready" poll $WAIT ready "$ADM_REC"
check "iam ready" poll $WAIT ready "$ADM_IAM"
check "audit ready" poll $WAIT ready "$ADM_AUD"
for a in "$ADM_GW" "$ADM_GWS" "$ADM_GWP"; do
    check "gateway ready (admin $a)" poll $WAIT ready "$a"
done

# ---- tokens ----

# get_token ADDR USER PASS OUT: the token answer into OUT; prints the access token
get_token() {
    curl -s --max-time 10 -X POST "http://$1/oauth/token" --data-urlencode grant_type=password \
        --data-urlencode "username=$2" --data-urlencode "password=$3" -D "$4.h" -o "$4" 2>/dev/null
    "$KS_PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["access_token"]) if d.get("access_token") else sys.exit(1)' "$4" 2>/dev/null
}
ADMIN_PW="${KS_ADMIN_PASSWORD:-P@88w0rd}"
TOKEN=""
have_admin_token() { TOKEN=$(get_token "$GW" admin "$ADMIN_PW" "$TMP/token.json") && [ -n "$TOKEN" ]; }
if poll $WAIT have_admin_token; then pass "POST /oauth/token as admin through the gateway"
else fail "POST /oauth/token as admin through the gateway" "$(head -c 300 "$TMP/token.json" 2>/dev/null)"; exit 1; fi
AUTH="Authorization: Bearer $TOKEN"
PATH_ADMIN="/kapis/iam.kubesphere.io/v1beta1/users/admin"
PATH_USERS="/kapis/iam.kubesphere.io/v1beta1/users"

# Everything before the load is stored, so the load's rows are counted from a settled store.
check "setup events stored (store position = stream last sequence)" poll $STORE_WAIT store_settled

# ============ 1. N requests through the gateway ============

info "case 1: $N requests through $GW (GET users/admin with a token, anonymous list users -> 403, /healthz)"
PUB0=$(metric "$ADM_GW" ks_gateway_audit_events_published_total)
SPOOLED0=$(metric "$ADM_GW" ks_gateway_audit_events_spooled_total)
T0=$(now_ms)
client c1 "$N" 4 "$GW" --path "$PATH_ADMIN" --path "$PATH_USERS" --path /healthz --header "@0 $AUTH"
T_CLIENT=$(secs_since "$T0")
check "1: $N requests answered (200 with the token and /healthz, 403 anonymous), no connection error" \
    client_ok c1 "$N" 200,403
T1=$(now_ms)
poll "$STORE_WAIT" all_stored "$TMP/c1.ids"
T_STORED=$(secs_since "$T1")
info "case 1: client ${T_CLIENT}s ($(client_field c1 rps) req/s, slowest $(client_field c1 slowest_ms) ms); every event stored ${T_STORED}s after the last answer; total $(secs_since "$T0")s"
c1_exact() {
    local r; r=$(chaindb check "$DB" "$TMP/c1.ids") || { WHY="$r"; return 1; }
}
check "1: exactly $N events stored: stored audit_ids = the Audit-ID headers received (no gap, no duplicate, nothing foreign among them)" c1_exact
c1_stream() {
    local st c
    poll 20 store_settled || { WHY="store not settled: stream $(stream_state) store $(chaindb count "$DB")"; return 1; }
    st=$(stream_state); c=$(chaindb count "$DB")
    json_eval "$c" "d['rows'] == d['max_seq'] == ${st#* } == ${st% *} and d['gap_seqs'] == 0" ||
        { WHY="stream (messages last_seq) $st, store $c"; return 1; }
}
check "1: the stream holds exactly the stored rows (no duplicate message, no gap)" c1_stream
c1_metrics() {
    local pub spooled l q
    pub=$(metric "$ADM_GW" ks_gateway_audit_events_published_total)
    spooled=$(metric "$ADM_GW" ks_gateway_audit_events_spooled_total)
    l=$(lost "$ADM_GW")
    q=$(metric "$ADM_GW" ks_gateway_audit_queue_depth)
    [ $((pub - PUB0)) = "$N" ] && [ "$spooled" = "$SPOOLED0" ] && [ "$l" = 0 ] && [ "$q" = 0 ] ||
        { WHY="published +$((pub - PUB0)), spooled $SPOOLED0 -> $spooled, lost $l, queue depth $q"; return 1; }
}
check "1: gateway metrics: published_total +$N, nothing spooled, lost_total 0, queue_depth 0" c1_metrics

# ============ 8. the fields of one known request ============

XFF="203.0.113.7, 198.51.100.23"
UA="kscore-chain-test/1.0 (fields)"
T8=$(date +%s)
curl -s --max-time 10 -D "$TMP/c8.h" -o "$TMP/c8.body" -H "$AUTH" -H "X-Forwarded-For: $XFF" \
    -H "User-Agent: $UA" -H 'X-Request-Id: chain-client-request-id' -H 'Audit-ID: chain-client-audit-id' \
    "http://$GW$PATH_ADMIN?pretty=1" 2>/dev/null
C8_CODE=$(head -1 "$TMP/c8.h" | awk '{print $2}')
C8_ID=$(audit_ids "$TMP/c8.h" | paste -sd, -)
c8_row() {
    local row
    poll 20 chaindb row "$DB" "$C8_ID" >/dev/null || { WHY="answer $C8_CODE, audit id '$C8_ID' not stored"; return 1; }
    row=$(chaindb row "$DB" "$C8_ID")
    json_eval "$row" "d['audit_id'] == '$C8_ID' and d['event']['audit_id'] == '$C8_ID' and d['verb'] == 'get' and d['username'] == 'admin' and d['resource'] == 'users' and d['name'] == 'admin' and d['namespace'] == '' and d['api_group'] == 'iam.kubesphere.io' and d['api_version'] == 'v1beta1' and d['code'] == 200 and d['status'] == 'Success' and d['source_ips'] == '203.0.113.7,198.51.100.23,127.0.0.1' and d['event']['source_ips'] == ['203.0.113.7', '198.51.100.23', '127.0.0.1'] and d['user_agent'] == '$UA' and d['request_uri'] == '$PATH_ADMIN?pretty=1' and d['level'] == 'Metadata' and d['stage'] == 'ResponseComplete' and d['event']['request_object'] is None and d['event']['response_object'] is None and d['event']['object_ref']['name'] == 'admin' and d['event']['user']['username'] == 'admin' and d['event']['response_status']['code'] == 200 and 0 < d['event']['received_us'] <= d['event']['stage_us']" ||
        { WHY="$row"; return 1; }
}
c8_header() {
    [ "$C8_CODE" = 200 ] && [[ "$C8_ID" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]] ||
        { WHY="answer $C8_CODE, Audit-ID '$C8_ID'"; return 1; }
}
check "8: GET users/admin (with X-Forwarded-For, User-Agent, and the client's own X-Request-Id and Audit-ID): 200 and one Audit-ID, a UUIDv7 of the gateway's" c8_header
check "8: the stored row: audit_id = Audit-ID, verb get, user admin, resource users, name admin, code 200, source IPs XFF then 127.0.0.1, user agent, request URI, level Metadata" c8_row
c8_stream() {
    local out hdr
    out=$("$NATS_CLI" --server "$NATS_URL" --timeout 3s stream get KS_AUDIT -S 'ks.audit._._.users.get' -j 2>/dev/null)
    hdr=$("$KS_PYTHON" -c 'import base64,json,sys; print(base64.b64decode(json.loads(sys.argv[1])["hdrs"]).decode())' "$out" 2>/dev/null)
    grep -qi "^Nats-Msg-Id: $C8_ID" <<<"$(tr -d '\r' <<<"$hdr")" || { WHY="last on ks.audit._._.users.get: $(head -c 300 <<<"$hdr$out")"; return 1; }
}
check "8: published on ks.audit._._.users.get with Nats-Msg-Id = the Audit-ID" c8_stream
c8_query() {
    local got
    local t0=$(now_ms)
    got=$(curl -s --max-time 15 -H "$AUTH" -o "$TMP/c8q.json" -w '%{http_code}' \
        "http://$GW/kapis/tenant.kubesphere.io/v1alpha2/auditing/events?user_filter=admin&verb_filter=get&objectref_resource_filter=users&response_code_filter=200&start_time=$((T8 - 1))&end_time=$((T8 + 2))&size=1000")
    info "case 8: the query took $(( $(now_ms) - t0 )) ms"
    [ "$got" = 200 ] && "$KS_PYTHON" - "$TMP/c8q.json" "$C8_ID" "$UA" <<'PY' || { WHY="got $got: $(head -c 300 "$TMP/c8q.json")"; return 1; }
import json, sys
d = json.load(open(sys.argv[1]))
recs = [r for r in d["query"]["records"] if r["AuditID"] == sys.argv[2]]
assert len(recs) == 1, recs
r = recs[0]
assert r["Verb"] == "get" and r["User"]["username"] == "admin", r
assert r["ObjectRef"]["Resource"] == "users" and r["ObjectRef"]["Name"] == "admin", r
assert r["SourceIPs"] == ["203.0.113.7", "198.51.100.23", "127.0.0.1"], r
assert r["UserAgent"] == sys.argv[3] and r["ResponseStatus"]["code"] == 200, r
PY
}
check "8: the query API (user, verb, resource, code filters, a time range) returns that event with the same fields" c8_query

# ============ 6. redaction end to end (GWP: RequestResponse for everything) ============

SUF="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')$$"
CU="chain-$SUF"                               # a user created through the gateway
PW1="Cz$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')Q9"
PW2="Dy$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')R7"
SECRETS="$TMP/secrets.tsv"
: >"$SECRETS"
add_secret() { [ -n "$2" ] && printf '%s\t%s\n' "$1" "$2" >>"$SECRETS"; }
add_secret "admin password" "$ADMIN_PW"
add_secret "new user password" "$PW1"
add_secret "changed password" "$PW2"
C6_IDS="$TMP/c6.ids"
: >"$C6_IDS"
# req6 NAME CURL-ARGS...: a request through GWP; its Audit-ID appended to c6.ids; code in $R6_CODE
R6_CODE=""
req6() {
    local name="$1"; shift
    R6_CODE=$(curl -s --max-time 10 -D "$TMP/$name.h" -o "$TMP/$name.body" -w '%{http_code}' "$@" 2>/dev/null)
    R6_ID=$(audit_ids "$TMP/$name.h" | paste -sd, -)
    echo "${R6_ID:--} $R6_CODE $name" >>"$C6_IDS"
}
tok_field() { "$KS_PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$1" "$2" 2>/dev/null; }

H6="http://$GWP"
req6 r6-token -X POST "$H6/oauth/token" --data-urlencode grant_type=password \
    --data-urlencode username=admin --data-urlencode "password=$ADMIN_PW"
T6_ACCESS=$(tok_field "$TMP/r6-token.body" access_token)
T6_REFRESH=$(tok_field "$TMP/r6-token.body" refresh_token)
ID6_TOKEN="$R6_ID"
check "6: POST /oauth/token (password grant, form) through the policy gateway: 200 with tokens" \
    test "$R6_CODE" = 200 -a -n "$T6_ACCESS" -a -n "$T6_REFRESH"
add_secret "admin access token" "$T6_ACCESS"
add_secret "admin refresh token" "$T6_REFRESH"
add_secret "admin access token signature" "${T6_ACCESS##*.}"
add_secret "admin refresh token signature" "${T6_REFRESH##*.}"
req6 r6-refresh -X POST "$H6/oauth/token" --data-urlencode grant_type=refresh_token \
    --data-urlencode "refresh_token=$T6_REFRESH"
T6_ACCESS2=$(tok_field "$TMP/r6-refresh.body" access_token)
T6_REFRESH2=$(tok_field "$TMP/r6-refresh.body" refresh_token)
add_secret "refreshed access token" "$T6_ACCESS2"
add_secret "refreshed refresh token" "$T6_REFRESH2"
check "6: POST /oauth/token (refresh_token grant): 200 with new tokens" test "$R6_CODE" = 200 -a -n "$T6_ACCESS2"
A6="Authorization: Bearer $T6_ACCESS"
CHAIN_USERS+=("$CU")
req6 r6-create -X POST -H "$A6" -H 'Content-Type: application/json' "$H6$PATH_USERS" \
    -d "{\"metadata\":{\"name\":\"$CU\"},\"spec\":{\"email\":\"$CU@example.com\",\"password\":\"$PW1\"}}"
ID6_CREATE="$R6_ID"
check "6: POST users with a password (admin token): 200/201" test "$R6_CODE" = 200 -o "$R6_CODE" = 201
user_hash() { kc get users.iam.kubesphere.io "$1" -o 'jsonpath={.spec.password}' 2>/dev/null; }
HASH1=""
have_hash() { HASH1=$(user_hash "$CU"); [[ "$HASH1" == \$2* ]]; }
if [ -x "$KUBECTL" ] && poll $WAIT have_hash; then
    add_secret "bcrypt hash of the new user" "$HASH1"
    add_secret "bcrypt digest of the new user" "${HASH1: -31}"
    pass "6: the new user's password is a bcrypt hash in kube-apiserver (${HASH1:0:7}...)"
else
    fail "6: the new user's password is a bcrypt hash in kube-apiserver" "got '${HASH1:0:10}' (kubectl at $KUBECTL)"
fi
ADMIN_HASH=$(user_hash admin)
add_secret "admin bcrypt hash" "$ADMIN_HASH"
[ -n "$ADMIN_HASH" ] && add_secret "admin bcrypt digest" "${ADMIN_HASH: -31}"
T6U_ACCESS=""
user_login() {
    req6 r6-userlogin -X POST "$H6/oauth/token" --data-urlencode grant_type=password \
        --data-urlencode "username=$CU" --data-urlencode "password=$PW1"
    T6U_ACCESS=$(tok_field "$TMP/r6-userlogin.body" access_token)
    [ "$R6_CODE" = 200 ] && [ -n "$T6U_ACCESS" ]
}
check "6: the new user logs in with its password (password grant)" poll $WAIT user_login
add_secret "user access token" "$T6U_ACCESS"
add_secret "user refresh token" "$(tok_field "$TMP/r6-userlogin.body" refresh_token)"
req6 r6-passwd -X PUT -H "$A6" -H 'Content-Type: application/json' "$H6$PATH_USERS/$CU/password" \
    -d "{\"currentPassword\":\"$PW1\",\"password\":\"$PW2\"}"
check "6: PUT users/$CU/password (current and new password in the body): 200" test "$R6_CODE" = 200
HASH2=""
hash_changed() { HASH2=$(user_hash "$CU"); [[ "$HASH2" == \$2* ]] && [ "$HASH2" != "$HASH1" ]; }
if [ -x "$KUBECTL" ] && poll $WAIT hash_changed; then
    add_secret "bcrypt hash after the change" "$HASH2"
    add_secret "bcrypt digest after the change" "${HASH2: -31}"
fi
req6 r6-get -H "$A6" "$H6$PATH_USERS/$CU"
ID6_GET="$R6_ID"
# the User through the kube proxy (kube-apiserver's answer holds spec.password, the hash),
# once plainly and once with a client-sent Audit-ID header
P6_CODE=$(curl -s --max-time 10 -D "$TMP/r6-proxy.h" -o "$TMP/r6-proxy.body" -w '%{http_code}' \
    -H "$A6" "$H6/apis/iam.kubesphere.io/v1beta1/users/$CU" 2>/dev/null)
P6_IDS=$(audit_ids "$TMP/r6-proxy.h" | paste -sd' ' -)
P6B_CODE=$(curl -s --max-time 10 -D "$TMP/r6-proxy2.h" -o /dev/null -w '%{http_code}' \
    -H "$A6" -H 'Audit-ID: chain-client-chosen-id' "$H6/apis/iam.kubesphere.io/v1beta1/users/$CU" 2>/dev/null)
P6B_IDS=$(audit_ids "$TMP/r6-proxy2.h" | paste -sd' ' -)
info "case 6: the User through the kube proxy: $P6_CODE, Audit-ID headers: $P6_IDS; bcrypt hashes in its body: $(grep -oE '\$2[aby]\$[0-9]+\$' "$TMP/r6-proxy.body" 2>/dev/null | wc -l)"
req6 r6-query -H "$A6" "$H6$PATH_USERS?access_token=$T6_ACCESS&limit=1"
ID6_QUERY="$R6_ID"
req6 r6-jsontok -X POST -H 'Content-Type: application/json' "$H6/kapis/nobody.example.io/v1/things" \
    -d "{\"spec\":{\"note\":\"$T6U_ACCESS\",\"nested\":{\"apiKey\":\"$PW1\"}},\"user\":\"$CU\"}"

proxy_one_id() {   # run after every later request of the case is stored
    local n id stored=""
    n=$(wc -w <<<"$P6_IDS")
    for id in $P6_IDS; do chaindb row "$DB" "$id" >/dev/null 2>&1 && stored="$stored $id"; done
    [ "$P6_CODE" = 200 ] && [ "$n" = 1 ] && chaindb row "$DB" "$P6_IDS" >/dev/null ||
        { WHY="answer $P6_CODE with $n Audit-ID headers ($P6_IDS); stored among them:${stored:- none}"; return 1; }
}
proxy_client_id() {
    [ "$P6B_CODE" = 200 ] && ! grep -qw 'chain-client-chosen-id' <<<"$P6B_IDS" && [ "$(wc -w <<<"$P6B_IDS")" = 1 ] ||
        { WHY="answer $P6B_CODE, Audit-ID headers: $P6B_IDS"; return 1; }
}
c6_stored() { all_stored "$C6_IDS"; }
check "6: every request of the case is stored" poll $STORE_WAIT c6_stored
row_has() {  # row_has AUDIT_ID EXPR: python EXPR over d = the row (with d['event'])
    local row; row=$(chaindb row "$DB" "$1") || { WHY="$1 not stored"; return 1; }
    json_eval "$row" "$2" || {
        WHY=$("$KS_PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1]); e=d["event"]; print("level %s, %s %s, code %s, user %s, request_object %r, response_object %r, annotations %r" % (d["level"], d["verb"], d["request_uri"], d["code"], d["username"], e["request_object"], (e["response_object"] or "")[:160] or None, e["annotations"]))' "$row" 2>&1 | head -c 700)
        return 1
    }
}
check "6: the password grant's event: the answer's tokens redacted, expires_in kept" \
    row_has "$ID6_TOKEN" "d['level'] == 'RequestResponse' and d['code'] == 200 and json.loads(d['event']['response_object'])['access_token'] == '[REDACTED]' and json.loads(d['event']['response_object'])['refresh_token'] == '[REDACTED]' and json.loads(d['event']['response_object'])['expires_in'] > 0"
check "6: the password grant's event holds the request form (grant_type, username=admin kept; password redacted)" \
    row_has "$ID6_TOKEN" "'username=admin' in (d['event']['request_object'] or '') and 'grant_type=password' in d['event']['request_object'] and 'password=%5BREDACTED%5D' in d['event']['request_object']"
check "6: a proxied answer (kube-apiserver) carries exactly one Audit-ID, the stored event's" proxy_one_id
check "6: a client-sent Audit-ID header never comes back as an Audit-ID of the answer" proxy_client_id
check "6: the create's event holds the new user's name and email, the password redacted" \
    row_has "$ID6_CREATE" "'$CU' in d['event']['request_object'] and '$CU@example.com' in d['event']['request_object'] and '[REDACTED]' in d['event']['request_object'] and d['name'] in ('', '$CU')"
check "6: the GET of the user holds the user in its response body (RequestResponse)" \
    row_has "$ID6_GET" "d['code'] == 200 and '$CU' in (d['event']['response_object'] or '')"
check "6: a token in the query of the request URI is redacted" \
    row_has "$ID6_QUERY" "'access_token=%5BREDACTED%5D' in d['request_uri'] and 'limit=1' in d['request_uri']"
# the store's files after a checkpoint, the stream's files, the spools
checkpoint() {
    "$KS_PYTHON" -c 'import sqlite3,sys; db=sqlite3.connect(sys.argv[1], timeout=10); print(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())' "$DB" 2>/dev/null
}
info "case 6: checkpoint of the store: $(checkpoint)"
c6_secrets() {
    local r
    r=$(chaindb secrets "$DB" "$SECRETS" "$DB" "$DB-wal" "$TMP/js/jetstream/\$G/streams/KS_AUDIT" "$SPOOL_ROOT") ||
        { WHY="$r"; return 1; }
    info "case 6: $(wc -l <"$SECRETS") secrets searched: $r"
}
check "6: no password, bcrypt hash or token in any stored row or blob, the store's files, the stream's files or the spools" c6_secrets

# ============ 7. policy (GWP) ============

C7_IDS="$TMP/c7.ids"
: >"$C7_IDS"
req7() {  # req7 NAME CURL-ARGS...: sets R7_ID, R7_CODE
    local name="$1"; shift
    R7_CODE=$(curl -s --max-time 10 -D "$TMP/$name.h" -o "$TMP/$name.body" -w '%{http_code}' "$@" 2>/dev/null)
    R7_ID=$(audit_ids "$TMP/$name.h" | paste -sd, -)
}
SKIP0=$(metric "$ADM_GWP" ks_gateway_audit_events_skipped_total)
req7 r7-anon-list "$H6$PATH_USERS"; ID7_NONE_USER="$R7_ID"; C7A="$R7_CODE"
req7 r7-livez "$H6/livez"; ID7_NONE_PATH="$R7_ID"; C7B="$R7_CODE"
req7 r7-anon-get "$H6/healthz"; ID7_ANON_GET="$R7_ID"
req7 r7-admin-list -H "$A6" "$H6$PATH_USERS"; ID7_ADMIN_LIST="$R7_ID"
req7 r7-patch -X PATCH -H "$A6" -H 'Content-Type: application/merge-patch+json' "$H6$PATH_USERS/$CU" \
    -d "{\"spec\":{\"email\":\"$CU-patched@example.com\"}}"
ID7_PATCH="$R7_ID"; C7P="$R7_CODE"
req7 r7-sentinel "$H6/healthz?sentinel=1"; ID7_SENTINEL="$R7_ID"
printf '%s\n' "$ID7_ANON_GET" "$ID7_ADMIN_LIST" "$ID7_PATCH" "$ID7_SENTINEL" >"$C7_IDS"
info "case 7: anonymous list $C7A, /livez $C7B, patch $C7P"
c7_stored() { all_stored "$C7_IDS"; }
check "7: the requests no None rule matches are stored (anonymous get, admin list, patch, a sentinel after them)" \
    poll $STORE_WAIT c7_stored
not_stored() { [ -n "$1" ] && ! chaindb row "$DB" "$1" >/dev/null; }
check "7: level None by user (system:anonymous list): answered ($C7A) with an Audit-ID, nothing stored" \
    not_stored "$ID7_NONE_USER"
check "7: level None by path (/livez): answered ($C7B) with an Audit-ID, nothing stored" not_stored "$ID7_NONE_PATH"
c7_skipped() {
    local s; s=$(metric "$ADM_GWP" ks_gateway_audit_events_skipped_total)
    [ $((s - SKIP0)) -ge 2 ] || { WHY="skipped_total $SKIP0 -> $s"; return 1; }
}
check "7: ks_gateway_audit_events_skipped_total counts them" c7_skipped
check "7: the Request-level rule (patch users): level Request, the request body stored, the response body not" \
    row_has "$ID7_PATCH" "d['level'] == 'Request' and d['verb'] == 'patch' and '$CU-patched@example.com' in (d['event']['request_object'] or '') and d['event']['response_object'] is None and d['code'] == $C7P"
check "7: the default level (RequestResponse) still holds for the rest: admin list users has its response body" \
    row_has "$ID7_ADMIN_LIST" "d['level'] == 'RequestResponse' and d['event']['response_object'] and d['username'] == 'admin'"

if [ -x "$KUBECTL" ]; then
    kc delete users.iam.kubesphere.io "$CU" --ignore-not-found --wait=false >/dev/null 2>&1 && CHAIN_USERS=()
fi

# ============ 5a. strict mode with NATS up ============

S5_IDS="$TMP/c5.ids"
: >"$S5_IDS"
strict_up() {
    local code id out hdr
    code=$(curl -s --max-time 10 -D "$TMP/c5a.h" -o "$TMP/c5a.body" -w '%{http_code}' -H "$AUTH" \
        "http://$GWS$PATH_ADMIN" 2>/dev/null)
    # at once, before anything else: the event must be in the stream already
    out=$("$NATS_CLI" --server "$NATS_URL" --timeout 3s stream get KS_AUDIT -S 'ks.audit._._.users.get' -j 2>/dev/null)
    id=$(audit_ids "$TMP/c5a.h" | paste -sd, -)
    echo "${id:--} $code" >>"$S5_IDS"
    hdr=$("$KS_PYTHON" -c 'import base64,json,sys; print(base64.b64decode(json.loads(sys.argv[1])["hdrs"]).decode())' "$out" 2>/dev/null | tr -d '\r')
    [ "$code" = 200 ] && [ -n "$id" ] && grep -qi "^Nats-Msg-Id: $id\$" <<<"$hdr" ||
        { WHY="answer $code, Audit-ID '$id', last message on the subject: $(head -c 200 <<<"$hdr")"; return 1; }
    poll 20 chaindb row "$DB" "$id" >/dev/null || { WHY="$id never stored"; return 1; }
}
check "5: strict, NATS up: 200, and its event is in the stream when the answer arrives (then stored)" strict_up

# ============ 2. SIGKILL of the audit service mid-stream ============

info "case 2: $N2 requests; SIGKILL kscore-audit after a third, restart it after two thirds"
LOST0=$(lost "$ADM_GW")
T0=$(now_ms)
client_bg c2 "$N2" 4 "$GW" --path "$PATH_ADMIN" --path /healthz --header "@0 $AUTH"
poll 120 progress_at_least c2 $((N2 / 3))
AT_KILL=$(progress c2)
stop_pid_wait "$AUD_PID" KILL 10
KILL_RC="$EXIT_RC"
poll 120 progress_at_least c2 $((2 * N2 / 3))
AT_RESTART=$(progress c2)
AUD_ADM="$ADM_AUD2"
start_audit
T_RESTART=$(now_ms)
check "2: kscore-audit killed (SIGKILL, status $KILL_RC) at answer $AT_KILL, restarted at answer $AT_RESTART, ready again" \
    poll $WAIT ready "$AUD_ADM"
info "case 2: audit ready $(secs_since "$T_RESTART")s after the restart"
poll 120 client_done
check "2: $N2 requests answered, no connection error" client_ok c2 "$N2" 200
poll "$STORE_WAIT" all_stored "$TMP/c2.ids"
info "case 2: client $(client_field c2 seconds)s; every event stored $(secs_since "$T0")s after the start"
c2_exact() { local r; r=$(chaindb check "$DB" "$TMP/c2.ids") || { WHY="$r"; return 1; }; }
check "2: exactly $N2 events stored after the restart (stored audit_ids = the Audit-IDs received)" c2_exact
check "2: lost_total stays 0" test "$(lost "$ADM_GW")" = 0
c2_verify() {
    "$BIN/kscore-audit" verify --audit-db "$DB" >"$TMP/verify.out" 2>&1 ||
        { WHY="$(tail -3 "$TMP/verify.out" | tr '\n' '|')"; return 1; }
    info "case 2: $(tail -1 "$TMP/verify.out")"
}
check "2: kscore-audit verify: the chain holds" c2_verify

# ============ 3. nats-server stopped mid-stream, sequential client ============

info "case 3: $N3 sequential /healthz requests at $RATE3/s; nats-server stopped after 20%, restarted after 60%"
SP0=$(metric "$ADM_GW" ks_gateway_audit_events_spooled_total)
DR0=$(metric "$ADM_GW" ks_gateway_audit_events_drained_total)
T0=$(now_ms)
client_bg c3 "$N3" 1 "$GW" --rate "$RATE3" --path /healthz --path '/healthz?c=3'
poll 120 progress_at_least c3 $((N3 / 5))
AT_STOP=$(progress c3)
stop_nats
check "3: nats-server stopped (SIGTERM) at answer $AT_STOP of $N3 (exit status $EXIT_RC)" test -n "$EXIT_RC"
T_DOWN=$(now_ms)
spooling() {
    local sp pend
    sp=$(metric "$ADM_GW" ks_gateway_audit_events_spooled_total)
    pend=$(metric "$ADM_GW" ks_gateway_audit_spool_pending)
    gt "$sp" "$SP0" && gt "$pend" 0
}
check "3: with NATS down the gateway spools: spooled_total rises, spool_pending > 0" poll 20 spooling
P_DOWN=$(progress c3)
check "3: with NATS down the gateway keeps answering (the client goes on)" \
    poll 20 progress_at_least c3 $((P_DOWN + RATE3))
poll 120 progress_at_least c3 $((3 * N3 / 5))
AT_START=$(progress c3)
info "case 3: NATS down for $(secs_since "$T_DOWN")s, spool_pending $(metric "$ADM_GW" ks_gateway_audit_spool_pending) at answer $AT_START"
start_nats
check "3: nats-server restarted on the same port and store at answer $AT_START" nats_up
T_UP=$(now_ms)
PEND_UP=$(metric "$ADM_GW" ks_gateway_audit_spool_pending)
drained() {
    local pend dr
    pend=$(metric "$ADM_GW" ks_gateway_audit_spool_pending)
    dr=$(metric "$ADM_GW" ks_gateway_audit_events_drained_total)
    [ "$pend" = 0 ] && gt "$dr" "$DR0"
}
check "3: the spool drains while the client goes on (spool_pending -> 0, drained_total rises)" poll 60 drained
info "case 3: $PEND_UP spooled events pending when NATS came back, drained $(secs_since "$T_UP")s later (at answer $(progress c3)); spooled $SP0 -> $(metric "$ADM_GW" ks_gateway_audit_events_spooled_total), drained $DR0 -> $(metric "$ADM_GW" ks_gateway_audit_events_drained_total)"
poll 120 client_done
check "3: all $N3 requests answered 200 while NATS went away and came back" client_ok c3 "$N3" 200
poll "$STORE_WAIT" all_stored "$TMP/c3.ids"
c3_exact() { local r; r=$(chaindb check "$DB" "$TMP/c3.ids" order) || { WHY="$r"; return 1; }; }
check "3: exactly $N3 stored, in order (ORDER BY seq = the order the client received the Audit-IDs)" c3_exact
check "3: lost_total stays 0" test "$(lost "$ADM_GW")" = 0
info "case 3: total $(secs_since "$T0")s; stream (messages last_seq) $(stream_state), store $(chaindb count "$DB")"

# ============ 4. the spool survives a gateway restart (and 5b, strict with NATS down) ============

info "case 4: NATS down, $M4 requests, SIGTERM the gateway, spool on disk, NATS and gateway again"
T0=$(now_ms)
stop_nats
check "4: nats-server stopped (SIGTERM)" test -n "$EXIT_RC"
client c4 "$M4" 1 "$GW" --path /healthz --path '/healthz?c=4'
check "4: $M4 requests answered 200 with NATS down" client_ok c4 "$M4" 200
c4_spooled() { [ "$(metric "$ADM_GW" ks_gateway_audit_spool_pending)" -ge "$M4" ] 2>/dev/null; }
check "4: the gateway spooled them (spool_pending >= $M4)" poll 20 c4_spooled

# 5b. strict gateway while NATS is down
REF0=$(metric "$ADM_GWS" ks_gateway_audit_strict_refusals_total)
UNACK0=$(metric "$ADM_GWS" ks_gateway_audit_strict_unacknowledged_total)
strict_down() {
    local i t0 dt code id worst=0
    for i in 1 2 3; do
        t0=$(now_ms)
        code=$(curl -s --max-time 15 -D "$TMP/c5b.h" -o "$TMP/c5b.body" -w '%{http_code}' "http://$GWS/healthz" 2>/dev/null)
        dt=$(( $(now_ms) - t0 ))
        [ "$dt" -gt "$worst" ] && worst=$dt
        id=$(audit_ids "$TMP/c5b.h" | paste -sd, -)
        echo "${id:--} $code" >>"$TMP/c5b.ids"
        [ "$code" = 503 ] && [ "$dt" -le 8000 ] && grep -qi '^Retry-After: 5' <(tr -d '\r' <"$TMP/c5b.h") &&
            grep -q 'KS_AUDIT_MODE=strict' "$TMP/c5b.body" ||
            { WHY="request $i: $code after ${dt} ms: $(head -c 200 "$TMP/c5b.body")"; return 1; }
    done
    info "case 5: strict with NATS down: 3 x 503, slowest ${worst} ms"
}
: >"$TMP/c5b.ids"
check "5: strict, NATS down: 503 with Retry-After: 5 (KS_AUDIT_MODE=strict) within 8 s" strict_down
strict_counted() {
    local r u
    r=$(metric "$ADM_GWS" ks_gateway_audit_strict_refusals_total)
    u=$(metric "$ADM_GWS" ks_gateway_audit_strict_unacknowledged_total)
    gt "$r" "$REF0" || gt "$u" "$UNACK0" || { WHY="refusals $REF0 -> $r, unacknowledged $UNACK0 -> $u"; return 1; }
    info "case 5: strict_refusals_total $REF0 -> $r, strict_unacknowledged_total $UNACK0 -> $u"
}
check "5: strict_refusals_total or strict_unacknowledged_total rise" strict_counted

stop_pid_wait "$GW_PID" TERM 10
check "4: the gateway exits 0 on SIGTERM with NATS down (status $EXIT_RC)" test "$EXIT_RC" = 0
c4_disk() {
    local r; r=$(chaindb spool "$SPOOL_GW" "$TMP/c4.ids") || { WHY="$r"; return 1; }
    info "case 4: spool on disk: $r"
}
check "4: the spool on disk ($SPOOL_GW) holds all $M4 events" c4_disk
start_nats
T_NATS4=$(now_ms)
check "4: nats-server started again" nats_up
start_gw
check "4: the gateway started again on the same address and spool" poll $WAIT ready "$ADM_GW"
c4_drained() {
    [ "$(metric "$ADM_GW" ks_gateway_audit_spool_pending)" = 0 ] &&
        [ "$(metric "$ADM_GW" ks_gateway_audit_events_drained_total)" -ge "$M4" ]
}
check "4: the restarted gateway drains the spool (drained_total >= $M4, spool_pending 0)" poll 60 c4_drained
poll "$STORE_WAIT" all_stored "$TMP/c4.ids"
# the strict gateway drains its own spool (case 5's refusals) at the same time: those may interleave
c4_exact() { local r; r=$(chaindb check "$DB" "$TMP/c4.ids" order "allow=$TMP/c5b.ids") || { WHY="$r"; return 1; }; }
check "4: all $M4 stored, in order, nothing foreign among them" c4_exact
check "4: lost_total 0 on the restarted gateway" test "$(lost "$ADM_GW")" = 0
info "case 4: $(secs_since "$T0")s"

# 5c. strict again
strict_back() {
    local code
    code=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' -H "$AUTH" "http://$GWS$PATH_ADMIN" 2>/dev/null)
    [ "$code" = 200 ]
}
check "5: strict, NATS back: 200 again" poll 40 strict_back
info "case 5: strict answered 200 again (checked $(secs_since "$T_NATS4")s after NATS came back)"
c5b_stored() { all_stored "$TMP/c5b.ids"; }
c5b_codes() {
    poll "$STORE_WAIT" c5b_stored || { WHY="not all of $(cut -d' ' -f1 "$TMP/c5b.ids" | tr '\n' ' ') stored"; return 1; }
    local id
    for id in $(cut -d' ' -f1 "$TMP/c5b.ids"); do
        row_has "$id" "d['code'] == 503" || return 1
    done
}
check "5: the events of the refused requests are stored later, with code 503" c5b_codes
check "lost_total 0 on the strict and policy gateways" \
    test "$(lost "$ADM_GWS")" = 0 -a "$(lost "$ADM_GWP")" = 0

final_settled() {
    local st c
    st=$(stream_state) && c=$(chaindb count "$DB") || return 1
    info "end: stream (messages last_seq) $st, store $c, audit duplicates $(metric "$AUD_ADM" ks_audit_duplicates_total), redeliveries $(metric "$AUD_ADM" ks_audit_redeliveries_total)"
    json_eval "$c" "d['gap_seqs'] == 0" || { WHY="gaps in the store: $c"; return 1; }
}
check "end: no gap in the store" final_settled

info "suite: $(( ( $(date +%s%N) - SUITE_T0 ) / 1000000000 ))s"
echo "test_audit_chain: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
