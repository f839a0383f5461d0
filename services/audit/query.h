/* query.h: KubeSphere's auditing query over the store (docs/audit.md).
 *
 * aud_query_parse reads the query string of
 *   GET /kapis/tenant.kubesphere.io/v1alpha2/auditing/events
 *   GET /kapis/auditing.kubesphere.io/v1alpha1/events
 * (KubeSphere's parameter names: operation, *_filter, *_search, start_time,
 * end_time, interval, from, size, sort; plus `continue`, a keyset token) and
 * refuses bad input with one precise message; aud_query_run turns it into
 * SQL over the store's indexes and answers KubeSphere's shapes:
 *   {"query":{"total":N,"totalRelation":"eq|gte","records":[event...],
 *             "continue":"..."}}   (total exact up to AUD_QUERY_TOTAL_MAX)
 *   {"statistics":{"resources":N,"events":N}}
 *   {"histogram":{"total":N,"buckets":[{"time":ms,"count":N}...]}}
 * limited to what the caller may see (aud_visibility, from scope.c). */
#ifndef AUD_QUERY_H
#define AUD_QUERY_H

#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define AUD_QUERY_MAX_VALUES 64       /* comma-separated values of one parameter */
#define AUD_QUERY_VALUE_MAX 256       /* bytes of one value */
#define AUD_QUERY_PARAM_MAX 8192      /* bytes of one decoded parameter */
#define AUD_QUERY_MAX_SIZE 1000       /* size */
#define AUD_QUERY_MAX_WINDOW 10000    /* from + size; deeper pages use `continue` */
#define AUD_QUERY_DEFAULT_SIZE 10
#define AUD_HISTOGRAM_MAX_BUCKETS 10000
#define AUD_QUERY_TOTAL_MAX 10000     /* query totals are exact up to here */

typedef enum { AUD_OP_QUERY = 0, AUD_OP_STATISTICS, AUD_OP_HISTOGRAM } aud_op;

/* Exact-match filters: *_filter parameters. */
typedef enum {
    AUD_F_WORKSPACE = 0, AUD_F_NAMESPACE, AUD_F_NAME, AUD_F_LEVEL, AUD_F_VERB, AUD_F_USER,
    AUD_F_RESOURCE, AUD_F_SUBRESOURCE, AUD_F_CODE, AUD_F_STATUS, AUD_F_COUNT
} aud_filter_field;

/* Substring searches (case-insensitive): *_search parameters. */
typedef enum {
    AUD_S_WORKSPACE = 0, AUD_S_NAMESPACE, AUD_S_NAME, AUD_S_USER, AUD_S_GROUP, AUD_S_SOURCE_IP,
    AUD_S_COUNT
} aud_search_field;

typedef struct {
    const char *v[AUD_QUERY_MAX_VALUES];   /* point into aud_query.buf */
    size_t n;
} aud_list;

typedef struct {
    aud_op op;
    aud_list filter[AUD_F_COUNT];
    aud_list search[AUD_S_COUNT];
    int64_t codes[AUD_QUERY_MAX_VALUES];   /* response_code_filter, parsed */
    int has_start, has_end;
    int64_t start_us;                      /* ts >= start_us */
    int64_t end_us;                        /* ts < end_us (end_time's whole second) */
    int64_t interval_n;                    /* histogram: interval_n units ... */
    char interval_unit;                    /* ... of s m h d w M q y */
    int64_t from, size;
    int asc;
    int has_cont;                          /* a `continue` token was given */
    int64_t cont_ts, cont_seq;
    char *buf;                             /* owned storage of the values */
    size_t buflen, bufcap;
} aud_query;

/* Parse a raw query string (undecoded; NULL = empty). On failure returns
 * KS_ERR_INVALID with a message naming the parameter in err (answer 400),
 * or KS_ERR_NOMEM; *out is set only on success (release: aud_query_clear).
 * Unknown parameters are ignored (as KubeSphere does); a repeated one: the
 * first counts. */
ks_status aud_query_parse(const char *raw_query, aud_query *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

void aud_query_clear(aud_query *q);

/* Who may see what. all: everything. Otherwise an event is visible when its
 * namespace is in ns (and it happened at or after that entry's since_us),
 * or its workspace is in ws (likewise); events with neither a namespace nor
 * a workspace only with all. */
typedef struct {
    const char *name;
    int64_t since_us;       /* creation of the namespace or workspace; 0 = any time */
} aud_scope_entry;

typedef struct {
    int all;
    const aud_scope_entry *ns;
    size_t nns;
    const aud_scope_entry *ws;
    size_t nws;
} aud_visibility;

/* Run q on db (a reader connection) within one read transaction, limited
 * to vis, giving up at deadline_ms (CLOCK_MONOTONIC milliseconds; 0 = none).
 * On success *out is the answer object (caller owns it). KS_ERR_INVALID
 * with err for a request the data makes impossible (a histogram of too many
 * buckets, a `continue` token of another query): answer 400; KS_ERR_TIMEOUT
 * at the deadline; KS_ERR_IO, KS_ERR_NOMEM. */
ks_status aud_query_run(sqlite3 *db, const aud_query *q, const aud_visibility *vis,
                        int64_t deadline_ms, json_t **out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* CLOCK_MONOTONIC in milliseconds (the clock of deadline_ms). */
int64_t aud_monotonic_ms(void);

#endif
