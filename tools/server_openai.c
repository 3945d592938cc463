/* server_openai.c: the OpenAI routes of `flash-moe serve`: POST /v1/chat/completions and
 * POST /v1/completions. Requests are validated field by field (unknown or unsupported
 * semantics-changing fields are a 400, as the OpenAI API does), turned into a prompt with
 * the model's chat template, and answered as one JSON object or as SSE chunks ending in
 * `data: [DONE]`. Also the sampling, stop and prompt helpers the Anthropic routes share. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(st, ...) do { *status = (st); snprintf(msg, msg_len, __VA_ARGS__); goto fail; } while (0)

/* ---- shared helpers ---------------------------------------------------------------- */

int srv_sampling(server *s, cJSON *req, int anthropic, fm_gen_params *gp, char *msg,
                 size_t msg_len, const char **param) {
    (void)s;
    double v;
    int r;
    if ((r = srv_num(req, "temperature", 0, anthropic ? 1 : 2, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->temperature = (float)v;
    if ((r = srv_num(req, "top_p", 0, 1, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->top_p = (float)v;
    if ((r = srv_num(req, "top_k", 0, 1e9, 1, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->top_k = (int32_t)v;
    if ((r = srv_num(req, "min_p", 0, 1, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->min_p = (float)v;
    if ((r = srv_num(req, "seed", -9.2e18, 1.8e19, 1, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    if ((r = srv_num(req, "presence_penalty", -2, 2, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->presence_penalty = (float)v;
    if ((r = srv_num(req, "frequency_penalty", -2, 2, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->frequency_penalty = (float)v;
    if ((r = srv_num(req, "repetition_penalty", 0.01, 10, 0, &v, msg, msg_len, param)) < 0) return -1;
    if (r) gp->repeat_penalty = (float)v;
    /* extension (as in vLLM and llama.cpp): keep generating past EOS, for benchmarks */
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(req, "ignore_eos");
    if (ie && !cJSON_IsNull(ie) && !cJSON_IsBool(ie)) {
        *param = "ignore_eos";
        snprintf(msg, msg_len, "'ignore_eos' must be a boolean");
        return -1;
    }
    gp->ignore_eos = cJSON_IsTrue(ie);
    return 0;
}

int srv_stops(srv_job *j, const cJSON *v, char *msg, size_t msg_len) {
    if (!v || cJSON_IsNull(v)) return 0;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0) { snprintf(msg, msg_len, "stop sequences must be a string or an array of strings"); return -1; }
    if (n > 16) { snprintf(msg, msg_len, "at most 16 stop sequences are supported, got %d", n); return -1; }
    j->stops = calloc((size_t)n + 1, sizeof *j->stops);
    if (!j->stops) { snprintf(msg, msg_len, "out of memory"); return -1; }
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(e)) { snprintf(msg, msg_len, "stop sequence %d is not a string", i); return -1; }
        if (!e->valuestring[0]) continue;
        if (strlen(e->valuestring) > 1024) { snprintf(msg, msg_len, "stop sequence %d is longer than 1024 bytes", i); return -1; }
        j->stops[j->n_stops] = strdup(e->valuestring);
        if (!j->stops[j->n_stops]) { snprintf(msg, msg_len, "out of memory"); return -1; }
        j->n_stops++;
    }
    return 0;
}

/* Takes ownership of ids; checks the context and clamps max_tokens. */
static int finish_prompt(srv_job *j, int32_t *ids, size_t n, char *msg, size_t msg_len) {
    server *s = j->srv;
    j->ids = ids;
    j->n_ids = n;
    int64_t ctx = s->info.n_ctx > 0 ? s->info.n_ctx : 4096;
    if (n == 0) { snprintf(msg, msg_len, "the prompt is empty"); return 400; }
    if ((int64_t)n >= ctx && !j->count_only) {
        snprintf(msg, msg_len, "the prompt is %zu tokens, but the context length is %lld tokens; "
                 "shorten the conversation", n, (long long)ctx);
        return 400;
    }
    int64_t room = ctx - (int64_t)n;
    int64_t lim = s->cfg.max_tokens > 0 ? s->cfg.max_tokens : room;
    if (j->gp.max_tokens > 0 && j->gp.max_tokens < lim) lim = j->gp.max_tokens;
    if (lim > room) lim = room;
    j->gp.max_tokens = (int32_t)lim;
    return 0;
}

int srv_prepare_prompt(srv_job *j, const fm_chat_msg *msgs, size_t n, const char *tools_json,
                       const char *extra_json, char *msg, size_t msg_len) {
    server *s = j->srv;
    char *text = NULL;
    fm_status st = fm_chat_render(s->model, msgs, n, tools_json, extra_json, 1, &text);
    if (st != FM_OK) {
        snprintf(msg, msg_len, "cannot apply the chat template: %s", fm_last_error());
        return st == FM_ERR_NOMEM || st == FM_ERR_INTERNAL || st == FM_ERR_IO ? 500 : 400;
    }
    size_t tl = strlen(text);
    if (j->parse_tools && tools_json && !j->tools) j->tools = cJSON_Parse(tools_json);
    /* reasoning models: a leading <think>...</think> in the reply is reasoning; a template
     * that opens the block itself (the prompt ends in <think>) starts the reply inside it */
    j->parse_think = 1;
    if ((tl >= 7 && memcmp(text + tl - 7, "<think>", 7) == 0) ||
        (tl >= 8 && memcmp(text + tl - 8, "<think>\n", 8) == 0))
        j->think_state = 1;
    if (j->prefix) {
        size_t pl = strlen(j->prefix);
        char *t2 = malloc(tl + pl + 1);
        if (!t2) { fm_free(text); snprintf(msg, msg_len, "out of memory"); return 500; }
        memcpy(t2, text, tl);
        memcpy(t2 + tl, j->prefix, pl + 1);
        fm_free(text);
        text = t2;
        tl += pl;
    } else {
        /* keep one allocator: copy into malloc memory */
        char *t2 = strdup(text);
        fm_free(text);
        text = t2;
        if (!text) { snprintf(msg, msg_len, "out of memory"); return 500; }
    }
    int32_t *ids = NULL;
    size_t nid = 0;
    st = fm_tokenize(s->model, text, tl, 0, &ids, &nid);
    free(text);
    if (st != FM_OK) {
        snprintf(msg, msg_len, "cannot tokenize the prompt: %s", fm_last_error());
        return st == FM_ERR_ARG || st == FM_ERR_TOKENIZER ? 400 : 500;
    }
    int32_t *own = malloc((nid ? nid : 1) * sizeof *own);
    if (!own) { fm_free(ids); snprintf(msg, msg_len, "out of memory"); return 500; }
    if (nid) memcpy(own, ids, nid * sizeof *own);
    fm_free(ids);
    return finish_prompt(j, own, nid, msg, msg_len);
}

/* ---- chat messages ----------------------------------------------------------------- */

/* Content as a string or an array of text parts; *out NULL for null content. */
static int oa_content(const cJSON *c, srv_pool *pl, const char **out, int idx, char *msg,
                      size_t msg_len) {
    *out = NULL;
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c)) { *out = c->valuestring; return 0; }
    if (!cJSON_IsArray(c)) {
        snprintf(msg, msg_len, "messages[%d].content must be a string or an array of content parts", idx);
        return -1;
    }
    srv_buf b = {0};
    sb_puts(&b, "");
    int k = 0;
    for (const cJSON *p = c->child; p; p = p->next, k++) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (!cJSON_IsObject(p) || !cJSON_IsString(ty)) {
            snprintf(msg, msg_len, "messages[%d].content[%d] must be an object with a 'type'", idx, k);
            sb_free(&b);
            return -1;
        }
        const char *field = strcmp(ty->valuestring, "text") == 0 ? "text"
                          : strcmp(ty->valuestring, "refusal") == 0 ? "refusal" : NULL;
        if (!field) {
            snprintf(msg, msg_len, "messages[%d].content[%d]: content parts of type '%.40s' are not "
                     "supported (text only)", idx, k, ty->valuestring);
            sb_free(&b);
            return -1;
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, field);
        if (!cJSON_IsString(t)) {
            snprintf(msg, msg_len, "messages[%d].content[%d].%s must be a string", idx, k, field);
            sb_free(&b);
            return -1;
        }
        sb_puts(&b, t->valuestring);
    }
    if (b.oom) { sb_free(&b); snprintf(msg, msg_len, "out of memory"); return -1; }
    *out = srv_pool_add(pl, b.p);
    return *out ? 0 : -1;
}

/* Converts OpenAI messages into fm_chat_msg (strings owned by req or pl). */
static int oa_messages(const cJSON *arr, srv_pool *pl, fm_chat_msg **out, size_t *n_out,
                       char *msg, size_t msg_len, const char **param) {
    *param = "messages";
    if (!cJSON_IsArray(arr)) { snprintf(msg, msg_len, "'messages' must be an array"); return -1; }
    int n = cJSON_GetArraySize(arr);
    if (n == 0) { snprintf(msg, msg_len, "'messages' must contain at least one message"); return -1; }
    fm_chat_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) { snprintf(msg, msg_len, "out of memory"); return -1; }
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        if (!cJSON_IsObject(e) || !cJSON_IsString(role)) {
            snprintf(msg, msg_len, "messages[%d] must be an object with a string 'role'", i);
            goto fail;
        }
        const char *r = role->valuestring;
        if (strcmp(r, "developer") == 0) r = "system";
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool")) {
            snprintf(msg, msg_len, "messages[%d].role '%.40s' is not one of system, developer, user, "
                     "assistant, tool", i, r);
            goto fail;
        }
        m[i].role = r;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (oa_content(content, pl, &m[i].content, i, msg, msg_len)) goto fail;
        int is_asst = strcmp(r, "assistant") == 0;
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(e, "tool_calls");
        if (is_asst && tc && !cJSON_IsNull(tc)) {
            if (!cJSON_IsArray(tc)) { snprintf(msg, msg_len, "messages[%d].tool_calls must be an array", i); goto fail; }
            cJSON *calls = cJSON_CreateArray();
            int k = 0;
            for (const cJSON *c = tc->child; c; c = c->next, k++) {
                const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
                const cJSON *ar = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
                if (!cJSON_IsObject(c) || !cJSON_IsObject(fn) || !cJSON_IsString(nm) ||
                    (ar && !cJSON_IsString(ar) && !cJSON_IsObject(ar))) {
                    snprintf(msg, msg_len, "messages[%d].tool_calls[%d] must have function.name and "
                             "function.arguments (a JSON string)", i, k);
                    cJSON_Delete(calls);
                    goto fail;
                }
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "name", nm->valuestring);
                cJSON *args = NULL;
                if (cJSON_IsString(ar)) {
                    args = cJSON_Parse(ar->valuestring);
                    if (!args) args = cJSON_CreateString(ar->valuestring);
                } else if (ar) {
                    args = cJSON_Duplicate(ar, 1);
                } else {
                    args = cJSON_CreateObject();
                }
                cJSON_AddItemToObject(o, "arguments", args);
                cJSON_AddItemToArray(calls, o);
            }
            char *js = cJSON_PrintUnformatted(calls);
            cJSON_Delete(calls);
            if (!(m[i].tool_calls_json = srv_pool_add(pl, js))) { snprintf(msg, msg_len, "out of memory"); goto fail; }
        } else if (!m[i].content) {
            snprintf(msg, msg_len, "messages[%d].content is required", i);
            goto fail;
        }
        const cJSON *rc = cJSON_GetObjectItemCaseSensitive(e, "reasoning_content");
        if (is_asst && cJSON_IsString(rc)) m[i].reasoning_content = rc->valuestring;
        if (strcmp(r, "tool") == 0) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "tool_call_id");
            if (!cJSON_IsString(id)) {
                snprintf(msg, msg_len, "messages[%d].tool_call_id must be a string", i);
                goto fail;
            }
            m[i].tool_call_id = id->valuestring;
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (cJSON_IsString(nm)) m[i].name = nm->valuestring;
            /* find the name of the call answered */
            for (const cJSON *p = arr->child; p && p != e && !m[i].name; p = p->next) {
                const cJSON *ptc = cJSON_GetObjectItemCaseSensitive(p, "tool_calls");
                for (const cJSON *c = cJSON_IsArray(ptc) ? ptc->child : NULL; c; c = c->next) {
                    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "id");
                    const cJSON *nm2 = cJSON_GetObjectItemCaseSensitive(
                        cJSON_GetObjectItemCaseSensitive(c, "function"), "name");
                    if (cJSON_IsString(cid) && cJSON_IsString(nm2) && strcmp(cid->valuestring, id->valuestring) == 0)
                        m[i].name = nm2->valuestring;
                }
            }
        }
    }
    *out = m;
    *n_out = (size_t)n;
    return 0;
fail:
    free(m);
    return -1;
}

/* tools -> JSON text for the template (NULL when none). */
static int oa_tools(const cJSON *tools, srv_pool *pl, const char **out, char *msg, size_t msg_len) {
    *out = NULL;
    if (!tools || cJSON_IsNull(tools)) return 0;
    if (!cJSON_IsArray(tools)) { snprintf(msg, msg_len, "'tools' must be an array"); return -1; }
    int k = 0;
    for (const cJSON *t = tools->child; t; t = t->next, k++) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsObject(t) || !cJSON_IsString(ty) || strcmp(ty->valuestring, "function") != 0) {
            snprintf(msg, msg_len, "tools[%d]: only tools of type 'function' are supported", k);
            return -1;
        }
        if (!cJSON_IsObject(fn) || !cJSON_IsString(nm) || !nm->valuestring[0]) {
            snprintf(msg, msg_len, "tools[%d].function.name must be a non-empty string", k);
            return -1;
        }
    }
    if (k == 0) return 0;
    *out = srv_pool_add(pl, cJSON_PrintUnformatted(tools));
    if (!*out) { snprintf(msg, msg_len, "out of memory"); return -1; }
    return 0;
}

static int tool_exists(const cJSON *tools, const char *name) {
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(t, "function"), "name");
        if (!nm) nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (cJSON_IsString(nm) && strcmp(nm->valuestring, name) == 0) return 1;
    }
    return 0;
}

/* Assistant text forced before sampling so the model answers with a tool call. */
static char *forced_call_prefix(const char *name) {
    if (!name) return strdup("<tool_call>\n");
    cJSON *s = cJSON_CreateString(name);
    char *q = cJSON_PrintUnformatted(s);
    cJSON_Delete(s);
    if (!q) return NULL;
    size_t n = strlen(q) + 64;
    char *p = malloc(n);
    if (p) snprintf(p, n, "<tool_call>\n{\"name\": %s, \"arguments\": ", q);
    cJSON_free(q);
    return p;
}

static int common_stream(cJSON *req, srv_job *j, char *msg, size_t msg_len, const char **param) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(req, "stream");
    if (st && !cJSON_IsNull(st) && !cJSON_IsBool(st)) {
        *param = "stream";
        snprintf(msg, msg_len, "'stream' must be a boolean");
        return -1;
    }
    j->stream = cJSON_IsTrue(st);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(req, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        *param = "stream_options";
        if (!j->stream) { snprintf(msg, msg_len, "'stream_options' is only allowed when 'stream' is true"); return -1; }
        if (!cJSON_IsObject(so)) { snprintf(msg, msg_len, "'stream_options' must be an object"); return -1; }
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (iu && !cJSON_IsBool(iu)) { snprintf(msg, msg_len, "'stream_options.include_usage' must be a boolean"); return -1; }
        j->include_usage = cJSON_IsTrue(iu);
    }
    return 0;
}

/* Checks fields the server accepts only in their default form. */
static int unsupported(cJSON *req, char *msg, size_t msg_len, const char **param) {
    const cJSON *v;
    double d;
    int r = srv_num(req, "n", 1, 1, 1, &d, msg, msg_len, param);
    if (r < 0) { snprintf(msg, msg_len, "only n = 1 is supported"); return -1; }
    r = srv_num(req, "best_of", 1, 1, 1, &d, msg, msg_len, param);
    if (r < 0) { snprintf(msg, msg_len, "only best_of = 1 is supported"); return -1; }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "logprobs")) && !cJSON_IsNull(v) && !cJSON_IsFalse(v)) {
        *param = "logprobs";
        snprintf(msg, msg_len, "logprobs are not supported");
        return -1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "top_logprobs")) && !cJSON_IsNull(v)) {
        *param = "top_logprobs";
        snprintf(msg, msg_len, "top_logprobs are not supported");
        return -1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "echo")) && !cJSON_IsNull(v) && !cJSON_IsFalse(v)) {
        *param = "echo";
        snprintf(msg, msg_len, "echo is not supported");
        return -1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "suffix")) && !cJSON_IsNull(v)) {
        *param = "suffix";
        snprintf(msg, msg_len, "suffix is not supported");
        return -1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "logit_bias")) && !cJSON_IsNull(v) &&
        !(cJSON_IsObject(v) && !v->child)) {
        *param = "logit_bias";
        snprintf(msg, msg_len, "logit_bias is not supported");
        return -1;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "response_format")) && !cJSON_IsNull(v)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") != 0) {
            *param = "response_format";
            snprintf(msg, msg_len, "response_format other than {\"type\": \"text\"} is not supported");
            return -1;
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(req, "modalities")) && !cJSON_IsNull(v)) {
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 1 || !cJSON_IsString(v->child) ||
            strcmp(v->child->valuestring, "text") != 0) {
            *param = "modalities";
            snprintf(msg, msg_len, "only the text modality is supported");
            return -1;
        }
    }
    return 0;
}

