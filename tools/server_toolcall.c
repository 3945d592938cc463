/* server_toolcall.c: the output pipeline of a generation. Generated text passes through
 * (1) stop-sequence matching, which holds back any tail that could still become a stop
 * sequence, and (2) tool-call parsing of the model's own format (Qwen/Hermes/ChatML:
 * `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`), which holds back a tail
 * that could still become the opening tag. What survives goes to the API emitters as text
 * deltas and complete tool calls, so streaming and non-streaming replies agree. */
#include "server.h"

#include <stdlib.h>
#include <string.h>

static const char OPEN_TAG[] = "<tool_call>";
static const char CLOSE_TAG[] = "</tool_call>";

static int is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

/* Longest suffix of s[0..n) that is a proper prefix of pat. */
static size_t partial_suffix(const char *s, size_t n, const char *pat) {
    size_t pl = strlen(pat);
    size_t h = pl - 1 < n ? pl - 1 : n;
    for (; h > 0; h--)
        if (memcmp(s + n - h, pat, h) == 0) return h;
    return 0;
}

static void consume(srv_buf *b, size_t k) {
    if (k >= b->n) { b->n = 0; if (b->p) b->p[0] = 0; return; }
    memmove(b->p, b->p + k, b->n - k);
    b->n -= k;
    b->p[b->n] = 0;
}

/* Text headed for the client when tool calls are parsed: leading whitespace and
 * whitespace right before a tool call are dropped. */
static void text_out(srv_job *j, const char *s, size_t n) {
    if (!j->parse_tools) {
        if (n) srv_emit_text(j, s, n);
        return;
    }
    size_t last = n;
    while (last > 0 && is_ws(s[last - 1])) last--;
    if (last == 0) {
        if (j->any_text) sb_put(&j->ws, s, n);
        return;
    }
    size_t skip = 0;
    if (!j->any_text) while (skip < last && is_ws(s[skip])) skip++;
    if (j->ws.n) { srv_emit_text(j, j->ws.p, j->ws.n); consume(&j->ws, j->ws.n); }
    srv_emit_text(j, s + skip, last - skip);
    j->any_text = 1;
    sb_put(&j->ws, s + last, n - last);
}

static void call_out(srv_job *j, const char *name, const char *args) {
    consume(&j->ws, j->ws.n);
    srv_emit_call(j, name, args);
}

/* The JSON-schema type of parameter param of tool name, or NULL. */
static const char *param_type(const cJSON *tools, const char *name, const char *param) {
    for (const cJSON *t = tools ? tools->child : NULL; t; t = t->next) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(f, "name");
        if (!cJSON_IsString(nm) || strcmp(nm->valuestring, name) != 0) continue;
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(f, "parameters"), "properties");
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(props, param), "type");
        return cJSON_IsString(ty) ? ty->valuestring : NULL;
    }
    return NULL;
}

static int starts(const char *p, const char *end, const char *lit) {
    size_t l = strlen(lit);
    return (size_t)(end - p) >= l && memcmp(p, lit, l) == 0;
}

