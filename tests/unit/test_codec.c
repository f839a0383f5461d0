/* Unit tests: lib/codec.c (protobuf-c pack/unpack with size caps) against
 * the generated messages of proto/kscore/v1 (docs/wire-format.md). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "kscore/v1/api.pb-c.h"
#include "kscore/v1/audit.pb-c.h"
#include "kscore/v1/common.pb-c.h"
#include "kscore/v1/iam.pb-c.h"
#include "kscore/v1/mirror.pb-c.h"

/* Pack msg, unpack it as desc, check the sizes, return the copy. */
static ProtobufCMessage *round_trip(const ProtobufCMessage *msg, size_t *packed_len)
{
    ProtobufCMessage *back = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;

    assert_int_equal(ks_codec_pack(msg, &buf, &len), KS_OK);
    assert_non_null(buf);
    assert_int_equal(len, protobuf_c_message_get_packed_size(msg));
    assert_int_equal(ks_codec_unpack(msg->descriptor, buf, len, KS_CODEC_MAX_MESSAGE, &back), KS_OK);
    assert_non_null(back);
    assert_ptr_equal(back->descriptor, msg->descriptor);
    /* re-packing the copy gives the same bytes */
    {
        uint8_t *again = NULL;
        size_t again_len = 0;
        assert_int_equal(ks_codec_pack(back, &again, &again_len), KS_OK);
        assert_int_equal(again_len, len);
        assert_memory_equal(again, buf, len);
        free(again);
    }
    free(buf);
    if (packed_len)
        *packed_len = len;
    return back;
}

static void test_audit_event_round_trip(void **state)
{
    Kscore__V1__AuditEvent ev = KSCORE__V1__AUDIT_EVENT__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__UserInfo__ExtraEntry extra = KSCORE__V1__USER_INFO__EXTRA_ENTRY__INIT;
    Kscore__V1__UserInfo__ExtraEntry *extras[] = {&extra};
    Kscore__V1__ObjectReference ref = KSCORE__V1__OBJECT_REFERENCE__INIT;
    Kscore__V1__Status status = KSCORE__V1__STATUS__INIT;
    Kscore__V1__AuditEvent__AnnotationsEntry ann[2] = {
        KSCORE__V1__AUDIT_EVENT__ANNOTATIONS_ENTRY__INIT,
        KSCORE__V1__AUDIT_EVENT__ANNOTATIONS_ENTRY__INIT};
    Kscore__V1__AuditEvent__AnnotationsEntry *anns[] = {&ann[0], &ann[1]};
    char *groups[] = {"system:authenticated", "platform-admins"};
    char *ips[] = {"10.0.0.1", "::1"};
    static const uint8_t req_obj[] = "{\"kind\":\"User\",\"spec\":{\"password\":\"[redacted]\"}}\0tail";
    Kscore__V1__AuditEvent *back;

    (void)state;
    user.username = "admin";
    user.uid = "5b1e2c3d";
    user.n_groups = 2;
    user.groups = groups;
    extra.key = "scopes";
    extra.value = "full";
    user.n_extra = 1;
    user.extra = extras;
    ref.resource = "users";
    ref.name = "alice";
    ref.api_group = "iam.kubesphere.io";
    ref.api_version = "v1beta1";
    status.code = 201;
    status.status = "Success";
    ann[0].key = "authorization.k8s.io/decision";
    ann[0].value = "allow";
    ann[1].key = "authorization.k8s.io/reason";
    ann[1].value = "GlobalRoleBinding admin";

    ev.audit_id = "0190b3c2-7f1a-7000-8000-000000000001";
    ev.level = "RequestResponse";
    ev.stage = "ResponseComplete";
    ev.request_uri = "/kapis/iam.kubesphere.io/v1beta1/users";
    ev.verb = "create";
    ev.user = &user;
    ev.n_source_ips = 2;
    ev.source_ips = ips;
    ev.user_agent = "kubectl/v1.30";
    ev.object_ref = &ref;
    ev.response_status = &status;
    ev.request_received_unix_us = 1764255600123456;
    ev.stage_unix_us = -1; /* negative int64 survives */
    ev.workspace = "system-workspace";
    ev.cluster = "host";
    ev.request_object.data = (uint8_t *)req_obj;
    ev.request_object.len = sizeof(req_obj); /* includes a NUL and bytes after it */
    ev.n_annotations = 2;
    ev.annotations = anns;

    back = (Kscore__V1__AuditEvent *)round_trip(&ev.base, NULL);
    assert_string_equal(back->audit_id, ev.audit_id);
    assert_string_equal(back->level, "RequestResponse");
    assert_string_equal(back->verb, "create");
    assert_string_equal(back->request_uri, ev.request_uri);
    assert_non_null(back->user);
    assert_string_equal(back->user->username, "admin");
    assert_int_equal(back->user->n_groups, 2);
    assert_string_equal(back->user->groups[1], "platform-admins");
    assert_int_equal(back->user->n_extra, 1);
    assert_string_equal(back->user->extra[0]->key, "scopes");
    assert_null(back->impersonated_user); /* unset message stays unset */
    assert_int_equal(back->n_source_ips, 2);
    assert_string_equal(back->source_ips[1], "::1");
    assert_string_equal(back->object_ref->api_group, "iam.kubesphere.io");
    assert_string_equal(back->object_ref->namespace_, ""); /* proto3 default */
    assert_int_equal(back->response_status->code, 201);
    assert_int_equal(back->request_received_unix_us, ev.request_received_unix_us);
    assert_int_equal(back->stage_unix_us, -1);
    assert_int_equal(back->request_object.len, sizeof(req_obj));
    assert_memory_equal(back->request_object.data, req_obj, sizeof(req_obj));
    assert_int_equal(back->response_object.len, 0);
    assert_int_equal(back->n_annotations, 2);
    assert_string_equal(back->annotations[1]->value, "GlobalRoleBinding admin");
    ks_codec_free(&back->base);
}

