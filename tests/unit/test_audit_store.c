/* Unit tests of the audit store (services/audit: store, event, query,
 * scope, sweeper; docs/audit.md) on a temporary SQLite file, no servers:
 *
 *   - append: batches in one transaction, the position, INSERT OR IGNORE on
 *     the audit ID (a duplicate is a gap, never a second row), gaps and
 *     undecodable messages recorded, a failing batch rolled back whole, a
 *     batch that does not continue the position refused;
 *   - the hash chain: equal to SHA-256(previous || blob) computed here, the
 *     same for two stores fed the same stream; `verify` passes, then names
 *     the row whose column, blob or chain was changed, the row after a
 *     removed one, a removed tail;
 *   - queries: every *_filter and *_search parameter returns exactly the
 *     expected set (computed here from the generated events), in order;
 *     time ranges, from/size, sort, the continue token (pages cover every
 *     match exactly once), statistics and histogram; bad input refused
 *     with a message naming the parameter;
 *   - scoping: what a caller may see, with a decider table standing in for
 *     iam; its cache; a decider failure;
 *   - retention: old rows go (and their search entries), the chain still
 *     verifies from the anchor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../services/audit/event.c"
#include "../../services/audit/query.c"
#include "../../services/audit/scope.c"
#include "../../services/audit/store.c"
#include "../../services/audit/sweeper.c"
#include "codec.h"

#define NEV 240
#define BASE_US 1700000000000000LL     /* 2023-11-14T22:13:20Z */

typedef struct {
    char id[40];
    int64_t ts;
    const char *user, *groups[2], *verb, *ws, *ns, *resource, *sub, *name, *level, *status;
    size_t ngroups;
    const char *ip;
    int code;
    uint64_t seq;
    uint8_t *blob;
    size_t len;
} gen_event;

static gen_event evs[NEV];
static char dir[64];
static char path[128];

static const char *const users[] = {"alice", "bob", "Carol", "dave@example.com",
                                    "system:serviceaccount:kube-system:x"};
static const char *const verbs[] = {"create", "delete", "get", "list", "update", "patch"};
static const char *const wss[] = {"", "ws-alpha", "ws-beta"};
static const char *const nss[] = {"", "ns-one", "ns-two", "kube-system"};
static const char *const ress[] = {"pods", "deployments", "users", "workspaces", "secrets"};
static const char *const subs[] = {"", "", "log", "exec"};
static const char *const names[] = {"pod-a", "my.config", "web-frontend-7", "", "Web-Backend"};
static const char *const levels[] = {"Metadata", "Request", "RequestResponse"};
static const int codes[] = {200, 201, 403, 404, 500};
static const char *const ips[] = {"10.0.0.1", "10.0.0.2", "192.168.1.7"};

/* ---- events ---- */

static void pack_event(gen_event *e)
{
    Kscore__V1__AuditEvent ev = KSCORE__V1__AUDIT_EVENT__INIT;
    Kscore__V1__UserInfo u = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__ObjectReference o = KSCORE__V1__OBJECT_REFERENCE__INIT;
    Kscore__V1__Status rs = KSCORE__V1__STATUS__INIT;
    char *ipv[1] = {(char *)e->ip};

    ev.audit_id = e->id;
    ev.level = (char *)e->level;
    ev.stage = "ResponseComplete";
    ev.request_uri = "/apis/x";
    ev.verb = (char *)e->verb;
    u.username = (char *)e->user;
    u.groups = (char **)e->groups;
    u.n_groups = e->ngroups;
    ev.user = &u;
    ev.source_ips = ipv;
    ev.n_source_ips = 1;
    ev.user_agent = "kubectl/v1.29";
    o.resource = (char *)e->resource;
    o.subresource = (char *)e->sub;
    o.namespace_ = (char *)e->ns;
    o.name = (char *)e->name;
    o.api_group = "apps";
    o.api_version = "v1";
    ev.object_ref = &o;
    rs.code = e->code;
    rs.status = (char *)e->status;
    ev.response_status = &rs;
    ev.request_received_unix_us = e->ts;
    ev.stage_unix_us = e->ts + 1500;
    ev.workspace = (char *)e->ws;
    ev.cluster = "host";
    assert_int_equal(ks_codec_pack(&ev.base, &e->blob, &e->len), KS_OK);
}

static void gen_all(void)
{
    for (int i = 0; i < NEV; i++) {
        gen_event *e = &evs[i];
        memset(e, 0, sizeof(*e));
        snprintf(e->id, sizeof(e->id), "0190a000-0000-7000-8000-%012d", i);
        e->ts = BASE_US + (int64_t)(i / 2) * 1000000;   /* pairs share a time */
        e->user = users[(i * 7 + i / 3) % 5];
        e->groups[0] = "system:authenticated";
        e->ngroups = 1;
        if (i % 3 == 0) {
            e->groups[1] = "Developers";
            e->ngroups = 2;
        }
        e->verb = verbs[(i * 5 + i / 7) % 6];
        e->ws = wss[i % 3];
        e->ns = nss[(i / 3) % 4];
        e->resource = ress[(i * 3) % 5];
        e->sub = subs[(i / 5) % 4];
        e->name = names[(i * 11 + i / 5) % 5];
        e->level = levels[i % 3];
        e->code = codes[(i / 7) % 5];
        e->status = e->code < 400 ? "Success" : "Failure";
        e->ip = ips[(i / 4) % 3];
        e->seq = (uint64_t)i + 1;
        pack_event(e);
    }
}

static void free_all(void)
{
    for (int i = 0; i < NEV; i++) {
        free(evs[i].blob);
        evs[i].blob = NULL;
    }
}

static void rm_store(void)
{
    char p[160];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/kscore-audit-unit.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/audit.db", dir);
    gen_all();
    return 0;
}

static int teardown(void **state)
{
    rm_store();
    rmdir(dir);
    free_all();
    return 0;
}

static aud_store *open_writer(void)
{
    aud_store *s = NULL;
    aud_store_opts o = {.sync_full = 0};
    assert_int_equal(aud_store_open(path, AUD_STORE_WRITE, &o, &s), KS_OK);
    return s;
}

