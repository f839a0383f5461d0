/* Integration tests of the gateway's own parts against the control plane's
 * nats-server (KS_NATS_URL): discovery (services announcing API groups in
 * $SRV.INFO, prefixes, new and departed services), dispatch (what an
 * ApiRequest and a TokenRequest carry, how answers come back) and the HTTP
 * server's life cycle (the deadline sweeper, answers that come after the
 * server gave up, the drain on stop). The real authn/authz stages need iam;
 * here two stub stages stand in for them (tests/integration/test_gateway.sh
 * runs the real chain), so this file builds the gateway from its sources. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the gateway, minus authn.c and authz.c */
#include "../../services/apigw/discovery.c"
#include "../../services/apigw/dispatch.c"
#include "../../services/apigw/requestinfo.c"
#include "../../services/apigw/server.c"

#include "micro.h"

/* ---- stub stages ---- */

#define MAX_HUNG 16
static pthread_mutex_t hung_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_request *hung[MAX_HUNG];
static int nhung;

/* X-Test-Hang: the stage never answers (until answer_hung); otherwise an
 * authenticated user "tester" goes on. */
void gw_stage_authn(gw_request *r)
{
    if (gw_header(r, "X-Test-Hang") != NULL) {
        pthread_mutex_lock(&hung_mu);
        if (nhung < MAX_HUNG) {
            hung[nhung++] = r;
            pthread_mutex_unlock(&hung_mu);
            return;
        }
        pthread_mutex_unlock(&hung_mu);
    }
    snprintf(r->username, sizeof(r->username), "tester");
    snprintf(r->uid, sizeof(r->uid), "uid-1");
    snprintf(r->groups[0], sizeof(r->groups[0]), "team-a");
    snprintf(r->groups[1], sizeof(r->groups[1]), "system:authenticated");
    r->ngroups = 2;
    r->authenticated = 1;
    snprintf(r->jti, sizeof(r->jti), "jti-123");
    gw_next(r);
}

void gw_stage_authz(gw_request *r)
{
    gw_next(r);
}

/* the audit producer is tested in test_audit_chain.sh: none here */
int gw_audit_is_strict(const gw *g) { return 0; }
void gw_audit_record(gw_request *r, const char *resp_body, size_t resp_len) {}
void gw_audit_record_acked(gw_request *r, const char *resp_body, size_t resp_len,
                           void (*done)(gw_request *r, int acked))
{
    done(r, 1);
}
void gw_audit_keep_body(gw_request *r) {}
void gw_stage_audit_gate(gw_request *r) { gw_next(r); }

ks_status gw_authn_start(gw *g) { return KS_OK; }
void gw_authn_stop(gw *g) {}
ks_status gw_authz_start(gw *g) { return KS_OK; }
void gw_authz_stop(gw *g) {}

/* A stage answering after the server answered: must be harmless. */
static int answer_hung(void)
{
    int n;

    pthread_mutex_lock(&hung_mu);
    n = nhung;
    for (int i = 0; i < nhung; i++)
        gw_respond_status(hung[i], 200, "", "too late");
    nhung = 0;
    pthread_mutex_unlock(&hung_mu);
    return n;
}

/* ---- the fixture ---- */

static ks_bus *bus, *svc_bus;
static gw_config cfg;
static gw G;
static int port;
static ks_bus_sub *echo_sub, *special_sub, *token_sub;

