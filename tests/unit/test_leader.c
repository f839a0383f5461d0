/* Unit tests: lib/leader.c without a server.
 *
 * The pure parts: MicroTime formatting, reading a Lease's record, expiry
 * judged from the local observation time (the tests pass "now" explicitly,
 * an injected clock), the acquire/renew/wait decision, the records and the
 * Lease JSON written for acquire, renew and release. Then the elector's
 * argument checks and its start/stop against an unreachable server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kube.h"
#include "leader.h"
#include "log.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A record as a Lease read from the server would give. */
static ks_leader_record make_rec(const char *holder, int32_t dur, const char *renew, int32_t trans,
                                 const char *rv)
{
    ks_leader_record r;

    memset(&r, 0, sizeof(r));
    snprintf(r.holder, sizeof(r.holder), "%s", holder);
    r.lease_duration_s = dur;
    snprintf(r.acquire_time, sizeof(r.acquire_time), "%s", "2001-01-01T00:00:00.000000Z");
    snprintf(r.renew_time, sizeof(r.renew_time), "%s", renew);
    r.transitions = trans;
    snprintf(r.resource_version, sizeof(r.resource_version), "%s", rv);
    return r;
}

/* ---- MicroTime ---- */

static void test_microtime_known_values(void **state)
{
    char buf[64];

    (void)state;
    assert_int_equal(ks_leader_microtime(0, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, "1970-01-01T00:00:00.000000Z");
    /* 2024-05-06T07:08:09Z = 1714979289 */
    assert_int_equal(ks_leader_microtime(1714979289012345LL, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, "2024-05-06T07:08:09.012345Z");
    assert_int_equal(strlen(buf), KS_LEADER_MICROTIME_LEN);
    /* before 1970: floor, not truncation toward zero */
    assert_int_equal(ks_leader_microtime(-1, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, "1969-12-31T23:59:59.999999Z");
    assert_int_equal(ks_leader_microtime(253402300799999999LL, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, "9999-12-31T23:59:59.999999Z");
}

static void test_microtime_matches_gmtime(void **state)
{
    char buf[64], want[64], date[32];
    uint64_t x = 0x243f6a8885a308d3ULL;

    (void)state;
    for (int i = 0; i < 1000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int64_t us = (int64_t)(x % 4102444800000000ULL); /* 1970..2100 */
        time_t t = (time_t)(us / 1000000);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want, sizeof(want), "%s.%06dZ", date, (int)(us % 1000000));
        assert_int_equal(ks_leader_microtime(us, buf, sizeof(buf)), KS_OK);
        assert_string_equal(buf, want);
    }
}

static void test_microtime_errors_leave_output(void **state)
{
    char buf[64] = "untouched";

    (void)state;
    assert_int_equal(ks_leader_microtime(0, buf, KS_LEADER_MICROTIME_LEN), KS_ERR_TOO_LARGE);
    assert_string_equal(buf, "untouched");
    assert_int_equal(ks_leader_microtime(253402300800000000LL, buf, sizeof(buf)), KS_ERR_INVALID);
    assert_string_equal(buf, "untouched");
    assert_int_equal(ks_leader_microtime(0, NULL, 64), KS_ERR_INVALID);
    assert_int_equal(ks_leader_microtime(0, buf, KS_LEADER_MICROTIME_LEN + 1), KS_OK);
}

/* ---- reading a Lease ---- */

static void test_record_from_lease(void **state)
{
    const char *text =
        "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\","
        "\"metadata\":{\"name\":\"l\",\"namespace\":\"ns\",\"resourceVersion\":\"4711\"},"
        "\"spec\":{\"holderIdentity\":\"host_1\",\"leaseDurationSeconds\":15,"
        "\"acquireTime\":\"2024-05-06T07:08:09.000001Z\","
        "\"renewTime\":\"2024-05-06T07:08:10.000002Z\",\"leaseTransitions\":3}}";
    json_t *lease = json_loads(text, 0, NULL);
    ks_leader_record r;

    (void)state;
    assert_non_null(lease);
    assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_OK);
    assert_string_equal(r.holder, "host_1");
    assert_int_equal(r.lease_duration_s, 15);
    assert_string_equal(r.acquire_time, "2024-05-06T07:08:09.000001Z");
    assert_string_equal(r.renew_time, "2024-05-06T07:08:10.000002Z");
    assert_int_equal(r.transitions, 3);
    assert_string_equal(r.resource_version, "4711");
    json_decref(lease);

    /* a fresh Lease with an empty spec: everything absent reads as ""/0 */
    lease = json_loads("{\"metadata\":{\"resourceVersion\":\"1\"},\"spec\":{}}", 0, NULL);
    assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_OK);
    assert_string_equal(r.holder, "");
    assert_int_equal(r.lease_duration_s, 0);
    assert_string_equal(r.renew_time, "");
    json_decref(lease);

    /* nulls and negative numbers */
    lease = json_loads("{\"spec\":{\"holderIdentity\":null,\"leaseDurationSeconds\":-5,"
                       "\"leaseTransitions\":null}}", 0, NULL);
    assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_OK);
    assert_string_equal(r.holder, "");
    assert_int_equal(r.lease_duration_s, 0);
    assert_string_equal(r.resource_version, "");
    json_decref(lease);
}

