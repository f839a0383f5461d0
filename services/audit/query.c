/* query.c: parameters -> SQL over the audit store -> KubeSphere's JSON. */
#include "query.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "event.h"

#define MAX_UNIX_S 253402300799LL           /* 9999-12-31T23:59:59Z */
#define WEEK_OFFSET_US (4LL * 86400000000LL) /* 1970-01-05, a Monday */

/* ---- parameters ---- */

static const char *const filter_params[AUD_F_COUNT] = {
    "workspace_filter", "objectref_namespace_filter", "objectref_name_filter",
    "level_filter", "verb_filter", "user_filter", "objectref_resource_filter",
    "objectref_subresource_filter", "response_code_filter", "response_status_filter",
};
static const char *const filter_columns[AUD_F_COUNT] = {
    "workspace", "namespace", "name", "level", "verb", "username", "resource",
    "subresource", "code", "status",
};
static const char *const search_params[AUD_S_COUNT] = {
    "workspace_search", "objectref_namespace_search", "objectref_name_search",
    "user_search", "group_search", "source_ip_search",
};
/* the columns each search looks at */
static const char *const search_columns[AUD_S_COUNT] = {
    "workspace", "namespace", "name", "username", "groups", "source_ips",
};

static ks_status bad(char *err, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static ks_status bad(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return KS_FAIL(KS_ERR_INVALID, "%s", err);
}

/* A strict decimal integer in [min, max]. */
static int parse_int(const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v;

    if (s[0] == '\0' || (s[0] != '-' && (s[0] < '0' || s[0] > '9')))
        return -1;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Copy n bytes into the query's buffer, NUL-terminated. The buffer was sized
 * for the whole raw query, so it never moves. */
static const char *keep(aud_query *q, const char *s, size_t n)
{
    char *p;

    if (q->buflen + n + 1 > q->bufcap)
        return NULL;
    p = q->buf + q->buflen;
    memcpy(p, s, n);
    p[n] = '\0';
    q->buflen += n + 1;
    return p;
}

/* Split a decoded comma-separated value into list (empty items skipped). */
static ks_status split(aud_query *q, const char *param, const char *val, aud_list *list, char *err,
                       size_t cap)
{
    const char *p = val;

    list->n = 0;
    while (*p) {
        const char *c = strchr(p, ',');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n > 0) {
            if (n >= AUD_QUERY_VALUE_MAX)
                return bad(err, cap, "%s: a value is longer than %d bytes", param,
                           AUD_QUERY_VALUE_MAX - 1);
            if (list->n == AUD_QUERY_MAX_VALUES)
                return bad(err, cap, "%s: more than %d values", param, AUD_QUERY_MAX_VALUES);
            if ((list->v[list->n++] = keep(q, p, n)) == NULL)
                return KS_FAIL(KS_ERR_INTERNAL, "query buffer");
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return KS_OK;
}

static ks_status parse_time(const char *param, const char *v, int64_t *out_us, char *err, size_t cap)
{
    long long sec;

    if (parse_int(v, 0, MAX_UNIX_S, &sec) != 0)
        return bad(err, cap, "%s must be Unix seconds, an integer from 0 to %lld, not \"%.64s\"",
                   param, MAX_UNIX_S, v);
    *out_us = (int64_t)sec * 1000000;
    return KS_OK;
}

static int64_t unit_us(char u)
{
    switch (u) {
    case 's': return 1000000LL;
    case 'm': return 60LL * 1000000LL;
    case 'h': return 3600LL * 1000000LL;
    case 'd': return 86400LL * 1000000LL;
    case 'w': return 7LL * 86400LL * 1000000LL;
    default: return 0;   /* calendar units: M q y */
    }
}

static ks_status parse_interval(const char *v, aud_query *q, char *err, size_t cap)
{
    size_t n = strlen(v);
    char num[24];
    long long k;
    char u = n > 0 ? v[n - 1] : '\0';

    if (n < 2 || n - 1 >= sizeof(num) || strchr("smhdwMqy", u) == NULL)
        goto fail;
    memcpy(num, v, n - 1);
    num[n - 1] = '\0';
    if (num[0] == '-' || parse_int(num, 1, 1000000000LL, &k) != 0)
        goto fail;
    /* at most 100 years of one bucket */
    if ((unit_us(u) > 0 && k > 100LL * 366 * 86400000000LL / unit_us(u)) ||
        (u == 'M' && k > 1200) || (u == 'q' && k > 400) || (u == 'y' && k > 100))
        return bad(err, cap, "interval \"%.32s\" is longer than 100 years", v);
    q->interval_n = k;
    q->interval_unit = u;
    return KS_OK;
fail:
    return bad(err, cap,
               "interval must be a positive number followed by one of s m h d w M q y (e.g. 15m), "
               "not \"%.32s\"",
               v);
}

/* FNV-1a over the parsed query minus its paging: a `continue` token
 * carries it, so a token only continues the query it came from. */
static uint64_t query_hash(const aud_query *q)
{
    uint64_t h = 1469598103934665603ULL;
    char tmp[96];
#define MIX(p, n)                                                                                \
    do {                                                                                         \
        const unsigned char *b_ = (const unsigned char *)(p);                                    \
        for (size_t i_ = 0; i_ < (n); i_++)                                                      \
            h = (h ^ b_[i_]) * 1099511628211ULL;                                                 \
        h = (h ^ 0xff) * 1099511628211ULL;                                                       \
    } while (0)

    snprintf(tmp, sizeof(tmp), "%d|%d|%d|%" PRId64 "|%d|%" PRId64, (int)q->op, q->asc, q->has_start,
             q->start_us, q->has_end, q->end_us);
    MIX(tmp, strlen(tmp));
    for (int f = 0; f < AUD_F_COUNT; f++)
        for (size_t i = 0; i < q->filter[f].n; i++) {
            MIX(filter_params[f], strlen(filter_params[f]));
            MIX(q->filter[f].v[i], strlen(q->filter[f].v[i]));
        }
    for (int f = 0; f < AUD_S_COUNT; f++)
        for (size_t i = 0; i < q->search[f].n; i++) {
            MIX(search_params[f], strlen(search_params[f]));
            MIX(q->search[f].v[i], strlen(q->search[f].v[i]));
        }
#undef MIX
    return h;
}

static ks_status parse_continue(const char *v, aud_query *q, char *err, size_t cap)
{
    long long ts, seq;
    unsigned long long h;
    char tail;

    if (sscanf(v, "c1_%lld_%lld_%16llx%c", &ts, &seq, &h, &tail) != 3 || ts < 0 || seq < 0)
        return bad(err, cap, "continue: not a token this API gave out");
    if ((uint64_t)h != query_hash(q))
        return bad(err, cap,
                   "continue: the token belongs to another query (keep every filter, search, "
                   "time and sort parameter of the first page)");
    q->has_cont = 1;
    q->cont_ts = ts;
    q->cont_seq = seq;
    return KS_OK;
}

typedef enum {
    P_OPERATION, P_START, P_END, P_INTERVAL, P_FROM, P_SIZE, P_SORT, P_CONTINUE, P_FILTER,
    P_SEARCH, P_UNKNOWN
} param_kind;

static param_kind kind_of(const char *name, int *index)
{
    static const struct {
        const char *name;
        param_kind kind;
    } fixed[] = {
        {"operation", P_OPERATION}, {"start_time", P_START}, {"end_time", P_END},
        {"interval", P_INTERVAL},   {"from", P_FROM},        {"size", P_SIZE},
        {"sort", P_SORT},           {"continue", P_CONTINUE},
    };

    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strcmp(name, fixed[i].name) == 0)
            return fixed[i].kind;
    for (int i = 0; i < AUD_F_COUNT; i++)
        if (strcmp(name, filter_params[i]) == 0) {
            *index = i;
            return P_FILTER;
        }
    for (int i = 0; i < AUD_S_COUNT; i++)
        if (strcmp(name, search_params[i]) == 0) {
            *index = i;
            return P_SEARCH;
        }
    return P_UNKNOWN;
}

ks_status aud_query_parse(const char *raw, aud_query *out, char *err, size_t errcap)
{
    aud_query q = {0};
    unsigned seen = 0, seen_f = 0, seen_s = 0;
    const char *p;
    const char *cont = NULL;
    char *val = NULL;
    ks_status st;

    raw = raw ? raw : "";
    q.size = AUD_QUERY_DEFAULT_SIZE;
    q.interval_n = 15;
    q.interval_unit = 'm';
    q.bufcap = 2 * strlen(raw) + 16;
    q.buf = malloc(q.bufcap);
    val = malloc(AUD_QUERY_PARAM_MAX);
    if (q.buf == NULL || val == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "query");
        goto out;
    }
    for (p = raw; *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t nlen = eq ? (size_t)(eq - p) : len;
        char name[64];
        int idx = 0;
        param_kind k;
        long long n;

        if (nlen == 0 || nlen >= sizeof(name) ||
            ks_api_unescape(p, nlen, 1, name, sizeof(name)) != KS_OK)
            goto next;    /* not a parameter of ours */
        k = kind_of(name, &idx);
        if (k == P_UNKNOWN)
            goto next;
        st = ks_api_unescape(eq ? eq + 1 : "", eq ? len - nlen - 1 : 0, 1, val, AUD_QUERY_PARAM_MAX);
        if (st == KS_ERR_TOO_LARGE) {
            st = bad(err, errcap, "%s: longer than %d bytes", name, AUD_QUERY_PARAM_MAX - 1);
            goto out;
        }
        if (st) {
            st = bad(err, errcap, "%s: bad percent-encoding", name);
            goto out;
        }
        /* the first occurrence counts */
        if (k == P_FILTER ? (seen_f >> idx) & 1 : k == P_SEARCH ? (seen_s >> idx) & 1 : (seen >> k) & 1)
            goto next;
        if (k == P_FILTER)
            seen_f |= 1u << idx;
        else if (k == P_SEARCH)
            seen_s |= 1u << idx;
        else
            seen |= 1u << k;
        switch (k) {
        case P_OPERATION:
            if (val[0] == '\0' || strcmp(val, "query") == 0)
                q.op = AUD_OP_QUERY;
            else if (strcmp(val, "statistics") == 0)
                q.op = AUD_OP_STATISTICS;
            else if (strcmp(val, "histogram") == 0)
                q.op = AUD_OP_HISTOGRAM;
            else {
                st = bad(err, errcap,
                         "unknown operation \"%.64s\": one of query, statistics, histogram", val);
                goto out;
            }
            break;
        case P_START:
            if (val[0] != '\0') {
                if ((st = parse_time("start_time", val, &q.start_us, err, errcap)))
                    goto out;
                q.has_start = 1;
            }
            break;
        case P_END:
            if (val[0] != '\0') {
                if ((st = parse_time("end_time", val, &q.end_us, err, errcap)))
                    goto out;
                q.end_us += 1000000;    /* the whole second */
                q.has_end = 1;
            }
            break;
        case P_INTERVAL:
            if (val[0] != '\0' && (st = parse_interval(val, &q, err, errcap)))
                goto out;
            break;
        case P_FROM:
            if (val[0] != '\0') {
                if (parse_int(val, INT64_MIN / 2, INT64_MAX / 2, &n) != 0) {
                    st = bad(err, errcap, "from must be an integer, not \"%.64s\"", val);
                    goto out;
                }
                if (n < 0) {
                    st = bad(err, errcap, "from must not be negative (%lld)", n);
                    goto out;
                }
                q.from = n;
            }
            break;
        case P_SIZE:
            if (val[0] != '\0') {
                if (parse_int(val, INT64_MIN / 2, INT64_MAX / 2, &n) != 0) {
                    st = bad(err, errcap, "size must be an integer, not \"%.64s\"", val);
                    goto out;
                }
                if (n < 0) {
                    st = bad(err, errcap, "size must not be negative (%lld)", n);
                    goto out;
                }
                if (n > AUD_QUERY_MAX_SIZE) {
                    st = bad(err, errcap, "size must be at most %d (%lld)", AUD_QUERY_MAX_SIZE, n);
                    goto out;
                }
                q.size = n;
            }
            break;
        case P_SORT:
            if (strcmp(val, "asc") == 0)
                q.asc = 1;
            else if (val[0] == '\0' || strcmp(val, "desc") == 0)
                q.asc = 0;
            else {
                st = bad(err, errcap, "sort must be asc or desc, not \"%.32s\"", val);
                goto out;
            }
            break;
        case P_CONTINUE:
            if (val[0] != '\0' && (cont = keep(&q, val, strlen(val))) == NULL) {
                st = KS_FAIL(KS_ERR_INTERNAL, "query buffer");
                goto out;
            }
            break;
        case P_FILTER:
            if ((st = split(&q, filter_params[idx], val, &q.filter[idx], err, errcap)))
                goto out;
            break;
        case P_SEARCH:
            if ((st = split(&q, search_params[idx], val, &q.search[idx], err, errcap)))
                goto out;
            break;
        default:
            break;
        }
    next:
        p += len;
        if (*p == '&')
            p++;
    }
    for (size_t i = 0; i < q.filter[AUD_F_CODE].n; i++) {
        long long c;
        if (parse_int(q.filter[AUD_F_CODE].v[i], 0, 999, &c) != 0) {
            st = bad(err, errcap, "response_code_filter: \"%.32s\" is not an HTTP status code",
                     q.filter[AUD_F_CODE].v[i]);
            goto out;
        }
        q.codes[i] = c;
    }
    if (q.has_start && q.has_end && q.start_us >= q.end_us) {
        st = bad(err, errcap, "start_time (%lld) is after end_time (%lld)",
                 (long long)(q.start_us / 1000000), (long long)(q.end_us / 1000000 - 1));
        goto out;
    }
    if (q.from + q.size > AUD_QUERY_MAX_WINDOW) {
        st = bad(err, errcap,
                 "from + size must be at most %d (%lld): page deeper with the continue token",
                 AUD_QUERY_MAX_WINDOW, (long long)(q.from + q.size));
        goto out;
    }
    if (cont != NULL) {
        if (q.op != AUD_OP_QUERY) {
            st = bad(err, errcap, "continue applies to operation=query only");
            goto out;
        }
        if (q.from != 0) {
            st = bad(err, errcap, "continue and from cannot be combined");
            goto out;
        }
        if ((st = parse_continue(cont, &q, err, errcap)))
            goto out;
    }
    *out = q;
    q.buf = NULL;
    st = KS_OK;
out:
    free(val);
    free(q.buf);
    return st;
}

void aud_query_clear(aud_query *q)
{
    if (q == NULL)
        return;
    free(q->buf);
    memset(q, 0, sizeof(*q));
}

int64_t aud_monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- SQL ---- */

typedef struct {
    int is_int;
    int64_t i;
    const char *s;      /* borrowed, or owned when owned != 0 */
    int owned;
} bind_value;

typedef struct {
    char *sql;
    size_t len, cap;
    bind_value *b;
    size_t nb, bcap;
    int oom;
} sqlbuf;

static void sb_add(sqlbuf *sb, const char *s)
{
    size_t n = strlen(s);

    if (sb->oom)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t nc = (sb->cap ? sb->cap * 2 : 512) + n;
        char *p = realloc(sb->sql, nc);
        if (p == NULL) {
            sb->oom = 1;
            return;
        }
        sb->sql = p;
        sb->cap = nc;
    }
    memcpy(sb->sql + sb->len, s, n + 1);
    sb->len += n;
}