static int64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Answers an ApiRequest with a JSON picture of it. */
static void echo_api(ks_bus *b, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__ApiRequest *aq = NULL;
    Kscore__V1__ApiResponse ar = KSCORE__V1__API_RESPONSE__INIT;
    Kscore__V1__Header h = KSCORE__V1__HEADER__INIT, *hp[1] = {&h};
    char *vals[1] = {"yes"};
    json_t *o, *hdrs, *groups, *extra, *ips;
    char *s = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (KS_UNPACK(kscore__v1__api_request, ks_bus_msg_data(msg), ks_bus_msg_len(msg), &aq)) {
        ks_bus_msg_destroy(msg);
        return;
    }
    hdrs = json_object();
    for (size_t i = 0; i < aq->n_headers; i++) {
        json_t *v = json_array();
        for (size_t j = 0; j < aq->headers[i]->n_values; j++)
            json_array_append_new(v, json_string(aq->headers[i]->values[j]));
        json_object_set_new(hdrs, aq->headers[i]->name, v);
    }
    groups = json_array();
    extra = json_object();
    ips = json_array();
    for (size_t i = 0; aq->user && i < aq->user->n_groups; i++)
        json_array_append_new(groups, json_string(aq->user->groups[i]));
    for (size_t i = 0; aq->user && i < aq->user->n_extra; i++)
        json_object_set_new(extra, aq->user->extra[i]->key, json_string(aq->user->extra[i]->value));
    for (size_t i = 0; i < aq->n_source_ips; i++)
        json_array_append_new(ips, json_string(aq->source_ips[i]));
    o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s%, s:s, s:s, s:o, s:o, s:o, s:I, s:s, s:s}",
                  "subject", ks_bus_msg_subject(msg), "request_id", aq->request_id, "method",
                  aq->method, "path", aq->path, "raw_query", aq->raw_query, "headers", hdrs, "body",
                  (const char *)aq->body.data ? (const char *)aq->body.data : "", aq->body.len,
                  "username", aq->user ? aq->user->username : "", "uid",
                  aq->user ? aq->user->uid : "", "groups", groups, "extra", extra, "source_ips",
                  ips, "deadline", (json_int_t)aq->deadline_unix_ms, "verb",
                  aq->info ? aq->info->verb : "", "resource", aq->info ? aq->info->resource : "");
    s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    ar.code = strcmp(aq->method, "POST") == 0 ? 201 : 200;
    ar.content_type = "application/json";
    ar.body.data = (uint8_t *)s;
    ar.body.len = s ? strlen(s) : 0;
    h.name = "X-Echo";
    h.values = vals;
    h.n_values = 1;
    ar.headers = hp;
    ar.n_headers = 1;
    if (ks_codec_pack(&ar.base, &buf, &len) == KS_OK)
        (void)ks_bus_respond(b, msg, buf, len);
    free(buf);
    free(s);
    ks_codec_free(&aq->base);
    ks_bus_msg_destroy(msg);
}

/* ks.iam.token: "good" passwords get tokens, user "busy" gets 429. */
static void fake_token(ks_bus *b, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__TokenRequest *tq = NULL;
    Kscore__V1__TokenResponse tr = KSCORE__V1__TOKEN_RESPONSE__INIT;
    char at[512];
    uint8_t *buf = NULL;
    size_t len = 0;

    if (KS_UNPACK(kscore__v1__token_request, ks_bus_msg_data(msg), ks_bus_msg_len(msg), &tq)) {
        ks_bus_msg_destroy(msg);
        return;
    }
    if (strcmp(tq->username, "busy") == 0) {
        tr.error = "too_many_requests";
        tr.error_description = "slow down";
        tr.http_code = 429;
        tr.retry_after_s = 7;
    } else if (strcmp(tq->password, "good pass") == 0) {
        snprintf(at, sizeof(at), "at:%s:%s:%s:%s", tq->grant_type, tq->username, tq->client_id,
                 tq->source_ip);
        tr.access_token = at;
        tr.refresh_token = "rt";
        tr.token_type = "Bearer";
        tr.expires_in = 7200;
        tr.http_code = 200;
    } else {
        tr.error = "invalid_grant";
        tr.error_description = "bad credentials";
        tr.http_code = 400;
    }
    if (ks_codec_pack(&tr.base, &buf, &len) == KS_OK)
        (void)ks_bus_respond(b, msg, buf, len);
    free(buf);
    ks_codec_free(&tq->base);
    ks_bus_msg_destroy(msg);
}