/* A fresh store holding every generated event. */
static aud_store *filled(void)
{
    aud_item items[NEV];
    aud_append_result r;
    aud_store *s;

    rm_store();
    s = open_writer();
    for (int i = 0; i < NEV; i++)
        items[i] = (aud_item){.seq = evs[i].seq, .blob = evs[i].blob, .len = evs[i].len};
    /* two transactions */
    assert_int_equal(aud_store_append(s, items, NEV / 2, &r), KS_OK);
    assert_int_equal(aud_store_append(s, items + NEV / 2, NEV - NEV / 2, &r), KS_OK);
    assert_int_equal(r.last_seq, NEV);
    return s;
}

/* ---- append ---- */

static void test_append_position(void **state)
{
    aud_item items[3];
    aud_append_result r;
    uint8_t head[AUD_CHAIN_LEN], zero[AUD_CHAIN_LEN] = {0};
    uint64_t pos = 99, rows = 0;
    aud_store *s;

    rm_store();
    s = open_writer();
    assert_int_equal(aud_store_position(s, &pos, head), KS_OK);
    assert_int_equal(pos, 0);
    assert_memory_equal(head, zero, AUD_CHAIN_LEN);
    for (int i = 0; i < 3; i++)
        items[i] = (aud_item){.seq = evs[i].seq, .blob = evs[i].blob, .len = evs[i].len};
    assert_int_equal(aud_store_append(s, items, 3, &r), KS_OK);
    assert_int_equal(r.stored, 3);
    assert_int_equal(r.last_seq, 3);
    /* not continuing the position: refused, nothing written */
    items[0].seq = 5;
    assert_int_equal(aud_store_append(s, items, 1, &r), KS_ERR_INVALID);
    items[0].seq = 3;
    assert_int_equal(aud_store_append(s, items, 1, &r), KS_ERR_INVALID);
    aud_store_close(s);
    /* a new connection sees the committed position */
    s = open_writer();
    assert_int_equal(aud_store_position(s, &pos, head), KS_OK);
    assert_int_equal(pos, 3);
    assert_memory_not_equal(head, zero, AUD_CHAIN_LEN);
    assert_int_equal(aud_store_count(s, &rows), KS_OK);
    assert_int_equal(rows, 3);
    aud_store_close(s);
}

static int64_t count_sql(aud_store *s, const char *sql)
{
    sqlite3_stmt *q;
    int64_t v;
    assert_int_equal(sqlite3_prepare_v2(aud_store_db(s), sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return v;
}

static void test_insert_or_ignore_and_gaps(void **state)
{
    aud_item items[6];
    aud_append_result r;
    uint8_t junk[] = {0xff, 0xff, 0xff, 0x01};
    aud_store *s;

    rm_store();
    s = open_writer();
    items[0] = (aud_item){.seq = 1, .blob = evs[0].blob, .len = evs[0].len};
    items[1] = (aud_item){.seq = 2, .blob = evs[1].blob, .len = evs[1].len};
    /* the same audit ID again, published after the duplicate window */
    items[2] = (aud_item){.seq = 3, .blob = evs[0].blob, .len = evs[0].len};
    items[3] = (aud_item){.seq = 4, .gap_last = 6, .gap_reason = "not in the stream any more"};
    items[4] = (aud_item){.seq = 7, .blob = junk, .len = sizeof(junk)};
    items[5] = (aud_item){.seq = 8, .blob = evs[2].blob, .len = evs[2].len};
    assert_int_equal(aud_store_append(s, items, 6, &r), KS_OK);
    assert_int_equal(r.stored, 3);
    assert_int_equal(r.duplicates, 1);
    assert_int_equal(r.undecodable, 1);
    assert_int_equal(r.gap_seqs, 3);
    assert_int_equal(r.last_seq, 8);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_events"), 3);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_events WHERE audit_id = '0190a000-0000-7000-8000-000000000000'"), 1);
    /* every sequence up to the position is a row or a gap */
    assert_int_equal(count_sql(s, "SELECT (SELECT count(*) FROM aud_events) + (SELECT "
                                  "sum(last_seq - first_seq + 1) FROM aud_gaps)"),
                     8);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_gaps WHERE reason LIKE 'duplicate audit ID%'"), 1);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_gaps WHERE reason LIKE 'undecodable%'"), 1);
    aud_store_close(s);
}

