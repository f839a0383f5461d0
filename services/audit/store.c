/* store.c: the SQLite audit store (store.h). */
#include "store.h"

#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"
#include "log.h"

#define AUD_SCHEMA_VERSION 1

/* Every index is led by the column a filter names, then the time, so a
 * filtered page is read in order from the index (DESIGN.md §11). The
 * rowid (the sequence) ends every index entry, which makes (ts, seq) the
 * order of a page. Each index costs every insert: the name has none (the
 * trigram index finds it, also for an exact filter). aud_terms holds the distinct workspaces, namespaces and users, so
 * a substring search on them becomes an IN list on their indexes. */
static const char *const schema_sql =
    "CREATE TABLE IF NOT EXISTS aud_meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS aud_events ("
    " seq INTEGER PRIMARY KEY,"
    " audit_id TEXT NOT NULL UNIQUE,"
    " ts INTEGER NOT NULL,"
    " stage_ts INTEGER NOT NULL,"
    " level TEXT NOT NULL,"
    " stage TEXT NOT NULL,"
    " verb TEXT NOT NULL,"
    " username TEXT NOT NULL,"
    " groups TEXT NOT NULL,"
    " impersonated TEXT NOT NULL,"
    " source_ips TEXT NOT NULL,"
    " user_agent TEXT NOT NULL,"
    " resource TEXT NOT NULL,"
    " subresource TEXT NOT NULL,"
    " namespace TEXT NOT NULL,"
    " name TEXT NOT NULL,"
    " api_group TEXT NOT NULL,"
    " api_version TEXT NOT NULL,"
    " workspace TEXT NOT NULL,"
    " cluster TEXT NOT NULL,"
    " code INTEGER NOT NULL,"
    " status TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " request_uri TEXT NOT NULL,"
    " blob BLOB NOT NULL,"
    " chain BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS aud_by_ts ON aud_events(ts);"
    "CREATE INDEX IF NOT EXISTS aud_by_user ON aud_events(username, ts);"
    "CREATE INDEX IF NOT EXISTS aud_by_code ON aud_events(code, ts);"
    "CREATE INDEX IF NOT EXISTS aud_by_workspace ON aud_events(workspace, ts, namespace, verb);"
    "CREATE INDEX IF NOT EXISTS aud_by_namespace ON aud_events(namespace, ts, verb);"
    "CREATE INDEX IF NOT EXISTS aud_by_resource ON aud_events(resource, ts);"
    "CREATE INDEX IF NOT EXISTS aud_by_verb ON aud_events(verb, ts);"
    "CREATE VIRTUAL TABLE IF NOT EXISTS aud_fts USING fts5("
    " name, source_ips, content='aud_events', content_rowid='seq', tokenize='trigram',"
    " columnsize=0);"
    "CREATE TABLE IF NOT EXISTS aud_terms (field TEXT NOT NULL, value TEXT NOT NULL,"
    " PRIMARY KEY (field, value)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS aud_gaps ("
    " first_seq INTEGER PRIMARY KEY,"
    " last_seq INTEGER NOT NULL,"
    " reason TEXT NOT NULL,"
    " at_us INTEGER NOT NULL);";

#define EVENT_COLUMNS                                                                          \
    "seq, audit_id, ts, stage_ts, level, stage, verb, username, groups, impersonated,"       \
    " source_ips, user_agent, resource, subresource, namespace, name, api_group,"            \
    " api_version, workspace, cluster, code, status, reason, request_uri, blob, chain"

/* The (field, value) pairs known to be in aud_terms, so most rows need no
 * probe at all. Filled only after a commit; forgotten after a rollback. */
#define TERM_CACHE_SLOTS 16384   /* power of two; at most 3/4 used */

typedef struct {
    char **slot;
    size_t used;
    char **fresh;                /* added in the open transaction */
    size_t nfresh, capfresh;
} term_cache;

struct aud_store {
    term_cache terms;
    sqlite3 *db;
    char *path;
    aud_store_mode mode;
    sqlite3_stmt *ins_event, *ins_fts, *ins_term, *ins_gap, *set_meta;
    EVP_MD_CTX *md;
    EVP_MD *sha256;                    /* fetched once: EVP_sha256() per row costs as much again */
    uint64_t last_seq;                 /* writer: the committed position */
    uint8_t head[AUD_CHAIN_LEN];
};

