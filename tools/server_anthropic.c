/* server_anthropic.c: the Anthropic Messages routes of `flash-moe serve`: POST /v1/messages
 * (non-streaming, and streaming with the full event sequence: message_start, ping,
 * content_block_start/delta/stop for text and tool_use blocks, message_delta, message_stop)
 * and POST /v1/messages/count_tokens. tool_use and tool_result blocks map onto the chat
 * template's assistant tool calls and tool messages. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(st, ...) do { *status = (st); snprintf(msg, msg_len, __VA_ARGS__); goto fail; } while (0)

/* Joins the text of a string or an array of text blocks into *out. */
static int text_of(const cJSON *c, srv_pool *pl, const char **out, const char *where, char *msg,
                   size_t msg_len) {
    *out = NULL;
    if (cJSON_IsString(c)) { *out = c->valuestring; return 0; }
    if (!cJSON_IsArray(c)) { snprintf(msg, msg_len, "%s must be a string or an array of text blocks", where); return -1; }
    srv_buf b = {0};
    sb_puts(&b, "");
    int k = 0;
    for (const cJSON *e = c->child; e; e = e->next, k++) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(e, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(e, "text");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") != 0 || !cJSON_IsString(tx)) {
            snprintf(msg, msg_len, "%s.%d: only text blocks are supported here", where, k);
            sb_free(&b);
            return -1;
        }
        if (k) sb_puts(&b, "\n");
        sb_puts(&b, tx->valuestring);
    }
    if (b.oom) { sb_free(&b); snprintf(msg, msg_len, "out of memory"); return -1; }
    *out = srv_pool_add(pl, b.p);
    return 0;
}

/* Converts system + messages into fm_chat_msg. A user turn's tool_result blocks become
 * tool messages (before the turn's text). */