static void test_failed_batch_rolls_back(void **state)
{
    aud_item items[4];
    aud_append_result r;
    uint8_t head_before[AUD_CHAIN_LEN], head[AUD_CHAIN_LEN];
    uint64_t pos = 0;
    aud_store *s;

    rm_store();
    s = open_writer();
    items[0] = (aud_item){.seq = 1, .blob = evs[0].blob, .len = evs[0].len};
    assert_int_equal(aud_store_append(s, items, 1, &r), KS_OK);
    assert_int_equal(aud_store_position(s, &pos, head_before), KS_OK);
    /* a trigger that fails the insert of the third event of the batch */
    assert_int_equal(sqlite3_exec(aud_store_db(s),
                                  "CREATE TEMP TRIGGER boom BEFORE INSERT ON aud_events WHEN "
                                  "NEW.audit_id = '0190a000-0000-7000-8000-000000000003' BEGIN "
                                  "SELECT RAISE(ABORT, 'injected failure'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    for (int i = 1; i < 4; i++)
        items[i - 1] = (aud_item){.seq = evs[i].seq, .blob = evs[i].blob, .len = evs[i].len};
    assert_int_equal(aud_store_append(s, items, 3, &r), KS_ERR_IO);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_events"), 1);
    assert_int_equal(aud_store_position(s, &pos, head), KS_OK);
    assert_int_equal(pos, 1);
    assert_memory_equal(head, head_before, AUD_CHAIN_LEN);
    /* the same batch once the fault is gone */
    assert_int_equal(sqlite3_exec(aud_store_db(s), "DROP TRIGGER boom", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(aud_store_append(s, items, 3, &r), KS_OK);
    assert_int_equal(r.stored, 3);
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_events"), 4);
    /* the distinct users of the committed rows are searchable (none were
     * lost with the rolled-back attempt) */
    assert_int_equal(count_sql(s, "SELECT count(*) FROM aud_terms WHERE field = 'username' AND "
                                  "value IN (SELECT username FROM aud_events)"),
                     count_sql(s, "SELECT count(DISTINCT username) FROM aud_events"));
    aud_store_close(s);
}

/* ---- the chain ---- */

static void sha(const uint8_t prev[32], const uint8_t *b, size_t n, uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = 0;
    assert_non_null(md);
    assert_int_equal(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
    EVP_DigestUpdate(md, prev, 32);
    EVP_DigestUpdate(md, b, n);
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
}

static void expect_broken(aud_store *s, uint64_t seq, const char *reason_part)
{
    aud_verify_result v;
    assert_int_equal(aud_store_verify(s, &v), KS_OK);
    if (v.ok)
        fail_msg("verify passed; expected a break at %llu", (unsigned long long)seq);
    if (v.bad_seq != seq || strstr(v.reason, reason_part) == NULL)
        fail_msg("verify broke at %llu (%s); expected %llu (%s)", (unsigned long long)v.bad_seq,
                 v.reason, (unsigned long long)seq, reason_part);
    if (seq > 0)
        assert_string_equal(v.bad_audit_id, evs[seq - 1].id);
}

static void test_chain_and_verify(void **state)
{
    aud_store *s = filled();
    aud_verify_result v;
    uint8_t prev[32] = {0}, want[32];
    sqlite3 *db = aud_store_db(s);
    sqlite3_stmt *q;
    uint64_t pos;
    uint8_t head[32];

    /* chain = SHA-256(prev || blob), computed independently */
    for (int i = 0; i < NEV; i++) {
        sha(prev, evs[i].blob, evs[i].len, want);
        memcpy(prev, want, 32);
    }
    assert_int_equal(aud_store_position(s, &pos, head), KS_OK);
    assert_memory_equal(head, want, 32);
    assert_int_equal(aud_store_verify(s, &v), KS_OK);
    assert_true(v.ok);
    assert_int_equal(v.rows, NEV);
    assert_memory_equal(v.head, want, 32);

    /* a column changed: that row */
    assert_int_equal(sqlite3_exec(db, "UPDATE aud_events SET username = 'mallory' WHERE seq = 20",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    expect_broken(s, 20, "column username");
    assert_int_equal(sqlite3_prepare_v2(db, "UPDATE aud_events SET username = ? WHERE seq = 20", -1,
                                        &q, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(q, 1, evs[19].user, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(q), SQLITE_DONE);
    sqlite3_finalize(q);
    assert_int_equal(aud_store_verify(s, &v), KS_OK);
    assert_true(v.ok);

    /* the event itself changed (one byte of the blob): that row */
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE aud_events SET blob = CAST(replace(CAST(blob AS TEXT), "
                                  "'kubectl', 'kubectX') AS BLOB) WHERE seq = 30",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    expect_broken(s, 30, "chain breaks");
    /* fixed by the original blob */
    assert_int_equal(sqlite3_prepare_v2(db, "UPDATE aud_events SET blob = ? WHERE seq = 30", -1, &q,
                                        NULL),
                     SQLITE_OK);
    sqlite3_bind_blob(q, 1, evs[29].blob, (int)evs[29].len, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(q), SQLITE_DONE);
    sqlite3_finalize(q);

    /* the chain value changed: that row */
    assert_int_equal(sqlite3_exec(db, "UPDATE aud_events SET chain = zeroblob(32) WHERE seq = 35",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    expect_broken(s, 35, "chain breaks");
    aud_store_close(s);

    /* a row removed: the row after it */
    s = filled();
    db = aud_store_db(s);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM aud_events WHERE seq = 40", NULL, NULL, NULL),
                     SQLITE_OK);
    expect_broken(s, 41, "chain breaks");
    aud_store_close(s);

    /* the last rows removed: the head says so */
    s = filled();
    db = aud_store_db(s);
    assert_int_equal(sqlite3_exec(db, "DELETE FROM aud_events WHERE seq > 230", NULL, NULL, NULL),
                     SQLITE_OK);
    expect_broken(s, 0, "head");
    aud_store_close(s);
}

static void test_same_stream_same_chain(void **state)
{
    aud_store *a = filled(), *b;
    uint8_t ha[32], hb[32];
    uint64_t pa, pb;
    aud_item items[NEV];
    char path2[sizeof(path)];

    assert_int_equal(aud_store_position(a, &pa, ha), KS_OK);
    aud_store_close(a);
    /* another replica, other batch sizes */
    snprintf(path2, sizeof(path2), "%s", path);
    snprintf(path, sizeof(path), "%s/replica2.db", dir);
    rm_store();
    b = open_writer();
    for (int i = 0; i < NEV; i++)
        items[i] = (aud_item){.seq = evs[i].seq, .blob = evs[i].blob, .len = evs[i].len};
    for (int i = 0; i < NEV; i += 7)
        assert_int_equal(aud_store_append(b, items + i, NEV - i < 7 ? (size_t)(NEV - i) : 7, NULL),
                         KS_OK);
    assert_int_equal(aud_store_position(b, &pb, hb), KS_OK);
    assert_int_equal(pa, pb);
    assert_memory_equal(ha, hb, 32);
    aud_store_close(b);
    rm_store();
    snprintf(path, sizeof(path), "%s", path2);
}

/* ---- queries ---- */

typedef int (*match_fn)(const gen_event *e, const void *arg);

static aud_visibility all_visible = {.all = 1};

/* Run raw query q; return the answer. */
static json_t *run_q(aud_store *s, const char *raw, const aud_visibility *vis)
{
    aud_query q;
    json_t *out = NULL;
    char err[512];

    if (aud_query_parse(raw, &q, err, sizeof(err)) != KS_OK)
        fail_msg("parse \"%s\": %s", raw, err);
    if (aud_query_run(aud_store_db(s), &q, vis, 0, &out, err, sizeof(err)) != KS_OK)
        fail_msg("run \"%s\": %s %s", raw, err, ks_status_last());
    aud_query_clear(&q);
    return out;
}

static int cmp_desc_ts(const void *a, const void *b)
{
    const gen_event *x = *(const gen_event *const *)a, *y = *(const gen_event *const *)b;
    if (x->ts != y->ts)
        return x->ts < y->ts ? 1 : -1;
    return x->seq < y->seq ? 1 : -1;
}

static int cmp_desc_seq(const void *a, const void *b)
{
    const gen_event *x = *(const gen_event *const *)a, *y = *(const gen_event *const *)b;
    return x->seq < y->seq ? 1 : -1;
}

/* The query's records are exactly the events m accepts, newest first
 * (by time, or by stream order for searches). */
static void expect_set(aud_store *s, const char *raw, match_fn m, const void *arg, int by_seq)
{
    const gen_event *want[NEV];
    size_t n = 0;
    json_t *ans, *recs;
    char full[512];

    for (int i = 0; i < NEV; i++)
        if (m(&evs[i], arg))
            want[n++] = &evs[i];
    qsort(want, n, sizeof(*want), by_seq ? cmp_desc_seq : cmp_desc_ts);
    snprintf(full, sizeof(full), "%s%ssize=1000", raw, raw[0] ? "&" : "");
    ans = run_q(s, full, &all_visible);
    recs = json_object_get(json_object_get(ans, "query"), "records");
    if (json_integer_value(json_object_get(json_object_get(ans, "query"), "total")) != (json_int_t)n ||
        json_array_size(recs) != n)
        fail_msg("%s: %zu records, total %lld; expected %zu", raw, json_array_size(recs),
                 (long long)json_integer_value(json_object_get(json_object_get(ans, "query"), "total")),
                 n);
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_object_get(json_array_get(recs, i), "AuditID"));
        if (id == NULL || strcmp(id, want[i]->id) != 0)
            fail_msg("%s: record %zu is %s, expected %s", raw, i, id ? id : "(none)", want[i]->id);
    }
    if (n == 0 && strstr(raw, "nomatch") == NULL)
        fail_msg("%s: the generated events give no match: a useless case", raw);
    json_decref(ans);
}

typedef struct {
    size_t off;         /* field of gen_event (a const char *) */
    const char *v[3];
} str_in;

static int m_str_in(const gen_event *e, const void *arg)
{
    const str_in *a = arg;
    const char *f = *(const char *const *)((const char *)e + a->off);
    for (int i = 0; i < 3 && a->v[i]; i++)
        if (strcmp(f, a->v[i]) == 0)
            return 1;
    return 0;
}

static int m_str_contains(const gen_event *e, const void *arg)
{
    const str_in *a = arg;
    const char *f = *(const char *const *)((const char *)e + a->off);
    for (int i = 0; i < 3 && a->v[i]; i++)
        if (strcasestr(f, a->v[i]) != NULL)
            return 1;
    return 0;
}

static int m_group_contains(const gen_event *e, const void *arg)
{
    const char *term = arg;
    for (size_t i = 0; i < e->ngroups; i++)
        if (strcasestr(e->groups[i], term) != NULL)
            return 1;
    return 0;
}

static int m_code(const gen_event *e, const void *arg)
{
    const int *c = arg;
    return e->code == c[0] || e->code == c[1];
}

static int m_all(const gen_event *e, const void *arg)
{
    return 1;
}

typedef struct {
    int64_t from, to;   /* [from, to) */
} range;

static int m_range(const gen_event *e, const void *arg)
{
    const range *r = arg;
    return e->ts >= r->from && e->ts < r->to;
}

static int m_combo(const gen_event *e, const void *arg)
{
    return strcmp(e->ws, "ws-alpha") == 0 && strcmp(e->verb, "delete") == 0 &&
           (e->code == 403 || e->code == 500);
}

static int m_combo_search(const gen_event *e, const void *arg)
{
    return strcasestr(e->name, "web") != NULL && strcmp(e->user, "alice") == 0;
}

#define OFF(f) offsetof(gen_event, f)

static void test_filters(void **state)
{
    aud_store *s = filled();
    int c2[2] = {403, 404};
    struct {
        const char *raw;
        str_in a;
    } cases[] = {
        {"workspace_filter=ws-alpha", {OFF(ws), {"ws-alpha"}}},
        {"workspace_filter=ws-alpha,ws-beta", {OFF(ws), {"ws-alpha", "ws-beta"}}},
        {"objectref_namespace_filter=kube-system", {OFF(ns), {"kube-system"}}},
        {"objectref_namespace_filter=ns-one,ns-two", {OFF(ns), {"ns-one", "ns-two"}}},
        {"objectref_name_filter=my.config", {OFF(name), {"my.config"}}},
        {"level_filter=RequestResponse", {OFF(level), {"RequestResponse"}}},
        {"verb_filter=delete,patch", {OFF(verb), {"delete", "patch"}}},
        {"user_filter=dave%40example.com", {OFF(user), {"dave@example.com"}}},
        {"user_filter=system:serviceaccount:kube-system:x,alice",
         {OFF(user), {"system:serviceaccount:kube-system:x", "alice"}}},
        {"objectref_resource_filter=secrets", {OFF(resource), {"secrets"}}},
        {"objectref_subresource_filter=exec,log", {OFF(sub), {"exec", "log"}}},
        {"response_status_filter=Failure", {OFF(status), {"Failure"}}},
        {"user_filter=nomatch", {OFF(user), {"nomatch"}}},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_set(s, cases[i].raw, m_str_in, &cases[i].a, 0);
    expect_set(s, "response_code_filter=403,404", m_code, c2, 0);
    expect_set(s, "", m_all, NULL, 0);
    expect_set(s, "workspace_filter=ws-alpha&verb_filter=delete&response_code_filter=403,500",
               m_combo, NULL, 0);
    aud_store_close(s);
}

static void test_searches(void **state)
{
    aud_store *s = filled();
    struct {
        const char *raw;
        str_in a;
    } cases[] = {
        /* trigram index (names, IPs: three characters or more) or the
         * distinct values (workspaces, namespaces, users); case-insensitive */
        {"objectref_name_search=web", {OFF(name), {"web"}}},
        {"objectref_name_search=FRONTEND,config", {OFF(name), {"FRONTEND", "config"}}},
        {"user_search=example.com", {OFF(user), {"example.com"}}},
        {"user_search=car", {OFF(user), {"car"}}},
        {"workspace_search=alph", {OFF(ws), {"alph"}}},
        {"objectref_namespace_search=kube-", {OFF(ns), {"kube-"}}},
        {"source_ip_search=192.168.", {OFF(ip), {"192.168."}}},
        {"source_ip_search=10.0,168.1", {OFF(ip), {"10.0", "168.1"}}},
        /* shorter terms: LIKE on the column */
        {"objectref_name_search=my", {OFF(name), {"my"}}},
        {"user_search=bo", {OFF(user), {"bo"}}},
        {"objectref_namespace_search=tw", {OFF(ns), {"tw"}}},
        {"user_search=nomatch", {OFF(user), {"nomatch"}}},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* the trigram index (names, source IPs) orders by stream sequence,
         * the others by time */
        int fts = strncmp(cases[i].raw, "objectref_name_search", 21) == 0 ||
                  strncmp(cases[i].raw, "source_ip_search", 16) == 0;
        for (int k = 0; k < 3 && cases[i].a.v[k]; k++)
            if (strlen(cases[i].a.v[k]) < 3)
                fts = 0;
        expect_set(s, cases[i].raw,
                   m_str_contains, &cases[i].a, fts);
    }
    expect_set(s, "group_search=develop", m_group_contains, "develop", 0);
    expect_set(s, "objectref_name_search=web&user_filter=alice", m_combo_search, NULL, 1);
    aud_store_close(s);
}

static void test_time_paging_sort(void **state)
{
    aud_store *s = filled();
    range r = {BASE_US + 10 * 1000000LL, BASE_US + 21 * 1000000LL};
    char raw[256];
    json_t *ans, *recs;
    size_t seen[NEV + 1] = {0};
    const char *cont;
    int pages = 0, total = 0;

    /* end_time includes its whole second */
    snprintf(raw, sizeof(raw), "start_time=%lld&end_time=%lld", (long long)(r.from / 1000000),
             (long long)(r.to / 1000000 - 1));
    expect_set(s, raw, m_range, &r, 0);

    /* from/size, ascending */
    ans = run_q(s, "sort=asc&from=4&size=3", &all_visible);
    recs = json_object_get(json_object_get(ans, "query"), "records");
    assert_int_equal(json_array_size(recs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(recs, 0), "AuditID")), evs[4].id);
    assert_string_equal(json_string_value(json_object_get(json_array_get(recs, 2), "AuditID")), evs[6].id);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")), NEV);
    json_decref(ans);

    /* the event as KubeSphere shows it */
    ans = run_q(s, "size=1&objectref_name_filter=my.config&sort=asc", &all_visible);
    {
        json_t *e = json_array_get(json_object_get(json_object_get(ans, "query"), "records"), 0);
        assert_non_null(json_object_get(e, "ObjectRef"));
        assert_string_equal(json_string_value(json_object_get(json_object_get(e, "ObjectRef"), "Name")),
                            "my.config");
        assert_non_null(json_string_value(json_object_get(json_object_get(e, "User"), "username")));
        assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "ResponseStatus"), "code")) > 0, 1);
        assert_string_equal(json_string_value(json_object_get(e, "RequestReceivedTimestamp")),
                            "2023-11-14T22:13:20.000000Z");
        assert_true(json_is_array(json_object_get(e, "SourceIPs")));
    }
    json_decref(ans);

    /* continue: every event exactly once, in order, both directions, both paths */
    for (int mode = 0; mode < 3; mode++) {
        const char *base = mode == 0 ? "size=17" : mode == 1 ? "size=17&sort=asc"
                                                             : "size=7&objectref_name_search=web";
        char *tok = NULL;
        int64_t last_ts = mode == 1 ? INT64_MIN : INT64_MAX;
        uint64_t last_seq = mode == 1 ? 0 : UINT64_MAX;
        memset(seen, 0, sizeof(seen));
        pages = total = 0;
        for (;;) {
            if (tok)
                snprintf(raw, sizeof(raw), "%s&continue=%s", base, tok);
            else
                snprintf(raw, sizeof(raw), "%s", base);
            free(tok);
            tok = NULL;
            ans = run_q(s, raw, &all_visible);
            recs = json_object_get(json_object_get(ans, "query"), "records");
            for (size_t i = 0; i < json_array_size(recs); i++) {
                const char *id = json_string_value(json_object_get(json_array_get(recs, i), "AuditID"));
                int k = (int)strtol(id + 24, NULL, 10);
                seen[k]++;
                total++;
                if (mode == 2) {
                    assert_true(evs[k].seq < last_seq);
                    last_seq = evs[k].seq;
                } else if (mode == 1) {
                    assert_true(evs[k].ts > last_ts || (evs[k].ts == last_ts && evs[k].seq > last_seq));
                    last_ts = evs[k].ts;
                    last_seq = evs[k].seq;
                } else {
                    assert_true(evs[k].ts < last_ts || (evs[k].ts == last_ts && evs[k].seq < last_seq));
                    last_ts = evs[k].ts;
                    last_seq = evs[k].seq;
                }
            }
            cont = json_string_value(json_object_get(json_object_get(ans, "query"), "continue"));
            if (cont)
                tok = strdup(cont);
            pages++;
            json_decref(ans);
            if (tok == NULL)
                break;
            assert_true(pages < 100);
        }
        for (int i = 0; i < NEV; i++) {
            int want = mode < 2 ? 1 : strcasestr(evs[i].name, "web") != NULL;
            if ((int)seen[i] != want)
                fail_msg("mode %d: event %d seen %zu times", mode, i, seen[i]);
        }
    }
    aud_store_close(s);
}

static void test_statistics_histogram(void **state)
{
    aud_store *s = filled();
    json_t *ans, *b;
    json_int_t sum = 0;
    size_t n;

    ans = run_q(s, "operation=statistics&verb_filter=delete", &all_visible);
    {
        int events = 0;
        char seen[64][160];
        int ndistinct = 0;
        for (int i = 0; i < NEV; i++) {
            char key[160];
            int dup = 0;
            if (strcmp(evs[i].verb, "delete") != 0)
                continue;
            events++;
            snprintf(key, sizeof(key), "%s|%s|%s", evs[i].resource, evs[i].ns, evs[i].name);
            for (int k = 0; k < ndistinct; k++)
                dup |= strcmp(seen[k], key) == 0;
            if (!dup)
                snprintf(seen[ndistinct++], sizeof(seen[0]), "%s", key);
        }
        assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "statistics"), "events")), events);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "statistics"), "resources")), ndistinct);
    }
    json_decref(ans);

    /* 10-second buckets from the first event to the last: 120 s of events */
    ans = run_q(s, "operation=histogram&interval=10s", &all_visible);
    b = json_object_get(json_object_get(ans, "histogram"), "buckets");
    n = json_array_size(b);
    assert_int_equal(n, 12);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(b, i);
        sum += json_integer_value(json_object_get(x, "count"));
        assert_int_equal(json_integer_value(json_object_get(x, "time")),
                         (BASE_US / 10000000) * 10000 + (json_int_t)i * 10000);
    }
    assert_int_equal(sum, NEV);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "histogram"), "total")), NEV);
    json_decref(ans);

    /* a sparse filter: empty buckets between are filled with 0 */
    ans = run_q(s, "operation=histogram&interval=1m&objectref_name_filter=nomatch", &all_visible);
    assert_int_equal(json_array_size(json_object_get(json_object_get(ans, "histogram"), "buckets")), 0);
    json_decref(ans);
    ans = run_q(s, "operation=histogram&interval=1M", &all_visible);
    b = json_object_get(json_object_get(ans, "histogram"), "buckets");
    assert_int_equal(json_array_size(b), 1);
    /* 2023-11-01T00:00:00Z */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(b, 0), "time")), 1698796800000LL);
    json_decref(ans);
    aud_store_close(s);
}

