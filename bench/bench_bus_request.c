/* bench_bus_request: NATS request/reply and JetStream publishes through
 * ks_bus, with plain cnats baselines measured in the same run.
 *
 *   KS_NATS_URL=nats://127.0.0.1:4222 build/default/bench/bench_bus_request
 *
 * Runs (each bounded by KS_BENCH_SECONDS, default 2):
 *   1. sequential request/reply through ks_bus (requester and responder are
 *      ks_bus connections: SendAsap, own delivery threads);
 *   2. the same with plain cnats connections with SendAsap;
 *   3. the same with plain cnats defaults, i.e. WITHOUT SendAsap (the ~1 ms
 *      flusher wait of cnats 3.4.1, DESIGN.md §11);
 *   4. JetStream synchronous publish (ks_bus_js_publish, file storage);
 *   5. JetStream asynchronous publish (ks_bus_js_publish_async, then
 *      ks_bus_js_publish_async_complete; every ack counted).
 * Prints a Markdown table on stdout (scripts/bench.sh puts it in
 * bench/REPORT.md). Exits 1 if a run could not be done. */
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "log.h"

#define REQ_PAYLOAD 64
#define JS_PAYLOAD 128
#define MAX_SAMPLES 2000000
#define WARMUP 200
#define TIMEOUT_MS 5000

typedef struct {
    const char *name;
    long ops;
    double seconds;
    double p50_ms, p99_ms;  /* < 0: not measured */
    long failures;
} result;

static double run_seconds = 2.0;
static int64_t *samples;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Fill p50/p99 from samples[0..n). */
static void percentiles(result *r, long n)
{
    if (n <= 0) {
        r->p50_ms = r->p99_ms = -1;
        return;
    }
    qsort(samples, (size_t)n, sizeof(samples[0]), cmp_i64);
    r->p50_ms = (double)samples[(n - 1) * 50 / 100] / 1e6;
    r->p99_ms = (double)samples[(n - 1) * 99 / 100] / 1e6;
}

/* ---- request/reply through ks_bus ---- */

static void ks_echo(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    (void)arg;
    (void)ks_bus_respond(bus, msg, ks_bus_msg_data(msg), ks_bus_msg_len(msg));
    ks_bus_msg_destroy(msg);
}

static int bench_ks_request(const char *url, result *r)
{
    ks_bus_opts bo = {.url = url, .wait_connected = 1};
    ks_bus *responder = NULL, *requester = NULL;
    ks_bus_sub *sub = NULL;
    char payload[REQ_PAYLOAD];
    int64_t start, end;
    long n = 0;
    int rc = -1;

    memset(payload, 'r', sizeof(payload));
    r->name = "request/reply, ks_bus (SendAsap)";
    bo.name = "bench-responder";
    if (ks_bus_connect(&bo, &responder) != KS_OK)
        goto out;
    bo.name = "bench-requester";
    if (ks_bus_connect(&bo, &requester) != KS_OK)
        goto out;
    if (ks_bus_subscribe(responder, "bench.ks.echo", NULL, ks_echo, NULL, &sub) != KS_OK ||
        ks_bus_flush(responder, TIMEOUT_MS) != KS_OK)
        goto out;
    for (int i = 0; i < WARMUP; i++) {
        ks_bus_msg *reply = NULL;
        if (ks_bus_request(requester, "bench.ks.echo", payload, sizeof(payload), TIMEOUT_MS,
                           &reply) != KS_OK)
            goto out;
        ks_bus_msg_destroy(reply);
    }
    start = now_ns();
    end = start + (int64_t)(run_seconds * 1e9);
    while (n < MAX_SAMPLES) {
        ks_bus_msg *reply = NULL;
        int64_t t0 = now_ns(), t1;
        if (ks_bus_request(requester, "bench.ks.echo", payload, sizeof(payload), TIMEOUT_MS,
                           &reply) != KS_OK) {
            r->failures++;
        } else {
            ks_bus_msg_destroy(reply);
        }
        t1 = now_ns();
        samples[n++] = t1 - t0;
        if (t1 >= end)
            break;
    }
    r->seconds = (double)(now_ns() - start) / 1e9;
    r->ops = n;
    percentiles(r, n);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench: ks_bus request/reply: %s\n", ks_status_last());
    ks_bus_unsubscribe(sub);
    ks_bus_destroy(requester);
    ks_bus_destroy(responder);
    return rc;
}

/* ---- request/reply with plain cnats ---- */