static int an_messages(const cJSON *req, srv_pool *pl, fm_chat_msg **out, size_t *n_out,
                       char *msg, size_t msg_len) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(req, "messages");
    if (!cJSON_IsArray(arr)) { snprintf(msg, msg_len, "messages: field required (an array)"); return -1; }
    int n = cJSON_GetArraySize(arr);
    if (n == 0) { snprintf(msg, msg_len, "messages: at least one message is required"); return -1; }
    /* upper bound: one per block plus one text message per turn, plus the system */
    size_t cap = 1;
    for (const cJSON *e = arr->child; e; e = e->next) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        cap += 1 + (cJSON_IsArray(c) ? (size_t)cJSON_GetArraySize(c) : 0);
    }
    fm_chat_msg *m = calloc(cap, sizeof *m);
    if (!m) { snprintf(msg, msg_len, "out of memory"); return -1; }
    size_t k = 0;
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(req, "system");
    if (sys && !cJSON_IsNull(sys)) {
        m[k].role = "system";
        if (text_of(sys, pl, &m[k].content, "system", msg, msg_len)) goto fail;
        k++;
    }
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !cJSON_IsString(role) ||
            (strcmp(role->valuestring, "user") && strcmp(role->valuestring, "assistant"))) {
            snprintf(msg, msg_len, "messages.%d.role must be \"user\" or \"assistant\"", i);
            goto fail;
        }
        int asst = role->valuestring[0] == 'a';
        if (cJSON_IsString(c)) {
            m[k].role = asst ? "assistant" : "user";
            m[k++].content = c->valuestring;
            continue;
        }
        if (!cJSON_IsArray(c)) {
            snprintf(msg, msg_len, "messages.%d.content must be a string or an array of content blocks", i);
            goto fail;
        }
        srv_buf text = {0}, think = {0};
        sb_puts(&text, "");
        cJSON *calls = asst ? cJSON_CreateArray() : NULL;
        int b = 0, n_text = 0;
        for (const cJSON *blk = c->child; blk; blk = blk->next, b++) {
            const cJSON *ty = cJSON_GetObjectItemCaseSensitive(blk, "type");
            const char *t = cJSON_IsString(ty) ? ty->valuestring : "";
            if (!cJSON_IsObject(blk) || !cJSON_IsString(ty)) {
                snprintf(msg, msg_len, "messages.%d.content.%d must be an object with a 'type'", i, b);
                goto blk_fail;
            }
            if (strcmp(t, "text") == 0) {
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(blk, "text");
                if (!cJSON_IsString(tx)) { snprintf(msg, msg_len, "messages.%d.content.%d.text must be a string", i, b); goto blk_fail; }
                if (n_text++) sb_puts(&text, "\n");
                sb_puts(&text, tx->valuestring);
            } else if (asst && strcmp(t, "tool_use") == 0) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(blk, "name");
                const cJSON *in = cJSON_GetObjectItemCaseSensitive(blk, "input");
                if (!cJSON_IsString(nm) || !cJSON_IsObject(in)) {
                    snprintf(msg, msg_len, "messages.%d.content.%d: tool_use needs a string 'name' and an object 'input'", i, b);
                    goto blk_fail;
                }
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "name", nm->valuestring);
                cJSON_AddItemToObject(o, "arguments", cJSON_Duplicate(in, 1));
                cJSON_AddItemToArray(calls, o);
            } else if (asst && strcmp(t, "thinking") == 0) {
                const cJSON *th = cJSON_GetObjectItemCaseSensitive(blk, "thinking");
                if (cJSON_IsString(th)) sb_puts(&think, th->valuestring);
            } else if (asst && strcmp(t, "redacted_thinking") == 0) {
            } else if (!asst && strcmp(t, "tool_result") == 0) {
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(blk, "tool_use_id");
                const cJSON *rc = cJSON_GetObjectItemCaseSensitive(blk, "content");
                if (!cJSON_IsString(id)) { snprintf(msg, msg_len, "messages.%d.content.%d.tool_use_id must be a string", i, b); goto blk_fail; }
                m[k].role = "tool";
                m[k].tool_call_id = id->valuestring;
                if (!rc || cJSON_IsNull(rc)) m[k].content = "";
                else {
                    char where[64];
                    snprintf(where, sizeof where, "messages.%d.content.%d.content", i, b);
                    if (text_of(rc, pl, &m[k].content, where, msg, msg_len)) goto blk_fail;
                }
                /* the tool's name, from the assistant turn that called it */
                for (const cJSON *p = arr->child; p && p != e; p = p->next) {
                    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(p, "content");
                    for (const cJSON *q = cJSON_IsArray(pc) ? pc->child : NULL; q; q = q->next) {
                        const cJSON *qid = cJSON_GetObjectItemCaseSensitive(q, "id");
                        const cJSON *qn = cJSON_GetObjectItemCaseSensitive(q, "name");
                        if (cJSON_IsString(qid) && cJSON_IsString(qn) && strcmp(qid->valuestring, id->valuestring) == 0)
                            m[k].name = qn->valuestring;
                    }
                }
                k++;
            } else {
                snprintf(msg, msg_len, "messages.%d.content.%d: content blocks of type '%.40s' are not "
                         "supported in %s turns", i, b, t, asst ? "assistant" : "user");
                goto blk_fail;
            }
            continue;
        blk_fail:
            sb_free(&text);
            sb_free(&think);
            cJSON_Delete(calls);
            goto fail;
        }
        int has_calls = calls && cJSON_GetArraySize(calls) > 0;
        if (n_text || has_calls || (!asst && b == 0)) {
            m[k].role = asst ? "assistant" : "user";
            if (n_text || !has_calls) {
                m[k].content = srv_pool_add(pl, text.p);
                text.p = NULL;
            }
            if (think.n) {
                m[k].reasoning_content = srv_pool_add(pl, think.p);
                think.p = NULL;
            }
            if (has_calls) m[k].tool_calls_json = srv_pool_add(pl, cJSON_PrintUnformatted(calls));
            k++;
        }
        sb_free(&text);
        sb_free(&think);
        cJSON_Delete(calls);
    }
    *out = m;
    *n_out = k;
    return 0;
fail:
    free(m);
    return -1;
}

