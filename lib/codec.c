#include "codec.h"

#include <stdlib.h>

ks_status ks_codec_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
{
    size_t size = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(size > 0 ? size : 1);
    size_t packed;

    if (buf == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "pack %s", msg->descriptor->name);
    packed = protobuf_c_message_pack(msg, buf);
    if (packed != size) {
        free(buf);
        return KS_FAIL(KS_ERR_INTERNAL, "pack %s: %zu bytes packed, %zu expected",
                       msg->descriptor->name, packed, size);
    }
    *out = buf;
    *len = size;
    return KS_OK;
}

ks_status ks_codec_unpack(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                          size_t cap, ProtobufCMessage **out)
{
    ProtobufCMessage *m;

    if (len > cap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "%s of %zu bytes exceeds %zu", desc->name, len, cap);
    m = protobuf_c_message_unpack(desc, NULL, len, data);
    if (m == NULL)
        return KS_FAIL(KS_ERR_PROTOCOL, "not a valid %s (%zu bytes)", desc->name, len);
    *out = m;
    return KS_OK;
}

void ks_codec_free(ProtobufCMessage *msg)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
}