static int setup(void **state)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts o = {.url = url, .name = "test-gateway", .wait_connected = 1};
    const union MHD_DaemonInfo *di;

    if (url == NULL)
        return -1;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (ks_bus_connect(&o, &bus) || ks_bus_connect(&o, &svc_bus))
        return -1;
    if (ks_bus_subscribe(svc_bus, "ks.api.test_example_io.v1", NULL, echo_api, NULL, &echo_sub) ||
        ks_bus_subscribe(svc_bus, "ks.api.test_example_io.v1.special", NULL, echo_api, NULL,
                         &special_sub) ||
        ks_bus_subscribe(svc_bus, "ks.iam.token", NULL, fake_token, NULL, &token_sub) ||
        ks_bus_flush(svc_bus, 2000))
        return -1;
    cfg.http_addr = "127.0.0.1:0";
    cfg.max_body = 64 * 1024;
    cfg.max_connections = 64;
    cfg.request_timeout_ms = 1000;
    cfg.idle_timeout_ms = 5000;
    cfg.workers = 2;
    cfg.discovery_interval_ms = 1000;
    G.cfg = &cfg;
    G.bus = bus;
    if (gw_dispatch_start(&G) || gw_server_start(&G))
        return -1;
    di = MHD_get_daemon_info(G.daemon, MHD_DAEMON_INFO_BIND_PORT);
    port = di ? di->port : 0;
    return port > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    gw_server_stop(&G);
    answer_hung();
    gw_dispatch_stop(&G);
    ks_bus_destroy(bus);
    ks_bus_destroy(svc_bus);
    curl_global_cleanup();
    return 0;
}

/* ---- an HTTP client ---- */

typedef struct {
    char body[65536];
    size_t len;
    char headers[8192];
    size_t hlen;
} http_answer;

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    http_answer *a = arg;
    size_t take = sz * n;
    if (take > sizeof(a->body) - 1 - a->len)
        take = sizeof(a->body) - 1 - a->len;
    memcpy(a->body + a->len, p, take);
    a->len += take;
    a->body[a->len] = '\0';
    return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
    http_answer *a = arg;
    size_t take = sz * n;
    if (take > sizeof(a->headers) - 1 - a->hlen)
        take = sizeof(a->headers) - 1 - a->hlen;
    memcpy(a->headers + a->hlen, p, take);
    a->hlen += take;
    a->headers[a->hlen] = '\0';
    return sz * n;
}

/* method path [body] [headers...] NULL: the status code, the answer in a */
static long http(http_answer *a, const char *method, const char *path, const char *body, ...)
{
    CURL *c = curl_easy_init();
    struct curl_slist *hl = NULL;
    char url[4096];
    long code = 0;
    va_list ap;
    const char *h;

    memset(a, 0, sizeof(*a));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    va_start(ap, body);
    while ((h = va_arg(ap, const char *)) != NULL)
        hl = curl_slist_append(hl, h);
    va_end(ap);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return code;
}

static int has_header(const http_answer *a, const char *line)
{
    return strcasestr(a->headers, line) != NULL;
}

static json_t *body_json(const http_answer *a)
{
    json_error_t e;
    return json_loadb(a->body, a->len, 0, &e);
}

/* ---- discovery: parsing and resolving without a bus ---- */