/* tools -> OpenAI-style JSON array for the chat template. */
static int an_tools(const cJSON *tools, srv_pool *pl, const char **out, char *msg, size_t msg_len) {
    *out = NULL;
    if (!tools || cJSON_IsNull(tools)) return 0;
    if (!cJSON_IsArray(tools)) { snprintf(msg, msg_len, "tools must be an array"); return -1; }
    cJSON *a = cJSON_CreateArray();
    int k = 0;
    for (const cJSON *t = tools->child; t; t = t->next, k++) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(t, "type");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        const cJSON *ds = cJSON_GetObjectItemCaseSensitive(t, "description");
        const cJSON *sc = cJSON_GetObjectItemCaseSensitive(t, "input_schema");
        if (ty && !cJSON_IsNull(ty) && !(cJSON_IsString(ty) && strcmp(ty->valuestring, "custom") == 0)) {
            snprintf(msg, msg_len, "tools.%d: server tools of type '%.40s' are not supported", k,
                     cJSON_IsString(ty) ? ty->valuestring : "?");
            cJSON_Delete(a);
            return -1;
        }
        if (!cJSON_IsObject(t) || !cJSON_IsString(nm) || !nm->valuestring[0] || !cJSON_IsObject(sc)) {
            snprintf(msg, msg_len, "tools.%d needs a non-empty string 'name' and an object 'input_schema'", k);
            cJSON_Delete(a);
            return -1;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", "function");
        cJSON *f = cJSON_AddObjectToObject(o, "function");
        cJSON_AddStringToObject(f, "name", nm->valuestring);
        if (cJSON_IsString(ds)) cJSON_AddStringToObject(f, "description", ds->valuestring);
        cJSON_AddItemToObject(f, "parameters", cJSON_Duplicate(sc, 1));
        cJSON_AddItemToArray(a, o);
    }
    if (k) *out = srv_pool_add(pl, cJSON_PrintUnformatted(a));
    cJSON_Delete(a);
    return 0;
}

static int tool_named(const cJSON *tools, const char *name) {
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        if (cJSON_IsString(nm) && strcmp(nm->valuestring, name) == 0) return 1;
    }
    return 0;
}

static const char *const MSG_KEYS[] = {
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier", NULL};

/* Parses everything but max_tokens/stream into j (prompt included). count_only skips
 * the fields generation needs. */
static int an_parse(server *s, srv_job *j, cJSON *req, int count_only, int *status, char *msg,
                    size_t msg_len) {
    srv_pool pl = {0};
    fm_chat_msg *msgs = NULL;
    size_t n_msgs = 0;
    const char *param = NULL;
    *status = 400;
    if (!cJSON_IsObject(req)) FAIL(400, "the request body must be a JSON object");
    const char *bad = srv_unknown_key(req, MSG_KEYS);
    if (bad) FAIL(400, "%.60s: extra inputs are not permitted", bad);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(req, "model");
    if (!cJSON_IsString(model)) FAIL(400, "model: field required (a string)");
    /* thinking maps onto the chat templates' enable_thinking switch (Qwen3 and others);
     * the reasoning comes back as thinking blocks */
    const char *extra = NULL;
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(req, "thinking");
    if (th && !cJSON_IsNull(th)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(th, "type");
        if (cJSON_IsString(ty) && strcmp(ty->valuestring, "disabled") == 0) extra = "{\"enable_thinking\":false}";
        else if (cJSON_IsString(ty) && strcmp(ty->valuestring, "enabled") == 0) extra = "{\"enable_thinking\":true}";
        else FAIL(400, "thinking.type must be \"enabled\" or \"disabled\"");
    }
    if (!count_only) {
        if (srv_sampling(s, req, 1, &j->gp, msg, msg_len, &param)) goto fail;
        const cJSON *ss = cJSON_GetObjectItemCaseSensitive(req, "stop_sequences");
        if (ss && !cJSON_IsNull(ss) && !cJSON_IsArray(ss)) FAIL(400, "stop_sequences must be an array of strings");
        if (srv_stops(j, ss, msg, msg_len)) goto fail;
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(req, "tools");
    const char *tools_json = NULL;
    if (an_tools(tools, &pl, &tools_json, msg, msg_len)) goto fail;
    j->parse_tools = tools_json != NULL;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(req, "tool_choice");
    if (tc && !cJSON_IsNull(tc)) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(tc, "type");
        const char *t = cJSON_IsString(ty) ? ty->valuestring : "";
        if (!cJSON_IsObject(tc) || !cJSON_IsString(ty))
            FAIL(400, "tool_choice must be an object with a 'type' (auto, any, tool, none)");
        if (strcmp(t, "auto") != 0 && !tools_json) FAIL(400, "tool_choice requires tools");
        if (strcmp(t, "none") == 0) {
            tools_json = NULL;
            j->parse_tools = 0;
        } else if (strcmp(t, "auto") == 0) {
        } else if (strcmp(t, "any") == 0) {
            j->prefix = strdup("<tool_call>\n");
        } else if (strcmp(t, "tool") == 0) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(tc, "name");
            if (!cJSON_IsString(nm) || !tool_named(tools, nm->valuestring))
                FAIL(400, "tool_choice.name must name one of the tools");
            cJSON *q = cJSON_CreateString(nm->valuestring);
            char *qs = cJSON_PrintUnformatted(q);
            cJSON_Delete(q);
            srv_buf b = {0};
            sb_printf(&b, "<tool_call>\n{\"name\": %s, \"arguments\": ", qs ? qs : "\"\"");
            cJSON_free(qs);
            j->prefix = b.p;
        } else {
            FAIL(400, "tool_choice.type must be auto, any, tool or none");
        }
    }
    if (an_messages(req, &pl, &msgs, &n_msgs, msg, msg_len)) goto fail;
    int st = srv_prepare_prompt(j, msgs, n_msgs, tools_json, extra, msg, msg_len);
    if (st) { *status = st; goto fail; }
    free(msgs);
    srv_pool_free(&pl);
    return 0;
fail:
    if (param && !strstr(msg, param)) {
        size_t l = strlen(msg);
        snprintf(msg + l, msg_len - l, " (%s)", param);
    }
    free(msgs);
    srv_pool_free(&pl);
    return -1;
}

