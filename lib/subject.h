/* subject.h: reversible escaping of tokens inside NATS subjects and KV keys.
 *
 * The one place these rules live (docs/subjects.md has examples):
 *   token:  ""                      -> "_"
 *           a byte in [A-Za-z0-9-]  -> itself
 *           any other byte          -> "=XX" (two upper-case hex digits)
 *   group:  an API group: "" (core) -> "_", each "." -> "_", other bytes as
 *           for a token; a lone "." (not an API group) -> "=2E". API groups
 *           are DNS subdomains, so "_" never occurs in one and the mapping is
 *           reversible.
 * So "_" alone always means empty, "=5F" is a literal underscore, and "." (the
 * NATS token separator), "*", ">" and spaces never appear inside a token.
 * Unescaping accepts only what escaping produces (upper-case hex, no escape
 * of a byte that stands for itself), so every token has exactly one form.
 *
 * All functions write a NUL-terminated string into out and return
 * KS_ERR_TOO_LARGE when cap is too small (out is then unspecified) or
 * KS_ERR_INVALID for input that no escaping could have produced. */
#ifndef KS_SUBJECT_H
#define KS_SUBJECT_H

#include <stddef.h>

#include "status.h"

/* The largest escaped form of n input bytes, plus the NUL. */
#define KS_SUBJECT_ESCAPED_MAX(n) ((n) * 3 + 2)

ks_status ks_subject_escape_token(const char *in, char *out, size_t cap);
ks_status ks_subject_unescape_token(const char *in, char *out, size_t cap);
ks_status ks_subject_escape_group(const char *group, char *out, size_t cap);
ks_status ks_subject_unescape_group(const char *in, char *out, size_t cap);

/* "ks.api.<group>.<version>" */
ks_status ks_subject_api(const char *group, const char *version, char *out, size_t cap);

/* "ks.audit.<workspace>.<namespace>.<resource>.<verb>" (each a token) */
ks_status ks_subject_audit(const char *workspace, const char *ns, const char *resource,
                           const char *verb, char *out, size_t cap);

/* Mirror key "<group>.<resource>.<namespace or _>.<name>" */
ks_status ks_subject_object_key(const char *group, const char *resource, const char *ns,
                                const char *name, char *out, size_t cap);

/* Split a mirror key back into its parts (each buffer of cap bytes). */
ks_status ks_subject_object_key_parse(const char *key, char *group, char *resource, char *ns,
                                      char *name, size_t cap);

#endif