static void test_parse_entries(void **state)
{
    static const struct {
        const char *text;
        int ok;
        size_t nprefix;
    } cases[] = {
        {"iam.kubesphere.io/v1beta1", 1, 0},
        {"tenant.kubesphere.io/v1alpha2/auditing", 1, 1},
        {"a.example.io/v1/x/y.z/_w~-", 1, 3},
        {"a-b.io/v2", 1, 0},
        {"", 0, 0},
        {"iam.kubesphere.io", 0, 0},
        {"iam.kubesphere.io/", 0, 0},
        {"/v1", 0, 0},
        {"Iam.io/v1", 0, 0},
        {"iam..io/v1", 0, 0},
        {".iam.io/v1", 0, 0},
        {"iam.io./v1", 0, 0},
        {"iam.io/V1", 0, 0},
        {"iam.io/v1/", 0, 0},
        {"iam.io/v1//x", 0, 0},
        {"iam.io/v1/../x", 0, 0},
        {"iam.io/v1/.", 0, 0},
        {"iam.io/v1/a b", 0, 0},
        {"iam.io/v1/a*", 0, 0},
        {"iam.io/v1/a>", 0, 0},
        {"iam.io/v1/1/2/3/4/5/6/7/8", 1, 8},
        {"iam.io/v1/1/2/3/4/5/6/7/8/9", 0, 0},
        {"io/v1 ", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char group[254], version[64], prefix[GW_DISCOVERY_MAX_PREFIX][128];
        size_t np = 99;
        ks_status st = gw_discovery_parse_entry(cases[i].text, strlen(cases[i].text), group,
                                                version, prefix, &np);
        if ((st == KS_OK) != cases[i].ok || (st == KS_OK && np != cases[i].nprefix))
            fail_msg("entry \"%s\": status %s, %zu prefix segments", cases[i].text,
                     ks_status_name(st), np);
    }
}

static void test_resolve_longest_prefix(void **state)
{
    gw_discovery *d = NULL;
    char subject[GW_DISCOVERY_SUBJECT_MAX];
    const char *rest1[] = {"auditing", "events"};
    const char *rest2[] = {"workspaces", "w1"};
    const char *rest3[] = {"a", "b", "c"};
    int announced = -1;

    assert_int_equal(gw_discovery_create(NULL, NULL, &d), KS_OK);
    /* nothing announced: the fallback */
    assert_int_equal(gw_discovery_resolve(d, "iam.kubesphere.io", "v1beta1", NULL, 0, subject,
                                          sizeof(subject), &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.iam_kubesphere_io.v1beta1");
    assert_int_equal(announced, 0);

    gw_discovery_announce(d, "i1", "audit", "tenant.kubesphere.io/v1alpha2/auditing");
    gw_discovery_announce(d, "i2", "tenant", "tenant.kubesphere.io/v1alpha2");
    gw_discovery_announce(d, "i3", "x", "x.io/v1/a,x.io/v1/a/b,bad entry,,x.io/v2");
    assert_int_equal(gw_discovery_routes(d), 5);

    assert_int_equal(gw_discovery_resolve(d, "tenant.kubesphere.io", "v1alpha2", rest1, 2,
                                          subject, sizeof(subject), &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.tenant_kubesphere_io.v1alpha2.auditing");
    assert_int_equal(announced, 1);
    assert_int_equal(gw_discovery_resolve(d, "tenant.kubesphere.io", "v1alpha2", rest2, 2,
                                          subject, sizeof(subject), &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.tenant_kubesphere_io.v1alpha2");
    assert_int_equal(announced, 1);
    /* the longest of two matching prefixes */
    assert_int_equal(gw_discovery_resolve(d, "x.io", "v1", rest3, 3, subject, sizeof(subject),
                                          &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.x_io.v1.a.b");
    assert_int_equal(gw_discovery_resolve(d, "x.io", "v1", rest3, 1, subject, sizeof(subject),
                                          &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.x_io.v1.a");
    /* a prefix longer than the path does not match: the fallback */
    assert_int_equal(gw_discovery_resolve(d, "x.io", "v1", rest2, 2, subject, sizeof(subject),
                                          &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.x_io.v1");
    assert_int_equal(announced, 0);
    /* the audit service goes away: its path falls back to the group */
    gw_discovery_forget(d, "i1");
    assert_int_equal(gw_discovery_resolve(d, "tenant.kubesphere.io", "v1alpha2", rest1, 2,
                                          subject, sizeof(subject), &announced),
                     KS_OK);
    assert_string_equal(subject, "ks.api.tenant_kubesphere_io.v1alpha2");
    /* no version, or a group that cannot be a subject */
    assert_int_not_equal(gw_discovery_resolve(d, "x.io", "", NULL, 0, subject, sizeof(subject),
                                              NULL),
                         KS_OK);
    assert_int_not_equal(gw_discovery_resolve(d, "x.io", "v1", NULL, 0, subject, 8, NULL), KS_OK);
    gw_discovery_destroy(d);
}

/* ---- discovery on the bus ---- */

static int wait_resolves(gw_discovery *d, const char *group, const char *version,
                         const char *const *rest, size_t nrest, const char *want, int ms)
{
    int64_t end = ms_now() + ms;
    char subject[GW_DISCOVERY_SUBJECT_MAX];

    do {
        if (gw_discovery_resolve(d, group, version, rest, nrest, subject, sizeof(subject),
                                 NULL) == KS_OK &&
            strcmp(subject, want) == 0)
            return 1;
        struct timespec p = {0, 20 * 1000 * 1000};
        nanosleep(&p, NULL);
    } while (ms_now() < end);
    return 0;
}

static void test_discovery_live(void **state)
{
    static const char *const keys[] = {GW_DISCOVERY_KEY};
    static const char *const v1[] = {"live.example.io/v1"};
    static const char *const v2[] = {"live.example.io/v1/special,live2.example.io/v3"};
    ks_micro_cfg c1 = {.name = "live-one", .version = "1.0.0", .description = "test",
                       .meta_keys = keys, .meta_values = v1, .nmeta = 1};
    ks_micro_cfg c2 = {.name = "live-two", .version = "1.0.0", .description = "test",
                       .meta_keys = keys, .meta_values = v2, .nmeta = 1};
    gw_discovery_opts o = {.interval_ms = 1000, .ping_ms = 200, .window_ms = 100};
    const char *rest[] = {"special", "x"};
    ks_micro *m1 = NULL, *m2 = NULL;
    gw_discovery *d = NULL;
    int64_t t0;

    assert_int_equal(ks_micro_create(svc_bus, &c1, &m1), KS_OK);
    assert_int_equal(gw_discovery_create(bus, &o, &d), KS_OK);
    assert_true(wait_resolves(d, "live.example.io", "v1", rest, 2, "ks.api.live_example_io.v1",
                              3000));
    /* a service that starts later is found by the next PING scan, well
     * before the next full scan would */
    t0 = ms_now();
    assert_int_equal(ks_micro_create(svc_bus, &c2, &m2), KS_OK);
    assert_true(wait_resolves(d, "live.example.io", "v1", rest, 2,
                              "ks.api.live_example_io.v1.special", 3000));
    print_message("a new service was routed after %lld ms\n", (long long)(ms_now() - t0));
    assert_true(wait_resolves(d, "live2.example.io", "v3", NULL, 0, "ks.api.live2_example_io.v3",
                              100));
    /* it stops: forgotten after three full scans without it */
    ks_micro_destroy(m2);
    assert_true(wait_resolves(d, "live.example.io", "v1", rest, 2, "ks.api.live_example_io.v1",
                              6000));
    assert_true(gw_discovery_scans(d) >= 3);
    gw_discovery_destroy(d);
    ks_micro_destroy(m1);
}

/* ---- dispatch through the HTTP server ---- */

static void test_api_request_fields(void **state)
{
    http_answer a;
    json_t *o;
    long code;

    code = http(&a, "POST", "/clusters/host/kapis/test.example.io/v1/namespaces/ns1/things?b=2&a=%2F",
                "{\"x\":1}", "Content-Type: application/json", "Authorization: Bearer secret",
                "Cookie: c=1", "X-Multi: one", "X-Multi: two", "X-Forwarded-For: 10.1.2.3, junk",
                "X-Request-Id: rid-42", NULL);
    assert_int_equal(code, 201);
    assert_true(has_header(&a, "X-Echo: yes"));
    assert_true(has_header(&a, "X-Request-Id: rid-42"));
    o = body_json(&a);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "subject")), "ks.api.test_example_io.v1");
    assert_string_equal(json_string_value(json_object_get(o, "request_id")), "rid-42");
    assert_string_equal(json_string_value(json_object_get(o, "path")),
                        "/kapis/test.example.io/v1/namespaces/ns1/things");
    assert_string_equal(json_string_value(json_object_get(o, "raw_query")), "b=2&a=%2F");
    assert_string_equal(json_string_value(json_object_get(o, "body")), "{\"x\":1}");
    assert_string_equal(json_string_value(json_object_get(o, "username")), "tester");
    assert_string_equal(json_string_value(json_object_get(o, "uid")), "uid-1");
    assert_int_equal(json_array_size(json_object_get(o, "groups")), 2);
    assert_int_equal(json_object_size(json_object_get(o, "extra")), 0); /* jti only for /oauth */
    assert_string_equal(json_string_value(json_object_get(o, "verb")), "create");
    assert_string_equal(json_string_value(json_object_get(o, "resource")), "things");
    /* headers: Authorization and Cookie never leave the gateway */
    assert_null(json_object_get(json_object_get(o, "headers"), "Authorization"));
    assert_null(json_object_get(json_object_get(o, "headers"), "Cookie"));
    assert_int_equal(json_array_size(json_object_get(json_object_get(o, "headers"), "X-Multi")), 2);
    /* source IPs: X-Forwarded-For's valid entries, then the peer */
    assert_int_equal(json_array_size(json_object_get(o, "source_ips")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "source_ips"), 0)),
                        "10.1.2.3");
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "source_ips"), 1)),
                        "127.0.0.1");
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        json_int_t dl = json_integer_value(json_object_get(o, "deadline"));
        json_int_t now = (json_int_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        assert_true(dl > now && dl <= now + 1000);
    }
    json_decref(o);
}

static void test_prefixed_route(void **state)
{
    static const char *const keys[] = {GW_DISCOVERY_KEY};
    static const char *const vals[] = {"test.example.io/v1/special"};
    ks_micro_cfg mc = {.name = "special", .version = "1.0.0", .description = "test",
                       .meta_keys = keys, .meta_values = vals, .nmeta = 1};
    dispatch_state *d = G.dispatch;
    ks_micro *m = NULL;
    const char *rest[] = {"special"};
    http_answer a;
    json_t *o;

    assert_int_equal(ks_micro_create(svc_bus, &mc, &m), KS_OK);
    assert_true(wait_resolves(d->disc, "test.example.io", "v1", rest, 1,
                              "ks.api.test_example_io.v1.special", 5000));
    assert_int_equal(http(&a, "GET", "/kapis/test.example.io/v1/special/items", NULL, NULL), 200);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "subject")),
                        "ks.api.test_example_io.v1.special");
    json_decref(o);
    assert_int_equal(http(&a, "GET", "/kapis/test.example.io/v1/other", NULL, NULL), 200);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "subject")), "ks.api.test_example_io.v1");
    json_decref(o);
    ks_micro_destroy(m);
}