srv_job *srv_anthropic_messages(server *s, cJSON *req, int *status, char *msg, size_t msg_len) {
    *status = 400;
    srv_job *j = srv_job_new(s, API_MESSAGES);
    if (!j) { *status = 500; snprintf(msg, msg_len, "out of memory"); return NULL; }
    if (!cJSON_IsObject(req)) FAIL(400, "the request body must be a JSON object");
    const char *param = NULL;
    double d;
    int r = srv_num(req, "max_tokens", 1, 2147483647.0, 1, &d, msg, msg_len, &param);
    if (r < 0) goto fail;
    if (r == 0) FAIL(400, "max_tokens: field required");
    j->gp.max_tokens = (int32_t)d;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(req, "stream");
    if (st && !cJSON_IsNull(st) && !cJSON_IsBool(st)) FAIL(400, "stream must be a boolean");
    j->stream = cJSON_IsTrue(st);
    if (an_parse(s, j, req, 0, status, msg, msg_len)) goto fail;
    return j;
fail:
    srv_job_unref(j);
    return NULL;
}

char *srv_anthropic_count(server *s, cJSON *req, int *status, char *msg, size_t msg_len) {
    srv_job *j = srv_job_new(s, API_MESSAGES);
    if (!j) { *status = 500; snprintf(msg, msg_len, "out of memory"); return NULL; }
    /* count_tokens takes the same body minus the generation fields */
    cJSON *mt = cJSON_IsObject(req) ? cJSON_DetachItemFromObjectCaseSensitive(req, "max_tokens") : NULL;
    cJSON_Delete(mt);
    j->count_only = 1;
    char *out = NULL;
    if (an_parse(s, j, req, 1, status, msg, msg_len) == 0) {
        srv_buf b = {0};
        sb_printf(&b, "{\"input_tokens\":%zu}", j->n_ids);
        out = b.p;
    }
    srv_job_unref(j);
    return out;
}

/* ---- responses --------------------------------------------------------------------- */

static const char *stop_reason(const srv_job *j) {
    switch (j->finish) {
    case FIN_LENGTH: return "max_tokens";
    case FIN_TOOLS: return "tool_use";
    case FIN_STOPSEQ: return "stop_sequence";
    default: return "end_turn";
    }
}

