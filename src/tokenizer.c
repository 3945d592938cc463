/* tokenizer.c: placeholder until the tokenizer lands (every call reports unsupported). */
#include "tokenizer.h"

fm_status fm__tok_load(const char *dir, fm__tokenizer **out) {
    *out = NULL;
    return fm__err(FM_ERR_UNSUPPORTED, "%s: tokenizer not built yet", dir);
}
void fm__tok_free(fm__tokenizer *t) { (void)t; }
fm_status fm__tok_encode(const fm__tokenizer *t, const char *text, size_t len, int add_special,
                         int32_t **ids, size_t *n) {
    (void)t; (void)text; (void)len; (void)add_special;
    *ids = NULL; *n = 0;
    return fm__err(FM_ERR_UNSUPPORTED, "tokenizer not built yet");
}
fm_status fm__tok_decode(const fm__tokenizer *t, const int32_t *ids, size_t n, char **out,
                         size_t *len) {
    (void)t; (void)ids; (void)n;
    *out = NULL; if (len) *len = 0;
    return fm__err(FM_ERR_UNSUPPORTED, "tokenizer not built yet");
}
int32_t fm__tok_vocab_size(const fm__tokenizer *t) { (void)t; return 0; }
int32_t fm__tok_token_id(const fm__tokenizer *t, const char *token) { (void)t; (void)token; return -1; }
int fm__tok_eos_ids(const fm__tokenizer *t, const int32_t **ids) { (void)t; *ids = NULL; return 0; }
const char *fm__tok_bos_token(const fm__tokenizer *t) { (void)t; return NULL; }
const char *fm__tok_eos_token(const fm__tokenizer *t) { (void)t; return NULL; }
const char *fm__tok_chat_template(const fm__tokenizer *t) { (void)t; return NULL; }
fm_status fm__tok_stream_new(const fm__tokenizer *t, fm__tok_stream **out) {
    (void)t; *out = NULL;
    return fm__err(FM_ERR_UNSUPPORTED, "tokenizer not built yet");
}
fm_status fm__tok_stream_push(fm__tok_stream *s, int32_t id, const char **piece, size_t *len) {
    (void)s; (void)id; *piece = ""; *len = 0;
    return fm__err(FM_ERR_UNSUPPORTED, "tokenizer not built yet");
}
fm_status fm__tok_stream_flush(fm__tok_stream *s, const char **piece, size_t *len) {
    (void)s; *piece = ""; *len = 0;
    return FM_OK;
}
void fm__tok_stream_free(fm__tok_stream *s) { (void)s; }