static void expect_bad(const char *raw, const char *part)
{
    aud_query q;
    char err[512] = "";
    ks_status st = aud_query_parse(raw, &q, err, sizeof(err));

    if (st != KS_ERR_INVALID)
        fail_msg("\"%s\" parsed (%s); expected a refusal", raw, ks_status_name(st));
    if (strstr(err, part) == NULL)
        fail_msg("\"%s\": message \"%s\" does not say \"%s\"", raw, err, part);
}

static void test_bad_input(void **state)
{
    aud_query q;
    char err[512], raw[9000];
    aud_store *s;
    json_t *ans = NULL;

    expect_bad("start_time=yesterday", "start_time must be Unix seconds");
    expect_bad("end_time=-5", "end_time must be Unix seconds");
    expect_bad("start_time=1.5", "start_time");
    expect_bad("start_time=99999999999999", "start_time");
    expect_bad("start_time=2000&end_time=1000", "after end_time");
    expect_bad("size=-1", "size must not be negative");
    expect_bad("size=1001", "size must be at most 1000");
    expect_bad("size=ten", "size must be an integer");
    expect_bad("from=-3", "from must not be negative");
    expect_bad("from=9500&size=1000", "from + size");
    expect_bad("operation=delete", "unknown operation \"delete\"");
    expect_bad("sort=up", "sort must be asc or desc");
    expect_bad("interval=15x", "interval must be");
    expect_bad("interval=0m", "interval must be");
    expect_bad("interval=1000y", "100 years");
    expect_bad("response_code_filter=OK", "not an HTTP status code");
    expect_bad("user_filter=%zz", "bad percent-encoding");
    expect_bad("continue=garbage", "continue");
    expect_bad("continue=c1_1_1_0000000000000000", "another query");
    expect_bad("operation=histogram&continue=c1_1_1_0", "operation=query only");
    /* a value over the caps */
    memset(raw, 'a', sizeof(raw));
    memcpy(raw, "user_filter=", 12);
    raw[300] = '\0';
    expect_bad(raw, "longer than 255 bytes");
    memset(raw + 12, 'a', sizeof(raw) - 13);
    raw[sizeof(raw) - 1] = '\0';
    expect_bad(raw, "longer than 8191 bytes");
    {
        char many[1024] = "verb_filter=";
        for (int i = 0; i < 70; i++)
            memcpy(many + 12 + 2 * i, "a,", 3);
        expect_bad(many, "more than 64 values");
    }
    /* defaults; the first occurrence counts; unknown parameters ignored */
    assert_int_equal(aud_query_parse("size=5&size=7&foo=bar&sort=", &q, err, sizeof(err)), KS_OK);
    assert_int_equal(q.size, 5);
    assert_int_equal(q.op, AUD_OP_QUERY);
    assert_int_equal(q.asc, 0);
    assert_int_equal(q.interval_n, 15);
    aud_query_clear(&q);

    /* a token of another query is refused; its own is accepted */
    s = filled();
    ans = run_q(s, "size=2&verb_filter=get", &all_visible);
    {
        const char *tok = json_string_value(json_object_get(json_object_get(ans, "query"), "continue"));
        assert_non_null(tok);
        snprintf(raw, sizeof(raw), "size=2&verb_filter=list&continue=%s", tok);
        expect_bad(raw, "another query");
        snprintf(raw, sizeof(raw), "size=2&verb_filter=get&continue=%s&from=2", tok);
        expect_bad(raw, "cannot be combined");
        snprintf(raw, sizeof(raw), "size=5&verb_filter=get&continue=%s", tok);
        assert_int_equal(aud_query_parse(raw, &q, err, sizeof(err)), KS_OK);
        aud_query_clear(&q);
    }
    json_decref(ans);
    /* a histogram of too many buckets */
    assert_int_equal(aud_query_parse("operation=histogram&interval=1s&start_time=0&end_time=100000000",
                                     &q, err, sizeof(err)),
                     KS_OK);
    assert_int_equal(aud_query_run(aud_store_db(s), &q, &all_visible, 0, &ans, err, sizeof(err)),
                     KS_ERR_INVALID);
    assert_non_null(strstr(err, "buckets"));
    aud_query_clear(&q);
    /* a deadline in the past stops the query */
    assert_int_equal(aud_query_parse("objectref_name_search=e", &q, err, sizeof(err)), KS_OK);
    assert_int_equal(aud_query_run(aud_store_db(s), &q, &all_visible, 1, &ans, err, sizeof(err)),
                     KS_ERR_TIMEOUT);
    aud_query_clear(&q);
    aud_store_close(s);
}