static void test_api_messages_round_trip(void **state)
{
    Kscore__V1__ApiRequest req = KSCORE__V1__API_REQUEST__INIT;
    Kscore__V1__ApiResponse resp = KSCORE__V1__API_RESPONSE__INIT;
    Kscore__V1__RequestInfo info = KSCORE__V1__REQUEST_INFO__INIT;
    Kscore__V1__Header h1 = KSCORE__V1__HEADER__INIT, h2 = KSCORE__V1__HEADER__INIT;
    Kscore__V1__Header *hs[] = {&h1, &h2};
    char *accept[] = {"application/json", "*/*"};
    char *ctype[] = {"application/json"};
    char *parts[] = {"workspaces", "ws-1", "users"};
    Kscore__V1__ApiRequest *rb;
    Kscore__V1__ApiResponse *pb;
    uint8_t body[300];

    (void)state;
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (uint8_t)i;
    h1.name = "Accept";
    h1.n_values = 2;
    h1.values = accept;
    h2.name = "Content-Type";
    h2.n_values = 1;
    h2.values = ctype;
    info.is_resource_request = 1;
    info.verb = "list";
    info.api_prefix = "kapis";
    info.api_group = "iam.kubesphere.io";
    info.api_version = "v1beta1";
    info.resource = "users";
    info.workspace = "ws-1";
    info.resource_scope = "Workspace";
    info.n_parts = 3;
    info.parts = parts;
    req.request_id = "req-1";
    req.method = "GET";
    req.path = "/kapis/iam.kubesphere.io/v1beta1/workspaces/ws-1/users";
    req.raw_query = "limit=10&name=a%20b";
    req.n_headers = 2;
    req.headers = hs;
    req.body.data = body;
    req.body.len = sizeof(body);
    req.info = &info;
    req.deadline_unix_ms = 1764255630000;

    rb = (Kscore__V1__ApiRequest *)round_trip(&req.base, NULL);
    assert_string_equal(rb->method, "GET");
    assert_string_equal(rb->raw_query, "limit=10&name=a%20b");
    assert_int_equal(rb->n_headers, 2);
    assert_int_equal(rb->headers[0]->n_values, 2);
    assert_string_equal(rb->headers[0]->values[1], "*/*");
    assert_memory_equal(rb->body.data, body, sizeof(body));
    assert_true(rb->info->is_resource_request);
    assert_false(rb->info->is_kube_request);
    assert_int_equal(rb->info->n_parts, 3);
    assert_string_equal(rb->info->resource_scope, "Workspace");
    assert_null(rb->user);
    assert_int_equal(rb->deadline_unix_ms, 1764255630000);
    ks_codec_free(&rb->base);

    resp.code = 404;
    resp.content_type = "application/json";
    resp.body.data = (uint8_t *)"{\"kind\":\"Status\"}";
    resp.body.len = 17;
    pb = (Kscore__V1__ApiResponse *)round_trip(&resp.base, NULL);
    assert_int_equal(pb->code, 404);
    assert_int_equal(pb->body.len, 17);
    assert_int_equal(pb->n_headers, 0);
    ks_codec_free(&pb->base);
}

