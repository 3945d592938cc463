/* fuzz_tokenizer.c: libFuzzer target for the tokenizer (built by scripts/fuzz_tokenizer.sh,
 * not by make). The first input byte picks a mode:
 *   even: the rest is text, encoded with a real tokenizer ($FUZZ_TOK_DIRS, colon-separated
 *         directories, loaded once). Checks: no crash; invalid UTF-8 is FM_ERR_ARG; for
 *         byte-level tokenizers without a normalizer decode(encode(s)) == s; streamed
 *         pieces concatenate to the full decode and never end inside a character.
 *   odd:  the rest is a tokenizer.json; if it loads, a fixed text and the input itself are
 *         encoded and decoded. Checks: no crash, no leak, no sanitizer report. */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOK 4
static fm__tokenizer *g_tok[MAX_TOK];
static int g_roundtrip[MAX_TOK];
static int g_n = -1;

static void load_all(void) {
    g_n = 0;
    const char *env = getenv("FUZZ_TOK_DIRS");
    if (!env) return;
    char *dirs = strdup(env), *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d && g_n < MAX_TOK; d = strtok_r(NULL, ":", &save)) {
        if (fm__tok_load(d, &g_tok[g_n]) != FM_OK) {
            fprintf(stderr, "fuzz: cannot load %s: %s\n", d, fm_last_error());
            abort();
        }
        /* DeepSeek-V3-style: byte-level with no normalizer -> exact round trip */
        g_roundtrip[g_n] = strstr(d, "deepseek") != NULL;
        g_n++;
    }
    free(dirs);
}

static int valid_utf8(const uint8_t *s, size_t n) {
    /* written independently of the library's validator */
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
    }
    return 1;
}

static void exercise(const fm__tokenizer *t, const char *text, size_t len, int roundtrip) {
    int32_t *ids = NULL;
    size_t n = 0;
    fm_status st = fm__tok_encode(t, text, len, 1, &ids, &n);
    int valid = valid_utf8((const uint8_t *)text, len);
    if (valid != (st != FM_ERR_ARG)) {
        fprintf(stderr, "fuzz: encode status %d disagrees with UTF-8 validity %d\n", st, valid);
        abort();
    }
    if (st != FM_OK) return;
    free(ids);
    st = fm__tok_encode(t, text, len, 0, &ids, &n);
    if (st != FM_OK) abort();
    char *out = NULL;
    size_t olen = 0;
    st = fm__tok_decode(t, ids, n, &out, &olen);
    if (st != FM_OK) abort();
    if (roundtrip && (olen != len || memcmp(out, text, len) != 0)) {
        fprintf(stderr, "fuzz: round trip differs (%zu vs %zu bytes)\n", olen, len);
        abort();
    }
    /* streaming decode concatenates to the full decode, pieces end on characters */
    fm__tok_stream *s = NULL;
    if (fm__tok_stream_new(t, &s) != FM_OK) abort();
    char *cat = malloc(olen + 64);
    size_t cl = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        st = i < n ? fm__tok_stream_push(s, ids[i], &p, &pl) : fm__tok_stream_flush(s, &p, &pl);
        if (st != FM_OK) abort();
        if (!valid_utf8((const uint8_t *)p, pl)) { fprintf(stderr, "fuzz: piece is not whole UTF-8\n"); abort(); }
        if (cl + pl > olen) { fprintf(stderr, "fuzz: stream longer than decode\n"); abort(); }
        memcpy(cat + cl, p, pl);
        cl += pl;
    }
    if (cl != olen || memcmp(cat, out, olen) != 0) {
        fprintf(stderr, "fuzz: stream (%zu bytes) differs from decode (%zu bytes)\n", cl, olen);
        abort();
    }
    free(cat);
    fm__tok_stream_free(s);
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (g_n < 0) load_all();
    if (size < 1) return 0;
    const char *rest = (const char *)data + 1;
    size_t rn = size - 1;
    if ((data[0] & 1) == 0) {
        if (g_n == 0) return 0;
        int k = (data[0] >> 1) % g_n;
        exercise(g_tok[k], rest, rn, g_roundtrip[k]);
        return 0;
    }
    fm__tokenizer *t = NULL;
    if (fm__tok_load_json(rest, rn, &t) != FM_OK) return 0;
    static const char fixed[] = "Hello, world! <|end|> caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD  \n\t123 \xF0\x9F\x98\x80";
    exercise(t, fixed, sizeof fixed - 1, 0);
    exercise(t, rest, rn < 512 ? rn : 512, 0);
    fm__tok_free(t);
    return 0;
}
