/* labelsel.h: a Kubernetes LabelSelector in its object form
 * (metav1.LabelSelector: matchLabels and matchExpressions, ANDed), as the
 * roleSelector of aggregationRoleTemplates and the WorkspaceTemplate
 * clusterSelector carry it, evaluated against an object's labels.
 *
 * Semantics are apimachinery's LabelSelectorAsSelector:
 *   - a NULL or JSON null selector selects nothing; an empty object selects
 *     everything;
 *   - matchLabels {k: v}: the label k exists and equals v;
 *   - In: k exists and its value is one of values; NotIn: k is absent or its
 *     value is none of values (both need at least one value);
 *   - Exists: k exists; DoesNotExist: k is absent (both take no values).
 * Pure functions; thread-safe. */
#ifndef KS_LABELSEL_H
#define KS_LABELSEL_H

#include <jansson.h>
#include <stdbool.h>

#include "status.h"

/* Evaluate selector against labels (an object of strings; NULL, null or a
 * non-object is no labels; a non-string value counts as absent). KS_OK and
 * *match; KS_ERR_INVALID (raised, saying what is wrong) for a malformed
 * selector: not an object, matchLabels not an object of strings,
 * matchExpressions not an array of {key, operator, values}, an unknown
 * operator, values missing for In/NotIn or present for Exists/DoesNotExist.
 * *match is set only on KS_OK. */
ks_status ks_labelsel_match(const json_t *selector, const json_t *labels, bool *match)
    __attribute__((warn_unused_result));

#endif