static int max_tokens_field(cJSON *req, const char *key, srv_job *j, char *msg, size_t msg_len,
                            const char **param) {
    double d;
    int r = srv_num(req, key, 1, 2147483647.0, 1, &d, msg, msg_len, param);
    if (r < 0) return -1;
    if (r) j->gp.max_tokens = (int32_t)d;
    return 0;
}

static const char *const CHAT_KEYS[] = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty",
    "frequency_penalty", "repetition_penalty", "tools", "tool_choice", "parallel_tool_calls",
    "n", "user", "metadata", "store", "service_tier", "logprobs", "top_logprobs",
    "response_format", "logit_bias", "chat_template_kwargs", "prompt_cache_key",
    "safety_identifier", "modalities", "ignore_eos", NULL};

/* The checks every OpenAI endpoint starts with: a JSON object with known keys only, a
 * string model, no unsupported semantics, then the stream and sampling fields into j.
 * Returns 0, or non-zero with *status, msg and *param set. */
static int oa_common(server *s, cJSON *req, const char *const *keys, srv_job *j, int *status,
                     char *msg, size_t msg_len, const char **param) {
    if (!cJSON_IsObject(req)) FAIL(400, "the request body must be a JSON object");
    const char *bad = srv_unknown_key(req, keys);
    if (bad) { *param = bad; FAIL(400, "unrecognized request argument supplied: %.60s", bad); }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(req, "model");
    if (!cJSON_IsString(model)) { *param = "model"; FAIL(400, "'model' is required and must be a string"); }
    if (unsupported(req, msg, msg_len, param)) goto fail;
    if (common_stream(req, j, msg, msg_len, param)) goto fail;
    if (srv_sampling(s, req, 0, &j->gp, msg, msg_len, param)) goto fail;
    return 0;
fail:
    return 1;
}

