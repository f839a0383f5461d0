#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } m_kind;

static const char *const kind_names[] = {"counter", "gauge", "histogram"};

typedef struct m_family {
    char *name;
    char *help;
    m_kind kind;
    double *bounds; /* histograms: shared by every series of the family */
    size_t nbounds;
    ks_metric **series;
    size_t nseries, capseries;
} m_family;

struct ks_metric {
    m_family *family; /* NULL for a sink */
    m_kind kind;
    char *labels;     /* canonical body, "" when none */
    /* Counters count whole increments in ival, without a CAS loop; fractional
     * adds and gauges go through dbits (a double's bits, CAS-updated). */
    _Atomic uint64_t ival;
    _Atomic uint64_t dbits;
    _Atomic uint64_t *buckets; /* histograms: nbounds + 1, not cumulative */
    size_t nbounds;
    const double *bounds;
    ks_metric *hash_next;
};

#define M_HASH_SIZE 1024
#define M_MAX_PAIRS 16

static pthread_mutex_t m_lock = PTHREAD_MUTEX_INITIALIZER;
static m_family **m_families;
static size_t m_nfamilies, m_capfamilies;
static ks_metric *m_hash[M_HASH_SIZE];
static size_t m_total_series;

static _Atomic uint64_t sink_bucket[1];
static ks_metric sink_counter = {.kind = M_COUNTER, .labels = ""};
static ks_metric sink_gauge = {.kind = M_GAUGE, .labels = ""};
static ks_metric sink_histogram = {.kind = M_HISTOGRAM, .labels = "", .buckets = sink_bucket};

static atomic_flag warned_name = ATOMIC_FLAG_INIT;
static atomic_flag warned_labels = ATOMIC_FLAG_INIT;
static atomic_flag warned_type = ATOMIC_FLAG_INIT;
static atomic_flag warned_full = ATOMIC_FLAG_INIT;
static atomic_flag warned_oom = ATOMIC_FLAG_INIT;

static const double default_bounds[] = {.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};