static void terms_free(term_cache *tc);

static ks_status db_fail(aud_store *s, int rc, const char *what)
{
    return KS_FAIL(rc == SQLITE_NOMEM ? KS_ERR_NOMEM : KS_ERR_IO, "audit store %s: %s: %s",
                   s->path ? s->path : "?", what, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
}

static ks_status exec(aud_store *s, const char *sql, const char *what)
{
    char *err = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &err);
    ks_status st = KS_OK;

    if (rc != SQLITE_OK)
        st = KS_FAIL(rc == SQLITE_NOMEM ? KS_ERR_NOMEM : KS_ERR_IO, "audit store %s: %s: %s",
                     s->path, what, err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    return st;
}

static ks_status prepare(aud_store *s, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    return rc == SQLITE_OK ? KS_OK : db_fail(s, rc, "prepare");
}

/* aud_meta value of key as an integer (0 when absent). */
static ks_status meta_int(aud_store *s, const char *key, int64_t *out)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT v FROM aud_meta WHERE k = ?", -1, &q, NULL);
    ks_status st;

    if (rc != SQLITE_OK)
        return db_fail(s, rc, "read meta");
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        *out = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
        st = KS_OK;
    } else {
        st = db_fail(s, rc, "read meta");
    }
    sqlite3_finalize(q);
    return st;
}

/* aud_meta blob of key into out (zeros when absent or of another size). */
static ks_status meta_chain(aud_store *s, const char *key, uint8_t out[AUD_CHAIN_LEN])
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT v FROM aud_meta WHERE k = ?", -1, &q, NULL);
    ks_status st = KS_OK;

    if (rc != SQLITE_OK)
        return db_fail(s, rc, "read meta");
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    memset(out, 0, AUD_CHAIN_LEN);
    if (rc == SQLITE_ROW && sqlite3_column_bytes(q, 0) == AUD_CHAIN_LEN)
        memcpy(out, sqlite3_column_blob(q, 0), AUD_CHAIN_LEN);
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        st = db_fail(s, rc, "read meta");
    sqlite3_finalize(q);
    return st;
}

static ks_status meta_put_int(aud_store *s, const char *key, int64_t v)
{
    int rc;

    sqlite3_reset(s->set_meta);
    sqlite3_bind_text(s->set_meta, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->set_meta, 2, v);
    rc = sqlite3_step(s->set_meta);
    sqlite3_reset(s->set_meta);
    return rc == SQLITE_DONE ? KS_OK : db_fail(s, rc, "write meta");
}

static ks_status meta_put_chain(aud_store *s, const char *key, const uint8_t v[AUD_CHAIN_LEN])
{
    int rc;

    sqlite3_reset(s->set_meta);
    sqlite3_bind_text(s->set_meta, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(s->set_meta, 2, v, AUD_CHAIN_LEN, SQLITE_STATIC);
    rc = sqlite3_step(s->set_meta);
    sqlite3_reset(s->set_meta);
    return rc == SQLITE_DONE ? KS_OK : db_fail(s, rc, "write meta");
}

void aud_chain_hex(const uint8_t chain[AUD_CHAIN_LEN], char out[65])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < AUD_CHAIN_LEN; i++) {
        out[2 * i] = hex[chain[i] >> 4];
        out[2 * i + 1] = hex[chain[i] & 15];
    }
    out[64] = '\0';
}

/* next = SHA-256(prev || blob) */
static ks_status chain_next(EVP_MD_CTX *md, const EVP_MD *sha256, const uint8_t prev[AUD_CHAIN_LEN],
                            const void *blob, size_t len, uint8_t next[AUD_CHAIN_LEN])
{
    unsigned int n = 0;

    if (EVP_DigestInit_ex2(md, sha256, NULL) != 1 ||
        EVP_DigestUpdate(md, prev, AUD_CHAIN_LEN) != 1 || EVP_DigestUpdate(md, blob, len) != 1 ||
        EVP_DigestFinal_ex(md, next, &n) != 1 || n != AUD_CHAIN_LEN)
        return KS_FAIL(KS_ERR_INTERNAL, "SHA-256 failed");
    return KS_OK;
}