static void test_record_from_lease_rejects(void **state)
{
    static const char *bad[] = {
        "[]",
        "{\"spec\":[]}",
        "{\"metadata\":\"x\"}",
        "{\"spec\":{\"holderIdentity\":5}}",
        "{\"spec\":{\"leaseDurationSeconds\":\"15\"}}",
        "{\"spec\":{\"leaseDurationSeconds\":1.5}}",
        "{\"spec\":{\"leaseTransitions\":4294967296}}",
        "{\"metadata\":{\"resourceVersion\":7}}",
    };
    ks_leader_record r;
    char *big;
    json_t *lease;

    (void)state;
    memset(&r, 0x5a, sizeof(r));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        lease = json_loads(bad[i], 0, NULL);
        assert_non_null(lease);
        assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_ERR_PROTOCOL);
        assert_int_equal((unsigned char)r.holder[0], 0x5a); /* untouched */
        json_decref(lease);
    }
    assert_int_equal(ks_leader_record_from_lease(NULL, &r), KS_ERR_PROTOCOL);

    big = malloc(KS_LEADER_IDENTITY_MAX + 2);
    memset(big, 'h', KS_LEADER_IDENTITY_MAX + 1);
    big[KS_LEADER_IDENTITY_MAX + 1] = '\0';
    lease = json_pack("{s:{s:s}}", "spec", "holderIdentity", big);
    assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_ERR_TOO_LARGE);
    json_decref(lease);
    big[KS_LEADER_IDENTITY_MAX] = '\0'; /* exactly the cap fits */
    lease = json_pack("{s:{s:s}}", "spec", "holderIdentity", big);
    assert_int_equal(ks_leader_record_from_lease(lease, &r), KS_OK);
    assert_int_equal(strlen(r.holder), KS_LEADER_IDENTITY_MAX);
    json_decref(lease);
    free(big);
}

/* ---- expiry by observation time ---- */