static uint64_t d2u(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double u2d(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static void dbits_add(_Atomic uint64_t *a, double v)
{
    uint64_t old = atomic_load_explicit(a, memory_order_relaxed);

    while (!atomic_compare_exchange_weak_explicit(a, &old, d2u(u2d(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

static ks_metric *m_sink(m_kind kind)
{
    return kind == M_COUNTER ? &sink_counter : kind == M_GAUGE ? &sink_gauge : &sink_histogram;
}

/* Log a misuse once per process and kind: a per-request registration with a
 * bad label would otherwise flood the log. */
static void m_warn_once(atomic_flag *flag, const char *what, const char *name)
{
    if (!atomic_flag_test_and_set(flag))
        ks_error("metrics: %s (first case: '%.100s'); further cases are not logged", what, name);
}

static int m_name_ok(const char *name)
{
    if (name == NULL)
        return 0;
    for (size_t i = 0; name[i]; i++) {
        char c = name[i];
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return 0;
    }
    return name[0] != '\0';
}

typedef struct {
    const char *name;
    size_t nlen;
    const char *value; /* escaped, as written between the quotes */
    size_t vlen;
} m_pair;

static int m_pair_cmp(const void *a, const void *b)
{
    const m_pair *x = a, *y = b;
    size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
    int c = memcmp(x->name, y->name, n);

    if (c != 0)
        return c;
    return x->nlen < y->nlen ? -1 : x->nlen > y->nlen ? 1 : 0;
}

/* Length of the UTF-8 sequence at s (1..4), or 0 if it is not valid. */
static size_t m_utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (s[0] >= 0xe0 && s[0] <= 0xef) {
        if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
            return 0;
        if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f))
            return 0; /* overlong, surrogate */
        return 3;
    }
    if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        if ((s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80)
            return 0;
        if ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
            return 0;
        return 4;
    }
    return 0;
}

/* Validate a label body and write it sorted by name into out. Returns 0, or
 * -1 if it is malformed, too long or uses a reserved name. */
static int m_labels_canon(const char *body, int histogram, char *out, size_t outcap)
{
    m_pair pairs[M_MAX_PAIRS];
    size_t np = 0, n = 0;
    const char *p = body;

    out[0] = '\0';
    if (body == NULL || body[0] == '\0')
        return 0;
    if (strlen(body) >= KS_METRICS_LABELS_MAX || strlen(body) >= outcap)
        return -1;
    while (*p) {
        m_pair *q;

        if (np == M_MAX_PAIRS)
            return -1;
        q = &pairs[np++];
        q->name = p;
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_'))
            return -1;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
               (*p >= '0' && *p <= '9'))
            p++;
        q->nlen = (size_t)(p - q->name);
        if (q->nlen >= 2 && q->name[0] == '_' && q->name[1] == '_')
            return -1;
        if (histogram && q->nlen == 2 && memcmp(q->name, "le", 2) == 0)
            return -1;
        if (p[0] != '=' || p[1] != '"')
            return -1;
        p += 2;
        q->value = p;
        while (*p != '"') {
            size_t len;
            if (*p == '\0' || *p == '\n')
                return -1;
            if (*p == '\\') {
                if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                    return -1;
                p += 2;
                continue;
            }
            len = m_utf8_len((const unsigned char *)p);
            if (len == 0)
                return -1;
            p += len;
        }
        q->vlen = (size_t)(p - q->value);
        p++;
        if (*p == ',')
            p++;
        else if (*p != '\0')
            return -1;
    }
    qsort(pairs, np, sizeof(pairs[0]), m_pair_cmp);
    for (size_t i = 0; i < np; i++) {
        if (i > 0 && m_pair_cmp(&pairs[i - 1], &pairs[i]) == 0)
            return -1; /* the same label twice */
        /* The canonical body is never longer than the input, which fits. */
        n += (size_t)snprintf(out + n, outcap - n, "%s%.*s=\"%.*s\"", i ? "," : "",
                              (int)pairs[i].nlen, pairs[i].name, (int)pairs[i].vlen,
                              pairs[i].value);
    }
    return 0;
}

ks_status ks_metrics_label_append(char *out, size_t outcap, const char *name, const char *value)
{
    size_t start, n;
    const unsigned char *v = (const unsigned char *)(value ? value : "");

    if (out == NULL || outcap == 0 || name == NULL)
        return KS_FAIL(KS_ERR_INVALID, "metrics: bad arguments");
    if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
          name[0] == '_'))
        return KS_FAIL(KS_ERR_INVALID, "metrics: bad label name");
    for (const char *c = name; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
              (*c >= '0' && *c <= '9')))
            return KS_FAIL(KS_ERR_INVALID, "metrics: bad label name");
    }
    start = strnlen(out, outcap);
    if (start == outcap)
        return KS_FAIL(KS_ERR_INVALID, "metrics: label body not terminated");
    n = start;
#define M_PUT(c)                         \
    do {                                 \
        if (n + 1 >= outcap)             \
            goto too_large;              \
        out[n++] = (char)(c);            \
    } while (0)
    if (start > 0)
        M_PUT(',');
    for (const char *c = name; *c; c++)
        M_PUT(*c);
    M_PUT('=');
    M_PUT('"');
    while (*v) {
        size_t len = m_utf8_len(v);
        if (*v == '\\' || *v == '"') {
            M_PUT('\\');
            M_PUT(*v);
        } else if (*v == '\n') {
            M_PUT('\\');
            M_PUT('n');
        } else if (len == 0 || *v < 0x20 || *v == 0x7f) {
            M_PUT('?');
            len = 1;
        } else {
            for (size_t i = 0; i < len; i++)
                M_PUT(v[i]);
            v += len;
            continue;
        }
        v += len ? len : 1;
    }
    M_PUT('"');
#undef M_PUT
    out[n] = '\0';
    return KS_OK;
too_large:
    out[start] = '\0';
    return KS_FAIL(KS_ERR_TOO_LARGE, "metrics: label body over %zu bytes", outcap);
}

static uint64_t m_hash_key(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;

    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static m_family *m_family_find(const char *name)
{
    for (size_t i = 0; i < m_nfamilies; i++) {
        if (strcmp(m_families[i]->name, name) == 0)
            return m_families[i];
    }
    return NULL;
}

static void m_family_free(m_family *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->nseries; i++) {
        free(f->series[i]->labels);
        free(f->series[i]->buckets);
        free(f->series[i]);
    }
    free(f->series);
    free(f->bounds);
    free(f->help);
    free(f->name);
    free(f);
}