ks_status aud_store_open(const char *path, aud_store_mode mode, const aud_store_opts *opts,
                         aud_store **out)
{
    aud_store_opts o = opts ? *opts : (aud_store_opts){0};
    aud_store *s;
    char pragmas[256];
    int flags, rc;
    int64_t version = 0;
    ks_status st = KS_ERR_NOMEM;

    if (path == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "aud_store_open: NULL argument");
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->path = strdup(path)) == NULL || (s->md = EVP_MD_CTX_new()) == NULL ||
        (s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "audit store");
        goto out;
    }
    s->mode = mode;
    flags = SQLITE_OPEN_NOMUTEX | (mode == AUD_STORE_VERIFY ? SQLITE_OPEN_READONLY
                                  : mode == AUD_STORE_WRITE ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                                                            : SQLITE_OPEN_READWRITE);
    rc = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (rc != SQLITE_OK) {
        st = db_fail(s, rc, "open");
        goto out;
    }
    sqlite3_extended_result_codes(s->db, 1);
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA busy_timeout=%d; PRAGMA cache_size=-%lld; PRAGMA temp_store=MEMORY;"
             " PRAGMA mmap_size=268435456;",
             o.busy_timeout_ms > 0 ? o.busy_timeout_ms : 5000,
             (long long)(o.cache_kib > 0 ? o.cache_kib : 65536));
    if ((st = exec(s, pragmas, "settings")))
        goto out;
    if (mode == AUD_STORE_WRITE) {
        if ((st = exec(s, "PRAGMA journal_mode=WAL", "WAL mode")) ||
            (o.no_autocheckpoint &&
             (st = exec(s, "PRAGMA wal_autocheckpoint=0", "WAL checkpoints"))) ||
            (st = exec(s, o.sync_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                       "synchronous")) ||
            (st = exec(s, "BEGIN IMMEDIATE", "schema")))
            goto out;
        st = exec(s, schema_sql, "schema");
        if (st == KS_OK)
            st = exec(s, "INSERT OR IGNORE INTO aud_meta(k, v) VALUES ('schema', 1)", "schema");
        /* Merge the trigram index's segments 8 at a time rather than 4:
         * fewer levels, so each indexed row is rewritten fewer times, for a
         * few more segments for a search to read (kept in aud_fts_config;
         * set on stores made before too) */
        if (st == KS_OK)
            st = exec(s, "INSERT INTO aud_fts(aud_fts, rank) VALUES ('automerge', 8)", "schema");
        if (st) {
            (void)exec(s, "ROLLBACK", "schema");
            goto out;
        }
        if ((st = exec(s, "COMMIT", "schema")))
            goto out;
        if ((st = prepare(s,
                          "INSERT OR IGNORE INTO aud_events(" EVENT_COLUMNS ") VALUES (?1, ?2, ?3,"
                          " ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
                          " ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
                          &s->ins_event)) ||
            (st = prepare(s, "INSERT INTO aud_fts(rowid, name, source_ips) VALUES (?, ?, ?)",
                          &s->ins_fts)) ||
            (st = prepare(s, "INSERT OR IGNORE INTO aud_terms(field, value) VALUES (?, ?)",
                          &s->ins_term)) ||
            (st = prepare(s,
                          "INSERT OR REPLACE INTO aud_gaps(first_seq, last_seq, reason, at_us)"
                          " VALUES (?, ?, ?, ?)",
                          &s->ins_gap)) ||
            (st = prepare(s, "INSERT OR REPLACE INTO aud_meta(k, v) VALUES (?, ?)", &s->set_meta)))
            goto out;
    } else if (mode == AUD_STORE_READ) {
        if ((st = exec(s, "PRAGMA query_only=1", "query_only")))
            goto out;
    }
    if ((st = meta_int(s, "schema", &version)))
        goto out;
    if (version != AUD_SCHEMA_VERSION) {
        st = KS_FAIL(KS_ERR_IO, "audit store %s: schema version %lld, this program knows %d",
                     path, (long long)version, AUD_SCHEMA_VERSION);
        goto out;
    }
    if ((st = aud_store_position(s, &s->last_seq, s->head)))
        goto out;
    *out = s;
    s = NULL;
    st = KS_OK;
out:
    aud_store_close(s);
    return st;
}

