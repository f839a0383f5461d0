#include "admin.h"

#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "addr.h"
#include "log.h"
#include "metrics.h"

/* Enough for the request line and a handful of headers; Prometheus and
 * kubelet probes send a few hundred bytes. MHD also answers 431 past it. */
#define ADMIN_MEMORY_LIMIT (16 * 1024)

struct ks_admin {
    struct MHD_Daemon *daemon;
    ks_admin_ready_fn ready;
    void *arg;
    int port;
};

/* The per-request marker: the first call of the handler only sees headers,
 * a normal answer is queued on the second (DESIGN.md §11: queuing on the
 * first call costs keep-alive). */
static int admin_seen;

static void admin_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void admin_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    size_t n;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    ks_warn("admin: %s", msg);
}

static enum MHD_Result admin_send(struct MHD_Connection *conn, unsigned int code,
                                  const char *ctype, char *body, size_t len,
                                  enum MHD_ResponseMemoryMode mode, int allow)
{
    struct MHD_Response *r;
    enum MHD_Result ret;

    r = MHD_create_response_from_buffer(len, body, mode);
    if (r == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result admin_text(struct MHD_Connection *conn, unsigned int code, const char *text,
                                  int allow)
{
    /* The literals are static, so MHD may keep pointing at them. */
    return admin_send(conn, code, "text/plain; charset=utf-8", (char *)text,
                      strlen(text), MHD_RESPMEM_PERSISTENT, allow);
}

static enum MHD_Result admin_readyz(ks_admin *a, struct MHD_Connection *conn)
{
    char why[KS_ADMIN_WHY_MAX] = "";
    char body[KS_ADMIN_WHY_MAX + 16];

    if (a->ready == NULL || a->ready(a->arg, why, sizeof(why)))
        return admin_text(conn, MHD_HTTP_OK, "ok", 0);
    why[sizeof(why) - 1] = '\0';
    for (char *p = why; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    snprintf(body, sizeof(body), "not ready: %s", why[0] ? why : "unknown");
    return admin_send(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body,
                      strlen(body), MHD_RESPMEM_MUST_COPY, 0);
}

static enum MHD_Result admin_metrics(struct MHD_Connection *conn)
{
    size_t len = 0;
    char *text = ks_metrics_render(&len);

    if (text == NULL)
        return admin_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory", 0);
    return admin_send(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len,
                      MHD_RESPMEM_MUST_FREE, 0);
}

/* A declared body: a Content-Length other than 0, or any Transfer-Encoding. */
static int admin_has_body(struct MHD_Connection *conn)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);

    return te != NULL || (cl != NULL && strcmp(cl, "0") != 0);
}

static enum MHD_Result admin_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **req_cls)
{
    ks_admin *a = cls;

    if (*req_cls == NULL) {
        /* Refusals are answered at once, before any body is read: MHD can
         * only queue a response before the upload starts or after it ends,
         * and waiting for the end would mean reading an upload of any size.
         * MHD closes such a connection after the answer. */
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
            strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
            return admin_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed", 1);
        if (admin_has_body(conn))
            return admin_text(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body not accepted", 0);
        *req_cls = &admin_seen;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        /* Unreachable after the checks above; drop it rather than fail. */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/livez") == 0)
        return admin_text(conn, MHD_HTTP_OK, "ok", 0);
    if (strcmp(url, "/readyz") == 0)
        return admin_readyz(a, conn);
    if (strcmp(url, "/metrics") == 0)
        return admin_metrics(conn);
    return admin_text(conn, MHD_HTTP_NOT_FOUND, "not found", 0);
}

ks_status ks_admin_start(const char *addr, ks_admin_ready_fn ready, void *arg, ks_admin **out)
{
    ks_status s = KS_ERR_INVALID;
    ks_admin *a = NULL;
    struct addrinfo hints, *ai = NULL, *pick;
    struct sockaddr_storage ss;
    char host[KS_ADDR_HOST_MAX + 1];
    char why[128];
    const union MHD_DaemonInfo *info;
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    int port, rc;

    if (out == NULL) {
        s = KS_FAIL(KS_ERR_INVALID, "admin: no output pointer");
        goto out;
    }
    if (ks_addr_parse_why(addr, host, sizeof(host), &port, why, sizeof(why)) != KS_OK) {
        ks_error("admin: bad listen address '%.100s': %s", addr ? addr : "(null)", why);
        s = KS_FAIL(KS_ERR_INVALID, "admin: bad listen address: %s", why);
        goto out;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0 || ai == NULL) {
        ks_error("admin: cannot resolve '%s': %s", host, gai_strerror(rc));
        s = KS_FAIL(KS_ERR_INVALID, "admin: cannot resolve %s", host);
        goto out;
    }
    /* A name like "localhost" may list ::1 first; clients and scripts expect
     * 127.0.0.1, so an IPv4 address wins when there is one. */
    pick = ai;
    for (struct addrinfo *p = ai; p != NULL; p = p->ai_next) {
        if (p->ai_family == AF_INET) {
            pick = p;
            break;
        }
    }
    memset(&ss, 0, sizeof(ss));
    if (pick->ai_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)&ss;
        memcpy(sin6, pick->ai_addr, sizeof(*sin6));
        sin6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else if (pick->ai_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)(void *)&ss;
        memcpy(sin, pick->ai_addr, sizeof(*sin));
        sin->sin_port = htons((uint16_t)port);
    } else {
        ks_error("admin: '%s' is not an IPv4 or IPv6 address", host);
        s = KS_FAIL(KS_ERR_INVALID, "admin: unsupported address family");
        goto out;
    }

    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "admin: calloc");
        goto out;
    }
    a->ready = ready;
    a->arg = arg;
    a->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, admin_handle, a,
        MHD_OPTION_EXTERNAL_LOGGER, admin_mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)KS_ADMIN_MAX_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)KS_ADMIN_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)ADMIN_MEMORY_LIMIT,
        MHD_OPTION_END);
    if (a->daemon == NULL) {
        ks_error("admin: cannot listen on %s (address in use or not local?)", addr);
        s = KS_FAIL(KS_ERR_IO, "admin: cannot listen on %s", addr);
        goto out;
    }
    info = MHD_get_daemon_info(a->daemon, MHD_DAEMON_INFO_BIND_PORT);
    a->port = info != NULL ? (int)info->port : port;
    if (a->port == 0) {
        ks_error("admin: cannot learn the bound port of %s", addr);
        s = KS_FAIL(KS_ERR_IO, "admin: no bound port");
        goto out;
    }
    ks_info("admin: listening on %s port %d", host, a->port);
    *out = a;
    a = NULL;
    s = KS_OK;
out:
    if (a != NULL) {
        if (a->daemon != NULL)
            MHD_stop_daemon(a->daemon);
        free(a);
    }
    if (ai != NULL)
        freeaddrinfo(ai);
    return s;
}

int ks_admin_port(const ks_admin *a)
{
    return a != NULL ? a->port : 0;
}

void ks_admin_stop(ks_admin *a)
{
    if (a == NULL)
        return;
    MHD_stop_daemon(a->daemon);
    free(a);
}