static void sb_bind(sqlbuf *sb, int is_int, int64_t i, const char *s, int owned)
{
    if (sb->oom)
        goto fail;
    if (sb->nb == sb->bcap) {
        size_t nc = sb->bcap ? sb->bcap * 2 : 16;
        bind_value *p = realloc(sb->b, nc * sizeof(*p));
        if (p == NULL) {
            sb->oom = 1;
            goto fail;
        }
        sb->b = p;
        sb->bcap = nc;
    }
    sb->b[sb->nb++] = (bind_value){is_int, i, s, owned};
    sb_add(sb, "?");
    return;
fail:
    if (owned)
        free((char *)s);
}

static void sb_int(sqlbuf *sb, int64_t v)
{
    sb_bind(sb, 1, v, NULL, 0);
}

static void sb_text(sqlbuf *sb, const char *s)
{
    sb_bind(sb, 0, 0, s, 0);
}

static void sb_free(sqlbuf *sb)
{
    for (size_t i = 0; i < sb->nb; i++)
        if (sb->b[i].owned)
            free((char *)sb->b[i].s);
    free(sb->b);
    free(sb->sql);
    memset(sb, 0, sizeof(*sb));
}

/* Number of UTF-8 characters in s. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

/* The trigram index answers only terms of three characters or more. */
static int all_trigram(const aud_list *l)
{
    if (l->n == 0)
        return 0;
    for (size_t i = 0; i < l->n; i++)
        if (utf8_chars(l->v[i]) < 3)
            return 0;
    return 1;
}