void aud_store_close(aud_store *s)
{
    if (s == NULL)
        return;
    terms_free(&s->terms);
    sqlite3_finalize(s->ins_event);
    sqlite3_finalize(s->ins_fts);
    sqlite3_finalize(s->ins_term);
    sqlite3_finalize(s->ins_gap);
    sqlite3_finalize(s->set_meta);
    if (s->db != NULL && sqlite3_close(s->db) != SQLITE_OK)
        ks_warn("audit store %s: close: %s", s->path, sqlite3_errmsg(s->db));
    EVP_MD_CTX_free(s->md);
    EVP_MD_free(s->sha256);
    free(s->path);
    free(s);
}

sqlite3 *aud_store_db(aud_store *s)
{
    return s->db;
}

ks_status aud_store_position(aud_store *s, uint64_t *last_seq, uint8_t head[AUD_CHAIN_LEN])
{
    int64_t seq = 0;
    uint8_t h[AUD_CHAIN_LEN];
    ks_status st;

    if ((st = meta_int(s, "last_seq", &seq)) || (st = meta_chain(s, "head", h)))
        return st;
    *last_seq = seq > 0 ? (uint64_t)seq : 0;
    memcpy(head, h, AUD_CHAIN_LEN);
    return KS_OK;
}

ks_status aud_store_stream_created(aud_store *s, int64_t *created_unix_ns)
{
    return meta_int(s, "stream_created_ns", created_unix_ns);
}

ks_status aud_store_set_stream_created(aud_store *s, int64_t created_unix_ns)
{
    if (s->set_meta == NULL)
        return KS_FAIL(KS_ERR_INVALID, "audit store %s: not opened for writing", s->path);
    return meta_put_int(s, "stream_created_ns", created_unix_ns);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static ks_status put_gap(aud_store *s, uint64_t first, uint64_t last, const char *reason)
{
    int rc;

    sqlite3_reset(s->ins_gap);
    sqlite3_bind_int64(s->ins_gap, 1, (sqlite3_int64)first);
    sqlite3_bind_int64(s->ins_gap, 2, (sqlite3_int64)last);
    sqlite3_bind_text(s->ins_gap, 3, reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s->ins_gap, 4, now_us());
    rc = sqlite3_step(s->ins_gap);
    sqlite3_reset(s->ins_gap);
    return rc == SQLITE_DONE ? KS_OK : db_fail(s, rc, "record a gap");
}

static void bind_text(sqlite3_stmt *q, int i, const char *v)
{
    sqlite3_bind_text(q, i, v, -1, SQLITE_STATIC);
}

static uint64_t term_hash(const char *k)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ULL;
    return h;
}

/* "<field>\x1f<value>" */
static char *term_key(const char *field, const char *value)
{
    size_t a = strlen(field), b = strlen(value);
    char *k = malloc(a + b + 2);

    if (k == NULL)
        return NULL;
    memcpy(k, field, a);
    k[a] = '\x1f';
    memcpy(k + a + 1, value, b + 1);
    return k;
}

static int term_known(const term_cache *tc, const char *key)
{
    if (tc->slot == NULL)
        return 0;
    for (size_t i = term_hash(key) & (TERM_CACHE_SLOTS - 1); tc->slot[i] != NULL;
         i = (i + 1) & (TERM_CACHE_SLOTS - 1))
        if (strcmp(tc->slot[i], key) == 0)
            return 1;
    return 0;
}

/* Move the fresh keys into the cache (commit: keep = 1) or drop them. */
static void terms_settle(term_cache *tc, int keep)
{
    for (size_t k = 0; k < tc->nfresh; k++) {
        char *key = tc->fresh[k];
        if (keep && tc->slot == NULL)
            tc->slot = calloc(TERM_CACHE_SLOTS, sizeof(char *));
        if (!keep || tc->slot == NULL || tc->used >= TERM_CACHE_SLOTS / 4 * 3 ||
            term_known(tc, key)) {
            free(key);
            continue;
        }
        size_t i = term_hash(key) & (TERM_CACHE_SLOTS - 1);
        while (tc->slot[i] != NULL)
            i = (i + 1) & (TERM_CACHE_SLOTS - 1);
        tc->slot[i] = key;
        tc->used++;
    }
    tc->nfresh = 0;
}

static void terms_free(term_cache *tc)
{
    terms_settle(tc, 0);
    for (size_t i = 0; tc->slot != NULL && i < TERM_CACHE_SLOTS; i++)
        free(tc->slot[i]);
    free(tc->slot);
    free(tc->fresh);
    memset(tc, 0, sizeof(*tc));
}

