/* bench_gateway: the gateway under wrk (the gateway issue's "Benchmark").
 *
 *   build/default/bench/bench_gateway              run the benchmark
 *   build/default/bench/bench_gateway hello ADDR   the baseline server only
 *   build/default/bench/bench_gateway echo NATS_URL  a trivial API service
 *
 * Without arguments it runs bench/bench_gateway.sh (found under $KS_ROOT,
 * else the current folder, which is the repository when scripts/bench.sh
 * runs it), handing it this binary for the baseline. The script starts the
 * reconciler, iam and the gateway, and runs wrk at 64 connections on:
 *   (a) an authenticated GET of one user, through NATS to iam;
 *   (b) an authenticated list proxied to kube-apiserver;
 *   (c) the baseline: `hello` below.
 *
 * `hello ADDR` is the gateway's libmicrohttpd set-up (server.c: epoll with
 * an internal thread pool of 2, suspend/resume allowed, turbo, ITC, the
 * same connection memory and timeout) answering every request with a fixed
 * 200 and no filters. Like the gateway it queues the answer in the second
 * call of the access handler (the first call loses keep-alive, DESIGN.md
 * §11). It prints "listening PORT" on stdout and serves until SIGTERM.
 *
 * `echo NATS_URL` answers every ApiRequest on ks.api.bench_kscore_io.v1
 * with a fixed 200 (a small JSON object), at once, from the subscription's
 * thread. The gateway routes /kapis/bench.kscore.io/v1/... there (its
 * discovery falls back to ks.api.<group>.<version>), so path (a) can be
 * measured without iam's own work: what is left is the gateway, NATS and
 * a responder that does nothing. It prints "ready" and serves until
 * SIGTERM. */
#include <arpa/inet.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bus.h"
#include "codec.h"
#include "kscore/v1/api.pb-c.h"

#define HELLO_WORKERS 2
#define HELLO_CONN_MEMORY (48u * 1024u)
#define HELLO_TIMEOUT_S 60

static const char hello_body[] = "ok";
static const char echo_body[] = "{\"apiVersion\":\"bench.kscore.io/v1\",\"kind\":\"Echo\"}";
#define ECHO_SUBJECT "ks.api.bench_kscore_io.v1"

static uint8_t *echo_reply;
static size_t echo_reply_len;

static void on_echo(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    (void)arg;
    if (ks_bus_respond(bus, msg, echo_reply, echo_reply_len) != KS_OK)
        fprintf(stderr, "echo: cannot answer\n");
    ks_bus_msg_destroy(msg);
}

static int echo(const char *url)
{
    Kscore__V1__ApiResponse ar = KSCORE__V1__API_RESPONSE__INIT;
    ks_bus_opts bo = {.url = url, .name = "bench-gateway-echo", .wait_connected = 1};
    ks_bus *bus = NULL;
    ks_bus_sub *sub = NULL;
    sigset_t set;
    int sig;

    ar.code = 200;
    ar.content_type = "application/json";
    ar.body.data = (uint8_t *)echo_body;
    ar.body.len = sizeof(echo_body) - 1;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (ks_codec_pack(&ar.base, &echo_reply, &echo_reply_len) != KS_OK ||
        ks_bus_connect(&bo, &bus) != KS_OK ||
        ks_bus_subscribe(bus, ECHO_SUBJECT, NULL, on_echo, NULL, &sub) != KS_OK ||
        ks_bus_flush(bus, 2000) != KS_OK) {
        fprintf(stderr, "echo: cannot serve %s on %s\n", ECHO_SUBJECT, url);
        ks_bus_destroy(bus);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    sigwait(&set, &sig);
    ks_bus_destroy(bus);
    free(echo_reply);
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    static int first;
    struct MHD_Response *resp;
    enum MHD_Result ret;

    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    (void)upload_data;
    if (*con_cls == NULL) { /* the first call: headers only */
        *con_cls = &first;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    resp = MHD_create_response_from_buffer(sizeof(hello_body) - 1, (void *)hello_body,
                                           MHD_RESPMEM_PERSISTENT);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static int hello(const char *addr)
{
    struct sockaddr_in sa;
    const char *colon = strrchr(addr, ':');
    struct MHD_Daemon *d;
    const union MHD_DaemonInfo *di;
    sigset_t set;
    int sig;
    char *end;
    long port;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    if (colon == NULL || (size_t)(colon - addr) >= 64) {
        fprintf(stderr, "hello: ADDR is HOST:PORT\n");
        return 2;
    }
    {
        char host[64];
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        port = strtol(colon + 1, &end, 10);
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || *end != '\0' || port < 0 ||
            port > 65535) {
            fprintf(stderr, "hello: ADDR is an IPv4 HOST:PORT\n");
            return 2;
        }
    }
    sa.sin_port = htons((uint16_t)port);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    d = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                             MHD_USE_ITC,
                         (uint16_t)port, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR,
                         (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE,
                         (unsigned)HELLO_WORKERS, MHD_OPTION_CONNECTION_LIMIT, 4096u + 528u,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HELLO_TIMEOUT_S,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HELLO_CONN_MEMORY,
                         MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "hello: cannot listen on %s\n", addr);
        return 1;
    }
    di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening %u\n", di ? (unsigned)di->port : (unsigned)port);
    fflush(stdout);
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    return 0;
}

int main(int argc, char **argv)
{
    char self[PATH_MAX], script[PATH_MAX];
    const char *root = getenv("KS_ROOT");
    ssize_t n;

    if (argc == 3 && strcmp(argv[1], "hello") == 0)
        return hello(argv[2]);
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return echo(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [hello HOST:PORT | echo NATS_URL]\n", argv[0]);
        return 2;
    }
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        perror("bench_gateway: /proc/self/exe");
        return 1;
    }
    self[n] = '\0';
    snprintf(script, sizeof(script), "%s/bench/bench_gateway.sh", root ? root : ".");
    execl("/bin/bash", "bash", script, self, (char *)NULL);
    perror("bench_gateway: cannot run bench/bench_gateway.sh");
    return 1;
}