/* How a search is answered: the trigram index (name, source IPs), an IN
 * list of the matching distinct values from aud_terms on the column's index
 * (workspace, namespace, user), or LIKE on the column (groups; terms under
 * three characters; more than AUD_SEARCH_MAX_VALUES matching values). */
typedef enum { SRCH_NONE = 0, SRCH_FTS, SRCH_IN, SRCH_LIKE } srch_kind;

#define AUD_SEARCH_MAX_VALUES 256

typedef struct {
    int fts;                        /* the trigram index drives the query */
    int name_filter_fts;            /* the exact name filter is also matched there */
    srch_kind kind[AUD_S_COUNT];
    char **in[AUD_S_COUNT];         /* SRCH_IN: the matching values (owned) */
    size_t nin[AUD_S_COUNT];
} plan;

/* the field of aud_terms of each search answered through it */
static const char *const term_fields[AUD_S_COUNT] = {
    "workspace", "namespace", NULL, "username", NULL, NULL,
};

static void plan_free(plan *p)
{
    for (int f = 0; f < AUD_S_COUNT; f++) {
        for (size_t i = 0; i < p->nin[f]; i++)
            free(p->in[f][i]);
        free(p->in[f]);
    }
    memset(p, 0, sizeof(*p));
}

static char *like_pattern(const char *s);
static ks_status prepare_sb(sqlite3 *db, sqlbuf *sb, sqlite3_stmt **out);
static ks_status step_fail(sqlite3 *db, int rc);