static void test_expiry_from_observation_time(void **state)
{
    ks_leader_observation o = {0};
    /* renewTime far in the past: a naive comparison with the local clock
     * would call it expired at once */
    ks_leader_record past = make_rec("other", 15, "2000-01-01T00:00:00.000000Z", 1, "10");
    ks_leader_record r;
    int64_t now = 1000; /* the injected clock, ms */

    (void)state;
    assert_true(ks_leader_expired(&o, now)); /* nothing observed */
    assert_int_equal(ks_leader_observe(&o, &past, now), 1);
    assert_int_equal(o.observed_ms, 1000);
    assert_false(ks_leader_expired(&o, 1000));
    assert_false(ks_leader_expired(&o, 16000)); /* observed + 15 s is not yet past */
    assert_true(ks_leader_expired(&o, 16001));

    /* seeing the same record again does not move the observation time */
    assert_int_equal(ks_leader_observe(&o, &past, 10000), 0);
    assert_int_equal(o.observed_ms, 1000);
    assert_true(ks_leader_expired(&o, 16001));

    /* any change (here only the renewTime) restarts the clock */
    r = past;
    snprintf(r.renew_time, sizeof(r.renew_time), "%s", "2000-01-01T00:00:01.000000Z");
    assert_int_equal(ks_leader_observe(&o, &r, 12000), 1);
    assert_false(ks_leader_expired(&o, 27000));
    assert_true(ks_leader_expired(&o, 27001));

    /* resourceVersion, holder, transitions and duration count as changes too */
    r.resource_version[0] = '1';
    r.resource_version[1] = '1';
    assert_int_equal(ks_leader_observe(&o, &r, 13000), 1);
    r.transitions++;
    assert_int_equal(ks_leader_observe(&o, &r, 14000), 1);
    r.lease_duration_s = 5;
    assert_int_equal(ks_leader_observe(&o, &r, 15000), 1);
    assert_false(ks_leader_expired(&o, 20000));
    assert_true(ks_leader_expired(&o, 20001));
    snprintf(r.holder, sizeof(r.holder), "%s", "third");
    assert_int_equal(ks_leader_observe(&o, &r, 16000), 1);
    snprintf(r.acquire_time, sizeof(r.acquire_time), "%s", "2030-01-01T00:00:00.000000Z");
    assert_int_equal(ks_leader_observe(&o, &r, 17000), 1);
    assert_int_equal(ks_leader_observe(&o, &r, 99999), 0);
    assert_int_equal(o.observed_ms, 17000);

    /* renewTime in the far future does not extend the claim either */
    ks_leader_observation f = {0};
    ks_leader_record future = make_rec("other", 2, "2999-01-01T00:00:00.000000Z", 1, "20");
    ks_leader_observe(&f, &future, 5000);
    assert_false(ks_leader_expired(&f, 7000));
    assert_true(ks_leader_expired(&f, 7001));

    /* duration 0 expires as soon as time moves */
    ks_leader_observation z = {0};
    ks_leader_record zero = make_rec("other", 0, "x", 0, "30");
    ks_leader_observe(&z, &zero, 5000);
    assert_false(ks_leader_expired(&z, 5000));
    assert_true(ks_leader_expired(&z, 5001));
}

/* ---- the decision ---- */

static void test_decide(void **state)
{
    ks_leader_observation o = {0};
    ks_leader_record r = make_rec("other", 15, "t1", 2, "5");

    (void)state;
    assert_int_equal(ks_leader_decide(&o, "me", 0), KS_LEADER_ACQUIRE); /* no Lease */
    assert_int_equal(ks_leader_decide(NULL, "me", 0), KS_LEADER_ACQUIRE);
    ks_leader_observe(&o, &r, 100000);
    assert_int_equal(ks_leader_decide(&o, "me", 100000), KS_LEADER_WAIT);
    assert_int_equal(ks_leader_decide(&o, "me", 115000), KS_LEADER_WAIT);
    assert_int_equal(ks_leader_decide(&o, "me", 115001), KS_LEADER_ACQUIRE);
    /* our own claim is renewed, even when it looks expired */
    assert_int_equal(ks_leader_decide(&o, "other", 100000), KS_LEADER_RENEW);
    assert_int_equal(ks_leader_decide(&o, "other", 999999), KS_LEADER_RENEW);
    /* a prefix of the holder is not the holder */
    assert_int_equal(ks_leader_decide(&o, "othe", 100000), KS_LEADER_WAIT);
    /* released (holder "") is free at once */
    r = make_rec("", 1, "t2", 2, "6");
    ks_leader_observe(&o, &r, 200000);
    assert_int_equal(ks_leader_decide(&o, "me", 200000), KS_LEADER_ACQUIRE);
    /* an empty self never matches an empty holder as "renew" */
    assert_int_equal(ks_leader_decide(&o, "", 200000), KS_LEADER_ACQUIRE);
    assert_string_equal(ks_leader_action_name(KS_LEADER_WAIT), "wait");
    assert_string_equal(ks_leader_action_name(KS_LEADER_ACQUIRE), "acquire");
    assert_string_equal(ks_leader_action_name(KS_LEADER_RENEW), "renew");
}