srv_job *srv_openai_chat(server *s, cJSON *req, int *status, char *msg, size_t msg_len,
                         const char **param) {
    srv_pool pl = {0};
    fm_chat_msg *msgs = NULL;
    size_t n_msgs = 0;
    *status = 400;
    srv_job *j = srv_job_new(s, API_CHAT);
    if (!j) FAIL(500, "out of memory");
    if (oa_common(s, req, CHAT_KEYS, j, status, msg, msg_len, param)) goto fail;
    if (max_tokens_field(req, "max_tokens", j, msg, msg_len, param)) goto fail;
    if (max_tokens_field(req, "max_completion_tokens", j, msg, msg_len, param)) goto fail;
    if (srv_stops(j, cJSON_GetObjectItemCaseSensitive(req, "stop"), msg, msg_len)) { *param = "stop"; goto fail; }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    const char *tools_json = NULL;
    if (oa_tools(tools, &pl, &tools_json, msg, msg_len)) { *param = "tools"; goto fail; }
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(req, "tool_choice");
    j->parse_tools = tools_json != NULL;
    if (tc && !cJSON_IsNull(tc)) {
        *param = "tool_choice";
        if (!tools_json) FAIL(400, "'tool_choice' is only allowed when 'tools' are given");
        if (cJSON_IsString(tc) && strcmp(tc->valuestring, "none") == 0) {
            tools_json = NULL;
            j->parse_tools = 0;
        } else if (cJSON_IsString(tc) && strcmp(tc->valuestring, "auto") == 0) {
        } else if (cJSON_IsString(tc) && strcmp(tc->valuestring, "required") == 0) {
            j->prefix = forced_call_prefix(NULL);
        } else if (cJSON_IsObject(tc)) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tc, "function"), "name");
            if (!cJSON_IsString(nm)) FAIL(400, "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}");
            if (!tool_exists(tools, nm->valuestring)) FAIL(400, "tool_choice names an unknown tool '%.60s'", nm->valuestring);
            j->prefix = forced_call_prefix(nm->valuestring);
        } else {
            FAIL(400, "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}");
        }
    }
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(req, "parallel_tool_calls");
    if (pt && !cJSON_IsNull(pt) && !cJSON_IsBool(pt)) { *param = "parallel_tool_calls"; FAIL(400, "'parallel_tool_calls' must be a boolean"); }
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(req, "chat_template_kwargs");
    const char *extra = NULL;
    if (kw && !cJSON_IsNull(kw)) {
        if (!cJSON_IsObject(kw)) { *param = "chat_template_kwargs"; FAIL(400, "'chat_template_kwargs' must be an object"); }
        extra = srv_pool_add(&pl, cJSON_PrintUnformatted(kw));
        if (!extra) FAIL(500, "out of memory");
    }
    if (oa_messages(cJSON_GetObjectItemCaseSensitive(req, "messages"), &pl, &msgs, &n_msgs, msg,
                    msg_len, param))
        goto fail;
    *param = "messages";
    int st = srv_prepare_prompt(j, msgs, n_msgs, tools_json, extra, msg, msg_len);
    if (st) { *status = st; goto fail; }
    *param = NULL;
    free(msgs);
    srv_pool_free(&pl);
    return j;
