#!/usr/bin/env python3
"""audit_chain_client.py: load for tests/integration/test_audit_chain.sh.

Sends N requests to the gateway over keep-alive HTTP/1.1 connections
(http.client, one connection per thread, reopened when the server closes
it) and records the Audit-ID header of every answer in the order the
answers were received:

    audit_chain_client.py --addr 127.0.0.1:PORT --n 100000 --threads 4 \
        --out ids.txt [--path P]... [--header 'Name: value']... \
        [--rate R] [--progress FILE] [--timeout S]

--path may be given several times: request i goes to path[i % len(paths)]
(a path may start with "METHOD " to use another method, e.g. "POST /x").
--header NAME: VALUE is sent with every request; "@PATHINDEX Name: value"
sends it only with that path (e.g. a Bearer token only for path 0).
--rate caps the requests per second over all threads (0: as fast as it
goes). --progress FILE is rewritten about 10 times a second with the
number of answers received so far (the shell polls it to act mid-stream).

The output file has one line per answer, in receive order:
    <audit-id> <status code> <milliseconds the request took>
(audit-id "-" when the answer had none; several Audit-ID headers are
joined with ",", which the suite's UUIDv7 check refuses). Connection errors are retried on a
fresh connection (a request that got no answer gets no line, and is counted
in the summary); at most --max-errors (100) of them, then the client gives up.
The last line on stdout is a JSON summary: sent, answered, by code, errors,
seconds, requests per second, slowest ms.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--path", action="append", default=[])
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--progress", default="")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--max-errors", type=int, default=100)
    return ap.parse_args()


class Shared:
    def __init__(self, n):
        self.lock = threading.Lock()
        self.next = 0            # next request index to hand out
        self.n = n
        self.received = []       # (audit_id, code, ms) in receive order
        self.codes = {}
        self.errors = 0
        self.error_texts = []
        self.slowest = 0.0
        self.stop = False

    def take(self):
        with self.lock:
            if self.stop or self.next >= self.n:
                return -1
            i = self.next
            self.next += 1
            return i


def worker(args, sh, paths, headers, t0):
    host, port = args.addr.rsplit(":", 1)
    conn = None
    while True:
        i = sh.take()
        if i < 0:
            break
        if args.rate > 0:
            # request i is not sent before t0 + i / rate
            wait = t0 + i / args.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        pi = i % len(paths)
        method, path = paths[pi]
        hdrs = dict(headers.get(None, {}))
        hdrs.update(headers.get(pi, {}))
        body = None
        if method in ("POST", "PUT", "PATCH"):
            body = b"{}"
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in range(3):
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
            t = time.monotonic()
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                resp.read()
                ms = (time.monotonic() - t) * 1000.0
                # every Audit-ID header: more than one is a fault the
                # suite must see (joined with ",", not a UUID)
                vals = resp.msg.get_all("Audit-ID") or []
                aid = ",".join(v.strip() for v in vals) or "-"
                with sh.lock:
                    sh.received.append((aid, resp.status, ms))
                    sh.codes[resp.status] = sh.codes.get(resp.status, 0) + 1
                    if ms > sh.slowest:
                        sh.slowest = ms
                if resp.will_close:
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
                with sh.lock:
                    sh.errors += 1
                    if len(sh.error_texts) < 5:
                        sh.error_texts.append("%s %s: %r" % (method, path, e))
                    if sh.errors >= args.max_errors:
                        sh.stop = True
                # a request whose connection broke before an answer: it may
                # or may not have reached the gateway, so it is not retried
                # (that would make two events); the next one goes on a fresh
                # connection
                break
    if conn is not None:
        conn.close()


def progress_writer(args, sh, done):
    while not done.wait(0.1):
        write_progress(args.progress, len(sh.received))
    write_progress(args.progress, len(sh.received))


def write_progress(path, n):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % n)
    os.replace(tmp, path)


def main():
    args = parse_args()
    paths = []
    for p in args.path or ["/healthz"]:
        if " " in p:
            m, q = p.split(" ", 1)
            paths.append((m.upper(), q))
        else:
            paths.append(("GET", p))
    headers = {}
    for h in args.header:
        idx = None
        if h.startswith("@"):
            sel, h = h[1:].split(" ", 1)
            idx = int(sel)
        name, value = h.split(":", 1)
        headers.setdefault(idx, {})[name.strip()] = value.strip()
    sh = Shared(args.n)
    done = threading.Event()
    pw = None
    if args.progress:
        write_progress(args.progress, 0)
        pw = threading.Thread(target=progress_writer, args=(args, sh, done), daemon=True)
        pw.start()
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(args, sh, paths, headers, t0))
          for _ in range(max(1, args.threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.monotonic() - t0
    done.set()
    if pw is not None:
        pw.join()
    with open(args.out, "w") as f:
        for aid, code, ms in sh.received:
            f.write("%s %d %.1f\n" % (aid, code, ms))
    summary = {
        "sent": sh.next,
        "answered": len(sh.received),
        "codes": {str(k): v for k, v in sorted(sh.codes.items())},
        "errors": sh.errors,
        "error_samples": sh.error_texts,
        "seconds": round(secs, 3),
        "rps": round(len(sh.received) / secs, 1) if secs > 0 else 0,
        "slowest_ms": round(sh.slowest, 1),
    }
    print(json.dumps(summary))
    sys.stdout.flush()
    return 0 if sh.errors == 0 and len(sh.received) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