/* The distinct values of field that contain one of l's terms. */
static ks_status lookup_terms(sqlite3 *db, const char *field, const aud_list *l, plan *p, int f)
{
    sqlbuf sb = {0};
    sqlite3_stmt *st = NULL;
    ks_status s;
    size_t n = 0;
    int rc;

    sb_add(&sb, "SELECT value FROM aud_terms WHERE field = ");
    sb_text(&sb, field);
    sb_add(&sb, " AND (0");
    for (size_t i = 0; i < l->n; i++) {
        char *pat = like_pattern(l->v[i]);
        if (pat == NULL) {
            sb.oom = 1;
            break;
        }
        sb_add(&sb, " OR value LIKE ");
        sb_bind(&sb, 0, 0, pat, 1);
        sb_add(&sb, " ESCAPE '\\'");
    }
    sb_add(&sb, ") LIMIT ");
    sb_int(&sb, AUD_SEARCH_MAX_VALUES + 1);
    if ((s = prepare_sb(db, &sb, &st)))
        goto out;
    p->in[f] = calloc(AUD_SEARCH_MAX_VALUES + 1, sizeof(char *));
    if (p->in[f] == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "search terms");
        goto out;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if ((p->in[f][n] = strdup(v ? v : "")) == NULL) {
            s = KS_FAIL(KS_ERR_NOMEM, "search terms");
            goto out;
        }
        p->nin[f] = ++n;
    }
    if (rc != SQLITE_DONE) {
        s = step_fail(db, rc);
        goto out;
    }
    p->kind[f] = n > AUD_SEARCH_MAX_VALUES ? SRCH_LIKE : SRCH_IN;
out:
    sqlite3_finalize(st);
    sb_free(&sb);
    return s;
}

static ks_status plan_build(sqlite3 *db, const aud_query *q, plan *p)
{
    ks_status s;

    memset(p, 0, sizeof(*p));
    for (int f = 0; f < AUD_S_COUNT; f++) {
        const aud_list *l = &q->search[f];
        if (l->n == 0)
            continue;
        if (f == AUD_S_NAME || f == AUD_S_SOURCE_IP)
            p->kind[f] = all_trigram(l) ? SRCH_FTS : SRCH_LIKE;
        else if (term_fields[f] != NULL) {
            if ((s = lookup_terms(db, term_fields[f], l, p, f))) {
                plan_free(p);
                return s;
            }
        } else
            p->kind[f] = SRCH_LIKE;
        if (p->kind[f] == SRCH_FTS)
            p->fts = 1;
    }
    if (all_trigram(&q->filter[AUD_F_NAME])) {
        p->name_filter_fts = 1;
        p->fts = 1;
    }
    return KS_OK;
}

/* Copy s to p (room checked by the caller); returns its length. */
static size_t put_str(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return n;
}

/* col : ("a" OR "b") */
static char *match_group(char *p, const char *col, const aud_list *l)
{
    p += put_str(p, col);
    p += put_str(p, " : (");
    for (size_t i = 0; i < l->n; i++) {
        if (i > 0)
            p += put_str(p, " OR ");
        *p++ = '"';
        for (const char *c = l->v[i]; *c; c++) {
            if (*c == '"')
                *p++ = '"';     /* FTS5 doubles quotes inside a string */
            *p++ = *c;
        }
        *p++ = '"';
    }
    *p++ = ')';
    return p;
}

/* The FTS5 MATCH expression of what the trigram index answers, the groups
 * joined by AND. malloc'd; NULL on OOM. */