/* ---- records to write ---- */

static void test_next_record(void **state)
{
    const int64_t now_us = 1714979289012345LL;
    ks_leader_observation none = {0}, o = {0};
    ks_leader_record r = make_rec("other", 15, "2024-05-06T07:00:00.000000Z", 4, "77"), out;

    (void)state;
    /* create: transitions 0, no resourceVersion */
    assert_int_equal(ks_leader_next_record(&none, KS_LEADER_ACQUIRE, "me", 15, now_us, &out),
                     KS_OK);
    assert_string_equal(out.holder, "me");
    assert_int_equal(out.lease_duration_s, 15);
    assert_string_equal(out.acquire_time, "2024-05-06T07:08:09.012345Z");
    assert_string_equal(out.renew_time, "2024-05-06T07:08:09.012345Z");
    assert_int_equal(out.transitions, 0);
    assert_string_equal(out.resource_version, "");

    /* take-over: transitions + 1, acquireTime now, precondition = observed rv */
    ks_leader_observe(&o, &r, 1);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "me", 3, now_us, &out), KS_OK);
    assert_string_equal(out.holder, "me");
    assert_int_equal(out.lease_duration_s, 3);
    assert_int_equal(out.transitions, 5);
    assert_string_equal(out.acquire_time, "2024-05-06T07:08:09.012345Z");
    assert_string_equal(out.resource_version, "77");

    /* renew: acquireTime and transitions kept */
    r = make_rec("me", 15, "2024-05-06T07:00:00.000000Z", 5, "78");
    ks_leader_observe(&o, &r, 2);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_RENEW, "me", 15, now_us + 2000000, &out),
                     KS_OK);
    assert_string_equal(out.acquire_time, "2001-01-01T00:00:00.000000Z");
    assert_string_equal(out.renew_time, "2024-05-06T07:08:11.012345Z");
    assert_int_equal(out.transitions, 5);
    assert_string_equal(out.resource_version, "78");

    /* renew of a record without acquireTime sets one */
    r.acquire_time[0] = '\0';
    ks_leader_observe(&o, &r, 3);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_RENEW, "me", 15, now_us, &out), KS_OK);
    assert_string_equal(out.acquire_time, out.renew_time);

    /* transitions saturate at int32 max */
    r.transitions = INT32_MAX;
    ks_leader_observe(&o, &r, 4);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "x", 15, now_us, &out), KS_OK);
    assert_int_equal(out.transitions, INT32_MAX);

    /* refusals leave *out alone */
    memset(&out, 0x5a, sizeof(out));
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_WAIT, "me", 15, now_us, &out),
                     KS_ERR_INVALID);
    assert_int_equal(ks_leader_next_record(&none, KS_LEADER_RENEW, "me", 15, now_us, &out),
                     KS_ERR_INVALID);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "", 15, now_us, &out),
                     KS_ERR_INVALID);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "me", 0, now_us, &out),
                     KS_ERR_INVALID);
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "me", 15, INT64_MAX, &out),
                     KS_ERR_INVALID);
    assert_int_equal((unsigned char)out.holder[0], 0x5a);
}

static void test_release_record(void **state)
{
    ks_leader_record last = make_rec("me", 15, "2024-05-06T07:00:00.000000Z", 6, "99"), out;

    (void)state;
    assert_int_equal(ks_leader_release_record(&last, 1714979289000000LL, &out), KS_OK);
    assert_string_equal(out.holder, "");
    assert_int_equal(out.lease_duration_s, 1);
    assert_string_equal(out.renew_time, "2024-05-06T07:08:09.000000Z");
    assert_string_equal(out.acquire_time, "2024-05-06T07:08:09.000000Z");
    assert_int_equal(out.transitions, 6);
    assert_string_equal(out.resource_version, "99");
    assert_int_equal(ks_leader_release_record(NULL, 0, &out), KS_ERR_INVALID);
}