/* Called with m_lock held. Returns NULL on OOM. */
static m_family *m_family_add(const char *name, const char *help, m_kind kind,
                              const double *bounds, size_t nbounds)
{
    m_family *f = NULL, *res = NULL;

    if (m_nfamilies == m_capfamilies) {
        size_t cap = m_capfamilies ? m_capfamilies * 2 : 16;
        m_family **nf = realloc(m_families, cap * sizeof(*nf));
        if (nf == NULL)
            goto out;
        m_families = nf;
        m_capfamilies = cap;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        goto out;
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    if (f->name == NULL || f->help == NULL)
        goto out;
    if (kind == M_HISTOGRAM && nbounds > 0) {
        f->bounds = malloc(nbounds * sizeof(*f->bounds));
        if (f->bounds == NULL)
            goto out;
        memcpy(f->bounds, bounds, nbounds * sizeof(*f->bounds));
        f->nbounds = nbounds;
    }
    m_families[m_nfamilies++] = f;
    res = f;
    f = NULL;
out:
    m_family_free(f);
    return res;
}

static ks_metric *m_register(m_kind kind, const char *name, const char *help, const char *labels,
                             const double *bounds, size_t nbounds)
{
    char canon[KS_METRICS_LABELS_MAX];
    ks_metric *m = NULL, *res = NULL;
    m_family *f;
    uint64_t h;
    size_t slot;
    int locked = 0;

    if (!m_name_ok(name)) {
        m_warn_once(&warned_name, "invalid metric name", name ? name : "(null)");
        res = m_sink(kind);
        goto out;
    }
    if (m_labels_canon(labels, kind == M_HISTOGRAM, canon, sizeof(canon)) != 0) {
        m_warn_once(&warned_labels, "invalid label body", labels);
        res = m_sink(kind);
        goto out;
    }
    if (kind == M_HISTOGRAM) {
        if (bounds == NULL) {
            bounds = default_bounds;
            nbounds = sizeof(default_bounds) / sizeof(default_bounds[0]);
        }
        if (nbounds > 0 && isinf(bounds[nbounds - 1]) && bounds[nbounds - 1] > 0)
            nbounds--;
        for (size_t i = 0; i < nbounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])) ||
                nbounds > KS_METRICS_MAX_BOUNDS) {
                m_warn_once(&warned_labels, "invalid histogram bounds", name);
                res = m_sink(kind);
                goto out;
            }
        }
    }

    h = m_hash_key(name, canon);
    slot = (size_t)(h % M_HASH_SIZE);
    pthread_mutex_lock(&m_lock);
    locked = 1;
    f = m_family_find(name);
    if (f != NULL && f->kind != kind) {
        m_warn_once(&warned_type, "metric registered again with another type", name);
        res = m_sink(kind);
        goto out;
    }
    if (f != NULL) {
        for (ks_metric *e = m_hash[slot]; e != NULL; e = e->hash_next) {
            if (e->family == f && strcmp(e->labels, canon) == 0) {
                res = e;
                goto out;
            }
        }
    }
    if (m_total_series >= KS_METRICS_MAX_SERIES) {
        m_warn_once(&warned_full, "too many series; check label cardinality", name);
        res = m_sink(kind);
        goto out;
    }
    if (f == NULL) {
        f = m_family_add(name, help, kind, bounds, nbounds);
        if (f == NULL)
            goto oom;
    }
    if (f->nseries == f->capseries) {
        size_t cap = f->capseries ? f->capseries * 2 : 4;
        ks_metric **ns = realloc(f->series, cap * sizeof(*ns));
        if (ns == NULL)
            goto oom;
        f->series = ns;
        f->capseries = cap;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        goto oom;
    m->family = f;
    m->kind = kind;
    m->labels = strdup(canon);
    if (m->labels == NULL)
        goto oom;
    if (kind == M_HISTOGRAM) {
        m->nbounds = f->nbounds;
        m->bounds = f->bounds;
        m->buckets = calloc(f->nbounds + 1, sizeof(*m->buckets));
        if (m->buckets == NULL)
            goto oom;
    }
    f->series[f->nseries++] = m;
    m->hash_next = m_hash[slot];
    m_hash[slot] = m;
    m_total_series++;
    res = m;
    m = NULL;
    goto out;
oom:
    m_warn_once(&warned_oom, "out of memory registering a metric", name);
    res = m_sink(kind);
out:
    if (m != NULL) {
        free(m->labels);
        free(m->buckets);
        free(m);
    }
    if (locked)
        pthread_mutex_unlock(&m_lock);
    return res;
}

