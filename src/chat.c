/* chat.c: chat turns: builds the template context the way transformers'
 * apply_chat_template does (messages, tools, add_generation_prompt, bos_token, eos_token,
 * extra variables), renders the model's template, and runs a chat turn on a session with
 * prefix reuse. */
#include "common.h"
#include "model.h"
#include "template.h"
#include "session.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

/* Converts one tool call of tool_calls_json to the OpenAI shape templates expect:
 * {"type":"function","function":{"name":..,"arguments":{..}}} (+ "id" when given).
 * Accepts {"name","arguments"} or the OpenAI shape; arguments given as a JSON string
 * are parsed into an object (templates iterate over them). */
static cJSON *tool_call(const cJSON *in, size_t mi, int ci) {
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(in, "function");
    const cJSON *src = cJSON_IsObject(fn) ? fn : in;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(src, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(src, "arguments");
    if (!cJSON_IsString(name)) {
        fm__err(FM_ERR_ARG, "messages[%zu].tool_calls[%d]: \"name\" must be a string", mi, ci);
        return NULL;
    }
    cJSON *a = NULL;
    if (!args || cJSON_IsNull(args)) a = cJSON_CreateObject();
    else if (cJSON_IsString(args)) {
        a = cJSON_Parse(args->valuestring);
        if (!a) {
            fm__err(FM_ERR_ARG, "messages[%zu].tool_calls[%d].arguments: not valid JSON", mi, ci);
            return NULL;
        }
    } else a = cJSON_Duplicate(args, 1);
    cJSON *out = cJSON_CreateObject();
    cJSON *f = cJSON_CreateObject();
    if (!out || !f || !a) {
        cJSON_Delete(out);
        cJSON_Delete(f);
        cJSON_Delete(a);
        fm__err(FM_ERR_NOMEM, "tool call");
        return NULL;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(in, "id");
    if (cJSON_IsString(id)) cJSON_AddStringToObject(out, "id", id->valuestring);
    cJSON_AddStringToObject(out, "type", "function");
    cJSON_AddStringToObject(f, "name", name->valuestring);
    cJSON_AddItemToObject(f, "arguments", a);
    cJSON_AddItemToObject(out, "function", f);
    return out;
}

/* Builds the template context into *out; FM_ERR_ARG names the bad field. */
static fm_status build_ctx(const fm__tokenizer *tok, const fm_chat_msg *msgs, size_t n_msgs,
                           const char *tools_json, const char *extra_vars_json, int add_gen,
                           cJSON **out) {
    *out = NULL;
    fm_status st = FM_ERR_ARG;
    cJSON *ctx = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(ctx, "messages");
    if (!ctx || !arr) goto nomem;
    for (size_t i = 0; i < n_msgs; i++) {
        const fm_chat_msg *m = &msgs[i];
        if (!m->role) {
            fm__err(FM_ERR_ARG, "messages[%zu]: role is NULL", i);
            goto fail;
        }
        cJSON *o = cJSON_CreateObject();
        if (!o) goto nomem;
        cJSON_AddItemToArray(arr, o);
        cJSON_AddStringToObject(o, "role", m->role);
        /* NULL content (an assistant turn with only tool calls) renders as "": templates
         * such as Qwen3's apply string tests and operators to content */
        cJSON_AddStringToObject(o, "content", m->content ? m->content : "");
        if (m->reasoning_content)
            cJSON_AddStringToObject(o, "reasoning_content", m->reasoning_content);
        if (m->tool_calls_json) {
            cJSON *tc = cJSON_Parse(m->tool_calls_json);
            if (!cJSON_IsArray(tc)) {
                cJSON_Delete(tc);
                fm__err(FM_ERR_ARG, "messages[%zu].tool_calls: not a JSON array", i);
                goto fail;
            }
            cJSON *calls = cJSON_AddArrayToObject(o, "tool_calls");
            int ci = 0;
            const cJSON *c;
            cJSON_ArrayForEach(c, tc) {
                cJSON *x = tool_call(c, i, ci++);
                if (!x) {
                    cJSON_Delete(tc);
                    st = FM_ERR_ARG;
                    goto fail;
                }
                cJSON_AddItemToArray(calls, x);
            }
            cJSON_Delete(tc);
        }
        if (m->tool_call_id) cJSON_AddStringToObject(o, "tool_call_id", m->tool_call_id);
        if (m->name) cJSON_AddStringToObject(o, "name", m->name);
    }
    if (tools_json) {
        cJSON *tools = cJSON_Parse(tools_json);
        if (!cJSON_IsArray(tools)) {
            cJSON_Delete(tools);
            fm__err(FM_ERR_ARG, "tools: not a JSON array");
            goto fail;
        }
        cJSON_AddItemToObject(ctx, "tools", tools);
    } else {
        cJSON_AddNullToObject(ctx, "tools"); /* transformers always passes tools, None */
    }
    cJSON_AddNullToObject(ctx, "documents");
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", add_gen ? 1 : 0);
    const char *bos = tok ? fm__tok_bos_token(tok) : NULL;
    const char *eos = tok ? fm__tok_eos_token(tok) : NULL;
    if (bos) cJSON_AddStringToObject(ctx, "bos_token", bos);
    if (eos) cJSON_AddStringToObject(ctx, "eos_token", eos);
    if (extra_vars_json) {
        cJSON *ex = cJSON_Parse(extra_vars_json);
        if (!cJSON_IsObject(ex)) {
            cJSON_Delete(ex);
            fm__err(FM_ERR_ARG, "extra template variables: not a JSON object");
            goto fail;
        }
        cJSON *it = ex->child;
        while (it) {
            cJSON *next = it->next;
            cJSON_DetachItemViaPointer(ex, it);
            cJSON_DeleteItemFromObjectCaseSensitive(ctx, it->string);
            cJSON_AddItemToObject(ctx, it->string, it);
            it = next;
        }
        cJSON_Delete(ex);
    }
    *out = ctx;
    return FM_OK;
nomem:
    st = fm__err(FM_ERR_NOMEM, "chat template context");
fail:
    cJSON_Delete(ctx);
    return st;
}

fm_status fm_chat_render(const fm_model *m, const fm_chat_msg *msgs, size_t n_msgs,
                         const char *tools_json, const char *extra_vars_json,
                         int add_generation_prompt, char **text) {
    if (text) *text = NULL;
    if (!m || !text || (!msgs && n_msgs)) return fm__err(FM_ERR_ARG, "fm_chat_render: NULL argument");
    const fm__tokenizer *tok = fm__model_tokenizer(m);
    const char *src = tok ? fm__tok_chat_template(tok) : NULL;
    if (!src)
        return fm__err(FM_ERR_TEMPLATE, "%s: the model has no chat template "
                       "(tokenizer_config.json chat_template or chat_template.jinja)",
                       fm__model_dir(m));
    cJSON *ctx = NULL;
    fm_status st = build_ctx(tok, msgs, n_msgs, tools_json, extra_vars_json,
                             add_generation_prompt, &ctx);
    if (st != FM_OK) return fm__err_ctx(st, "fm_chat_render");
    fm__tmpl *t = NULL;
    st = fm__tmpl_compile(src, &t);
    if (st == FM_OK) {
        size_t len;
        st = fm__tmpl_render(t, ctx, text, &len);
        if (st != FM_OK) *text = NULL;
    }
    if (st != FM_OK) fm__err_ctx(st, "%s: chat template", fm__model_dir(m));
    fm__tmpl_free(t);
    cJSON_Delete(ctx);
    return st;
}

/* True if the text of held[0..k) is a prefix of p[0..plen); *dlen receives its length. */
static int held_is_prefix(const fm_model *m, const int32_t *held, size_t k, const char *p,
                          size_t plen, size_t *dlen) {
    char *d = NULL;
    size_t dl = 0;
    if (fm_detokenize(m, held, k, &d, &dl) != FM_OK) {
        fm__clear_err();
        return 0;
    }
    int ok = dl <= plen && memcmp(d, p, dl) == 0;
    free(d);
    *dlen = dl;
    return ok;
}

/* Tokens for a rendered chat prompt. The canonical tokenization is the default. When the
 * session holds tokens the model generated in an earlier turn, their text usually comes
 * back inside the new prompt, but re-tokenizing it can split it differently (models do not
 * always generate the canonical split), which would end prefix reuse at the first such
 * word. So if a longer run of the held tokens decodes to a prefix of the prompt, those
 * tokens are kept and only the rest of the text is tokenized. *ids: malloc'd. */
fm_status fm__session_chat_tokens(fm_session *s, const char *p, size_t plen, int32_t **ids,
                                  size_t *n_ids) {
    fm_model *m = fm__session_model(s);
    fm_status st = fm_tokenize(m, p, plen, 0, ids, n_ids);
    if (st != FM_OK) return st;
    size_t n = 0;
    const int32_t *held = fm_session_tokens(s, &n);
    size_t c = 0;
    while (c < n && c < *n_ids && held[c] == (*ids)[c]) c++;
    if (c == n) return FM_OK; /* everything held is reused already */
    /* largest k in (c, n] whose text is a prefix of the prompt (binary search; the
     * predicate is monotone for byte-level tokenizers, and any k found is checked) */
    size_t lo = c, hi = n, best = 0, best_len = 0, dl;
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        if (held_is_prefix(m, held, mid, p, plen, &dl)) {
            lo = mid;
            best = mid;
            best_len = dl;
        } else {
            hi = mid - 1;
        }
    }
    if (best <= c) return FM_OK;
    int32_t *rest = NULL;
    size_t nr = 0;
    st = fm_tokenize(m, p + best_len, plen - best_len, 0, &rest, &nr);
    if (st != FM_OK) return st;
    int32_t *all = fm__malloc_array(best + nr + 1, sizeof *all);
    if (!all) {
        free(rest);
        return fm__err(FM_ERR_NOMEM, "chat prompt tokens");
    }
    memcpy(all, held, best * sizeof *all);
    if (nr) memcpy(all + best, rest, nr * sizeof *all);
    free(rest);
    free(*ids);
    *ids = all;
    *n_ids = best + nr;
    return FM_OK;
}

fm_status fm_session_chat(fm_session *s, const fm_chat_msg *msgs, size_t n_msgs,
                          const char *tools_json, const char *extra_vars_json,
                          const fm_gen_params *p, fm_stream_fn cb, void *user, char **text) {
    if (text) *text = NULL;
    if (!s) return fm__err(FM_ERR_ARG, "fm_session_chat: session is NULL");
    fm_model *m = fm__session_model(s);
    char *prompt = NULL;
    fm_status st = fm_chat_render(m, msgs, n_msgs, tools_json, extra_vars_json, 1, &prompt);
    if (st != FM_OK) return st;
    int32_t *ids = NULL;
    size_t n = 0;
    /* transformers tokenizes rendered chats without adding special tokens */
    st = fm__session_chat_tokens(s, prompt, strlen(prompt), &ids, &n);
    free(prompt);
    if (st != FM_OK) return st;
    st = fm_session_set_tokens(s, ids, n);
    free(ids);
    if (st != FM_OK) return st;
    return fm_session_generate(s, p, cb, user, text);
}
