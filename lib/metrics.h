/* metrics.h: one process-wide registry of Prometheus metrics.
 *
 * Registration (ks_metrics_counter/gauge/histogram) takes a mutex and is meant
 * for start-up or for a handle that the caller then keeps; updates through a
 * handle are lock-free (C11 atomics) and safe from any thread. Handles live
 * until ks_metrics_reset(), which only tests call. docs/metrics.md lists the
 * families the services export.
 *
 * Invalid input (a bad name or label body, a name registered before with
 * another type, more than KS_METRICS_MAX_SERIES series) is a programming
 * error: it is logged once and the call returns a detached "sink" handle whose
 * updates go nowhere, so callers never need a NULL check. */
#ifndef KS_METRICS_H
#define KS_METRICS_H

#include <stddef.h>

#include "status.h"

typedef struct ks_metric ks_metric;

#define KS_METRICS_MAX_SERIES 10000 /* series (name + labels) in the registry */
#define KS_METRICS_LABELS_MAX 1024  /* bytes of one label body */
#define KS_METRICS_MAX_BOUNDS 64    /* histogram buckets, +Inf not counted */

/* Register or look up (same name + labels -> same handle). labels: NULL, ""
 * or a Prometheus label body like `kind="slow_consumer",op="put"`: names
 * [a-zA-Z_][a-zA-Z0-9_]* (not starting with "__"), values in double quotes
 * with \\, \" and \n escaped (ks_metrics_label_append builds one). The body is
 * stored sorted by label name, so `a="1",b="2"` and `b="2",a="1"` are the same
 * series. help is copied from the first registration of the name; may be
 * NULL. Names must match [a-zA-Z_:][a-zA-Z0-9_:]*. Never returns NULL except
 * on OOM (and in practice not even then: OOM also yields a sink). */
ks_metric *ks_metrics_counter(const char *name, const char *help, const char *labels);
ks_metric *ks_metrics_gauge(const char *name, const char *help, const char *labels);

/* A histogram with upper bounds bounds[0..nbounds-1] (finite, strictly
 * increasing; a trailing +Inf is dropped, it is always implied). bounds NULL
 * selects the Prometheus defaults .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10
 * (seconds). All series of one name share the bounds of its first
 * registration; later bounds are ignored. The label "le" is reserved. */
ks_metric *ks_metrics_histogram(const char *name, const char *help, const char *labels,
                                const double *bounds, size_t nbounds);

/* Updates. m NULL is a no-op; an update that does not fit the type (set on a
 * counter, observe on a gauge, a negative or NaN counter add, a NaN
 * observation) is ignored. */
void ks_metric_inc(ks_metric *m);               /* counter/gauge +1 */
void ks_metric_dec(ks_metric *m);               /* gauge -1 */
void ks_metric_add(ks_metric *m, double v);     /* counter (v >= 0) or gauge */
void ks_metric_set(ks_metric *m, double v);     /* gauge */
void ks_metric_observe(ks_metric *m, double v); /* histogram */

/* Counter/gauge value, histogram count; for tests. 0 for NULL. */
double ks_metric_value(const ks_metric *m);
/* Histogram sum of observations (0 for other types and NULL); for tests. */
double ks_metric_sum(const ks_metric *m);

/* Render all metrics in Prometheus text format 0.0.4: families in
 * registration order, "# HELP" and "# TYPE" once per name, then its series in
 * registration order; histograms as name_bucket{...,le="..."} (cumulative,
 * ending with le="+Inf"), name_sum and name_count. Returns a NUL-terminated
 * malloc'd string the caller frees, and its length in *len (len may be NULL).
 * NULL on OOM. */
char *ks_metrics_render(size_t *len);

/* Drop everything (tests only): every handle handed out becomes invalid. Not
 * safe while other threads update or register. */
void ks_metrics_reset(void);

/* Append `name="value"` (with a leading ',' when out is not empty) to the
 * NUL-terminated label body in out (cap outcap), escaping value for the text
 * format (\\, \", \n) and replacing invalid UTF-8 and other control bytes by
 * '?'. Returns KS_OK; KS_ERR_INVALID for a bad label name; KS_ERR_TOO_LARGE if
 * it does not fit (out is then unchanged). */
ks_status ks_metrics_label_append(char *out, size_t outcap, const char *name, const char *value);

#endif