/* ---- Lease JSON ---- */

static void test_lease_json_new(void **state)
{
    ks_leader_observation none = {0};
    ks_leader_record rec, back;
    json_t *obj = NULL, *spec;
    char *text;

    (void)state;
    assert_int_equal(ks_leader_next_record(&none, KS_LEADER_ACQUIRE, "host_ab", 15,
                                           1714979289012345LL, &rec), KS_OK);
    assert_int_equal(ks_leader_lease_json(NULL, "kubesphere-system", "kscore-reconciler", &rec,
                                          &obj), KS_OK);
    text = json_dumps(obj, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(text,
                        "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\","
                        "\"metadata\":{\"name\":\"kscore-reconciler\","
                        "\"namespace\":\"kubesphere-system\"},"
                        "\"spec\":{\"acquireTime\":\"2024-05-06T07:08:09.012345Z\","
                        "\"holderIdentity\":\"host_ab\",\"leaseDurationSeconds\":15,"
                        "\"leaseTransitions\":0,"
                        "\"renewTime\":\"2024-05-06T07:08:09.012345Z\"}}");
    free(text);
    spec = json_object_get(obj, "spec");
    assert_true(json_is_integer(json_object_get(spec, "leaseDurationSeconds")));
    /* round trip */
    assert_int_equal(ks_leader_record_from_lease(obj, &back), KS_OK);
    assert_true(ks_leader_record_equal(&rec, &back));
    json_decref(obj);
}

static void test_lease_json_update_keeps_base(void **state)
{
    const char *base_text =
        "{\"apiVersion\":\"coordination.k8s.io/v1\",\"kind\":\"Lease\","
        "\"metadata\":{\"name\":\"l\",\"namespace\":\"ns\",\"resourceVersion\":\"41\","
        "\"uid\":\"u-1\",\"labels\":{\"a\":\"b\"}},"
        "\"spec\":{\"holderIdentity\":\"old\",\"leaseDurationSeconds\":15,"
        "\"acquireTime\":\"2024-01-01T00:00:00.000000Z\","
        "\"renewTime\":\"2024-01-01T00:00:05.000000Z\",\"leaseTransitions\":2,"
        "\"strategy\":\"OldestEmulationVersion\"}}";
    json_t *base = json_loads(base_text, 0, NULL), *obj = NULL, *spec, *meta;
    ks_leader_observation o = {0};
    ks_leader_record seen, rec, rel;
    char *before = json_dumps(base, JSON_SORT_KEYS);

    (void)state;
    assert_int_equal(ks_leader_record_from_lease(base, &seen), KS_OK);
    ks_leader_observe(&o, &seen, 0);

    /* acquire over another holder */
    assert_int_equal(ks_leader_next_record(&o, KS_LEADER_ACQUIRE, "me", 3, 1714979289000000LL,
                                           &rec), KS_OK);
    assert_int_equal(ks_leader_lease_json(base, "ns", "l", &rec, &obj), KS_OK);
    meta = json_object_get(obj, "metadata");
    spec = json_object_get(obj, "spec");
    assert_string_equal(json_string_value(json_object_get(meta, "resourceVersion")), "41");
    assert_string_equal(json_string_value(json_object_get(meta, "uid")), "u-1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(meta, "labels"), "a")), "b");
    assert_string_equal(json_string_value(json_object_get(spec, "holderIdentity")), "me");
    assert_int_equal(json_integer_value(json_object_get(spec, "leaseDurationSeconds")), 3);
    assert_int_equal(json_integer_value(json_object_get(spec, "leaseTransitions")), 3);
    assert_string_equal(json_string_value(json_object_get(spec, "acquireTime")),
                        "2024-05-06T07:08:09.000000Z");
    assert_string_equal(json_string_value(json_object_get(spec, "renewTime")),
                        "2024-05-06T07:08:09.000000Z");
    assert_string_equal(json_string_value(json_object_get(spec, "strategy")),
                        "OldestEmulationVersion");
    json_decref(obj);
    obj = NULL;

    /* the base itself is not modified */
    char *after = json_dumps(base, JSON_SORT_KEYS);
    assert_string_equal(before, after);
    free(after);

    /* release: holder "" is written as an empty string, duration 1 */
    assert_int_equal(ks_leader_release_record(&rec, 1714979290000000LL, &rel), KS_OK);
    assert_int_equal(ks_leader_lease_json(base, "ns", "l", &rel, &obj), KS_OK);
    spec = json_object_get(obj, "spec");
    assert_string_equal(json_string_value(json_object_get(spec, "holderIdentity")), "");
    assert_int_equal(json_integer_value(json_object_get(spec, "leaseDurationSeconds")), 1);
    assert_string_equal(json_string_value(json_object_get(spec, "renewTime")),
                        "2024-05-06T07:08:10.000000Z");
    json_decref(obj);
    obj = NULL;

    /* empty times and resourceVersion are dropped, not written as "" */
    rec.acquire_time[0] = '\0';
    rec.resource_version[0] = '\0';
    assert_int_equal(ks_leader_lease_json(base, "ns", "l", &rec, &obj), KS_OK);
    assert_null(json_object_get(json_object_get(obj, "metadata"), "resourceVersion"));
    assert_null(json_object_get(json_object_get(obj, "spec"), "acquireTime"));
    json_decref(obj);
    obj = NULL;

    /* a base without spec gets one; a non-object base is refused */
    json_t *bare = json_pack("{s:{s:s}}", "metadata", "name", "l");
    assert_int_equal(ks_leader_lease_json(bare, "ns", "l", &rec, &obj), KS_OK);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(obj, "spec"), "holderIdentity")), "me");
    json_decref(obj);
    obj = NULL;
    json_decref(bare);
    json_t *arr = json_array();
    assert_int_equal(ks_leader_lease_json(arr, "ns", "l", &rec, &obj), KS_ERR_INVALID);
    assert_null(obj);
    json_decref(arr);

    free(before);
    json_decref(base);
}