static char *match_expr(const aud_query *q, const plan *pl)
{
    size_t cap = 64;
    char *m, *p;

    for (int f = 0; f < AUD_S_COUNT; f++)
        for (size_t i = 0; i < q->search[f].n; i++)
            cap += 2 * strlen(q->search[f].v[i]) + 48;
    for (size_t i = 0; i < q->filter[AUD_F_NAME].n; i++)
        cap += 2 * strlen(q->filter[AUD_F_NAME].v[i]) + 48;
    m = malloc(cap);
    if (m == NULL)
        return NULL;
    p = m;
    if (pl->kind[AUD_S_NAME] == SRCH_FTS)
        p = match_group(p, "name", &q->search[AUD_S_NAME]);
    if (pl->name_filter_fts) {
        if (p != m)
            p += put_str(p, " AND ");
        p = match_group(p, "name", &q->filter[AUD_F_NAME]);
    }
    if (pl->kind[AUD_S_SOURCE_IP] == SRCH_FTS) {
        if (p != m)
            p += put_str(p, " AND ");
        p = match_group(p, "source_ips", &q->search[AUD_S_SOURCE_IP]);
    }
    *p = '\0';
    return m;
}

/* '%' + s with % _ \ escaped + '%', for LIKE ... ESCAPE '\'. malloc'd. */
static char *like_pattern(const char *s)
{
    char *m = malloc(2 * strlen(s) + 3), *p = m;

    if (m == NULL)
        return NULL;
    *p++ = '%';
    for (; *s; s++) {
        if (*s == '%' || *s == '_' || *s == '\\')
            *p++ = '\\';
        *p++ = *s;
    }
    *p++ = '%';
    *p = '\0';
    return m;
}

/* " FROM ... WHERE <the trigram match or 1>" */
static void append_source(sqlbuf *sb, const aud_query *q, const plan *pl)
{
    if (pl->fts) {
        char *m = match_expr(q, pl);
        if (m == NULL) {
            sb->oom = 1;
            return;
        }
        /* CROSS JOIN: read the trigram matches first. With a plain JOIN
         * SQLite may walk an index of aud_events and run the match once per
         * row (23 s against 6 ms on 135k rows, user_filter + ip search). */
        sb_add(sb, " FROM aud_fts f CROSS JOIN aud_events e ON e.seq = f.rowid WHERE aud_fts MATCH ");
        sb_bind(sb, 0, 0, m, 1);
    } else {
        sb_add(sb, " FROM aud_events e WHERE 1");
    }
}

/* " AND ..." for the filters, searches, time range and (keyset) the
 * `continue` bound of q. */
static void append_conditions(sqlbuf *sb, const aud_query *q, const plan *pl, int keyset)
{
    char col[64];

    for (int f = 0; f < AUD_F_COUNT; f++) {
        const aud_list *l = &q->filter[f];
        if (l->n == 0)
            continue;
        snprintf(col, sizeof(col), " AND e.%s IN (", filter_columns[f]);
        sb_add(sb, col);
        for (size_t i = 0; i < l->n; i++) {
            if (i > 0)
                sb_add(sb, ",");
            if (f == AUD_F_CODE)
                sb_int(sb, q->codes[i]);
            else
                sb_text(sb, l->v[i]);
        }
        sb_add(sb, ")");
    }
    for (int f = 0; f < AUD_S_COUNT; f++) {
        const aud_list *l = &q->search[f];
        if (pl->kind[f] == SRCH_IN) {
            snprintf(col, sizeof(col), " AND e.%s IN (", search_columns[f]);
            sb_add(sb, pl->nin[f] == 0 ? " AND 0" : col);
            for (size_t i = 0; i < pl->nin[f]; i++) {
                if (i > 0)
                    sb_add(sb, ",");
                sb_text(sb, pl->in[f][i]);
            }
            if (pl->nin[f] > 0)
                sb_add(sb, ")");
            continue;
        }
        if (pl->kind[f] != SRCH_LIKE)
            continue;
        sb_add(sb, " AND (");
        for (size_t i = 0; i < l->n; i++) {
            char *pat = like_pattern(l->v[i]);
            if (pat == NULL) {
                sb->oom = 1;
                return;
            }
            snprintf(col, sizeof(col), "%se.%s LIKE ", i > 0 ? " OR " : "", search_columns[f]);
            sb_add(sb, col);
            sb_bind(sb, 0, 0, pat, 1);
            sb_add(sb, " ESCAPE '\\'");
        }
        sb_add(sb, ")");
    }
    if (q->has_start) {
        sb_add(sb, " AND e.ts >= ");
        sb_int(sb, q->start_us);
    }
    if (q->has_end) {
        sb_add(sb, " AND e.ts < ");
        sb_int(sb, q->end_us);
    }
    if (keyset && q->has_cont) {
        if (pl->fts) {
            sb_add(sb, q->asc ? " AND f.rowid > " : " AND f.rowid < ");
            sb_int(sb, q->cont_seq);
        } else if (q->asc) {
            sb_add(sb, " AND e.ts >= ");
            sb_int(sb, q->cont_ts);
            sb_add(sb, " AND (e.ts > ");
            sb_int(sb, q->cont_ts);
            sb_add(sb, " OR e.seq > ");
            sb_int(sb, q->cont_seq);
            sb_add(sb, ")");
        } else {
            sb_add(sb, " AND e.ts <= ");
            sb_int(sb, q->cont_ts);
            sb_add(sb, " AND (e.ts < ");
            sb_int(sb, q->cont_ts);
            sb_add(sb, " OR e.seq < ");
            sb_int(sb, q->cont_seq);
            sb_add(sb, ")");
        }
    }
}

/* Scope term i (namespaces first, then workspaces): " AND e.<col> = ?
 * [AND e.ts >= since]". */
static void append_term(sqlbuf *sb, const aud_visibility *vis, size_t i)
{
    const aud_scope_entry *v = i < vis->nns ? &vis->ns[i] : &vis->ws[i - vis->nns];

    sb_add(sb, i < vis->nns ? " AND e.namespace = " : " AND e.workspace = ");
    sb_text(sb, v->name);
    if (v->since_us > 0) {
        sb_add(sb, " AND e.ts >= ");
        sb_int(sb, v->since_us);
    }
}