/* Qwen3-Coder: <function=NAME>\n<parameter=P>\nVALUE\n</parameter>...</function> */
static int parse_xml_call(const char *s, size_t n, const cJSON *tools, char **name, char **args) {
    const char *end = s + n, *p = s + 10;
    const char *gt = memchr(p, '>', (size_t)(end - p));
    if (!gt || gt == p) return -1;
    char *nm = strndup(p, (size_t)(gt - p));
    cJSON *obj = cJSON_CreateObject();
    if (!nm || !obj) goto fail;
    p = gt + 1;
    for (;;) {
        while (p < end && is_ws(*p)) p++;
        if (p >= end || starts(p, end, "</function>")) break;
        if (!starts(p, end, "<parameter=")) goto fail;
        p += 11;
        gt = memchr(p, '>', (size_t)(end - p));
        if (!gt || gt == p) goto fail;
        char pname[256];
        if ((size_t)(gt - p) >= sizeof pname) goto fail;
        memcpy(pname, p, (size_t)(gt - p));
        pname[gt - p] = 0;
        p = gt + 1;
        const char *close = memmem(p, (size_t)(end - p), "</parameter>", 12);
        if (!close) goto fail;
        const char *v = p, *ve = close;
        if (v < ve && *v == '\n') v++;
        if (ve > v && ve[-1] == '\n') ve--;
        const char *ty = param_type(tools, nm, pname);
        cJSON *val = NULL;
        if (!ty || strcmp(ty, "string") != 0) val = cJSON_ParseWithLength(v, (size_t)(ve - v));
        if (!val) {
            char *str = strndup(v, (size_t)(ve - v));
            val = str ? cJSON_CreateString(str) : NULL;
            free(str);
        }
        if (!val) goto fail;
        cJSON_DeleteItemFromObjectCaseSensitive(obj, pname);
        cJSON_AddItemToObject(obj, pname, val);
        p = close + 12;
    }
    *args = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    if (!*args) { free(nm); return -1; }
    *name = nm;
    return 0;
fail:
    free(nm);
    cJSON_Delete(obj);
    return -1;
}

int srv_parse_tool_call(const char *s, size_t n, const cJSON *tools, char **name, char **args) {
    *name = *args = NULL;
    while (n > 0 && is_ws(*s)) { s++; n--; }
    while (n > 0 && is_ws(s[n - 1])) n--;
    if (n > 10 && memcmp(s, "<function=", 10) == 0) return parse_xml_call(s, n, tools, name, args);
    if (n == 0 || s[0] != '{') return -1;
    cJSON *o = cJSON_ParseWithLength(s, n);
    if (!o) return -1;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(o, "name");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    if (!a) a = cJSON_GetObjectItemCaseSensitive(o, "parameters");
    int rc = -1;
    if (cJSON_IsString(nm) && nm->valuestring[0]) {
        char *as = NULL;
        if (!a) {
            as = strdup("{}");
        } else if (cJSON_IsString(a)) {
            /* arguments given as a JSON string: keep it if it is JSON, else quote it */
            cJSON *inner = cJSON_Parse(a->valuestring);
            as = inner ? cJSON_PrintUnformatted(inner) : cJSON_PrintUnformatted(a);
            cJSON_Delete(inner);
        } else {
            as = cJSON_PrintUnformatted(a);
        }
        char *ns = strdup(nm->valuestring);
        if (as && ns) {
            *name = ns;
            *args = as;
            rc = 0;
        } else {
            free(as);
            free(ns);
        }
    }
    cJSON_Delete(o);
    return rc;
}

static void tool_feed(srv_job *j, const char *s, size_t n) {
    if (!j->parse_tools) { text_out(j, s, n); return; }
    sb_put(&j->tb, s, n);
    for (;;) {
        if (!j->in_call) {
            char *p = j->tb.n ? memmem(j->tb.p, j->tb.n, OPEN_TAG, sizeof OPEN_TAG - 1) : NULL;
            if (p) {
                size_t at = (size_t)(p - j->tb.p);
                text_out(j, j->tb.p, at);
                consume(&j->tb, at + sizeof OPEN_TAG - 1);
                j->in_call = 1;
                continue;
            }
            size_t hold = partial_suffix(j->tb.p ? j->tb.p : "", j->tb.n, OPEN_TAG);
            text_out(j, j->tb.p, j->tb.n - hold);
            consume(&j->tb, j->tb.n - hold);
            return;
        }
        char *p = j->tb.n ? memmem(j->tb.p, j->tb.n, CLOSE_TAG, sizeof CLOSE_TAG - 1) : NULL;
        if (!p) return;
        size_t at = (size_t)(p - j->tb.p);
        char *name, *args;
        if (srv_parse_tool_call(j->tb.p, at, j->tools, &name, &args) == 0) {
            call_out(j, name, args);
            free(name);
            free(args);
        } else {
            text_out(j, OPEN_TAG, sizeof OPEN_TAG - 1);
            text_out(j, j->tb.p, at + sizeof CLOSE_TAG - 1);
        }
        consume(&j->tb, at + sizeof CLOSE_TAG - 1);
        j->in_call = 0;
    }
}

