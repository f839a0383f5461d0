/* proxy.h: the kube-apiserver proxy's life cycle (proxy.c; docs/gateway-proxy.md).
 *
 * The stage entry point, gw_proxy_start_request, is declared in gw.h. These
 * three calls bracket it, from main.c:
 *
 *   gw_proxy_start  before the HTTP server starts
 *   gw_proxy_drain  on SIGTERM, before gw_server_stop: new proxied requests
 *                   get 503, watches and other long-running streams end now,
 *                   other transfers get up to 1 s, then the rest are cut.
 *                   libmicrohttpd aborts when stopped with a suspended
 *                   connection, and a stream waiting for upstream data is
 *                   one, so this must come first.
 *   gw_proxy_stop   after gw_server_stop: joins the transfer thread, frees. */
#ifndef GW_PROXY_H
#define GW_PROXY_H

#include "gw.h"
#include "status.h"

/* Load the gateway's own kube-apiserver credentials (KS_KUBECONFIG, else the
 * in-cluster service account when KUBERNETES_SERVICE_HOST is set) and start
 * the transfer thread. With neither, the proxy is off: it logs a warning and
 * /api and /apis answer 503. Returns KS_OK, or the error of an unreadable
 * kubeconfig (the gateway then does not start), KS_ERR_NOMEM,
 * KS_ERR_INTERNAL (curl, threads). Sets g->proxy (NULL when off). */
ks_status gw_proxy_start(gw *g) __attribute__((warn_unused_result));

/* See above. Blocks for at most about 1.2 s. NULL or a stopped proxy: no-op. */
void gw_proxy_drain(gw *g);

/* Drain if not done, stop the thread, free. Call after gw_server_stop.
 * NULL or a stopped proxy: no-op. */
void gw_proxy_stop(gw *g);

#endif
