/* Integration tests: ks_bus_request_async against the control plane's
 * nats-server (KS_NATS_URL, exported by scripts/test.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"

static ks_bus *bus, *responder_bus;
static ks_bus_sub *echo_sub, *slow_sub;

static void echo(ks_bus *b, ks_bus_msg *msg, void *arg)
{
    (void)ks_bus_respond(b, msg, ks_bus_msg_data(msg), ks_bus_msg_len(msg));
    ks_bus_msg_destroy(msg);
}

static void swallow(ks_bus *b, ks_bus_msg *msg, void *arg)
{
    ks_bus_msg_destroy(msg);
}

static int setup(void **state)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts o = {.url = url, .name = "test-bus-async", .wait_connected = 1};

    if (url == NULL)
        return -1;
    if (ks_bus_connect(&o, &bus) || ks_bus_connect(&o, &responder_bus))
        return -1;
    if (ks_bus_subscribe(responder_bus, "test.async.echo", NULL, echo, NULL, &echo_sub) ||
        ks_bus_subscribe(responder_bus, "test.async.slow", NULL, swallow, NULL, &slow_sub))
        return -1;
    return ks_bus_flush(responder_bus, 2000) == KS_OK ? 0 : -1;
}

static int teardown(void **state)
{
    ks_bus_destroy(bus);
    ks_bus_destroy(responder_bus);
    return 0;
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int done, ok, timeouts, no_responders, closed, mismatches;
} tally;

static tally t;

typedef struct {
    int expect;
} req_ctx;

static void on_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    req_ctx *rc = arg;
    pthread_mutex_lock(&t.mu);
    if (st == KS_OK) {
        int got = -1;
        if (ks_bus_msg_len(reply) == sizeof(int))
            memcpy(&got, ks_bus_msg_data(reply), sizeof(int));
        if (got == rc->expect)
            t.ok++;
        else
            t.mismatches++;
        ks_bus_msg_destroy(reply);
    } else if (st == KS_ERR_TIMEOUT) {
        t.timeouts++;
    } else if (st == KS_ERR_NO_RESPONDERS) {
        t.no_responders++;
    } else if (st == KS_ERR_CLOSED) {
        t.closed++;
    }
    t.done++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.mu);
}

static void reset_tally(void)
{
    memset(&t, 0, sizeof(t));
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cond, NULL);
}

static int wait_done(int n, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t.mu);
    while (t.done < n && pthread_cond_timedwait(&t.cond, &t.mu, &ts) == 0)
        ;
    n = t.done;
    pthread_mutex_unlock(&t.mu);
    return n;
}

static void test_many_in_flight_each_answered_once(void **state)
{
    enum { N = 2000 };
    static req_ctx ctx[N];

    reset_tally();
    for (int i = 0; i < N; i++) {
        ctx[i].expect = i;
        assert_int_equal(ks_bus_request_async(bus, "test.async.echo", &i, sizeof(i), 5000, on_reply,
                                              &ctx[i]),
                         KS_OK);
    }
    assert_int_equal(wait_done(N, 10000), N);
    assert_int_equal(t.ok, N);
    assert_int_equal(t.mismatches, 0);
    assert_int_equal(ks_bus_requests_in_flight(bus), 0);
}

static void test_timeout_and_no_responders(void **state)
{
    static req_ctx c1 = {0}, c2 = {0};
    struct timespec t0, t1;
    long ms;

    reset_tally();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ks_bus_request_async(bus, "test.async.slow", "x", 1, 200, on_reply, &c1), KS_OK);
    assert_int_equal(wait_done(1, 5000), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_int_equal(t.timeouts, 1);
    assert_true(ms >= 195);
    assert_int_equal(ks_bus_request_async(bus, "test.async.nobody", "x", 1, 2000, on_reply, &c2),
                     KS_OK);
    assert_int_equal(wait_done(2, 5000), 2);
    assert_int_equal(t.no_responders, 1);
}

static void test_destroy_fails_pending_with_closed(void **state)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts o = {.url = url, .name = "test-bus-async-2", .wait_connected = 1};
    static req_ctx c[10];
    ks_bus *b2;

    reset_tally();
    assert_int_equal(ks_bus_connect(&o, &b2), KS_OK);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ks_bus_request_async(b2, "test.async.slow", "x", 1, 60000, on_reply, &c[i]),
                         KS_OK);
    ks_bus_destroy(b2);
    /* every callback ran before destroy returned */
    assert_int_equal(t.done, 10);
    assert_int_equal(t.closed, 10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_in_flight_each_answered_once),
        cmocka_unit_test(test_timeout_and_no_responders),
        cmocka_unit_test(test_destroy_fails_pending_with_closed),
    };
    return cmocka_run_group_tests_name("bus_async", tests, setup, teardown);
}