/* ---- the elector without a server ---- */

static ks_kube_client *unreachable_client(void)
{
    ks_kube_config cfg = {0};
    ks_kube_client *c = NULL;

    /* port 1 on loopback: connections are refused at once */
    cfg.server = strdup("https://127.0.0.1:1");
    cfg.insecure = 1;
    cfg.timeout_ms = 2000;
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_OK);
    ks_kube_config_clear(&cfg);
    return c;
}

static void test_start_rejects_bad_config(void **state)
{
    ks_kube_client *c = unreachable_client();
    ks_leader_config cfg;
    ks_leader *l = (ks_leader *)&cfg; /* must stay untouched */
    char long_id[KS_LEADER_IDENTITY_MAX + 2];

    (void)state;
    ks_leader_config_init(&cfg);
    assert_int_equal(cfg.release_on_cancel, 1);
    assert_null(cfg.name);

    assert_int_equal(ks_leader_start(NULL, &cfg, &l), KS_ERR_INVALID);
    assert_int_equal(ks_leader_start(c, NULL, &l), KS_ERR_INVALID);
    assert_int_equal(ks_leader_start(c, &cfg, NULL), KS_ERR_INVALID);

    static const char *bad_ns[] = {"", "Upper", "-lead", "trail-", "a.b", "a_b",
                                   "0123456789012345678901234567890123456789012345678901234567890123"};
    for (size_t i = 0; i < sizeof(bad_ns) / sizeof(bad_ns[0]); i++) {
        cfg.lease_namespace = bad_ns[i];
        assert_int_equal(ks_leader_start(c, &cfg, &l), KS_ERR_INVALID);
    }
    cfg.lease_namespace = NULL;
    static const char *bad_name[] = {"", "a..b", ".a", "a.", "A", "a/b", "a b", "-a"};
    for (size_t i = 0; i < sizeof(bad_name) / sizeof(bad_name[0]); i++) {
        cfg.name = bad_name[i];
        assert_int_equal(ks_leader_start(c, &cfg, &l), KS_ERR_INVALID);
    }
    cfg.name = NULL;
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    static const char *bad_id[] = {"", "a\nb", "tab\there", "\xff\xfe"};
    for (size_t i = 0; i < sizeof(bad_id) / sizeof(bad_id[0]); i++) {
        cfg.identity = bad_id[i];
        assert_int_equal(ks_leader_start(c, &cfg, &l), KS_ERR_INVALID);
    }
    cfg.identity = long_id;
    assert_int_equal(ks_leader_start(c, &cfg, &l), KS_ERR_INVALID);
    cfg.identity = NULL;

    /* timings: lease > renew deadline > retry period > 0 */
    struct { int64_t lease, renew, retry; } bad_t[] = {
        {3000, 3000, 500}, {3000, 2000, 2000}, {3000, 4000, 500}, {3000, 2000, -1},
        {-1, 0, 0}, {0, 16000, 0}, {KS_LEADER_MAX_DURATION_MS + 1, 10000, 2000},
    };
    for (size_t i = 0; i < sizeof(bad_t) / sizeof(bad_t[0]); i++) {
        cfg.lease_duration_ms = bad_t[i].lease;
        cfg.renew_deadline_ms = bad_t[i].renew;
        cfg.retry_period_ms = bad_t[i].retry;
        assert_int_equal(ks_leader_start(c, &cfg, &l), KS_ERR_INVALID);
    }
    assert_ptr_equal(l, (ks_leader *)&cfg);
    ks_kube_client_destroy(c);
}