static void test_no_responders_and_clusters(void **state)
{
    http_answer a;
    json_t *o;

    assert_int_equal(http(&a, "GET", "/kapis/nobody.example.io/v1/x", NULL, NULL), 503);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "ServiceUnavailable");
    json_decref(o);
    assert_int_equal(http(&a, "GET", "/clusters/member/kapis/test.example.io/v1/x", NULL, NULL), 404);
    assert_int_equal(http(&a, "GET", "/kapis/clusters/member/test.example.io/v1/x", NULL, NULL), 404);
    assert_int_equal(http(&a, "GET", "/kapis/clusters/host/test.example.io/v1/x", NULL, NULL), 200);
    assert_int_equal(http(&a, "GET", "/api/v1/pods", NULL, NULL), 501);
    assert_non_null(strstr(a.body, "proxy not built yet"));
    assert_int_equal(http(&a, "GET", "/elsewhere", NULL, NULL), 404);
}

static void test_token_endpoint(void **state)
{
    http_answer a;
    json_t *o;

    assert_int_equal(http(&a, "POST", "/oauth/token",
                          "grant_type=password&username=al%40x&password=good+pass&client_id=kc",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     200);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "access_token")),
                        "at:password:al@x:kc:127.0.0.1");
    assert_string_equal(json_string_value(json_object_get(o, "token_type")), "Bearer");
    assert_string_equal(json_string_value(json_object_get(o, "refresh_token")), "rt");
    assert_int_equal(json_integer_value(json_object_get(o, "expires_in")), 7200);
    assert_true(has_header(&a, "Cache-Control: no-store"));
    json_decref(o);

    assert_int_equal(http(&a, "POST", "/oauth/token", "grant_type=password&username=al&password=x",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     400);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "error")), "invalid_grant");
    json_decref(o);

    assert_int_equal(http(&a, "POST", "/oauth/token", "grant_type=password&username=busy&password=x",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     429);
    assert_true(has_header(&a, "Retry-After: 7"));

    assert_int_equal(http(&a, "POST", "/oauth/token", "grant_type=password&password=%ZZ",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     400);
    assert_int_equal(http(&a, "PUT", "/oauth/token", "grant_type=password",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     405);
    assert_true(has_header(&a, "Allow: POST"));
}

static void test_logout_carries_jti(void **state)
{
    ks_bus_sub *sub = NULL;
    http_answer a;
    json_t *o;

    /* a stand-in for iam's API subject */
    assert_int_equal(ks_bus_subscribe(svc_bus, "ks.api.iam_kubesphere_io.v1beta1", NULL, echo_api,
                                      NULL, &sub),
                     KS_OK);
    assert_int_equal(ks_bus_flush(svc_bus, 2000), KS_OK);
    assert_int_equal(http(&a, "POST", "/oauth/logout", "refresh_token=x",
                          "Content-Type: application/x-www-form-urlencoded", NULL),
                     201);
    o = body_json(&a);
    assert_string_equal(json_string_value(json_object_get(o, "path")), "/oauth/logout");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(o, "extra"), "kscore.io/token-jti")),
        "jti-123");
    json_decref(o);
    ks_bus_unsubscribe(sub);
}