/* 10,050 events of 300 users: a search matching more distinct values than
 * the IN list takes (LIKE instead), one matching fewer (IN on the index),
 * and the total counted up to 10,000 only. */
static void test_many_values_and_total_cap(void **state)
{
    enum { N = 10050, USERS = 300 };
    aud_item *items = calloc(N, sizeof(*items));
    gen_event *many = calloc(N, sizeof(*many));
    char (*names_)[32] = calloc(USERS, 32);
    aud_store *s;
    json_t *ans;
    int want = 0;

    assert_non_null(items);
    assert_non_null(many);
    assert_non_null(names_);
    for (int u = 0; u < USERS; u++)
        snprintf(names_[u], 32, "many-%d", u);
    rm_store();
    s = open_writer();
    for (int i = 0; i < N; i++) {
        gen_event *e = &many[i];
        *e = evs[i % NEV];
        e->blob = NULL;
        snprintf(e->id, sizeof(e->id), "0190b000-0000-7000-8000-%012d", i);
        e->user = names_[i % USERS];
        e->ts = BASE_US + i;
        pack_event(e);
        items[i] = (aud_item){.seq = (uint64_t)i + 1, .blob = e->blob, .len = e->len};
        if (strncmp(e->user, "many-1", 6) == 0)
            want++;
    }
    for (int i = 0; i < N; i += 1000)
        assert_int_equal(aud_store_append(s, items + i, N - i < 1000 ? (size_t)(N - i) : 1000, NULL),
                         KS_OK);
    /* 300 users match: more than the IN list takes */
    ans = run_q(s, "user_search=many", &all_visible);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")),
                     AUD_QUERY_TOTAL_MAX);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ans, "query"),
                                                          "totalRelation")),
                        "gte");
    assert_int_equal(json_array_size(json_object_get(json_object_get(ans, "query"), "records")), 10);
    json_decref(ans);
    /* many-1, many-10..19, many-100..199: 111 values, an IN list */
    ans = run_q(s, "user_search=many-1&size=1000", &all_visible);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")),
                     want);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ans, "query"),
                                                          "totalRelation")),
                        "eq");
    json_decref(ans);
    /* statistics count exactly */
    ans = run_q(s, "operation=statistics", &all_visible);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "statistics"), "events")),
                     N);
    json_decref(ans);
    aud_store_close(s);
    for (int i = 0; i < N; i++)
        free(many[i].blob);
    free(many);
    free(items);
    free(names_);
}