static void plain_echo(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    natsConnection_Publish(nc, natsMsg_GetReply(msg), natsMsg_GetData(msg),
                           natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

static natsConnection *plain_connect(const char *url, int send_asap)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;

    if (natsOptions_Create(&o) != NATS_OK)
        return NULL;
    if (natsOptions_SetURL(o, url) != NATS_OK ||
        (send_asap && natsOptions_SetSendAsap(o, true) != NATS_OK) ||
        natsConnection_Connect(&nc, o) != NATS_OK)
        nc = NULL;
    natsOptions_Destroy(o);
    return nc;
}

static int bench_plain_request(const char *url, int send_asap, result *r)
{
    natsConnection *responder = plain_connect(url, send_asap);
    natsConnection *requester = plain_connect(url, send_asap);
    natsSubscription *sub = NULL;
    char payload[REQ_PAYLOAD];
    const char *subject = send_asap ? "bench.plain.asap" : "bench.plain.default";
    int64_t start, end;
    long n = 0;
    int rc = -1;

    memset(payload, 'r', sizeof(payload));
    r->name = send_asap ? "request/reply, plain cnats + SendAsap"
                        : "request/reply, plain cnats defaults (no SendAsap)";
    if (responder == NULL || requester == NULL)
        goto out;
    if (natsConnection_Subscribe(&sub, responder, subject, plain_echo, NULL) != NATS_OK ||
        natsConnection_Flush(responder) != NATS_OK)
        goto out;
    for (int i = 0; i < WARMUP / 4; i++) {
        natsMsg *reply = NULL;
        if (natsConnection_Request(&reply, requester, subject, payload, sizeof(payload),
                                   TIMEOUT_MS) != NATS_OK)
            goto out;
        natsMsg_Destroy(reply);
    }
    start = now_ns();
    end = start + (int64_t)(run_seconds * 1e9);
    while (n < MAX_SAMPLES) {
        natsMsg *reply = NULL;
        int64_t t0 = now_ns(), t1;
        if (natsConnection_Request(&reply, requester, subject, payload, sizeof(payload),
                                   TIMEOUT_MS) != NATS_OK)
            r->failures++;
        natsMsg_Destroy(reply);
        t1 = now_ns();
        samples[n++] = t1 - t0;
        if (t1 >= end)
            break;
    }
    r->seconds = (double)(now_ns() - start) / 1e9;
    r->ops = n;
    percentiles(r, n);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench: plain cnats request/reply failed\n");
    if (sub != NULL) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    natsConnection_Destroy(requester);
    natsConnection_Destroy(responder);
    return rc;
}

/* ---- JetStream through ks_bus ---- */

static atomic_long acks_ok, acks_failed;

static void on_ack(void *arg, const char *subject, const char *msg_id, ks_status st, uint64_t seq)
{
    (void)arg;
    (void)subject;
    (void)msg_id;
    (void)seq;
    if (st == KS_OK)
        atomic_fetch_add(&acks_ok, 1);
    else
        atomic_fetch_add(&acks_failed, 1);
}

static int bench_js(const char *url, result *sync_r, result *async_r)
{
    static const char *const subjects[] = {"bench.js.>"};
    ks_bus_opts bo = {.url = url, .name = "bench-js", .wait_connected = 1, .on_ack = on_ack};
    ks_bus_stream_cfg sc = {.name = "KS_BENCH", .subjects = subjects, .nsubjects = 1};
    ks_bus *bus = NULL;
    char payload[JS_PAYLOAD];
    int64_t start, end;
    long n = 0;
    int rc = -1;

    memset(payload, 'j', sizeof(payload));
    sync_r->name = "JetStream sync publish, ks_bus (file storage)";
    async_r->name = "JetStream async publish, ks_bus (file storage)";
    if (ks_bus_connect(&bo, &bus) != KS_OK)
        goto out;
    (void)ks_bus_stream_delete(bus, sc.name);
    if (ks_bus_stream_ensure(bus, &sc) != KS_OK)
        goto out;

    for (int i = 0; i < WARMUP; i++)
        if (ks_bus_js_publish(bus, "bench.js.sync", payload, sizeof(payload), NULL, NULL, NULL) !=
            KS_OK)
            goto out;
    start = now_ns();
    end = start + (int64_t)(run_seconds * 1e9);
    while (n < MAX_SAMPLES) {
        int64_t t0 = now_ns(), t1;
        if (ks_bus_js_publish(bus, "bench.js.sync", payload, sizeof(payload), NULL, NULL, NULL) !=
            KS_OK)
            sync_r->failures++;
        t1 = now_ns();
        samples[n++] = t1 - t0;
        if (t1 >= end)
            break;
    }
    sync_r->seconds = (double)(now_ns() - start) / 1e9;
    sync_r->ops = n;
    percentiles(sync_r, n);

    /* Async: publish for run_seconds, then wait for every ack; the rate
     * counts acked messages over the whole time including the wait. */
    atomic_store(&acks_ok, 0);
    atomic_store(&acks_failed, 0);
    n = 0;
    start = now_ns();
    end = start + (int64_t)(run_seconds * 1e9);
    for (;;) {
        for (int i = 0; i < 256; i++) {
            if (ks_bus_js_publish_async(bus, "bench.js.async", payload, sizeof(payload), NULL) ==
                KS_OK)
                n++;
            else
                async_r->failures++;   /* stalled: too many pending */
        }
        if (now_ns() >= end)
            break;
    }
    if (ks_bus_js_publish_async_complete(bus, 30000) != KS_OK)
        fprintf(stderr, "bench: async publishes still pending after 30 s\n");
    async_r->seconds = (double)(now_ns() - start) / 1e9;
    async_r->ops = atomic_load(&acks_ok);
    async_r->failures += atomic_load(&acks_failed) + (n - atomic_load(&acks_ok) -
                                                      atomic_load(&acks_failed));
    async_r->p50_ms = async_r->p99_ms = -1;
    (void)ks_bus_stream_delete(bus, sc.name);
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench: JetStream: %s\n", ks_status_last());
    ks_bus_destroy(bus);
    return rc;
}

static void print_row(const result *r)
{
    char p50[32] = "-", p99[32] = "-";

    if (r->name == NULL)
        return;
    if (r->p50_ms >= 0) {
        snprintf(p50, sizeof(p50), "%.3f", r->p50_ms);
        snprintf(p99, sizeof(p99), "%.3f", r->p99_ms);
    }
    printf("| %-52s | %9ld | %6.2f | %10.0f | %7s | %7s | %8ld |\n", r->name, r->ops, r->seconds,
           r->seconds > 0 ? (double)r->ops / r->seconds : 0.0, p50, p99, r->failures);
}

int main(void)
{
    const char *url = getenv("KS_NATS_URL");
    const char *secs = getenv("KS_BENCH_SECONDS");
    result res[5];
    int failed = 0;

    memset(res, 0, sizeof(res));
    if (url == NULL || url[0] == '\0')
        url = "nats://127.0.0.1:4222";
    if (secs != NULL) {
        char *endp = NULL;
        double v = strtod(secs, &endp);
        if (endp != secs && *endp == '\0' && v >= 0.1 && v <= 60)
            run_seconds = v;
    }
    ks_log_init("bench", KS_LOG_WARN);
    samples = malloc(sizeof(samples[0]) * MAX_SAMPLES);
    if (samples == NULL)
        return 1;

    failed |= bench_ks_request(url, &res[0]) != 0;
    failed |= bench_plain_request(url, 1, &res[1]) != 0;
    failed |= bench_plain_request(url, 0, &res[2]) != 0;
    failed |= bench_js(url, &res[3], &res[4]) != 0;

    printf("bench_bus_request: sequential NATS request/reply (one in flight, %d-byte payload)\n"
           "and JetStream publishes (%d-byte payload, one stream, file storage), %.1f s per run.\n\n",
           REQ_PAYLOAD, JS_PAYLOAD, run_seconds);
    printf("| %-52s | %9s | %6s | %10s | %7s | %7s | %8s |\n", "run", "ops", "s", "ops/s",
           "p50 ms", "p99 ms", "failures");
    printf("|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------------------------------------",
           "----------:", "-------:", "-----------:", "--------:", "--------:", "---------:");
    for (int i = 0; i < 5; i++)
        print_row(&res[i]);
    if (res[0].p50_ms > 0 && res[2].p50_ms > 0)
        printf("\nks_bus vs plain cnats defaults (no SendAsap): p50 %.3f ms vs %.3f ms, "
               "%.1fx faster; %.0f vs %.0f round trips/s.\n",
               res[0].p50_ms, res[2].p50_ms, res[2].p50_ms / res[0].p50_ms,
               res[0].ops / res[0].seconds, res[2].ops / res[2].seconds);
    if (res[0].p50_ms > 0 && res[1].p50_ms > 0)
        printf("ks_bus vs plain cnats + SendAsap (the wrapper's own cost): p50 %.3f ms vs %.3f ms "
               "(ratio %.2f).\n", res[0].p50_ms, res[1].p50_ms, res[0].p50_ms / res[1].p50_ms);
    fflush(stdout);
    free(samples);
    nats_Close();
    return failed ? 1 : 0;
}