static void test_health_endpoints(void **state)
{
    http_answer a;

    assert_int_equal(http(&a, "GET", "/healthz", NULL, NULL), 200);
    assert_string_equal(a.body, "ok");
    assert_int_equal(http(&a, "GET", "/readyz", NULL, NULL), 200);
    assert_int_equal(http(&a, "POST", "/livez", "x", NULL), 405);
}

/* ---- the server's own answers ---- */

typedef struct {
    long code;
    http_answer a;
    int64_t ms;
} bg_req;

static void *bg_hang(void *arg)
{
    bg_req *b = arg;
    int64_t t0 = ms_now();
    b->code = http(&b->a, "GET", "/kapis/test.example.io/v1/x", NULL, "X-Test-Hang: 1", NULL);
    b->ms = ms_now() - t0;
    return NULL;
}

static void test_deadline_sweeper(void **state)
{
    bg_req b;

    /* the stage never answers: the server answers 504 at the deadline */
    bg_hang(&b);
    assert_int_equal(b.code, 504);
    assert_true(b.ms >= 900 && b.ms < 1600);
    assert_non_null(strstr(b.a.body, "\"reason\":\"Timeout\""));
    /* the stage answers afterwards: nothing breaks, nothing leaks */
    assert_int_equal(answer_hung(), 1);
    {
        http_answer a;
        assert_int_equal(http(&a, "GET", "/healthz", NULL, NULL), 200);
    }
}