static const char THINK_OPEN[] = "<think>";
static const char THINK_CLOSE[] = "</think>";

/* Content after the reasoning: the whitespace right after </think> is dropped. */
static void content_feed(srv_job *j, const char *s, size_t n) {
    if (j->skip_ws) {
        while (n > 0 && is_ws(*s)) { s++; n--; }
        if (n == 0) return;
        j->skip_ws = 0;
    }
    tool_feed(j, s, n);
}

/* Splits a leading <think>...</think> off as reasoning; the rest is content. */
static void think_feed(srv_job *j, const char *s, size_t n) {
    if (!j->parse_think || j->think_state == 2) { content_feed(j, s, n); return; }
    sb_put(&j->th, s, n);
    if (j->think_state == 0) {
        size_t k = 0;
        while (k < j->th.n && is_ws(j->th.p[k])) k++;
        size_t rest = j->th.n - k, ol = sizeof THINK_OPEN - 1;
        if (rest >= ol && memcmp(j->th.p + k, THINK_OPEN, ol) == 0) {
            consume(&j->th, k + ol);
            j->think_state = 1;
        } else if (rest < ol && memcmp(j->th.p + k, THINK_OPEN, rest) == 0) {
            return; /* could still become <think> */
        } else {
            j->think_state = 2;
            srv_buf b = j->th;
            memset(&j->th, 0, sizeof j->th);
            content_feed(j, b.p, b.n);
            sb_free(&b);
            return;
        }
    }
    char *p = j->th.n ? memmem(j->th.p, j->th.n, THINK_CLOSE, sizeof THINK_CLOSE - 1) : NULL;
    if (p) {
        size_t at = (size_t)(p - j->th.p);
        if (at) srv_emit_reasoning(j, j->th.p, at);
        consume(&j->th, at + sizeof THINK_CLOSE - 1);
        j->think_state = 2;
        j->skip_ws = 1;
        srv_buf b = j->th;
        memset(&j->th, 0, sizeof j->th);
        if (b.n) content_feed(j, b.p, b.n);
        sb_free(&b);
        return;
    }
    size_t hold = partial_suffix(j->th.p ? j->th.p : "", j->th.n, THINK_CLOSE);
    if (j->th.n > hold) srv_emit_reasoning(j, j->th.p, j->th.n - hold);
    consume(&j->th, j->th.n - hold);
}

/* Copies s[0..n) with each invalid UTF-8 byte replaced by U+FFFD (as Hugging Face's
 * decode with errors="replace" does), so replies are always valid JSON text. */
static char *utf8_repair(const char *s, size_t n, size_t *out_n) {
    srv_buf b = {0};
    size_t i = 0;
    while (i < n) {
        size_t k = i;
        while (k < n && (unsigned char)s[k] < 0x80) k++;
        if (k > i) { sb_put(&b, s + i, k - i); i = k; continue; }
        size_t len = 2;
        unsigned c = (unsigned char)s[i];
        if (c >= 0xE0) len = c >= 0xF0 ? 4 : 3;
        if (i + len <= n && srv_utf8_valid(s + i, len)) sb_put(&b, s + i, len), i += len;
        else sb_put(&b, "\xEF\xBF\xBD", 3), i++;
    }
    *out_n = b.n;
    return b.oom ? (free(b.p), NULL) : b.p;
}

