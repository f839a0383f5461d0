/* audit_redact.h: secrets never reach an audit event.
 *
 * Every body and URI the gateway puts into an AuditEvent passes through here,
 * at every level. Redacted values become the string "[REDACTED]".
 *   - JSON: at any depth, the value of every object key whose name, compared
 *     case-insensitively with '-', '_' and '.' ignored, contains one of
 *     "password", "passwd", "token", "secret", "hash", "credential",
 *     "privatekey", "apikey" or "authorization"; in an object whose "kind" is
 *     "Secret", the value of every key of its "data" and "stringData" (the
 *     keys stay), and the same in every item of a "SecretList"; the "value"
 *     of a JSON Patch operation whose "path" names a secret key as above
 *     ("/spec/password"); and anywhere, any string value that contains a
 *     crypt hash ("$2a$", "$2b$", "$2y$", "$5$", "$6$", "$y$" followed by a
 *     character of the crypt alphabet), a JWT (three base64url parts joined
 *     by '.', the first starting "eyJ" at the start of a base64url run, the
 *     last possibly empty) or a PEM private key ("-----BEGIN" and
 *     "PRIVATE KEY-----"): the whole string goes. A string that is itself a
 *     JSON object or array (kubectl's last-applied-configuration annotation)
 *     is redacted the same way and re-serialized (compact) when that changed
 *     it. An object key that itself looks like such a value is removed and
 *     a "[REDACTED]" key added.
 *   - application/x-www-form-urlencoded: the value of every field whose
 *     percent-decoded name matches as above (the OAuth token endpoint's
 *     password, refresh_token, client_secret), or of any ';'-separated part
 *     of it, and of every field whose decoded value looks like a secret
 *     value; a name that looks like a secret value, or that names a secret
 *     and holds more than letters, digits and "-_.~[]", is replaced too. The
 *     replacement is "%5BREDACTED%5D"; every other field is kept byte for
 *     byte.
 *   - the query of a request URI: the same per parameter (a bad percent
 *     escape is read literally there, never refused).
 * A body that is neither valid JSON nor form-encoded (as told by its content
 * type and content) is not recorded at all: it could hold anything. JSON is
 * a content type of application/json or any "+json" type, or no content
 * type, and a body that parses as a JSON object or array (a scalar body is
 * not recorded); a form is application/x-www-form-urlencoded made only of
 * printable ASCII (plus tab, CR, LF) with valid percent escapes. JSON nested
 * deeper than GW_REDACT_MAX_DEPTH objects and arrays is not recorded either.
 *
 * What this cannot see: the resource a body belongs to. A patch of a Secret
 * carries no "kind" ({"data": {...}}, or JSON Patch on "/data/..."), so the
 * caller must not record request bodies of requests on secrets.
 *
 * All functions are thread-safe (no shared state). */
#ifndef GW_AUDIT_REDACT_H
#define GW_AUDIT_REDACT_H

#include <jansson.h>
#include <stddef.h>

#include "status.h"

/* Objects and arrays nested deeper than this are not walked: a body with one
 * is not recorded; gw_redact_json replaces it with "[REDACTED]". */
#define GW_REDACT_MAX_DEPTH 64

/* Whether an object key or form field name names a secret (rules above). */
int gw_redact_key_is_secret(const char *key, size_t len);

/* Whether a string value contains a crypt hash, a JWT or a PEM private key.
 * Linear in len. */
int gw_redact_value_is_secret(const char *v, size_t len);

/* Redact a JSON value in place (any type; NULL is a no-op). Containers nested
 * deeper than GW_REDACT_MAX_DEPTH are replaced with "[REDACTED]". Out of
 * memory, a secret string at the root (and only there) can stay as it was;
 * a value replaced inside a container never depends on an allocation. */
void gw_redact_json(json_t *v);

/* Redact a body for the audit record. content_type may be NULL. *out is a
 * malloc'd, NUL-terminated copy with secrets replaced (compact JSON for a JSON
 * body, the form with secret values replaced for a form), *out_len its length;
 * *out is NULL and KS_OK returned when the body is empty or cannot be
 * recorded (neither JSON nor a form, or nested too deep). KS_ERR_NOMEM only
 * (then *out is NULL too). A body longer than max bytes (0 = no cap), or
 * whose redacted copy would be (a "[REDACTED]" can be longer than what it
 * replaces), is not recorded either (*out NULL), with *truncated set to 1;
 * *truncated is 0 otherwise. out_len and truncated may be NULL. */
ks_status gw_redact_body(const char *content_type, const char *body, size_t len, size_t max,
                         char **out, size_t *out_len, int *truncated)
    __attribute__((warn_unused_result));

/* Redact the query part of a request URI ("/path?a=1&access_token=x" ->
 * "/path?a=1&access_token=%5BREDACTED%5D"); the path and every other
 * parameter are kept byte for byte. The result is malloc'd; NULL on OOM.
 * uri NULL is read as "". */
char *gw_redact_uri(const char *uri);

#endif