/* A caller limited to a few namespaces and workspaces: each of them is a
 * range of its own index, so the query becomes a union of those ranges
 * (a single OR over them makes SQLite scan the time index instead). */
#define AUD_SCOPE_UNION_MAX 64

static int use_union(const plan *pl, const aud_visibility *vis)
{
    return !vis->all && !pl->fts && vis->nns + vis->nws <= AUD_SCOPE_UNION_MAX;
}

/* " FROM ... WHERE ..." selecting exactly the visible rows of q as e. With
 * topk > 0 (union form only) each scope range contributes its first topk
 * rows in the query's order, enough for a page of topk rows. */
static void append_rows(sqlbuf *sb, const aud_query *q, const plan *pl, const aud_visibility *vis,
                        int keyset, int64_t topk)
{
    const char *order = q->asc ? " ORDER BY e.ts ASC, e.seq ASC" : " ORDER BY e.ts DESC, e.seq DESC";

    if (use_union(pl, vis)) {
        size_t n = vis->nns + vis->nws;
        sb_add(sb, " FROM aud_events e WHERE e.seq IN (");
        if (n == 0)
            sb_add(sb, "SELECT 0 WHERE 0");
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                sb_add(sb, " UNION ");
            sb_add(sb, topk > 0 ? "SELECT seq FROM (SELECT e.seq FROM aud_events e WHERE 1"
                                : "SELECT e.seq FROM aud_events e WHERE 1");
            append_conditions(sb, q, pl, keyset);
            append_term(sb, vis, i);
            if (topk > 0) {
                sb_add(sb, order);
                sb_add(sb, " LIMIT ");
                sb_int(sb, topk);
                sb_add(sb, ")");
            }
        }
        sb_add(sb, ")");
        return;
    }
    append_source(sb, q, pl);
    append_conditions(sb, q, pl, keyset);
    if (!vis->all) {
        sb_add(sb, " AND (0");
        for (size_t i = 0; i < vis->nns + vis->nws; i++) {
            sb_add(sb, " OR (1");
            append_term(sb, vis, i);
            sb_add(sb, ")");
        }
        sb_add(sb, ")");
    }
}

static int on_progress(void *arg)
{
    const int64_t *deadline = arg;
    return *deadline > 0 && aud_monotonic_ms() >= *deadline;
}

/* Prepare sb's SQL with its bindings. */
static ks_status prepare_sb(sqlite3 *db, sqlbuf *sb, sqlite3_stmt **out)
{
    sqlite3_stmt *q = NULL;
    int rc;

    if (sb->oom)
        return KS_FAIL(KS_ERR_NOMEM, "query SQL");
    rc = sqlite3_prepare_v2(db, sb->sql, -1, &q, NULL);
    if (rc != SQLITE_OK)
        return KS_FAIL(KS_ERR_IO, "audit query: %s", sqlite3_errmsg(db));
    for (size_t i = 0; i < sb->nb; i++) {
        if (sb->b[i].is_int)
            sqlite3_bind_int64(q, (int)i + 1, sb->b[i].i);
        else
            sqlite3_bind_text(q, (int)i + 1, sb->b[i].s, -1, SQLITE_STATIC);
    }
    *out = q;
    return KS_OK;
}

static ks_status step_fail(sqlite3 *db, int rc)
{
    if (rc == SQLITE_INTERRUPT)
        return KS_FAIL(KS_ERR_TIMEOUT, "the audit query ran past its deadline");
    if (rc == SQLITE_NOMEM)
        return KS_FAIL(KS_ERR_NOMEM, "audit query");
    return KS_FAIL(KS_ERR_IO, "audit query: %s", sqlite3_errmsg(db));
}

/* One integer from `SELECT <what>` + the WHERE of q. */
static ks_status count_of(sqlite3 *db, const aud_query *q, const plan *pl,
                          const aud_visibility *vis, const char *select, const char *suffix,
                          int64_t *out)
{
    sqlbuf sb = {0};
    sqlite3_stmt *st = NULL;
    ks_status s;
    int rc;

    sb_add(&sb, select);
    append_rows(&sb, q, pl, vis, 0, 0);
    sb_add(&sb, suffix);
    if ((s = prepare_sb(db, &sb, &st)))
        goto out;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(st, 0);
    else
        s = step_fail(db, rc);
out:
    sqlite3_finalize(st);
    sb_free(&sb);
    return s;
}

/* The page: first the (seq, ts) of its rows, from the indexes alone
 * where they cover the query; then each row's event, by its key. */