/* ---- scoping ---- */

typedef struct {
    int calls;
    size_t asked;
    int fail;
} fake_iam;

/* alice: events in namespace ns-one and workspace ws-beta; admin: cluster. */
static ks_status fake_decide(void *arg, const Kscore__V1__UserInfo *user, const aud_authz_ask *asks,
                             size_t n, int *allowed, int64_t *ttl)
{
    fake_iam *f = arg;
    const char *u = user ? user->username : "";

    f->calls++;
    f->asked += n;
    if (f->fail)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "iam away");
    for (size_t i = 0; i < n; i++) {
        ttl[i] = 0;
        allowed[i] = 0;
        if (strcmp(u, "admin") == 0)
            allowed[i] = 1;
        else if (strcmp(u, "alice") == 0)
            allowed[i] = (asks[i].scope == AUD_AUTHZ_NAMESPACE && strcmp(asks[i].name, "ns-one") == 0) ||
                         (asks[i].scope == AUD_AUTHZ_WORKSPACE && strcmp(asks[i].name, "ws-beta") == 0);
    }
    return KS_OK;
}

static int64_t ns_one_since;

static int m_alice(const gen_event *e, const void *arg)
{
    return (strcmp(e->ns, "ns-one") == 0 && e->ts >= ns_one_since) || strcmp(e->ws, "ws-beta") == 0;
}