fail:
    free(msgs);
    srv_pool_free(&pl);
    srv_job_unref(j);
    return NULL;
}

static const char *const COMPLETION_KEYS[] = {
    "model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p",
    "top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "n", "best_of", "echo", "logprobs", "suffix", "user", "logit_bias",
    "ignore_eos", NULL};

srv_job *srv_openai_completion(server *s, cJSON *req, int *status, char *msg, size_t msg_len,
                               const char **param) {
    *status = 400;
    srv_job *j = srv_job_new(s, API_COMPLETION);
    if (!j) FAIL(500, "out of memory");
    if (oa_common(s, req, COMPLETION_KEYS, j, status, msg, msg_len, param)) goto fail;
    j->gp.max_tokens = 16; /* the API's documented default */
    if (max_tokens_field(req, "max_tokens", j, msg, msg_len, param)) goto fail;
    if (srv_stops(j, cJSON_GetObjectItemCaseSensitive(req, "stop"), msg, msg_len)) { *param = "stop"; goto fail; }
    *param = "prompt";
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(req, "prompt");
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child)) p = p->child;
    int32_t *ids = NULL;
    size_t n = 0;
    if (cJSON_IsString(p)) {
        int32_t *t = NULL;
        fm_status fst = fm_tokenize(s->model, p->valuestring, strlen(p->valuestring), 1, &t, &n);
        if (fst != FM_OK) FAIL(fst == FM_ERR_ARG || fst == FM_ERR_TOKENIZER ? 400 : 500,
                               "cannot tokenize the prompt: %s", fm_last_error());
        ids = malloc((n ? n : 1) * sizeof *ids);
        if (!ids) { fm_free(t); FAIL(500, "out of memory"); }
        if (n) memcpy(ids, t, n * sizeof *ids);
        fm_free(t);
    } else if (cJSON_IsArray(p) && (!p->child || cJSON_IsNumber(p->child))) {
        n = (size_t)cJSON_GetArraySize(p);
        ids = malloc((n ? n : 1) * sizeof *ids);
        if (!ids) FAIL(500, "out of memory");
        size_t i = 0;
        for (const cJSON *e = p->child; e; e = e->next, i++) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= s->info.vocab ||
                e->valuedouble != (double)(int32_t)e->valuedouble) {
                free(ids);
                FAIL(400, "prompt[%zu] is not a token id of this model", i);
            }
            ids[i] = (int32_t)e->valuedouble;
        }
    } else {
        FAIL(400, "'prompt' must be a string, an array with one string, or an array of token ids");
    }
    int st = finish_prompt(j, ids, n, msg, msg_len);
    if (st) { *status = st; goto fail; }
    *param = NULL;
    return j;
