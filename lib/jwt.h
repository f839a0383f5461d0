/* jwt.h: HS256 JSON Web Tokens (RFC 7519 / RFC 7515) for kscore's access and
 * refresh tokens. docs/tokens.md describes the claims and the rules.
 *
 * Only HMAC-SHA256 exists here. A token is three base64url segments without
 * padding, "header.payload.signature"; ks_jwt_sign always writes the header
 * {"alg":"HS256","typ":"JWT"}. ks_jwt_verify accepts a token only if all of
 * these hold, checked in this order, each failure with its own reason:
 *   - at most KS_JWT_MAX_TOKEN bytes, exactly three segments, header and
 *     payload not empty, each segment canonical unpadded base64url (the
 *     payload's is decoded after the signature check);
 *   - the header is a JSON object without duplicate members whose "alg" is
 *     the string "HS256" ("none" in any case, every other algorithm and a
 *     missing or non-string alg are refused: no algorithm confusion), whose
 *     "typ", if present, is "JWT", and which has no "crit";
 *   - the signature is HMAC-SHA256(key, header "." payload), compared in
 *     constant time (CRYPTO_memcmp). The payload is only parsed after this;
 *   - the payload is strict JSON (RFC 8259, valid UTF-8, no "\u0000"): an
 *     object holding iss, sub, username, jti (non-empty strings), token_type
 *     ("access_token" or "refresh_token"), iat and exp (integers, 0 < iat <
 *     exp <= KS_JWT_MAX_TIME), optionally nbf (a positive integer) and groups
 *     (an array of at most KS_JWT_MAX_GROUPS strings), none of them twice;
 *   - exp > now - skew, nbf <= now + skew, iat <= now + skew.
 * Unknown header members and claims are ignored. The header, when it is not
 * byte for byte the one ks_jwt_sign writes, is parsed by jansson; the
 * payload by a small reader in jwt.c that allocates nothing (the claims get
 * one block), which keeps a whole verify near 1.5 us. Verification does not look
 * at revocation, the issuer's value or the token type's fitness for the use:
 * the caller checks those on the claims (an API request needs
 * token_type "access_token"; the jti and iat go to the revocation set).
 *
 * Keys: HS256 needs a secret of at least 32 bytes (RFC 7518 §3.2). A service
 * keeps one ks_jwt_key for its life: it holds the keyed HMAC state, so a
 * verify costs one HMAC over the token instead of a key setup each time. The
 * ks_jwt_sign/ks_jwt_verify forms that take the raw secret build a
 * temporary key per call (about 2 µs more); they are for tools and tests.
 *
 * Thread safety: a ks_jwt_key is safe to use from any number of threads at
 * once; claims structs are not shared. A verify uses about 13 KiB of stack. */
#ifndef KS_JWT_H
#define KS_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KS_JWT_MAX_TOKEN 8192    /* bytes of an encoded token, sign and verify */
#define KS_JWT_MAX_GROUPS 256    /* entries of the groups claim */
#define KS_JWT_MIN_SECRET 32     /* bytes */
#define KS_JWT_MAX_SECRET 4096   /* bytes */
#define KS_JWT_DEFAULT_SKEW_S 10 /* seconds of clock skew tolerated */
#define KS_JWT_MAX_SKEW_S 3600
#define KS_JWT_MAX_TIME 253402300799LL /* 9999-12-31T23:59:59Z: bound for iat/exp/nbf */
#define KS_JWT_JTI_LEN 22              /* 128 random bits in base64url */
#define KS_JWT_JTI_SIZE (KS_JWT_JTI_LEN + 1)

#define KS_JWT_ACCESS_TOKEN "access_token"
#define KS_JWT_REFRESH_TOKEN "refresh_token"

/* Why a token was refused. Stable: the names (ks_jwt_reason_name) are used as
 * metric label values and in logs. */