static void test_scope(void **state)
{
    fake_iam f = {0};
    aud_scope *sc;
    aud_store *s = filled();
    Kscore__V1__UserInfo alice = KSCORE__V1__USER_INFO__INIT, admin = KSCORE__V1__USER_INFO__INIT,
                         eve = KSCORE__V1__USER_INFO__INIT;
    aud_scope_entry nsl[] = {{"ns-one", 0}, {"ns-two", 0}, {"kube-system", 0}};
    aud_scope_entry wsl[] = {{"ws-alpha", 0}, {"ws-beta", 0}};
    aud_visibility v;
    aud_query q;
    char err[256];
    json_t *ans, *recs;
    size_t want = 0;

    alice.username = "alice";
    admin.username = "admin";
    eve.username = "eve";
    assert_int_equal(aud_scope_create(fake_decide, &f, 5000, &sc), KS_OK);
    assert_int_equal(aud_query_parse("", &q, err, sizeof(err)), KS_OK);

    /* the admin: one question, everything */
    assert_int_equal(aud_scope_resolve(sc, &admin, &q, nsl, 3, wsl, 2, &v), KS_OK);
    assert_true(v.all);
    assert_int_equal(f.asked, 1);
    aud_visibility_free(&v);

    /* alice: her namespace (from its creation on) and her workspace */
    ns_one_since = BASE_US + 50 * 1000000LL;
    nsl[0].since_us = ns_one_since;
    assert_int_equal(aud_scope_resolve(sc, &alice, &q, nsl, 3, wsl, 2, &v), KS_OK);
    assert_false(v.all);
    assert_int_equal(v.nns, 1);
    assert_string_equal(v.ns[0].name, "ns-one");
    assert_int_equal(v.nws, 1);
    assert_string_equal(v.ws[0].name, "ws-beta");
    assert_int_equal(f.asked, 1 + 1 + 5);
    assert_int_equal(aud_query_run(aud_store_db(s), &q, &v, 0, &ans, err, sizeof(err)), KS_OK);
    recs = json_object_get(json_object_get(ans, "query"), "records");
    for (int i = 0; i < NEV; i++)
        want += m_alice(&evs[i], NULL);
    assert_true(want > 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")), want);
    for (size_t i = 0; i < json_array_size(recs); i++) {
        const char *id = json_string_value(json_object_get(json_array_get(recs, i), "AuditID"));
        assert_true(m_alice(&evs[(int)strtol(id + 24, NULL, 10)], NULL));
    }
    json_decref(ans);
    /* statistics and histogram are scoped too */
    aud_query_clear(&q);
    assert_int_equal(aud_query_parse("operation=statistics", &q, err, sizeof(err)), KS_OK);
    assert_int_equal(aud_query_run(aud_store_db(s), &q, &v, 0, &ans, err, sizeof(err)), KS_OK);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "statistics"), "events")), want);
    json_decref(ans);
    aud_visibility_free(&v);

    /* the same again: all answers from the cache */
    {
        size_t before = f.asked;
        assert_int_equal(aud_scope_resolve(sc, &alice, &q, nsl, 3, wsl, 2, &v), KS_OK);
        assert_int_equal(f.asked, before);
        assert_true(aud_scope_cache_hits(sc) >= 6);
        aud_visibility_free(&v);
    }

    /* a namespace filter narrows the questions: no workspace is asked */
    aud_query_clear(&q);
    assert_int_equal(aud_query_parse("objectref_namespace_filter=ns-two", &q, err, sizeof(err)), KS_OK);
    f.asked = 0;
    assert_int_equal(aud_scope_resolve(sc, &eve, &q, nsl, 3, wsl, 2, &v), KS_OK);
    assert_int_equal(f.asked, 2);      /* cluster, ns-two */
    assert_int_equal(v.nns + v.nws, 0);
    /* nothing visible: an empty answer */
    assert_int_equal(aud_query_run(aud_store_db(s), &q, &v, 0, &ans, err, sizeof(err)), KS_OK);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")), 0);
    assert_int_equal(json_array_size(json_object_get(json_object_get(ans, "query"), "records")), 0);
    json_decref(ans);
    aud_visibility_free(&v);

    /* the decider fails: so does the resolution (the API answers 503) */
    f.fail = 1;
    assert_int_equal(aud_scope_resolve(sc, &eve, &q, nsl, 3, wsl, 2, &v), KS_OK); /* cached */
    aud_visibility_free(&v);
    {
        Kscore__V1__UserInfo mallory = KSCORE__V1__USER_INFO__INIT;
        mallory.username = "mallory";
        assert_int_equal(aud_scope_resolve(sc, &mallory, &q, nsl, 3, wsl, 2, &v), KS_ERR_UNAVAILABLE);
    }
    /* groups are part of the cache key */
    {
        char *g[] = {"system:masters"};
        Kscore__V1__UserInfo eve2 = KSCORE__V1__USER_INFO__INIT;
        eve2.username = "eve";
        eve2.groups = g;
        eve2.n_groups = 1;
        assert_int_equal(aud_scope_resolve(sc, &eve2, &q, nsl, 3, wsl, 2, &v), KS_ERR_UNAVAILABLE);
    }
    aud_query_clear(&q);
    aud_scope_destroy(sc);
    aud_store_close(s);
}