ks_metric *ks_metrics_counter(const char *name, const char *help, const char *labels)
{
    return m_register(M_COUNTER, name, help, labels, NULL, 0);
}

ks_metric *ks_metrics_gauge(const char *name, const char *help, const char *labels)
{
    return m_register(M_GAUGE, name, help, labels, NULL, 0);
}

ks_metric *ks_metrics_histogram(const char *name, const char *help, const char *labels,
                                const double *bounds, size_t nbounds)
{
    return m_register(M_HISTOGRAM, name, help, labels, bounds, nbounds);
}

void ks_metric_inc(ks_metric *m)
{
    if (m == NULL)
        return;
    if (m->kind == M_COUNTER)
        atomic_fetch_add_explicit(&m->ival, 1, memory_order_relaxed);
    else if (m->kind == M_GAUGE)
        dbits_add(&m->dbits, 1.0);
}

void ks_metric_dec(ks_metric *m)
{
    if (m != NULL && m->kind == M_GAUGE)
        dbits_add(&m->dbits, -1.0);
}

void ks_metric_add(ks_metric *m, double v)
{
    if (m == NULL)
        return;
    if (m->kind == M_COUNTER) {
        if (!(v >= 0) || isinf(v))
            return;
        /* Whole numbers below 2^53 add exactly without a CAS loop. */
        if (v < 9007199254740992.0 && v == floor(v))
            atomic_fetch_add_explicit(&m->ival, (uint64_t)v, memory_order_relaxed);
        else
            dbits_add(&m->dbits, v);
    } else if (m->kind == M_GAUGE) {
        dbits_add(&m->dbits, v);
    }
}

void ks_metric_set(ks_metric *m, double v)
{
    if (m != NULL && m->kind == M_GAUGE)
        atomic_store_explicit(&m->dbits, d2u(v), memory_order_relaxed);
}

void ks_metric_observe(ks_metric *m, double v)
{
    size_t lo = 0, hi;

    if (m == NULL || m->kind != M_HISTOGRAM || isnan(v))
        return;
    /* First bucket whose upper bound is >= v; past the end is +Inf. */
    hi = m->nbounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= m->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    dbits_add(&m->dbits, v);
}

static double m_scalar(const ks_metric *m)
{
    double d = u2d(atomic_load_explicit(&((ks_metric *)m)->dbits, memory_order_relaxed));

    if (m->kind == M_COUNTER)
        d += (double)atomic_load_explicit(&((ks_metric *)m)->ival, memory_order_relaxed);
    return d;
}

static uint64_t m_hist_count(const ks_metric *m)
{
    uint64_t c = 0;

    for (size_t i = 0; i <= m->nbounds; i++)
        c += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    return c;
}

double ks_metric_value(const ks_metric *m)
{
    if (m == NULL)
        return 0;
    if (m->kind == M_HISTOGRAM)
        return (double)m_hist_count(m);
    return m_scalar(m);
}

double ks_metric_sum(const ks_metric *m)
{
    if (m == NULL || m->kind != M_HISTOGRAM)
        return 0;
    return u2d(atomic_load_explicit(&((ks_metric *)m)->dbits, memory_order_relaxed));
}

/* ---- rendering ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} m_buf;

static void mb_put(m_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *np;
        while (b->len + n + 1 > cap)
            cap *= 2;
        np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void mb_str(m_buf *b, const char *s)
{
    mb_put(b, s, strlen(s));
}

/* Shortest text that reads back as the same double; Go's ParseFloat (what
 * Prometheus uses) reads all of these. */
static void m_fmt_double(char *out, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(out, cap, "NaN");
    } else if (isinf(v)) {
        snprintf(out, cap, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, cap, "%.0f", v);
    } else {
        snprintf(out, cap, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, cap, "%.17g", v);
    }
}