fail:
    srv_job_unref(j);
    return NULL;
}

/* ---- responses --------------------------------------------------------------------- */

static const char *finish_str(int f) {
    switch (f) {
    case FIN_LENGTH: return "length";
    case FIN_TOOLS: return "tool_calls";
    default: return "stop";
    }
}

static cJSON *usage_obj(const srv_job *j) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)j->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)j->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(j->prompt_tokens + j->completion_tokens));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", (double)j->reused_tokens);
    return u;
}

static cJSON *head_obj(const srv_job *j, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", j->srv->cfg.model_id);
    cJSON_AddNullToObject(o, "system_fingerprint");
    return o;
}

static cJSON *calls_array(const srv_job *j, int from, int with_head) {
    cJSON *a = cJSON_CreateArray();
    for (int i = from; i < j->n_calls; i++) {
        cJSON *c = cJSON_CreateObject();
        if (with_head != 1) cJSON_AddNumberToObject(c, "index", i);
        if (with_head) {
            cJSON_AddStringToObject(c, "id", j->calls[i].id);
            cJSON_AddStringToObject(c, "type", "function");
        }
        cJSON *f = cJSON_AddObjectToObject(c, "function");
        if (with_head) cJSON_AddStringToObject(f, "name", j->calls[i].name);
        cJSON_AddStringToObject(f, "arguments", with_head == 2 ? "" : j->calls[i].args);
        cJSON_AddItemToArray(a, c);
    }
    return a;
}