/* ---- retention ---- */

static void test_retention(void **state)
{
    aud_store *s = filled();
    aud_verify_result v;
    uint64_t deleted = 0, rows = 0;
    int64_t cutoff = BASE_US + 60 * 1000000LL;    /* events 0..119 are older */
    json_t *ans;
    int old_web = 0;

    for (int i = 0; i < NEV; i++)
        if (evs[i].ts >= cutoff && strcasestr(evs[i].name, "web") != NULL)
            old_web++;
    assert_int_equal(aud_sweep_all(s, cutoff, 7, &deleted), KS_OK);
    assert_int_equal(deleted, 120);
    assert_int_equal(aud_store_count(s, &rows), KS_OK);
    assert_int_equal(rows, NEV - 120);
    /* their search entries went with them */
    ans = run_q(s, "objectref_name_search=web&size=1000", &all_visible);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ans, "query"), "total")), old_web);
    json_decref(ans);
    /* FTS integrity */
    assert_int_equal(sqlite3_exec(aud_store_db(s),
                                  "INSERT INTO aud_fts(aud_fts, rank) VALUES('integrity-check', 1)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    /* the chain verifies from the anchor */
    assert_int_equal(aud_store_verify(s, &v), KS_OK);
    assert_true(v.ok);
    assert_int_equal(v.first_seq, 121);
    /* nothing more to do */
    assert_int_equal(aud_sweep_all(s, cutoff, 7, &deleted), KS_OK);
    assert_int_equal(deleted, 0);
    /* appending goes on after a sweep; everything swept: still verifies */
    assert_int_equal(aud_sweep_all(s, BASE_US + 1000 * 1000000LL, 500, &deleted), KS_OK);
    assert_int_equal(deleted, NEV - 120);
    assert_int_equal(aud_store_verify(s, &v), KS_OK);
    assert_true(v.ok);
    assert_int_equal(v.rows, 0);
    {
        aud_item it = {.seq = NEV + 1, .blob = evs[0].blob, .len = evs[0].len};
        /* the audit ID of a swept event is free again */
        assert_int_equal(aud_store_append(s, &it, 1, NULL), KS_OK);
        assert_int_equal(aud_store_verify(s, &v), KS_OK);
        assert_true(v.ok);
        assert_int_equal(v.rows, 1);
    }
    aud_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_position),
        cmocka_unit_test(test_insert_or_ignore_and_gaps),
        cmocka_unit_test(test_failed_batch_rolls_back),
        cmocka_unit_test(test_chain_and_verify),
        cmocka_unit_test(test_same_stream_same_chain),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_searches),
        cmocka_unit_test(test_time_paging_sort),
        cmocka_unit_test(test_statistics_histogram),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_many_values_and_total_cap),
        cmocka_unit_test(test_scope),
        cmocka_unit_test(test_retention),
    };
    ks_log_init("test", KS_LOG_ERROR);
    return cmocka_run_group_tests(tests, setup, teardown);
}
