/* test_public_api.c: an independent program that uses flash-moe only through the public
 * header <flashmoe.h>: opens the bundled demo model (models/demo), tokenizes, renders a
 * chat, and generates text: greedy determinism, streaming pieces equal the returned text
 * and are valid UTF-8, max_tokens, stop strings, cancellation from the callback, and an
 * over-long prompt. Prints TAP lines itself (no internal headers). */
#include <flashmoe.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int n_fail, n_checks;
#define CHECK(c, ...) do { int ok_ = (c) ? 1 : 0; n_checks++; n_fail += !ok_;          \
        printf(ok_ ? "ok - " : "not ok - "); printf(__VA_ARGS__);                      \
        if (!ok_) printf("  [line %d: %s]", __LINE__, fm_last_error());                 \
        printf("\n"); fflush(stdout); } while (0)

/* Independent UTF-8 check (RFC 3629 table). */
static int utf8_ok(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) k = 2;
        else if (c >= 0xF0 && c <= 0xF4) k = 3;
        else return 0;
        for (size_t j = 1; j <= k; j++)
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
        i += k + 1;
    }
    return 1;
}

typedef struct {
    char buf[65536];
    size_t len;
    int pieces, bad_utf8, cancel_after;
    long long last_generated;
} sink;

static int on_piece(const char *p, size_t n, const fm_stats *st, void *user) {
    sink *k = user;
    if (!utf8_ok((const unsigned char *)p, n)) k->bad_utf8++;
    if (k->len + n < sizeof k->buf) {
        memcpy(k->buf + k->len, p, n);
        k->len += n;
        k->buf[k->len] = 0;
    }
    k->pieces++;
    k->last_generated = (long long)st->generated_tokens;
    return k->cancel_after && k->pieces >= k->cancel_after;
}