static void test_iam_messages_round_trip(void **state)
{
    Kscore__V1__AuthnRequest an = KSCORE__V1__AUTHN_REQUEST__INIT;
    Kscore__V1__BasicCredentials basic = KSCORE__V1__BASIC_CREDENTIALS__INIT;
    Kscore__V1__AuthzResponse az = KSCORE__V1__AUTHZ_RESPONSE__INIT;
    Kscore__V1__TokenResponse tr = KSCORE__V1__TOKEN_RESPONSE__INIT;
    Kscore__V1__Revocation rv = KSCORE__V1__REVOCATION__INIT;
    Kscore__V1__AuthnRequest *anb;
    Kscore__V1__AuthzResponse *azb;
    Kscore__V1__TokenResponse *trb;
    Kscore__V1__Revocation *rvb;

    (void)state;
    /* oneof: token */
    an.credentials_case = KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_TOKEN;
    an.token = "eyJhbGciOiJIUzI1NiJ9.e30.sig";
    an.source_ip = "192.0.2.7";
    anb = (Kscore__V1__AuthnRequest *)round_trip(&an.base, NULL);
    assert_int_equal(anb->credentials_case, KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_TOKEN);
    assert_string_equal(anb->token, an.token);
    ks_codec_free(&anb->base);
    /* oneof: basic */
    basic.username = "admin";
    basic.password = "P@88w0rd";
    an.credentials_case = KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_BASIC;
    an.basic = &basic;
    anb = (Kscore__V1__AuthnRequest *)round_trip(&an.base, NULL);
    assert_int_equal(anb->credentials_case, KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_BASIC);
    assert_string_equal(anb->basic->password, "P@88w0rd");
    ks_codec_free(&anb->base);

    az.decision = KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY;
    az.reason = "no binding";
    az.cache_ttl_ms = 5000;
    azb = (Kscore__V1__AuthzResponse *)round_trip(&az.base, NULL);
    assert_int_equal(azb->decision, KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY);
    assert_int_equal(azb->cache_ttl_ms, 5000);
    ks_codec_free(&azb->base);

    tr.error = "invalid_grant";
    tr.http_code = 401;
    trb = (Kscore__V1__TokenResponse *)round_trip(&tr.base, NULL);
    assert_string_equal(trb->error, "invalid_grant");
    assert_string_equal(trb->access_token, "");
    assert_int_equal(trb->http_code, 401);
    ks_codec_free(&trb->base);

    rv.username = "alice";
    rv.issued_before_unix = 1764255600;
    rv.expires_unix = INT64_MAX;
    rvb = (Kscore__V1__Revocation *)round_trip(&rv.base, NULL);
    assert_string_equal(rvb->jti, "");
    assert_int_equal(rvb->expires_unix, INT64_MAX);
    ks_codec_free(&rvb->base);
}

static void test_object_event_round_trip(void **state)
{
    Kscore__V1__ObjectEvent oe = KSCORE__V1__OBJECT_EVENT__INIT;
    static const char json[] =
        "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"User\","
        "\"metadata\":{\"name\":\"admin\",\"resourceVersion\":\"1234\"}}";
    Kscore__V1__ObjectEvent *b;

    (void)state;
    oe.type = KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_MODIFIED;
    oe.resource = "iam.kubesphere.io/users";
    oe.name = "admin";
    oe.uid = "0b6b7c1e";
    oe.resource_version = "1234";
    oe.object.data = (uint8_t *)json;
    oe.object.len = sizeof(json) - 1;
    oe.observed_unix_ms = 1764255600123;
    b = (Kscore__V1__ObjectEvent *)round_trip(&oe.base, NULL);
    assert_int_equal(b->type, KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_MODIFIED);
    assert_string_equal(b->resource, "iam.kubesphere.io/users");
    assert_string_equal(b->namespace_, "");
    assert_int_equal(b->object.len, sizeof(json) - 1);
    assert_memory_equal(b->object.data, json, sizeof(json) - 1);
    ks_codec_free(&b->base);
}