static ks_status run_records(sqlite3 *db, const aud_query *q, const plan *pl,
                             const aud_visibility *vis, json_t *query)
{
    sqlbuf sb = {0};
    sqlite3_stmt *st = NULL, *get = NULL;
    json_t *records = json_array();
    int64_t *seqs = NULL, *tss = NULL, n = 0;
    ks_status s = KS_OK;
    int rc = SQLITE_DONE;

    if (records == NULL || json_object_set_new(query, "records", records) != 0)
        return KS_FAIL(KS_ERR_NOMEM, "records");
    if (q->size == 0)
        return KS_OK;
    seqs = calloc((size_t)q->size + 1, sizeof(*seqs));
    tss = calloc((size_t)q->size + 1, sizeof(*tss));
    if (seqs == NULL || tss == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "records");
        goto out;
    }
    sb_add(&sb, "SELECT e.seq, e.ts");
    append_rows(&sb, q, pl, vis, 1, q->from + q->size + 1);
    if (pl->fts)
        sb_add(&sb, q->asc ? " ORDER BY f.rowid ASC" : " ORDER BY f.rowid DESC");
    else
        sb_add(&sb, q->asc ? " ORDER BY e.ts ASC, e.seq ASC" : " ORDER BY e.ts DESC, e.seq DESC");
    /* one row more than asked tells whether a next page exists */
    sb_add(&sb, " LIMIT ");
    sb_int(&sb, q->size + 1);
    sb_add(&sb, " OFFSET ");
    sb_int(&sb, q->from);
    if ((s = prepare_sb(db, &sb, &st)))
        goto out;
    while (n <= q->size && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        seqs[n] = sqlite3_column_int64(st, 0);
        tss[n] = sqlite3_column_int64(st, 1);
        n++;
    }
    if (n <= q->size && rc != SQLITE_DONE) {
        s = step_fail(db, rc);
        goto out;
    }
    if (sqlite3_prepare_v2(db, "SELECT audit_id, blob FROM aud_events WHERE seq = ?", -1, &get,
                           NULL) != SQLITE_OK) {
        s = KS_FAIL(KS_ERR_IO, "audit query: %s", sqlite3_errmsg(db));
        goto out;
    }
    for (int64_t i = 0; i < n && i < q->size; i++) {
        json_t *ev = NULL;
        sqlite3_reset(get);
        sqlite3_bind_int64(get, 1, seqs[i]);
        if ((rc = sqlite3_step(get)) != SQLITE_ROW) {
            /* swept between the two reads? not in one transaction */
            s = step_fail(db, rc);
            goto out;
        }
        if (aud_event_json_from_blob(sqlite3_column_blob(get, 1),
                                     (size_t)sqlite3_column_bytes(get, 1), &ev) != KS_OK) {
            /* a stored event always decoded once; show at least its id */
            const char *id = (const char *)sqlite3_column_text(get, 0);
            ev = json_pack("{s:s}", "AuditID", id ? id : "");
        }
        if (ev == NULL || json_array_append_new(records, ev) != 0) {
            s = KS_FAIL(KS_ERR_NOMEM, "records");
            goto out;
        }
    }
    if (n > q->size) {
        char tok[96];
        snprintf(tok, sizeof(tok), "c1_%lld_%lld_%016llx", (long long)tss[q->size - 1],
                 (long long)seqs[q->size - 1], (unsigned long long)query_hash(q));
        if (json_object_set_new(query, "continue", json_string(tok)) != 0)
            s = KS_FAIL(KS_ERR_NOMEM, "records");
    }
out:
    sqlite3_finalize(st);
    sqlite3_finalize(get);
    sb_free(&sb);
    free(seqs);
    free(tss);
    return s;
}

/* Calendar month index (year * 12 + month - 1) -> Unix ms of its first day. */
static int64_t month_ms(int64_t idx)
{
    struct tm tm = {0};

    tm.tm_year = (int)(idx / 12) - 1900;
    tm.tm_mon = (int)(idx % 12);
    tm.tm_mday = 1;
    return (int64_t)timegm(&tm) * 1000;
}

static ks_status run_histogram(sqlite3 *db, const aud_query *q, const plan *pl,
                               const aud_visibility *vis, json_t *hist, char *err, size_t errcap)
{
    int64_t w = unit_us(q->interval_unit) * q->interval_n;
    int64_t off = q->interval_unit == 'w' ? WEEK_OFFSET_US : 0;
    int64_t months = q->interval_unit == 'M' ? q->interval_n
                     : q->interval_unit == 'q' ? 3 * q->interval_n : 12 * q->interval_n;
    int64_t *keys = NULL, *counts = NULL, total = 0;
    size_t n = 0, cap = 0;
    sqlbuf sb = {0};
    sqlite3_stmt *st = NULL;
    json_t *buckets = json_array();
    ks_status s = KS_OK;
    int rc;

    if (buckets == NULL || json_object_set_new(hist, "buckets", buckets) != 0)
        return KS_FAIL(KS_ERR_NOMEM, "histogram");
    if (w > 0 && q->has_start && q->has_end &&
        (q->end_us - q->start_us) / w > AUD_HISTOGRAM_MAX_BUCKETS) {
        s = bad(err, errcap,
                "interval %lld%c over this time range makes more than %d buckets: choose a "
                "longer interval or a shorter range",
                (long long)q->interval_n, q->interval_unit, AUD_HISTOGRAM_MAX_BUCKETS);
        goto out;
    }
    if (w > 0) {
        sb_add(&sb, "SELECT (e.ts - ");
        sb_int(&sb, off);
        sb_add(&sb, ") / ");
        sb_int(&sb, w);
        sb_add(&sb, " AS b, count(*)");
    } else {
        sb_add(&sb, "SELECT (CAST(strftime('%Y', e.ts / 1000000, 'unixepoch') AS INTEGER) * 12 +"
                    " CAST(strftime('%m', e.ts / 1000000, 'unixepoch') AS INTEGER) - 1) / ");
        sb_int(&sb, months);
        sb_add(&sb, " AS b, count(*)");
    }
    append_rows(&sb, q, pl, vis, 0, 0);
    sb_add(&sb, " GROUP BY b ORDER BY b");
    if ((s = prepare_sb(db, &sb, &st)))
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 64;
            int64_t *nk = realloc(keys, nc * sizeof(*nk)), *ncnt;
            if (nk == NULL) {
                s = KS_FAIL(KS_ERR_NOMEM, "histogram");
                goto out;
            }
            keys = nk;
            ncnt = realloc(counts, nc * sizeof(*ncnt));
            if (ncnt == NULL) {
                s = KS_FAIL(KS_ERR_NOMEM, "histogram");
                goto out;
            }
            counts = ncnt;
            cap = nc;
        }
        keys[n] = sqlite3_column_int64(st, 0);
        counts[n] = sqlite3_column_int64(st, 1);
        total += counts[n];
        n++;
        if (keys[n - 1] - keys[0] >= AUD_HISTOGRAM_MAX_BUCKETS) {
            s = bad(err, errcap,
                    "interval %lld%c over the events' time range makes more than %d buckets: "
                    "choose a longer interval or set start_time and end_time",
                    (long long)q->interval_n, q->interval_unit, AUD_HISTOGRAM_MAX_BUCKETS);
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        s = step_fail(db, rc);
        goto out;
    }
    /* Like Elasticsearch's date_histogram: every bucket from the first to
     * the last non-empty one, empty ones with count 0. */
    for (size_t i = 0; n > 0 && i < n; i++) {
        int64_t k = keys[i];
        int64_t stop = i + 1 < n ? keys[i + 1] : k + 1;
        for (; k < stop; k++) {
            int64_t t = w > 0 ? (k * w + off) / 1000 : month_ms(k * months);
            json_t *b = json_pack("{s:I, s:I}", "time", (json_int_t)t, "count",
                                  (json_int_t)(k == keys[i] ? counts[i] : 0));
            if (b == NULL || json_array_append_new(buckets, b) != 0) {
                s = KS_FAIL(KS_ERR_NOMEM, "histogram");
                goto out;
            }
        }
    }
    if (json_object_set_new(hist, "total", json_integer(total)) != 0)
        s = KS_FAIL(KS_ERR_NOMEM, "histogram");