/* The row's workspace, namespace and user in aud_terms: a probe each,
 * unless this process already wrote that value. */
static ks_status put_terms(aud_store *s, const aud_row *r)
{
    const char *const fields[3] = {"workspace", "namespace", "username"};
    const char *const values[3] = {r->workspace, r->namespace_, r->username};
    term_cache *tc = &s->terms;
    int rc;

    for (int i = 0; i < 3; i++) {
        char *key;

        if (values[i][0] == '\0')
            continue;
        key = term_key(fields[i], values[i]);
        if (key == NULL)
            return KS_FAIL(KS_ERR_NOMEM, "search terms");
        if (term_known(tc, key)) {
            free(key);
            continue;
        }
        if (tc->nfresh == tc->capfresh) {
            size_t nc = tc->capfresh ? 2 * tc->capfresh : 64;
            char **nf = realloc(tc->fresh, nc * sizeof(*nf));
            if (nf == NULL) {
                free(key);
                return KS_FAIL(KS_ERR_NOMEM, "search terms");
            }
            tc->fresh = nf;
            tc->capfresh = nc;
        }
        tc->fresh[tc->nfresh++] = key;
        sqlite3_reset(s->ins_term);
        sqlite3_bind_text(s->ins_term, 1, fields[i], -1, SQLITE_STATIC);
        sqlite3_bind_text(s->ins_term, 2, values[i], -1, SQLITE_STATIC);
        rc = sqlite3_step(s->ins_term);
        sqlite3_reset(s->ins_term);
        if (rc != SQLITE_DONE)
            return db_fail(s, rc, "record a search term");
    }
    return KS_OK;
}

/* Insert one decoded event; *inserted = 0 when its audit ID was stored. */
static ks_status put_event(aud_store *s, uint64_t seq, const aud_row *r, const void *blob,
                           size_t len, const uint8_t chain[AUD_CHAIN_LEN], int *inserted)
{
    sqlite3_stmt *q = s->ins_event;
    int rc;

    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, (sqlite3_int64)seq);
    bind_text(q, 2, r->audit_id);
    sqlite3_bind_int64(q, 3, r->ts_us);
    sqlite3_bind_int64(q, 4, r->stage_us);
    bind_text(q, 5, r->level);
    bind_text(q, 6, r->stage);
    bind_text(q, 7, r->verb);
    bind_text(q, 8, r->username);
    bind_text(q, 9, r->groups);
    bind_text(q, 10, r->impersonated);
    bind_text(q, 11, r->source_ips);
    bind_text(q, 12, r->user_agent);
    bind_text(q, 13, r->resource);
    bind_text(q, 14, r->subresource);
    bind_text(q, 15, r->namespace_);
    bind_text(q, 16, r->name);
    bind_text(q, 17, r->api_group);
    bind_text(q, 18, r->api_version);
    bind_text(q, 19, r->workspace);
    bind_text(q, 20, r->cluster);
    sqlite3_bind_int(q, 21, r->code);
    bind_text(q, 22, r->status);
    bind_text(q, 23, r->reason);
    bind_text(q, 24, r->request_uri);
    sqlite3_bind_blob(q, 25, blob, (int)len, SQLITE_STATIC);
    sqlite3_bind_blob(q, 26, chain, AUD_CHAIN_LEN, SQLITE_STATIC);
    rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE)
        return db_fail(s, rc, "insert an event");
    *inserted = sqlite3_changes(s->db) == 1;
    if (!*inserted)
        return KS_OK;
    q = s->ins_fts;
    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, (sqlite3_int64)seq);
    bind_text(q, 2, r->name);
    bind_text(q, 3, r->source_ips);
    rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE)
        return db_fail(s, rc, "index an event");
    return put_terms(s, r);
}