int main(void) {
    const char *root = getenv("FM_ROOT");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/demo", root && *root ? root : ".");
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        printf("ok - skipped: no demo model\n");
        return 0;
    }
    fm_model_params mp;
    fm_model_params_default(&mp);
    mp.cache_dir = "";
    fm_model *m = NULL;
    fm_status st = fm_model_open(dir, &mp, &m);
    CHECK(st == FM_OK && m, "open the demo model %s", dir);
    if (!m) return 1;
    fm_model_info info;
    CHECK(fm_model_get_info(m, &info) == FM_OK && info.vocab > 0 && info.n_ctx > 0,
          "model info (%s, vocab %d, n_ctx %d)", info.arch, info.vocab, info.n_ctx);

    const char *hello = "Once upon a time";
    int32_t *ids = NULL;
    size_t n_ids = 0;
    st = fm_tokenize(m, hello, strlen(hello), 0, &ids, &n_ids);
    CHECK(st == FM_OK && n_ids > 0, "tokenize (%zu ids)", n_ids);
    char *back = NULL;
    size_t back_len = 0;
    st = fm_detokenize(m, ids, n_ids, &back, &back_len);
    CHECK(st == FM_OK && back && strcmp(back, hello) == 0, "detokenize round trip");
    fm_free(back);
    fm_free(ids);

    fm_chat_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.role = "user";
    msg.content = "Tell me a story.";
    char *rendered = NULL;
    st = fm_chat_render(m, &msg, 1, NULL, NULL, 1, &rendered);
    CHECK(st == FM_OK && rendered && strstr(rendered, "Tell me a story."), "chat render has the message");
    fm_free(rendered);

    fm_session *s = NULL;
    CHECK(fm_session_new(m, &s) == FM_OK && s, "session");
    fm_gen_params gp;
    fm_gen_params_default(&gp);
    gp.max_tokens = 40;
    gp.ignore_eos = 1;
    static sink k1, k2;
    char *t1 = NULL, *t2 = NULL;
    st = fm_generate(s, hello, &gp, on_piece, &k1, &t1);
    CHECK(st == FM_OK && t1 && strlen(t1) > 0, "greedy generation produces text");
    fm_stats fs;
    fm_session_stats(s, &fs);
    CHECK(fs.generated_tokens == 40 && fm_session_finish_reason(s) == FM_FINISH_LENGTH,
          "max_tokens 40 ends with finish length (%lld)", (long long)fs.generated_tokens);
    CHECK(t1 && strcmp(k1.buf, t1) == 0, "streamed pieces concatenate to the returned text");
    CHECK(k1.bad_utf8 == 0, "every streamed piece is valid UTF-8");
    CHECK(fs.prompt_tokens > 0 && fs.ttft_ms > 0 && fs.rss_bytes > 0 && fs.kv_bytes > 0,
          "stats: prompt %lld, ttft %.1f ms, rss %lld, kv %lld", (long long)fs.prompt_tokens,
          fs.ttft_ms, (long long)fs.rss_bytes, (long long)fs.kv_bytes);

    fm_session_reset(s);
    st = fm_generate(s, hello, &gp, on_piece, &k2, &t2);
    CHECK(st == FM_OK && t1 && t2 && strcmp(t1, t2) == 0, "greedy is deterministic");

    /* stop string: a piece of the greedy text from its middle; output must end before its
     * first occurrence */
    if (t1 && strlen(t1) >= 12) {
        char stop[8];
        size_t L = strlen(t1), at = L / 2;
        while (at < L && ((unsigned char)t1[at] & 0xC0) == 0x80) at++;
        size_t sl = 0;
        while (sl < 4 && at + sl < L) sl++;
        while (at + sl < L && ((unsigned char)t1[at + sl] & 0xC0) == 0x80) sl++;
        if (sl > 7) sl = 7;
        memcpy(stop, t1 + at, sl);
        stop[sl] = 0;
        const char *first = strstr(t1, stop);
        const char *stops[1] = {stop};
        gp.stop = stops;
        gp.n_stop = 1;
        char *t3 = NULL;
        fm_session_reset(s);
        st = fm_generate(s, hello, &gp, NULL, NULL, &t3);
        CHECK(st == FM_OK && t3 && strlen(t3) == (size_t)(first - t1) &&
              strncmp(t3, t1, strlen(t3)) == 0 && fm_session_finish_reason(s) == FM_FINISH_STOP,
              "stop string \"%s\" ends the output before its first occurrence", stop);
        fm_free(t3);
        gp.stop = NULL;
        gp.n_stop = 0;
    }

    /* cancellation */
    static sink k3;
    k3.cancel_after = 3;
    char *t4 = NULL;
    fm_session_reset(s);
    st = fm_generate(s, hello, &gp, on_piece, &k3, &t4);
    CHECK(st == FM_ERR_CANCELLED && t4 == NULL && fm_session_finish_reason(s) == FM_FINISH_CANCEL &&
          k3.pieces == 3, "a non-zero callback return cancels (FM_ERR_CANCELLED)");

    /* chat turn */
    char *t5 = NULL;
    gp.max_tokens = 16;
    gp.ignore_eos = 0;
    st = fm_session_chat(s, &msg, 1, NULL, NULL, &gp, NULL, NULL, &t5);
    CHECK(st == FM_OK && t5, "chat turn generates");
    fm_stats c1;
    fm_session_stats(s, &c1);
    /* second turn: the conversation so far plus a new user message. The first turn's
     * prompt and answer come back as text; the session keeps the tokens it generated
     * (even where re-tokenizing the answer would split it differently), so everything it
     * holds is reused except the last sampled token, which is processed with the new ones */
    fm_chat_msg conv[3];
    memset(conv, 0, sizeof conv);
    conv[0] = msg;
    conv[1].role = "assistant";
    conv[1].content = t5 ? t5 : "";
    conv[2].role = "user";
    conv[2].content = "And then?";
    char *t6 = NULL;
    st = fm_session_chat(s, conv, 3, NULL, NULL, &gp, NULL, NULL, &t6);
    fm_stats c2;
    fm_session_stats(s, &c2);
    long long held1 = (long long)(c1.prompt_tokens + c1.generated_tokens);
    CHECK(st == FM_OK && t6 && c2.reused_tokens == held1 - 1 && c2.prompt_tokens > held1,
          "second chat turn reuses all %lld held tokens but the last (%lld of %lld)", held1,
          (long long)c2.reused_tokens, (long long)c2.prompt_tokens);
    fm_free(t6);
    fm_free(t5);

    /* over-long prompt */
    size_t big = (size_t)info.n_ctx + 1;
    int32_t *many = calloc(big, sizeof *many);
    st = fm_session_set_tokens(s, many, big);
    CHECK(st == FM_ERR_CONTEXT_FULL, "a prompt of n_ctx + 1 tokens is FM_ERR_CONTEXT_FULL");
    free(many);

    fm_free(t1);
    fm_free(t2);
    fm_session_free(s);
    fm_model_free(m);
    fm_session_free(NULL);
    fm_model_free(NULL);
    fm_free(NULL);
    printf("# %d checks\n", n_checks);
    return n_fail ? 1 : 0;
}