out:
    free(keys);
    free(counts);
    sqlite3_finalize(st);
    sb_free(&sb);
    return s;
}

static int nothing_visible(const aud_visibility *vis)
{
    return !vis->all && vis->nns == 0 && vis->nws == 0;
}

ks_status aud_query_run(sqlite3 *db, const aud_query *q, const aud_visibility *vis,
                        int64_t deadline_ms, json_t **out, char *err, size_t errcap)
{
    json_t *answer = json_object(), *inner = json_object();
    int64_t total = 0, resources = 0;
    int in_txn = 0;
    plan pl = {0};
    char total_limit[48];
    ks_status s = KS_OK;

    if (answer == NULL || inner == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "answer");
        goto out;
    }
    snprintf(total_limit, sizeof(total_limit), " LIMIT %d)", AUD_QUERY_TOTAL_MAX + 1);
    sqlite3_progress_handler(db, 1000, on_progress, &deadline_ms);
    /* one snapshot for the count and the page */
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        s = KS_FAIL(KS_ERR_IO, "audit query: %s", sqlite3_errmsg(db));
        goto out;
    }
    in_txn = 1;
    if ((s = plan_build(db, q, &pl)))
        goto out;
    switch (q->op) {
    case AUD_OP_QUERY:
        /* Counted up to AUD_QUERY_TOTAL_MAX, as KubeSphere's Elasticsearch 7
         * backend did (hits.total without track_total_hits): a count never
         * reads more than that many rows */
        if (!nothing_visible(vis) &&
            ((s = count_of(db, q, &pl, vis, "SELECT count(*) FROM (SELECT 1", total_limit,
                           &total)) ||
             (s = run_records(db, q, &pl, vis, inner))))
            goto out;
        if (nothing_visible(vis) && json_object_set_new(inner, "records", json_array()) != 0) {
            s = KS_FAIL(KS_ERR_NOMEM, "answer");
            goto out;
        }
        if (json_object_set_new(inner, "total",
                                json_integer(total > AUD_QUERY_TOTAL_MAX ? AUD_QUERY_TOTAL_MAX
                                                                         : total)) != 0 ||
            json_object_set_new(inner, "totalRelation",
                                json_string(total > AUD_QUERY_TOTAL_MAX ? "gte" : "eq")) != 0) {
            s = KS_FAIL(KS_ERR_NOMEM, "answer");
            goto out;
        }
        s = json_object_set(answer, "query", inner) == 0 ? KS_OK : KS_FAIL(KS_ERR_NOMEM, "answer");
        break;
    case AUD_OP_STATISTICS:
        /* resources: distinct objects (resource, namespace, name) the events
         * touched; KubeSphere's Elasticsearch backend counted distinct audit
         * IDs there, which is the number of events again */
        if (!nothing_visible(vis) &&
            ((s = count_of(db, q, &pl, vis, "SELECT count(*)", "", &total)) ||
             (s = count_of(db, q, &pl, vis,
                           "SELECT count(*) FROM (SELECT DISTINCT e.resource, e.namespace, e.name",
                           " AND e.resource != '')", &resources))))
            goto out;
        s = KS_OK;
        if (json_object_set_new(inner, "resources", json_integer(resources)) != 0 ||
            json_object_set_new(inner, "events", json_integer(total)) != 0 ||
            json_object_set(answer, "statistics", inner) != 0)
            s = KS_FAIL(KS_ERR_NOMEM, "answer");
        break;
    case AUD_OP_HISTOGRAM:
        if (nothing_visible(vis)) {
            s = KS_OK;
            if (json_object_set_new(inner, "total", json_integer(0)) != 0 ||
                json_object_set_new(inner, "buckets", json_array()) != 0)
                s = KS_FAIL(KS_ERR_NOMEM, "answer");
        } else {
            s = run_histogram(db, q, &pl, vis, inner, err, errcap);
        }
        if (s == KS_OK && json_object_set(answer, "histogram", inner) != 0)
            s = KS_FAIL(KS_ERR_NOMEM, "answer");
        break;
    }
out:
    plan_free(&pl);
    if (in_txn)
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (db != NULL)
        sqlite3_progress_handler(db, 0, NULL, NULL);
    json_decref(inner);
    if (s == KS_OK)
        *out = answer;
    else
        json_decref(answer);
    return s;
}