char *srv_openai_result(srv_job *j) {
    cJSON *o;
    if (j->api == API_COMPLETION) {
        o = head_obj(j, "text_completion");
        cJSON *ch = cJSON_AddArrayToObject(o, "choices");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddStringToObject(c, "text", j->text.p ? j->text.p : "");
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddStringToObject(c, "finish_reason", finish_str(j->finish));
        cJSON_AddItemToArray(ch, c);
    } else {
        o = head_obj(j, "chat.completion");
        cJSON *ch = cJSON_AddArrayToObject(o, "choices");
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "index", 0);
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        if (j->text.n || !j->n_calls) cJSON_AddStringToObject(m, "content", j->text.p ? j->text.p : "");
        else cJSON_AddNullToObject(m, "content");
        cJSON_AddNullToObject(m, "refusal");
        if (j->reasoning.n) cJSON_AddStringToObject(m, "reasoning_content", j->reasoning.p);
        if (j->n_calls) cJSON_AddItemToObject(m, "tool_calls", calls_array(j, 0, 1));
        cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddStringToObject(c, "finish_reason", finish_str(j->finish));
        cJSON_AddItemToArray(ch, c);
    }
    cJSON_AddItemToObject(o, "usage", usage_obj(j));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *srv_openai_error(const char *type, const char *msg, const char *param) {
    cJSON *o = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    cJSON_AddNullToObject(e, "code");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Writes `data: <chunk>\n\n` with one choice whose delta (chat) or text (completion) is
 * given; takes ownership of delta. */
static void send_chunk(srv_job *j, cJSON *delta, const char *text, const char *finish) {
    cJSON *o = head_obj(j, j->api == API_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (j->api == API_CHAT) cJSON_AddItemToObject(c, "delta", delta ? delta : cJSON_CreateObject());
    else cJSON_AddStringToObject(c, "text", text ? text : "");
    cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(ch, c);
    if (j->include_usage) cJSON_AddNullToObject(o, "usage");
    srv_buf b = {0};
    sb_puts(&b, "data: ");
    sb_json(&b, o);
    sb_puts(&b, "\n\n");
    cJSON_Delete(o);
    srv_job_write(j, b.p, b.n);
    sb_free(&b);
}

void srv_openai_stream_start(srv_job *j) {
    if (j->api != API_CHAT) return;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "role", "assistant");
    cJSON_AddStringToObject(d, "content", "");
    send_chunk(j, d, NULL, NULL);
}

void srv_openai_stream_text(srv_job *j, const char *s, size_t n) {
    char *t = strndup(s, n);
    if (!t) return;
    if (j->api == API_CHAT) {
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "content", t);
        send_chunk(j, d, NULL, NULL);
    } else {
        send_chunk(j, NULL, t, NULL);
    }
    free(t);
}

