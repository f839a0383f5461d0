/* admin.h: the admin HTTP listener every service runs.
 *
 * libmicrohttpd with its own internal thread, on an address apart from any
 * service traffic: liveness, readiness and Prometheus metrics. It reads no
 * request bodies (a request with one gets 413), holds at most
 * KS_ADMIN_MAX_CONNECTIONS connections, and drops a connection idle for
 * KS_ADMIN_TIMEOUT_S seconds. docs/metrics.md describes the endpoints. */
#ifndef KS_ADMIN_H
#define KS_ADMIN_H

#include <stddef.h>

#include "status.h"

#define KS_ADMIN_MAX_CONNECTIONS 32
#define KS_ADMIN_TIMEOUT_S 10
#define KS_ADMIN_WHY_MAX 256 /* bytes of a not-ready reason, NUL included */

typedef struct ks_admin ks_admin;

/* Ready probe: return 1 if ready; else 0 and write a short reason into why
 * (cap whycap, KS_ADMIN_WHY_MAX). Called from the listener thread, once per
 * /readyz request, so it must be quick and thread-safe (read an atomic flag,
 * do not block on the network). */
typedef int (*ks_admin_ready_fn)(void *arg, char *why, size_t whycap);

/* Listen on addr ("127.0.0.1:9191", "[::1]:9191", "0.0.0.0:9191"; a host name
 * is resolved and its first IPv4 address used, else its first IPv6 one; port
 * 0 picks a free port).
 *   GET/HEAD /healthz -> 200 "ok"; /livez the same;
 *   /readyz  -> 200 "ok" or 503 "not ready: <why>";
 *   /metrics -> 200 text/plain; version=0.0.4 with ks_metrics_render();
 *   other paths 404; other methods 405 (with Allow: GET, HEAD).
 * Query strings are ignored. ready may be NULL (always ready); arg is passed
 * to it and must outlive the listener. On success *out owns the running
 * listener (stop it with ks_admin_stop). Returns KS_ERR_INVALID for a bad
 * address, KS_ERR_IO if it cannot listen (port in use, ...); *out is set only
 * on success. */
ks_status ks_admin_start(const char *addr, ks_admin_ready_fn ready, void *arg, ks_admin **out)
    __attribute__((warn_unused_result));

/* The bound port (the real one when addr asked for port 0). */
int ks_admin_port(const ks_admin *a);

/* Stop listening, close every connection and free a. NULL is a no-op;
 * returns once the listener thread has stopped, so the probe is not called
 * any more. */
void ks_admin_stop(ks_admin *a);

#endif