typedef enum {
    KS_JWT_OK = 0,
    KS_JWT_ERR_TOO_LARGE,         /* over KS_JWT_MAX_TOKEN bytes */
    KS_JWT_ERR_MALFORMED,         /* not three dot-separated segments, or an empty header/payload */
    KS_JWT_ERR_BASE64,            /* a segment is not canonical unpadded base64url */
    KS_JWT_ERR_HEADER_JSON,       /* the header is not a JSON object */
    KS_JWT_ERR_HEADER_DUPLICATE,  /* the header repeats a member (two "alg") */
    KS_JWT_ERR_ALG_MISSING,       /* no "alg" */
    KS_JWT_ERR_ALG_NOT_STRING,    /* "alg" is not a string */
    KS_JWT_ERR_ALG_NONE,          /* "alg":"none" (any case), signed or not */
    KS_JWT_ERR_ALG_UNSUPPORTED,   /* any alg but HS256 (HS384, RS256, ...) */
    KS_JWT_ERR_HEADER_UNSUPPORTED,/* "typ" other than JWT, or a "crit" member */
    KS_JWT_ERR_SIGNATURE,         /* the signature is missing, of the wrong size or wrong */
    KS_JWT_ERR_PAYLOAD_JSON,      /* the payload is not a JSON object, or repeats a member */
    KS_JWT_ERR_CLAIM_MISSING,     /* a required claim is absent */
    KS_JWT_ERR_CLAIM_INVALID,     /* a claim has the wrong type or value */
    KS_JWT_ERR_EXPIRED,           /* exp <= now - skew */
    KS_JWT_ERR_NOT_YET_VALID,     /* nbf > now + skew */
    KS_JWT_ERR_ISSUED_IN_FUTURE,  /* iat > now + skew */
    KS_JWT_ERR_INTERNAL,          /* not the token's fault: out of memory, a libcrypto failure */
    KS_JWT_REASON_COUNT
} ks_jwt_reason;

/* Stable snake_case name of a reason ("alg_none", "expired", ...); never NULL. */
const char *ks_jwt_reason_name(ks_jwt_reason r);

/* The claims kscore puts in its tokens.
 *
 * For ks_jwt_sign the caller fills the fields with its own strings (they are
 * only read). ks_jwt_verify fills a claims struct with strings that live in
 * one block owned by the struct; ks_jwt_claims_clear frees that block and
 * zeroes the struct. Calling clear on a caller-filled struct only zeroes it,
 * so a claims variable can always be cleared. */
typedef struct {
    const char *iss;        /* issuer, e.g. "kubesphere" */
    const char *sub;        /* subject: the user name */
    const char *username;   /* the user name (KubeSphere's claim) */
    const char *token_type; /* KS_JWT_ACCESS_TOKEN or KS_JWT_REFRESH_TOKEN */
    const char *jti;        /* token id, unique: ks_jwt_new_jti */
    const char **groups;    /* ngroups group names; NULL when ngroups is 0 */
    size_t ngroups;
    int64_t iat;            /* issued at, Unix seconds */
    int64_t exp;            /* expires at, Unix seconds */
    int64_t nbf;            /* not before, Unix seconds; 0 means absent */
    void *owned_;           /* storage of a verified token's strings; private */
} ks_jwt_claims;

/* Free what verify stored in c (if anything) and zero c. c NULL: no-op. */
void ks_jwt_claims_clear(ks_jwt_claims *c);

/* 1 if the claims are of an access token / a refresh token. */
int ks_jwt_claims_is_access(const ks_jwt_claims *c);
int ks_jwt_claims_is_refresh(const ks_jwt_claims *c);

typedef struct ks_jwt_key ks_jwt_key;

/* Make a key from secret[0..len) (copied; the copy is wiped on destroy).
 * KS_ERR_INVALID if len is outside [KS_JWT_MIN_SECRET, KS_JWT_MAX_SECRET],
 * KS_ERR_INTERNAL if libcrypto has no HMAC-SHA256, KS_ERR_NOMEM. *out is
 * set only on success. */
ks_status ks_jwt_key_create(const void *secret, size_t len, ks_jwt_key **out)
    __attribute__((warn_unused_result));

/* Free a key; NULL is a no-op. No other thread may be using it. */
void ks_jwt_key_destroy(ks_jwt_key *key);