ks_status aud_store_append(aud_store *s, const aud_item *items, size_t n, aud_append_result *res)
{
    aud_append_result r = {0};
    uint64_t pos;
    uint8_t head[AUD_CHAIN_LEN];
    int began = 0;
    ks_status st;

    if (s->ins_event == NULL)
        return KS_FAIL(KS_ERR_INVALID, "audit store %s: not opened for writing", s->path);
    pos = s->last_seq;
    for (size_t i = 0; i < n; i++) {
        uint64_t end = items[i].blob ? items[i].seq : items[i].gap_last;
        if (items[i].seq != pos + 1 || end < items[i].seq)
            return KS_FAIL(KS_ERR_INVALID,
                           "audit store: item %zu (sequence %llu) does not continue at %llu", i,
                           (unsigned long long)items[i].seq, (unsigned long long)pos + 1);
        pos = end;
    }
    if (n == 0) {
        st = KS_OK;
        r.last_seq = s->last_seq;
        goto out;
    }
    if ((st = exec(s, "BEGIN IMMEDIATE", "begin")))
        goto out;
    began = 1;
    memcpy(head, s->head, AUD_CHAIN_LEN);
    for (size_t i = 0; i < n; i++) {
        const aud_item *it = &items[i];
        const aud_row *rowp;
        aud_row row;
        uint8_t next[AUD_CHAIN_LEN];
        char why[200];
        int inserted = 0;

        if (it->blob == NULL) {
            if ((st = put_gap(s, it->seq, it->gap_last, it->gap_reason ? it->gap_reason : "gap")))
                goto out;
            r.gap_seqs += it->gap_last - it->seq + 1;
            continue;
        }
        memset(&row, 0, sizeof(row));
        st = it->row != NULL ? KS_OK : aud_row_decode(it->blob, it->len, &row);
        if (st == KS_ERR_NOMEM)
            goto out;
        if (st) {
            /* recorded, counted and logged by the caller: never silently dropped */
            snprintf(why, sizeof(why), "undecodable: %s", ks_status_last());
            if ((st = put_gap(s, it->seq, it->seq, why)))
                goto out;
            r.undecodable++;
            continue;
        }
        rowp = it->row != NULL ? it->row : &row;
        st = chain_next(s->md, s->sha256, head, it->blob, it->len, next);
        if (st == KS_OK)
            st = put_event(s, it->seq, rowp, it->blob, it->len, next, &inserted);
        if (st == KS_OK && !inserted) {
            snprintf(why, sizeof(why), "duplicate audit ID %.100s", rowp->audit_id);
            st = put_gap(s, it->seq, it->seq, why);
            r.duplicates++;
        }
        aud_row_clear(&row);
        if (st)
            goto out;
        if (inserted) {
            memcpy(head, next, AUD_CHAIN_LEN);
            r.stored++;
        }
    }
    if ((st = meta_put_int(s, "last_seq", (int64_t)pos)) || (st = meta_put_chain(s, "head", head)))
        goto out;
    if ((st = exec(s, "COMMIT", "commit")))
        goto out;
    began = 0;
    terms_settle(&s->terms, 1);
    s->last_seq = pos;
    memcpy(s->head, head, AUD_CHAIN_LEN);
    r.last_seq = pos;
out:
    if (began) {
        (void)exec(s, "ROLLBACK", "rollback");
        terms_settle(&s->terms, 0);
    }
    if (st == KS_OK && res != NULL)
        *res = r;
    return st;
}

ks_status aud_store_count(aud_store *s, uint64_t *rows)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT count(*) FROM aud_events", -1, &q, NULL);
    ks_status st;

    if (rc != SQLITE_OK)
        return db_fail(s, rc, "count");
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        *rows = (uint64_t)sqlite3_column_int64(q, 0);
        st = KS_OK;
    } else {
        st = db_fail(s, rc, "count");
    }
    sqlite3_finalize(q);
    return st;
}