/* name{labels[,extra]} */
static void mb_series(m_buf *b, const char *name, const char *suffix, const char *labels,
                      const char *extra)
{
    mb_str(b, name);
    mb_str(b, suffix);
    if (labels[0] == '\0' && extra == NULL) {
        mb_str(b, " ");
        return;
    }
    mb_str(b, "{");
    mb_str(b, labels);
    if (extra != NULL) {
        if (labels[0] != '\0')
            mb_str(b, ",");
        mb_str(b, extra);
    }
    mb_str(b, "} ");
}

static void mb_help(m_buf *b, const char *help)
{
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            mb_str(b, "\\\\");
        else if (*p == '\n')
            mb_str(b, "\\n");
        else
            mb_put(b, p, 1);
    }
}

static void m_render_family(m_buf *b, const m_family *f)
{
    char num[64], le[96];

    mb_str(b, "# HELP ");
    mb_str(b, f->name);
    mb_str(b, " ");
    mb_help(b, f->help);
    mb_str(b, "\n# TYPE ");
    mb_str(b, f->name);
    mb_str(b, " ");
    mb_str(b, kind_names[f->kind]);
    mb_str(b, "\n");
    for (size_t i = 0; i < f->nseries; i++) {
        const ks_metric *m = f->series[i];

        if (f->kind != M_HISTOGRAM) {
            mb_series(b, f->name, "", m->labels, NULL);
            m_fmt_double(num, sizeof(num), m_scalar(m));
            mb_str(b, num);
            mb_str(b, "\n");
            continue;
        }
        /* Read each bucket once; _count is their total, so it always equals
         * the +Inf bucket even while observations race with the scrape. */
        uint64_t cum = 0;
        for (size_t k = 0; k <= m->nbounds; k++) {
            cum += atomic_load_explicit(&m->buckets[k], memory_order_relaxed);
            if (k < m->nbounds)
                m_fmt_double(num, sizeof(num), m->bounds[k]);
            else
                snprintf(num, sizeof(num), "+Inf");
            snprintf(le, sizeof(le), "le=\"%s\"", num);
            mb_series(b, f->name, "_bucket", m->labels, le);
            snprintf(num, sizeof(num), "%llu", (unsigned long long)cum);
            mb_str(b, num);
            mb_str(b, "\n");
        }
        mb_series(b, f->name, "_sum", m->labels, NULL);
        m_fmt_double(num, sizeof(num), ks_metric_sum(m));
        mb_str(b, num);
        mb_str(b, "\n");
        mb_series(b, f->name, "_count", m->labels, NULL);
        snprintf(num, sizeof(num), "%llu", (unsigned long long)cum);
        mb_str(b, num);
        mb_str(b, "\n");
    }
}

char *ks_metrics_render(size_t *len)
{
    m_buf b = {0};
    char *res = NULL;

    pthread_mutex_lock(&m_lock);
    mb_put(&b, "", 0); /* an empty registry renders as "" */
    for (size_t i = 0; i < m_nfamilies; i++)
        m_render_family(&b, m_families[i]);
    pthread_mutex_unlock(&m_lock);
    if (b.oom) {
        ks_error("metrics: out of memory rendering %zu bytes", b.len);
        free(b.p);
        goto out;
    }
    if (len != NULL)
        *len = b.len;
    res = b.p;
out:
    return res;
}

void ks_metrics_reset(void)
{
    pthread_mutex_lock(&m_lock);
    for (size_t i = 0; i < m_nfamilies; i++)
        m_family_free(m_families[i]);
    free(m_families);
    m_families = NULL;
    m_nfamilies = m_capfamilies = 0;
    memset(m_hash, 0, sizeof(m_hash));
    m_total_series = 0;
    atomic_store(&sink_counter.ival, 0);
    atomic_store(&sink_counter.dbits, 0);
    atomic_store(&sink_gauge.dbits, 0);
    atomic_store(&sink_histogram.dbits, 0);
    atomic_store(&sink_bucket[0], 0);
    atomic_flag_clear(&warned_name);
    atomic_flag_clear(&warned_labels);
    atomic_flag_clear(&warned_type);
    atomic_flag_clear(&warned_full);
    atomic_flag_clear(&warned_oom);
    pthread_mutex_unlock(&m_lock);
}