static void test_unreachable_server_and_prompt_stop(void **state)
{
    ks_kube_client *c = unreachable_client();
    ks_leader_config cfg;
    ks_leader *l = NULL;
    char buf[64], host[256];
    const char *id;
    int64_t t0;

    (void)state;
    ks_leader_stop(NULL); /* no-op */
    ks_leader_config_init(&cfg);
    cfg.name = "unit-lease"; /* default timings: retry 2 s */
    assert_int_equal(ks_leader_start(c, &cfg, &l), KS_OK);
    assert_non_null(l);

    /* default identity: <hostname>_<16 hex digits> */
    id = ks_leader_identity(l);
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[sizeof(host) - 1] = '\0';
    assert_int_equal(strncmp(id, host, strlen(host)), 0);
    assert_int_equal(id[strlen(host)], '_');
    assert_int_equal(strlen(id + strlen(host) + 1), 16);
    assert_int_equal(strspn(id + strlen(host) + 1, "0123456789abcdef"), 16);

    /* let the first attempt fail (connection refused), then stop mid-sleep */
    t0 = mono_ms();
    while (mono_ms() - t0 < 300)
        assert_false(ks_leader_is_leader(l));
    assert_int_equal(ks_leader_current(l, buf, sizeof(buf)), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_leader_current(l, NULL, sizeof(buf)), KS_ERR_INVALID);
    assert_int_equal(ks_leader_current(NULL, buf, sizeof(buf)), KS_ERR_INVALID);
    t0 = mono_ms();
    ks_leader_stop(l);
    /* the retry sleep is 2 s or more: stop must not wait it out */
    assert_true(mono_ms() - t0 < 1000);
    ks_kube_client_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_microtime_known_values),
        cmocka_unit_test(test_microtime_matches_gmtime),
        cmocka_unit_test(test_microtime_errors_leave_output),
        cmocka_unit_test(test_record_from_lease),
        cmocka_unit_test(test_record_from_lease_rejects),
        cmocka_unit_test(test_expiry_from_observation_time),
        cmocka_unit_test(test_decide),
        cmocka_unit_test(test_next_record),
        cmocka_unit_test(test_release_record),
        cmocka_unit_test(test_lease_json_new),
        cmocka_unit_test(test_lease_json_update_keeps_base),
        cmocka_unit_test(test_start_rejects_bad_config),
        cmocka_unit_test(test_unreachable_server_and_prompt_stop),
    };

    ks_log_init("test_leader", KS_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