static void add_stop(cJSON *o, const srv_job *j) {
    cJSON_AddStringToObject(o, "stop_reason", stop_reason(j));
    if (j->finish == FIN_STOPSEQ && j->stop_idx >= 0) cJSON_AddStringToObject(o, "stop_sequence", j->stops[j->stop_idx]);
    else cJSON_AddNullToObject(o, "stop_sequence");
}

static cJSON *usage_obj(const srv_job *j, int with_output) {
    cJSON *u = cJSON_CreateObject();
    /* as the API counts: input_tokens excludes what was read from the prompt cache */
    cJSON_AddNumberToObject(u, "input_tokens", (double)(j->prompt_tokens - j->reused_tokens));
    cJSON_AddNumberToObject(u, "cache_creation_input_tokens", 0);
    cJSON_AddNumberToObject(u, "cache_read_input_tokens", (double)j->reused_tokens);
    cJSON_AddNumberToObject(u, "output_tokens", with_output ? (double)j->completion_tokens : 0);
    return u;
}

static cJSON *tool_input(const char *args) {
    cJSON *in = cJSON_Parse(args);
    if (!cJSON_IsObject(in)) {
        cJSON_Delete(in);
        in = cJSON_CreateObject();
    }
    return in;
}

char *srv_anthropic_result(srv_job *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "type", "message");
    cJSON_AddStringToObject(o, "role", "assistant");
    cJSON_AddStringToObject(o, "model", j->srv->cfg.model_id);
    cJSON *c = cJSON_AddArrayToObject(o, "content");
    if (j->reasoning.n) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "type", "thinking");
        cJSON_AddStringToObject(b, "thinking", j->reasoning.p);
        cJSON_AddStringToObject(b, "signature", "");
        cJSON_AddItemToArray(c, b);
    }
    if (j->text.n) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "type", "text");
        cJSON_AddStringToObject(b, "text", j->text.p);
        cJSON_AddItemToArray(c, b);
    }
    for (int i = 0; i < j->n_calls; i++) {
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "type", "tool_use");
        cJSON_AddStringToObject(b, "id", j->calls[i].id);
        cJSON_AddStringToObject(b, "name", j->calls[i].name);
        cJSON_AddItemToObject(b, "input", tool_input(j->calls[i].args));
        cJSON_AddItemToArray(c, b);
    }
    add_stop(o, j);
    cJSON_AddItemToObject(o, "usage", usage_obj(j, 1));
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *srv_anthropic_error(const char *type, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "error");
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddStringToObject(e, "message", msg);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Writes one SSE event; takes ownership of data. */
static void event(srv_job *j, const char *name, cJSON *data) {
    srv_buf b = {0};
    sb_printf(&b, "event: %s\ndata: ", name);
    sb_json(&b, data);
    sb_puts(&b, "\n\n");
    cJSON_Delete(data);
    srv_job_write(j, b.p, b.n);
    sb_free(&b);
}

