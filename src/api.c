/* api.c: public entry points that are thin wrappers: parameter defaults, tokenize and
 * detokenize, one-shot generation. Sessions live in session.c, chat turns in chat.c,
 * model open/free/info in model.c. */
#include "common.h"
#include "model.h"
#include "session.h"
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

void fm_model_params_default(fm_model_params *p) { memset(p, 0, sizeof *p); }

void fm_gen_params_default(fm_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
}


/* ---- tokenizer ------------------------------------------------------------------- */

static fm_status need_tokenizer(const fm_model *m, const fm__tokenizer **t) {
    *t = m ? fm__model_tokenizer(m) : NULL;
    if (!m) return fm__err(FM_ERR_ARG, "model is NULL");
    if (!*t) return fm__err(FM_ERR_TOKENIZER, "%s: the model has no tokenizer.json", fm__model_dir(m));
    return FM_OK;
}

fm_status fm_tokenize(const fm_model *m, const char *text, size_t len, int add_special,
                      int32_t **ids, size_t *n_ids) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!ids || !n_ids || (!text && len)) return fm__err(FM_ERR_ARG, "fm_tokenize: NULL argument");
    const fm__tokenizer *t;
    fm_status st = need_tokenizer(m, &t);
    if (st != FM_OK) return st;
    st = fm__tok_encode(t, text ? text : "", len, add_special, ids, n_ids);
    if (st != FM_OK) {
        *ids = NULL;
        *n_ids = 0;
    }
    return st;
}

fm_status fm_detokenize(const fm_model *m, const int32_t *ids, size_t n_ids, char **text,
                        size_t *len) {
    if (text) *text = NULL;
    if (len) *len = 0;
    if (!text || (!ids && n_ids)) return fm__err(FM_ERR_ARG, "fm_detokenize: NULL argument");
    const fm__tokenizer *t;
    fm_status st = need_tokenizer(m, &t);
    if (st != FM_OK) return st;
    size_t l = 0;
    st = fm__tok_decode(t, ids, n_ids, text, &l);
    if (st != FM_OK) {
        *text = NULL;
        return st;
    }
    if (len) *len = l;
    return FM_OK;
}

/* ---- one-shot generation ----------------------------------------------------------- */

fm_status fm_generate(fm_session *s, const char *prompt, const fm_gen_params *p,
                      fm_stream_fn cb, void *user, char **text) {
    if (text) *text = NULL;
    if (!s || !prompt) return fm__err(FM_ERR_ARG, "fm_generate: NULL argument");
    size_t held = 0;
    fm_session_tokens(s, &held);
    int32_t *ids = NULL;
    size_t n = 0;
    /* the tokenizer's special tokens (BOS) only at the start of a context */
    fm_status st = fm_tokenize(fm__session_model(s), prompt, strlen(prompt), held == 0, &ids, &n);
    if (st != FM_OK) return st;
    st = fm_session_append_tokens(s, ids, n);
    free(ids);
    if (st != FM_OK) return st;
    return fm_session_generate(s, p, cb, user, text);
}