/* An empty message packs to zero bytes (into a non-NULL buffer) and unpacks
 * to all defaults. */
static void test_empty_message(void **state)
{
    Kscore__V1__Status st = KSCORE__V1__STATUS__INIT;
    Kscore__V1__Status *back = NULL;
    uint8_t *buf = NULL;
    size_t len = 99;

    (void)state;
    assert_int_equal(ks_codec_pack(&st.base, &buf, &len), KS_OK);
    assert_non_null(buf);
    assert_int_equal(len, 0);
    assert_int_equal(KS_UNPACK(kscore__v1__status, buf, 0, &back), KS_OK);
    assert_int_equal(back->code, 0);
    assert_string_equal(back->message, "");
    ks_codec_free(&back->base);
    free(buf);
    ks_codec_free(NULL); /* no-op */
}

/* Fields this reader does not know (written by a newer build) are accepted
 * and survive a re-pack (docs/wire-format.md: ignore unknown fields). */
static void test_unknown_fields_kept(void **state)
{
    Kscore__V1__Status st = KSCORE__V1__STATUS__INIT;
    Kscore__V1__Status *back = NULL;
    uint8_t *buf = NULL, *again = NULL, wire[64];
    size_t len = 0, again_len = 0;

    (void)state;
    st.code = 409;
    st.reason = "Conflict";
    assert_int_equal(ks_codec_pack(&st.base, &buf, &len), KS_OK);
    assert_true(len + 6 <= sizeof(wire));
    memcpy(wire, buf, len);
    /* field 99 varint 123: tag 99<<3 = 792 = varint 98 06; then 7B */
    memcpy(wire + len, "\x98\x06\x7b", 3);
    /* field 16 varint 5: tag 16<<3 = 128 = varint 80 01; then 05 */
    memcpy(wire + len + 3, "\x80\x01\x05", 3);
    assert_int_equal(KS_UNPACK(kscore__v1__status, wire, len + 6, &back), KS_OK);
    assert_int_equal(back->code, 409);
    assert_string_equal(back->reason, "Conflict");
    assert_int_equal(ks_codec_pack(&back->base, &again, &again_len), KS_OK);
    assert_int_equal(again_len, len + 6);
    ks_codec_free(&back->base);
    free(buf);
    free(again);
}

static void test_size_cap(void **state)
{
    Kscore__V1__ApiRequest req = KSCORE__V1__API_REQUEST__INIT;
    ProtobufCMessage *back = NULL;
    uint8_t *body, *buf = NULL;
    size_t len = 0;

    (void)state;
    /* a valid message is refused when it is over the cap, accepted at it */
    req.method = "PUT";
    req.body.len = 1000;
    body = calloc(1, KS_CODEC_MAX_MESSAGE);
    assert_non_null(body);
    req.body.data = body;
    assert_int_equal(ks_codec_pack(&req.base, &buf, &len), KS_OK);
    assert_int_equal(ks_codec_unpack(&kscore__v1__api_request__descriptor, buf, len, len - 1, &back),
                     KS_ERR_TOO_LARGE);
    assert_null(back);
    assert_int_equal(ks_codec_unpack(&kscore__v1__api_request__descriptor, buf, len, len, &back),
                     KS_OK);
    ks_codec_free(back);
    back = NULL;
    free(buf);

    /* the default cap (KS_UNPACK): a body of exactly 8 MiB makes the
     * message larger than KS_CODEC_MAX_MESSAGE */
    req.body.len = KS_CODEC_MAX_MESSAGE;
    assert_int_equal(ks_codec_pack(&req.base, &buf, &len), KS_OK);
    assert_true(len > KS_CODEC_MAX_MESSAGE);
    assert_int_equal(KS_UNPACK(kscore__v1__api_request, buf, len, &back), KS_ERR_TOO_LARGE);
    assert_null(back);
    free(buf);
    /* and one just under it passes */
    req.body.len = KS_CODEC_MAX_MESSAGE - 64;
    assert_int_equal(ks_codec_pack(&req.base, &buf, &len), KS_OK);
    assert_true(len <= KS_CODEC_MAX_MESSAGE);
    assert_int_equal(KS_UNPACK(kscore__v1__api_request, buf, len, &back), KS_OK);
    assert_int_equal(((Kscore__V1__ApiRequest *)back)->body.len, KS_CODEC_MAX_MESSAGE - 64);
    ks_codec_free(back);
    free(buf);
    free(body);
}

