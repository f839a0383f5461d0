#!/usr/bin/env python3
"""tests/compose/kstest.py: helpers of tests/compose/test_compose.sh.

  kstest.py load URL TOKEN OUT STOPFILE PATH...
      Workers (KS_LOAD_WORKERS, default 4) send GET PATH (round robin) with
      keep-alive until STOPFILE exists (or KS_LOAD_MAX_S, 300 s, pass). One
      JSON line per request in OUT: {"t": unix seconds at the start, "ms":
      duration, "code": HTTP status (0: no answer), "aid": the Audit-ID
      header (the gateway's audit event of the request) or "", "err": ...}.
  kstest.py summary OUT [SINCE]
      Prints "total ok failed answered maxgap_ms" of the requests in OUT
      (started at or after SINCE): ok = 2xx, failed = everything else,
      answered = answers with an Audit-ID, maxgap_ms = the longest stretch
      between two successful answers.
  kstest.py failures OUT
      Prints the failed requests, one a line.
  kstest.py audit-check URL TOKEN USER OUT TIMEOUT
      Polls the audit query API (user_filter=USER, every page) until every
      Audit-ID of OUT is there; exit 0 and "N of N" when all are, else exit 1
      and the missing count after TIMEOUT seconds.
  kstest.py audit-count URL TOKEN USER
      Prints the number of stored events of USER.
"""
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

EVENTS = "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events"


def conn_for(url, timeout):
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        import ssl
        ctx = ssl.create_default_context(cafile=os.environ.get("KS_GATEWAY_CA_FILE"))
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def load(url, token, out, stopfile, paths):
    workers = int(os.environ.get("KS_LOAD_WORKERS", "4"))
    max_s = float(os.environ.get("KS_LOAD_MAX_S", "300"))
    end = time.time() + max_s
    lock = threading.Lock()
    f = open(out, "a", buffering=1)

    def worker(i):
        c = None
        n = i
        while not os.path.exists(stopfile) and time.time() < end:
            path = paths[n % len(paths)]
            n += 1
            t0 = time.time()
            rec = {"t": round(t0, 3), "code": 0, "aid": "", "err": "", "path": path}
            try:
                if c is None:
                    c = conn_for(url, 15)
                c.request("GET", path, headers={"Authorization": "Bearer " + token,
                                                "User-Agent": "kscore-compose-test"})
                r = c.getresponse()
                r.read()
                rec["code"] = r.status
                rec["aid"] = r.getheader("Audit-ID") or ""
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:  # no answer: the request failed
                rec["err"] = type(e).__name__ + ": " + str(e)[:120]
                try:
                    c.close()
                except Exception:
                    pass
                c = None
            rec["ms"] = round((time.time() - t0) * 1000, 1)
            with lock:
                f.write(json.dumps(rec) + "\n")
            if rec["code"] == 0 or rec["code"] >= 500:
                time.sleep(0.05)  # do not spin while something is down
        if c is not None:
            c.close()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    f.close()


def read(out, since=0.0):
    recs = []
    with open(out) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r["t"] >= since:
                recs.append(r)
    recs.sort(key=lambda r: r["t"])
    return recs


def summary(out, since=0.0):
    recs = read(out, since)
    ok = [r for r in recs if 200 <= r["code"] < 300]
    answered = [r for r in recs if r["aid"]]
    gap, last = 0.0, None
    for r in ok:
        end = r["t"] + r["ms"] / 1000
        if last is not None:
            gap = max(gap, end - last)
        last = end
    print(len(recs), len(ok), len(recs) - len(ok), len(answered), int(gap * 1000))


def failures(out):
    for r in read(out):
        if not 200 <= r["code"] < 300:
            print(time.strftime("%H:%M:%S", time.localtime(r["t"])) +
                  ".%03d" % int((r["t"] % 1) * 1000), r["code"], r["ms"], "ms", r["path"], r["err"])


def fetch_ids(url, token, user):
    ids = set()
    cont = None
    c = conn_for(url, 30)
    try:
        while True:
            q = {"user_filter": user, "size": "1000", "sort": "asc"}
            if cont:
                q["continue"] = cont
            c.request("GET", EVENTS + "?" + urllib.parse.urlencode(q),
                      headers={"Authorization": "Bearer " + token})
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError("audit query: HTTP %d %s" % (r.status, body[:200]))
            d = json.loads(body)["query"]
            recs = d.get("records") or []
            for e in recs:
                ids.add(e.get("AuditID"))
            cont = d.get("continue")
            if not cont or not recs:
                return ids, d.get("total", len(ids))
    finally:
        c.close()


def audit_check(url, token, user, out, timeout):
    want = {r["aid"] for r in read(out) if r["aid"]}
    end = time.time() + timeout
    missing, err = len(want), ""
    while True:
        try:
            have, _ = fetch_ids(url, token, user)
            missing = len(want - have)
            if missing == 0:
                print("%d of %d" % (len(want), len(want)))
                return 0
        except Exception as e:
            err = str(e)[:200]
        if time.time() >= end:
            print("%d of %d answered requests have no stored audit event%s" %
                  (missing, len(want), (" (" + err + ")") if err else ""))
            return 1
        time.sleep(1)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "load":
        load(argv[2], argv[3], argv[4], argv[5], argv[6:])
        return 0
    if cmd == "summary":
        summary(argv[2], float(argv[3]) if len(argv) > 3 else 0.0)
        return 0
    if cmd == "failures":
        failures(argv[2])
        return 0
    if cmd == "audit-check":
        return audit_check(argv[2], argv[3], argv[4], argv[5], float(argv[6]))
    if cmd == "audit-count":
        try:
            ids, _ = fetch_ids(argv[2], argv[3], argv[4])
        except Exception as e:
            print("error: %s" % e, file=sys.stderr)
            return 1
        print(len(ids))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except BrokenPipeError:  # | head
        sys.exit(0)