ks_status aud_store_sweep(aud_store *s, int64_t cutoff_us, size_t max_rows, size_t *deleted)
{
    sqlite3_stmt *q = NULL;
    uint64_t last = 0;
    uint8_t anchor[AUD_CHAIN_LEN];
    size_t n = 0;
    int began = 0, rc;
    ks_status st;

    if (s->set_meta == NULL)
        return KS_FAIL(KS_ERR_INVALID, "audit store %s: not opened for writing", s->path);
    if ((st = exec(s, "BEGIN IMMEDIATE", "begin")))
        goto out;
    began = 1;
    rc = sqlite3_prepare_v2(s->db, "SELECT seq, ts, chain FROM aud_events ORDER BY seq LIMIT ?", -1,
                            &q, NULL);
    if (rc != SQLITE_OK) {
        st = db_fail(s, rc, "sweep");
        goto out;
    }
    sqlite3_bind_int64(q, 1, (sqlite3_int64)max_rows);
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (sqlite3_column_int64(q, 1) >= cutoff_us)
            break;
        last = (uint64_t)sqlite3_column_int64(q, 0);
        memset(anchor, 0, sizeof(anchor));
        if (sqlite3_column_bytes(q, 2) == AUD_CHAIN_LEN)
            memcpy(anchor, sqlite3_column_blob(q, 2), AUD_CHAIN_LEN);
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        st = db_fail(s, rc, "sweep");
        goto out;
    }
    sqlite3_finalize(q);
    q = NULL;
    if (n == 0) {
        st = KS_OK;
        goto out;
    }
    /* The FTS index is external-content: remove each row with its old
     * values before the row itself goes. */
    rc = sqlite3_prepare_v2(s->db,
                            "INSERT INTO aud_fts(aud_fts, rowid, name, source_ips)"
                            " SELECT 'delete', seq, name, source_ips FROM aud_events"
                            " WHERE seq <= ?1",
                            -1, &q, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (sqlite3_int64)last);
        rc = sqlite3_step(q);
        sqlite3_finalize(q);
        q = NULL;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        st = db_fail(s, rc, "sweep the index");
        goto out;
    }
    rc = sqlite3_prepare_v2(s->db, "DELETE FROM aud_events WHERE seq <= ?1", -1, &q, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (sqlite3_int64)last);
        rc = sqlite3_step(q);
        sqlite3_finalize(q);
        q = NULL;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        st = db_fail(s, rc, "sweep");
        goto out;
    }
    rc = sqlite3_prepare_v2(s->db, "DELETE FROM aud_gaps WHERE last_seq <= ?1", -1, &q, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, (sqlite3_int64)last);
        rc = sqlite3_step(q);
        sqlite3_finalize(q);
        q = NULL;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        st = db_fail(s, rc, "sweep the gaps");
        goto out;
    }
    if ((st = meta_put_int(s, "anchor_seq", (int64_t)last)) ||
        (st = meta_put_chain(s, "anchor", anchor)) || (st = exec(s, "COMMIT", "commit")))
        goto out;
    began = 0;
    *deleted = n;
out:
    sqlite3_finalize(q);
    if (began)
        (void)exec(s, "ROLLBACK", "rollback");
    if (st == KS_OK && n == 0)
        *deleted = 0;
    return st;
}

/* The first column of row r that disagrees with its decoded event. */
static const char *column_mismatch(sqlite3_stmt *q, const aud_row *r, char *why, size_t cap)
{
    static const struct {
        int col;
        size_t off;
        const char *name;
    } text_cols[] = {
        {1, offsetof(aud_row, audit_id), "audit_id"},
        {4, offsetof(aud_row, level), "level"},
        {5, offsetof(aud_row, stage), "stage"},
        {6, offsetof(aud_row, verb), "verb"},
        {7, offsetof(aud_row, username), "username"},
        {9, offsetof(aud_row, impersonated), "impersonated"},
        {11, offsetof(aud_row, user_agent), "user_agent"},
        {12, offsetof(aud_row, resource), "resource"},
        {13, offsetof(aud_row, subresource), "subresource"},
        {14, offsetof(aud_row, namespace_), "namespace"},
        {15, offsetof(aud_row, name), "name"},
        {16, offsetof(aud_row, api_group), "api_group"},
        {17, offsetof(aud_row, api_version), "api_version"},
        {18, offsetof(aud_row, workspace), "workspace"},
        {19, offsetof(aud_row, cluster), "cluster"},
        {21, offsetof(aud_row, status), "status"},
        {22, offsetof(aud_row, reason), "reason"},
        {23, offsetof(aud_row, request_uri), "request_uri"},
    };
    const char *v;

    for (size_t i = 0; i < sizeof(text_cols) / sizeof(text_cols[0]); i++) {
        const char *want = *(const char *const *)((const char *)r + text_cols[i].off);
        v = (const char *)sqlite3_column_text(q, text_cols[i].col);
        if (v == NULL || strcmp(v, want) != 0) {
            snprintf(why, cap, "column %s is \"%.60s\" but the event says \"%.60s\"",
                     text_cols[i].name, v ? v : "(null)", want);
            return why;
        }
    }
    v = (const char *)sqlite3_column_text(q, 8);
    if (v == NULL || strcmp(v, r->groups) != 0) {
        snprintf(why, cap, "column groups does not match the event");
        return why;
    }
    v = (const char *)sqlite3_column_text(q, 10);
    if (v == NULL || strcmp(v, r->source_ips) != 0) {
        snprintf(why, cap, "column source_ips does not match the event");
        return why;
    }
    if (sqlite3_column_int64(q, 2) != r->ts_us || sqlite3_column_int64(q, 3) != r->stage_us) {
        snprintf(why, cap, "column ts or stage_ts does not match the event");
        return why;
    }
    if (sqlite3_column_int64(q, 20) != r->code) {
        snprintf(why, cap, "column code is %lld but the event says %d",
                 (long long)sqlite3_column_int64(q, 20), r->code);
        return why;
    }
    return NULL;
}