static void test_garbage_is_protocol_error(void **state)
{
    static const struct {
        const char *what;
        const uint8_t *bytes;
        size_t len;
    } cases[] = {
        {"overlong varint tag", (const uint8_t *)"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11},
        {"field number 0", (const uint8_t *)"\x00\x01", 2},
        {"wire type 7", (const uint8_t *)"\x0f\x01", 2},
        {"string longer than the buffer", (const uint8_t *)"\x12\x64" "abc", 5},
        {"truncated varint value", (const uint8_t *)"\x08\xff", 2},
        {"string field sent as varint", (const uint8_t *)"\x12\x05", 2},
        {"int field sent as bytes", (const uint8_t *)"\x0a\x01\x00", 3},
        {"a lone tag", (const uint8_t *)"\x1a", 1},
    };
    ProtobufCMessage *back = NULL;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ks_status st = ks_codec_unpack(&kscore__v1__status__descriptor, cases[i].bytes,
                                       cases[i].len, KS_CODEC_MAX_MESSAGE, &back);
        if (st != KS_ERR_PROTOCOL)
            fail_msg("%s: %s, expected protocol", cases[i].what, ks_status_name(st));
        assert_null(back);
    }
    /* garbage inside a nested message (ApiRequest.info, field 7) */
    assert_int_equal(KS_UNPACK(kscore__v1__api_request, "\x3a\x03\xff\xff\xff", 5, &back),
                     KS_ERR_PROTOCOL);
    /* a valid message cut inside its last field */
    {
        Kscore__V1__Status s = KSCORE__V1__STATUS__INIT;
        uint8_t *buf = NULL;
        size_t len = 0;
        s.message = "a message that is cut short";
        assert_int_equal(ks_codec_pack(&s.base, &buf, &len), KS_OK);
        assert_int_equal(KS_UNPACK(kscore__v1__status, buf, len - 1, &back), KS_ERR_PROTOCOL);
        free(buf);
    }
}

/* Random bytes never crash the decoder (ASan/UBSan in the sanitized build):
 * each is either a message (unknown fields allowed) or KS_ERR_PROTOCOL. */
static void test_random_bytes_are_safe(void **state)
{
    static const ProtobufCMessageDescriptor *const descs[] = {
        &kscore__v1__audit_event__descriptor, &kscore__v1__api_request__descriptor,
        &kscore__v1__authn_request__descriptor, &kscore__v1__object_event__descriptor,
        &kscore__v1__user_info__descriptor,
    };
    uint64_t x = 0x2545F4914F6CDD1Dull;
    uint8_t buf[256];
    int ok = 0, bad = 0;

    (void)state;
    for (int i = 0; i < 20000; i++) {
        size_t len = (size_t)(x % sizeof(buf));
        ProtobufCMessage *m = NULL;
        ks_status st;
        for (size_t k = 0; k < len; k++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[k] = (uint8_t)(x >> 24);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        st = ks_codec_unpack(descs[i % 5], buf, len, KS_CODEC_MAX_MESSAGE, &m);
        if (st == KS_OK) {
            ok++;
            ks_codec_free(m);
        } else {
            assert_int_equal(st, KS_ERR_PROTOCOL);
            bad++;
        }
    }
    assert_true(bad > 0);
    print_message("random inputs: %d parsed, %d refused\n", ok, bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_audit_event_round_trip),
        cmocka_unit_test(test_api_messages_round_trip),
        cmocka_unit_test(test_iam_messages_round_trip),
        cmocka_unit_test(test_object_event_round_trip),
        cmocka_unit_test(test_empty_message),
        cmocka_unit_test(test_unknown_fields_kept),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_garbage_is_protocol_error),
        cmocka_unit_test(test_random_bytes_are_safe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