void srv_openai_stream_reasoning(srv_job *j, const char *s, size_t n) {
    char *t = strndup(s, n);
    if (!t) return;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "reasoning_content", t);
    send_chunk(j, d, NULL, NULL);
    free(t);
}

void srv_openai_stream_call(srv_job *j, int index, const srv_call *c) {
    (void)c;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddItemToObject(d, "tool_calls", calls_array(j, index, 2));
    send_chunk(j, d, NULL, NULL);
    d = cJSON_CreateObject();
    cJSON_AddItemToObject(d, "tool_calls", calls_array(j, index, 0));
    send_chunk(j, d, NULL, NULL);
}

void srv_openai_stream_end(srv_job *j) {
    if (j->finish == FIN_CANCEL) return;
    if (j->finish == FIN_ERROR) {
        char *e = srv_openai_error(j->err_type, j->err_msg, NULL);
        srv_buf b = {0};
        sb_printf(&b, "data: %s\n\ndata: [DONE]\n\n", e ? e : "{}");
        srv_job_write(j, b.p, b.n);
        sb_free(&b);
        free(e);
        return;
    }
    send_chunk(j, NULL, NULL, finish_str(j->finish));
    if (j->include_usage) {
        cJSON *o = head_obj(j, j->api == API_CHAT ? "chat.completion.chunk" : "text_completion");
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_obj(j));
        srv_buf b = {0};
        sb_puts(&b, "data: ");
        sb_json(&b, o);
        sb_puts(&b, "\n\n");
        cJSON_Delete(o);
        srv_job_write(j, b.p, b.n);
        sb_free(&b);
    }
    srv_job_write(j, "data: [DONE]\n\n", 14);
}