ks_status aud_store_verify(aud_store *s, aud_verify_result *out)
{
    aud_verify_result v = {.ok = 1};
    sqlite3_stmt *q = NULL;
    uint8_t prev[AUD_CHAIN_LEN], head[AUD_CHAIN_LEN];
    uint64_t last_seq = 0;
    int64_t anchor_seq = 0;
    int rc;
    ks_status st;

    if ((st = meta_chain(s, "anchor", prev)) || (st = meta_int(s, "anchor_seq", &anchor_seq)) ||
        (st = aud_store_position(s, &last_seq, head)))
        return st;
    rc = sqlite3_prepare_v2(s->db, "SELECT " EVENT_COLUMNS " FROM aud_events ORDER BY seq", -1, &q,
                            NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "verify");
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        uint64_t seq = (uint64_t)sqlite3_column_int64(q, 0);
        const void *blob = sqlite3_column_blob(q, 24);
        size_t len = (size_t)sqlite3_column_bytes(q, 24);
        const void *chain = sqlite3_column_blob(q, 25);
        const char *id = (const char *)sqlite3_column_text(q, 1);
        uint8_t want[AUD_CHAIN_LEN];
        char why[256];
        aud_row row;

        if (v.rows == 0)
            v.first_seq = seq;
        v.last_seq = seq;
        v.rows++;
        snprintf(v.bad_audit_id, sizeof(v.bad_audit_id), "%s", id ? id : "");
        v.bad_seq = seq;
        if ((st = chain_next(s->md, s->sha256, prev, blob ? blob : "", len, want)))
            goto out;
        if (sqlite3_column_bytes(q, 25) != AUD_CHAIN_LEN || memcmp(chain, want, AUD_CHAIN_LEN) != 0) {
            v.ok = 0;
            snprintf(v.reason, sizeof(v.reason),
                     "the chain breaks here: SHA-256(previous chain || event) differs from the "
                     "stored chain, so this row's event or chain was changed, or a row before it "
                     "was removed or changed");
            goto done;
        }
        st = aud_row_decode(blob ? blob : "", len, &row);
        if (st == KS_ERR_NOMEM)
            goto out;
        if (st) {
            v.ok = 0;
            snprintf(v.reason, sizeof(v.reason), "the stored event does not decode: %s",
                     ks_status_last());
            goto done;
        }
        if (column_mismatch(q, &row, why, sizeof(why)) != NULL) {
            aud_row_clear(&row);
            v.ok = 0;
            snprintf(v.reason, sizeof(v.reason), "%s", why);
            goto done;
        }
        aud_row_clear(&row);
        memcpy(prev, want, AUD_CHAIN_LEN);
    }
    if (rc != SQLITE_DONE) {
        st = db_fail(s, rc, "verify");
        goto out;
    }
    v.bad_seq = 0;
    v.bad_audit_id[0] = '\0';
    if (memcmp(prev, head, AUD_CHAIN_LEN) != 0) {
        v.ok = 0;
        snprintf(v.reason, sizeof(v.reason),
                 "the recorded chain head does not match the last row (sequence %llu): rows at "
                 "the end were removed or the head was changed",
                 (unsigned long long)v.last_seq);
        goto done;
    }
    if (v.rows > 0 && v.last_seq > last_seq) {
        v.ok = 0;
        v.bad_seq = v.last_seq;
        snprintf(v.reason, sizeof(v.reason), "row beyond the recorded position %llu",
                 (unsigned long long)last_seq);
        goto done;
    }
done:
    memcpy(v.head, prev, AUD_CHAIN_LEN);
    *out = v;
    st = KS_OK;
out:
    sqlite3_finalize(q);
    return st;
}