int srv_pipe_feed(srv_job *j, const char *s, size_t n) {
    if (j->stop_hit) return 1;
    if (!srv_utf8_valid(s, n)) {
        size_t rn = 0;
        char *r = utf8_repair(s, n, &rn);
        if (!r) return 1;
        int ret = srv_pipe_feed(j, r, rn);
        free(r);
        return ret;
    }
    if (j->n_stops == 0) { think_feed(j, s, n); return 0; }
    sb_put(&j->acc, s, n);
    if (j->acc.oom) return 1;
    size_t best = (size_t)-1;
    int bi = -1;
    for (int k = 0; k < j->n_stops; k++) {
        char *p = memmem(j->acc.p, j->acc.n, j->stops[k], strlen(j->stops[k]));
        if (p && (size_t)(p - j->acc.p) < best) { best = (size_t)(p - j->acc.p); bi = k; }
    }
    if (bi >= 0) {
        think_feed(j, j->acc.p, best);
        consume(&j->acc, j->acc.n);
        j->stop_hit = 1;
        j->stop_idx = bi;
        return 1;
    }
    size_t hold = 0;
    for (int k = 0; k < j->n_stops; k++) {
        size_t h = partial_suffix(j->acc.p, j->acc.n, j->stops[k]);
        if (h > hold) hold = h;
    }
    think_feed(j, j->acc.p, j->acc.n - hold);
    consume(&j->acc, j->acc.n - hold);
    return 0;
}

void srv_pipe_finish(srv_job *j) {
    if (j->acc.n) { think_feed(j, j->acc.p, j->acc.n); consume(&j->acc, j->acc.n); }
    if (j->th.n) {
        /* unfinished reasoning stays reasoning; an undecided start is content */
        if (j->think_state == 1) srv_emit_reasoning(j, j->th.p, j->th.n);
        else content_feed(j, j->th.p, j->th.n);
        consume(&j->th, j->th.n);
    }
    if (!j->parse_tools) return;
    if (j->in_call) {
        char *name, *args;
        /* a call the model did not close (EOS or a stop sequence right after the JSON) */
        if (j->finish != FIN_LENGTH && srv_parse_tool_call(j->tb.p, j->tb.n, j->tools, &name, &args) == 0) {
            call_out(j, name, args);
            free(name);
            free(args);
        } else {
            text_out(j, OPEN_TAG, sizeof OPEN_TAG - 1);
            text_out(j, j->tb.p ? j->tb.p : "", j->tb.n);
        }
        j->in_call = 0;
    } else if (j->tb.n) {
        text_out(j, j->tb.p, j->tb.n);
    }
    consume(&j->tb, j->tb.n);
    if (j->ws.n && j->n_calls == 0) srv_emit_text(j, j->ws.p, j->ws.n);
    consume(&j->ws, j->ws.n);
}

/* ---- emitters: non-streaming jobs accumulate, streaming ones format per API ---------- */

void srv_emit_start(srv_job *j) {
    if (!j->stream) return;
    if (j->api == API_MESSAGES) srv_anthropic_stream_start(j);
    else srv_openai_stream_start(j);
}

void srv_emit_text(srv_job *j, const char *s, size_t n) {
    if (n == 0) return;
    if (!j->stream) { sb_put(&j->text, s, n); return; }
    if (j->api == API_MESSAGES) srv_anthropic_stream_text(j, s, n);
    else srv_openai_stream_text(j, s, n);
}

void srv_emit_reasoning(srv_job *j, const char *s, size_t n) {
    if (n == 0) return;
    if (!j->stream) { sb_put(&j->reasoning, s, n); return; }
    if (j->api == API_MESSAGES) srv_anthropic_stream_reasoning(j, s, n);
    else srv_openai_stream_reasoning(j, s, n);
}

void srv_emit_call(srv_job *j, const char *name, const char *args) {
    srv_call *nc = realloc(j->calls, (size_t)(j->n_calls + 1) * sizeof *nc);
    if (!nc) return;
    j->calls = nc;
    srv_call *c = &nc[j->n_calls];
    char id[40];
    srv_make_id(id, sizeof id, j->api == API_MESSAGES ? "toolu_" : "call_");
    c->id = strdup(id);
    c->name = strdup(name);
    c->args = strdup(args);
    if (!c->id || !c->name || !c->args) {
        free(c->id); free(c->name); free(c->args);
        return;
    }
    j->n_calls++;
    if (!j->stream) return;
    if (j->api == API_MESSAGES) srv_anthropic_stream_call(j, c);
    else srv_openai_stream_call(j, j->n_calls - 1, c);
}

void srv_emit_end(srv_job *j) {
    if (!j->stream) return;
    if (j->api == API_MESSAGES) srv_anthropic_stream_end(j);
    else srv_openai_stream_end(j);
}