/* Encode and sign claims. Required: iss, sub, username, jti non-empty,
 * token_type one of the two known values, 0 < iat < exp <= KS_JWT_MAX_TIME,
 * nbf 0 or in (0, KS_JWT_MAX_TIME], groups[0..ngroups) non-NULL strings with
 * ngroups <= KS_JWT_MAX_GROUPS; every string valid UTF-8. On success *token_out
 * is a malloc'd NUL-terminated token the caller frees. KS_ERR_INVALID for bad
 * claims, KS_ERR_TOO_LARGE if the token would exceed KS_JWT_MAX_TOKEN (so
 * every token issued also verifies), KS_ERR_NOMEM, KS_ERR_INTERNAL. */
ks_status ks_jwt_sign_key(const ks_jwt_key *key, const ks_jwt_claims *claims, char **token_out)
    __attribute__((warn_unused_result));

/* Verify token[0..token_len) as described at the top of this file, at time
 * now (Unix seconds) with skew_s seconds of tolerance (0..KS_JWT_MAX_SKEW_S;
 * use KS_JWT_DEFAULT_SKEW_S).
 * Returns KS_OK and fills *claims_out (clear it after use; claims_out may be
 * NULL to check only); KS_ERR_DENIED when the token is refused, with the
 * reason in *reason_out; KS_ERR_INVALID for bad arguments; KS_ERR_NOMEM or
 * KS_ERR_INTERNAL when the check itself failed (reason KS_JWT_ERR_INTERNAL).
 * reason_out may be NULL; when given it is always written (KS_JWT_OK on
 * success). claims_out is written only on success. The message of
 * ks_status_last() names the reason; it never contains the token. */
ks_status ks_jwt_verify_key(const ks_jwt_key *key, const char *token, size_t token_len,
                            int64_t now, int skew_s, ks_jwt_claims *claims_out,
                            ks_jwt_reason *reason_out) __attribute__((warn_unused_result));

/* Check only the form, the header and the signature of a token, not its
 * claims or times (for test vectors such as RFC 7515 A.1, and for tools).
 * Never use this alone to authenticate a request. Same returns as
 * ks_jwt_verify_key. */
ks_status ks_jwt_verify_signature(const ks_jwt_key *key, const char *token, size_t token_len,
                                  ks_jwt_reason *reason_out) __attribute__((warn_unused_result));

/* The same as ks_jwt_sign_key / ks_jwt_verify_key with a raw secret; a
 * secret that ks_jwt_key_create refuses gives KS_ERR_INVALID. */
ks_status ks_jwt_sign(const void *secret, size_t secret_len, const ks_jwt_claims *claims,
                      char **token_out) __attribute__((warn_unused_result));
ks_status ks_jwt_verify(const void *secret, size_t secret_len, const char *token,
                        size_t token_len, int64_t now, int skew_s, ks_jwt_claims *claims_out,
                        ks_jwt_reason *reason_out) __attribute__((warn_unused_result));

/* Write a new token id: 128 bits from OpenSSL's CSPRNG as 22 characters of
 * base64url, NUL-terminated. KS_ERR_INTERNAL if the generator fails (out is
 * then unchanged). */
ks_status ks_jwt_new_jti(char out[KS_JWT_JTI_SIZE]) __attribute__((warn_unused_result));

/* base64url without padding, exposed for the tests and for other users of
 * the format. encode: writes 4*ceil(len/3) minus padding characters and a NUL
 * to out (cap outcap); returns the length, or 0 when out is too small (then
 * out[0] is NUL if outcap > 0). decode: strict (alphabet A-Z a-z 0-9 - _, no
 * padding, no whitespace, a length that is not 1 mod 4, unused trailing bits
 * zero); writes the bytes to out (cap outcap) and their count to *outlen;
 * KS_ERR_INVALID for bad input, KS_ERR_TOO_LARGE when out is too small. */
size_t ks_jwt_b64url_encode(const void *in, size_t len, char *out, size_t outcap);
ks_status ks_jwt_b64url_decode(const char *in, size_t len, void *out, size_t outcap,
                               size_t *outlen) __attribute__((warn_unused_result));

#endif