static cJSON *typed(const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

static void close_block(srv_job *j) {
    if (!j->blk_open) return;
    if (j->blk_kind == 1) {
        /* thinking blocks end with their signature (none here: not Anthropic-signed) */
        cJSON *s = typed("content_block_delta");
        cJSON_AddNumberToObject(s, "index", j->blk_index);
        cJSON *d = cJSON_AddObjectToObject(s, "delta");
        cJSON_AddStringToObject(d, "type", "signature_delta");
        cJSON_AddStringToObject(d, "signature", "");
        event(j, "content_block_delta", s);
    }
    cJSON *o = typed("content_block_stop");
    cJSON_AddNumberToObject(o, "index", j->blk_index);
    event(j, "content_block_stop", o);
    j->blk_open = 0;
    j->blk_index++;
}

void srv_anthropic_stream_start(srv_job *j) {
    cJSON *o = typed("message_start");
    cJSON *m = cJSON_AddObjectToObject(o, "message");
    cJSON_AddStringToObject(m, "id", j->id);
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddStringToObject(m, "model", j->srv->cfg.model_id);
    cJSON_AddArrayToObject(m, "content");
    cJSON_AddNullToObject(m, "stop_reason");
    cJSON_AddNullToObject(m, "stop_sequence");
    j->prompt_tokens = (int64_t)j->n_ids;
    cJSON_AddItemToObject(m, "usage", usage_obj(j, 0));
    event(j, "message_start", o);
    event(j, "ping", typed("ping"));
}

/* A text (kind 0) or thinking (kind 1) delta, opening a block of that kind if needed. */
static void block_delta(srv_job *j, int kind, const char *s, size_t n) {
    const char *type = kind ? "thinking" : "text";
    if (j->blk_open && j->blk_kind != kind) close_block(j);
    if (!j->blk_open) {
        cJSON *o = typed("content_block_start");
        cJSON_AddNumberToObject(o, "index", j->blk_index);
        cJSON *b = cJSON_AddObjectToObject(o, "content_block");
        cJSON_AddStringToObject(b, "type", type);
        cJSON_AddStringToObject(b, type, "");
        if (kind) cJSON_AddStringToObject(b, "signature", "");
        event(j, "content_block_start", o);
        j->blk_open = 1;
        j->blk_kind = kind;
    }
    char *t = strndup(s, n);
    if (!t) return;
    cJSON *o = typed("content_block_delta");
    cJSON_AddNumberToObject(o, "index", j->blk_index);
    cJSON *d = cJSON_AddObjectToObject(o, "delta");
    cJSON_AddStringToObject(d, "type", kind ? "thinking_delta" : "text_delta");
    cJSON_AddStringToObject(d, type, t);
    free(t);
    event(j, "content_block_delta", o);
}

void srv_anthropic_stream_text(srv_job *j, const char *s, size_t n) { block_delta(j, 0, s, n); }

void srv_anthropic_stream_reasoning(srv_job *j, const char *s, size_t n) { block_delta(j, 1, s, n); }

void srv_anthropic_stream_call(srv_job *j, const srv_call *c) {
    close_block(j);
    cJSON *o = typed("content_block_start");
    cJSON_AddNumberToObject(o, "index", j->blk_index);
    cJSON *b = cJSON_AddObjectToObject(o, "content_block");
    cJSON_AddStringToObject(b, "type", "tool_use");
    cJSON_AddStringToObject(b, "id", c->id);
    cJSON_AddStringToObject(b, "name", c->name);
    cJSON_AddObjectToObject(b, "input");
    event(j, "content_block_start", o);
    j->blk_open = 1;
    j->blk_kind = 2;
    /* the input JSON in a few pieces, as the API streams it */
    cJSON *in = tool_input(c->args);
    char *js = cJSON_PrintUnformatted(in);
    cJSON_Delete(in);
    size_t n = js ? strlen(js) : 0, step = n / 3 + 1;
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        char *part = strndup(js + off, k);
        if (!part) break;
        cJSON *d = typed("content_block_delta");
        cJSON_AddNumberToObject(d, "index", j->blk_index);
        cJSON *dd = cJSON_AddObjectToObject(d, "delta");
        cJSON_AddStringToObject(dd, "type", "input_json_delta");
        cJSON_AddStringToObject(dd, "partial_json", part);
        free(part);
        event(j, "content_block_delta", d);
    }
    cJSON_free(js);
    close_block(j);
}

void srv_anthropic_stream_end(srv_job *j) {
    if (j->finish == FIN_CANCEL) return;
    if (j->finish == FIN_ERROR) {
        cJSON *o = typed("error");
        cJSON *e = cJSON_AddObjectToObject(o, "error");
        cJSON_AddStringToObject(e, "type", j->err_status == 400 ? "invalid_request_error" : "api_error");
        cJSON_AddStringToObject(e, "message", j->err_msg);
        event(j, "error", o);
        return;
    }
    close_block(j);
    cJSON *o = typed("message_delta");
    cJSON *d = cJSON_AddObjectToObject(o, "delta");
    add_stop(d, j);
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "output_tokens", (double)j->completion_tokens);
    event(j, "message_delta", o);
    event(j, "message_stop", typed("message_stop"));
}
