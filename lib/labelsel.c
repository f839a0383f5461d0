/* labelsel.c: LabelSelector evaluation. See labelsel.h. */
#include "labelsel.h"

#include <string.h>

static const char *label_value(const json_t *labels, const char *key)
{
    if (!json_is_object(labels))
        return NULL;
    return json_string_value(json_object_get(labels, key));
}

static bool in_values(const json_t *values, const char *v)
{
    for (size_t i = 0; i < json_array_size(values); i++)
        if (strcmp(json_string_value(json_array_get(values, i)), v) == 0)
            return true;
    return false;
}

/* One requirement of matchExpressions (index i, for messages). The whole
 * selector is validated even after a requirement fails, so a malformed
 * selector is an error whatever the labels. */
static ks_status expr_eval(const json_t *e, size_t i, const json_t *labels, bool *ok)
{
    const char *key, *op, *v;
    const json_t *values;
    size_t nv = 0;

    if (!json_is_object(e))
        return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu] is not an object", i);
    key = json_string_value(json_object_get(e, "key"));
    op = json_string_value(json_object_get(e, "operator"));
    if (key == NULL || key[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu] has no key", i);
    if (op == NULL)
        return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu] has no operator", i);
    values = json_object_get(e, "values");
    if (values != NULL && !json_is_null(values)) {
        if (!json_is_array(values))
            return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu].values is not an array", i);
        nv = json_array_size(values);
        for (size_t k = 0; k < nv; k++)
            if (!json_is_string(json_array_get(values, k)))
                return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu].values[%zu] is not a string",
                               i, k);
    }
    v = label_value(labels, key);
    if (strcmp(op, "In") == 0 || strcmp(op, "NotIn") == 0) {
        if (nv == 0)
            return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu]: %s needs values", i, op);
        *ok = (v != NULL && in_values(values, v)) == (op[0] == 'I');
    } else if (strcmp(op, "Exists") == 0 || strcmp(op, "DoesNotExist") == 0) {
        if (nv != 0)
            return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu]: %s takes no values", i, op);
        *ok = (v != NULL) == (op[0] == 'E');
    } else {
        return KS_FAIL(KS_ERR_INVALID, "matchExpressions[%zu]: unknown operator \"%.40s\"", i, op);
    }
    return KS_OK;
}

ks_status ks_labelsel_match(const json_t *selector, const json_t *labels, bool *match)
{
    const json_t *ml, *me, *val;
    const char *key;
    bool all = true;
    ks_status st;

    if (selector == NULL || json_is_null(selector)) {
        *match = false;
        return KS_OK;
    }
    if (!json_is_object(selector))
        return KS_FAIL(KS_ERR_INVALID, "the selector is not an object");
    ml = json_object_get(selector, "matchLabels");
    if (ml != NULL && !json_is_null(ml)) {
        if (!json_is_object(ml))
            return KS_FAIL(KS_ERR_INVALID, "matchLabels is not an object");
        json_object_foreach((json_t *)ml, key, val) {
            const char *want = json_string_value(val), *have;
            if (want == NULL)
                return KS_FAIL(KS_ERR_INVALID, "matchLabels[%.100s] is not a string", key);
            have = label_value(labels, key);
            if (have == NULL || strcmp(have, want) != 0)
                all = false;
        }
    }
    me = json_object_get(selector, "matchExpressions");
    if (me != NULL && !json_is_null(me)) {
        if (!json_is_array(me))
            return KS_FAIL(KS_ERR_INVALID, "matchExpressions is not an array");
        for (size_t i = 0; i < json_array_size(me); i++) {
            bool ok = false;
            if ((st = expr_eval(json_array_get(me, i), i, labels, &ok)) != KS_OK)
                return st;
            if (!ok)
                all = false;
        }
    }
    *match = all;
    return KS_OK;
}