static void test_stop_drains(void **state)
{
    pthread_t th[3];
    bg_req b[3];
    int64_t t0;

    cfg.request_timeout_ms = 30000; /* the drain, not the deadline, answers */
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, bg_hang, &b[i]);
    t0 = ms_now();
    while (suspended_count() < 3 && ms_now() - t0 < 3000) {
        struct timespec p = {0, 10 * 1000 * 1000};
        nanosleep(&p, NULL);
    }
    assert_int_equal(suspended_count(), 3);
    t0 = ms_now();
    gw_server_stop(&G);
    assert_true(ms_now() - t0 < 1800);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(b[i].code, 503);
        assert_non_null(strstr(b[i].a.body, "shutting down"));
    }
    /* the stages answer after the server is gone */
    assert_int_equal(answer_hung(), 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_entries),
        cmocka_unit_test(test_resolve_longest_prefix),
        cmocka_unit_test(test_discovery_live),
        cmocka_unit_test(test_api_request_fields),
        cmocka_unit_test(test_prefixed_route),
        cmocka_unit_test(test_no_responders_and_clusters),
        cmocka_unit_test(test_token_endpoint),
        cmocka_unit_test(test_logout_carries_jti),
        cmocka_unit_test(test_health_endpoints),
        cmocka_unit_test(test_deadline_sweeper),
        cmocka_unit_test(test_stop_drains),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
