/* test_tokenizer.c: the tokenizer's error paths and streaming decode, on small tokenizer
 * directories written by this test: invalid UTF-8 (FM_ERR_ARG with the byte offset),
 * malformed tokenizer.json variants (FM_ERR_FORMAT naming the field), unsupported models
 * (FM_ERR_UNSUPPORTED), BOS/EOS/template config, and streaming decode of multi-byte
 * characters split across byte-level and byte-fallback tokens. Expected values follow
 * from the HF format definitions (GPT-2 byte table, <0xNN> fallback), not from our output. */
#include "tap.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static void write_file(const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); exit(1); }
    fputs(text, f);
    fclose(f);
}
static void rm_file(const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    unlink(p);
}

/* GPT-2 byte -> code point table, written out independently of the library. */
static int byte2cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
    return 256 + n;
}
static int put_utf8(char *o, int cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    o[0] = (char)(0xC0 | (cp >> 6));
    o[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}
/* JSON string for one byte-level character (escaping " and \). */
static void json_char(char *o, int b) {
    int cp = byte2cp(b);
    if (cp == '"' || cp == '\\') { o[0] = '\\'; o[1] = (char)cp; o[2] = 0; return; }
    o[put_utf8(o, cp)] = 0;
}

/* A byte-level BPE tokenizer.json: ids 0..255 are the bytes, 256 = "Ġt" ... plus merges
 * and two added tokens. extra_* let a variant replace one member. */
static char *bytelevel_json(const char *model_override, const char *pre_override,
                            const char *norm_override) {
    size_t cap = 1 << 16;
    char *j = malloc(cap);
    size_t n = 0;
    n += (size_t)snprintf(j + n, cap - n, "{\"version\":\"1.0\",\"added_tokens\":["
        "{\"id\":300,\"content\":\"<|end|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
        "{\"id\":301,\"content\":\"<|start|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],");
    n += (size_t)snprintf(j + n, cap - n, "\"normalizer\":%s,", norm_override ? norm_override : "{\"type\":\"NFC\"}");
    n += (size_t)snprintf(j + n, cap - n, "\"pre_tokenizer\":%s,",
                          pre_override ? pre_override :
                          "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
                          "\"(?i:'s|'t)| ?\\\\p{L}+| ?\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
                          "\"behavior\":\"Isolated\",\"invert\":false},"
                          "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]}");
    n += (size_t)snprintf(j + n, cap - n, "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},");
    if (model_override) {
        n += (size_t)snprintf(j + n, cap - n, "\"model\":%s}", model_override);
        return j;
    }
    n += (size_t)snprintf(j + n, cap - n, "\"model\":{\"type\":\"BPE\",\"unk_token\":null,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        char c[8];
        json_char(c, b);
        n += (size_t)snprintf(j + n, cap - n, "\"%s\":%d,", c, b);
    }
    /* 256 = "Ġt", 257 = "Ġth", 258 = "Ġthe" */
    n += (size_t)snprintf(j + n, cap - n, "\"\xC4\xA0t\":256,\"\xC4\xA0th\":257,\"\xC4\xA0the\":258},"
                          "\"merges\":[\"\xC4\xA0 t\",[\"\xC4\xA0t\",\"h\"],\"\xC4\xA0th e\"]}}");
    return j;
}

static fm_status load_json(const char *json, fm__tokenizer **t) {
    write_file("tokenizer.json", json);
    return fm__tok_load(g_dir, t);
}

static int err_has(const char *s) { return strstr(fm_last_error(), s) != NULL; }

static void test_malformed(void) {
    fm__tokenizer *t = NULL;
    struct { const char *name, *json, *field; fm_status want; } v[] = {
        {"not JSON", "{\"model\": {", "not valid JSON", FM_ERR_FORMAT},
        {"root not object", "[1,2]", "(root)", FM_ERR_FORMAT},
        {"model missing", "{\"added_tokens\":[]}", "field model", FM_ERR_FORMAT},
        {"vocab not object", "{\"model\":{\"type\":\"BPE\",\"vocab\":[1],\"merges\":[]}}", "model.vocab", FM_ERR_FORMAT},
        {"vocab id not int", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "model.vocab", FM_ERR_FORMAT},
        {"merges not array", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":5}}", "model.merges", FM_ERR_FORMAT},
        {"merge without space", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", "model.merges", FM_ERR_FORMAT},
        {"merge out of vocab", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", "model.merges", FM_ERR_FORMAT},
        {"merge pair of 3", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\",\"a\",\"a\"]]}}", "model.merges", FM_ERR_FORMAT},
        {"unk not in vocab", "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}", "model.unk_token", FM_ERR_FORMAT},
        {"added content missing", "{\"added_tokens\":[{\"id\":1}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[].content", FM_ERR_FORMAT},
        {"added id negative", "{\"added_tokens\":[{\"id\":-4,\"content\":\"x\"}],\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "added_tokens[].id", FM_ERR_FORMAT},
        {"bad regex", "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "pre_tokenizer.pattern", FM_ERR_FORMAT},
        {"bad behavior", "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "pre_tokenizer.behavior", FM_ERR_FORMAT},
        {"pattern neither", "{\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"Glob\":\"*\"},\"content\":\"\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "normalizer.pattern", FM_ERR_FORMAT},
        {"normalizer no type", "{\"normalizer\":{\"x\":1},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "normalizer.type", FM_ERR_FORMAT},
        {"strip start not int", "{\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":\"1\",\"stop\":0},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "decoder.start", FM_ERR_FORMAT},
        {"template bad id", "{\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{\"<s>\":{\"ids\":[99]}}},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "post_processor.special_tokens", FM_ERR_FORMAT},
        {"Unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",-1.0]]}}", "Unigram", FM_ERR_UNSUPPORTED},
        {"WordPiece", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", "WordPiece", FM_ERR_UNSUPPORTED},
        {"unknown normalizer", "{\"normalizer\":{\"type\":\"BertNormalizer\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "BertNormalizer", FM_ERR_UNSUPPORTED},
        {"unknown pre_tokenizer", "{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "BertPreTokenizer", FM_ERR_UNSUPPORTED},
        {"unknown decoder", "{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}", "decoder type WordPiece", FM_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        t = (fm__tokenizer *)1;
        fm_status st = load_json(v[i].json, &t);
        CHECK(st == v[i].want && t == NULL && err_has(v[i].field) && err_has("tokenizer.json"),
              "malformed tokenizer.json (%s) -> %s naming '%s' [got %s: %s]", v[i].name,
              fm_status_str(v[i].want), v[i].field, fm_status_str(st), fm_last_error());
    }
    rm_file("tokenizer.json");
    t = (fm__tokenizer *)1;
    fm_status st = fm__tok_load(g_dir, &t);
    CHECK(st == FM_ERR_IO && t == NULL && err_has("tokenizer.json"), "missing tokenizer.json -> FM_ERR_IO");
    fm__tok_free(NULL);
    fm__tok_stream_free(NULL);
    CHECK(1, "free(NULL) is a no-op");
}

static int ids_eq(const int32_t *a, size_t n, const int32_t *b, size_t m) {
    return n == m && (n == 0 || memcmp(a, b, n * sizeof *a) == 0);
}

static void test_bytelevel(void) {
    char *j = bytelevel_json(NULL, NULL, NULL);
    fm__tokenizer *t = NULL;
    fm_status st = load_json(j, &t);
    free(j);
    CHECK(st == FM_OK && t, "byte-level fixture loads [%s]", fm_last_error());
    if (!t) return;
    int32_t *ids;
    size_t n;
    /* " the" -> Ġ t h e -> merges rank 0 (Ġ t), 1 (Ġt h), 2 (Ġth e) -> 258 */
    st = fm__tok_encode(t, "a the<|end|>", 12, 0, &ids, &n);
    int32_t want1[] = {'a', 258, 300};
    CHECK(st == FM_OK && ids_eq(ids, n, want1, 3), "merges by rank, strings and pairs, added token");
    free(ids);
    /* "é" decomposed e + U+0301 is NFC-normalized to U+00E9 = bytes C3 A9 -> ids 0xC3, 0xA9 */
    st = fm__tok_encode(t, "e\xCC\x81", 3, 0, &ids, &n);
    int32_t want2[] = {0xC3, 0xA9};
    CHECK(st == FM_OK && ids_eq(ids, n, want2, 2), "NFC normalizer composes e + U+0301");
    free(ids);
    st = fm__tok_encode(t, "", 0, 1, &ids, &n);
    CHECK(st == FM_OK && n == 0, "empty string -> no ids");
    free(ids);

    /* invalid UTF-8: offset of the first bad byte */
    const char *bad[] = {"abc\xFFxyz", "ok \xC3(", "\xE2\x82", "ab\xED\xA0\x80", "x\xC0\xAF"};
    size_t blen[] = {7, 5, 2, 5, 3};
    const char *off[] = {"offset 3", "offset 3", "offset 0", "offset 2", "offset 1"};
    for (int i = 0; i < 5; i++) {
        ids = (int32_t *)1;
        st = fm__tok_encode(t, bad[i], blen[i], 0, &ids, &n);
        CHECK(st == FM_ERR_ARG && ids == NULL && err_has(off[i]) && err_has("UTF-8"),
              "invalid UTF-8 case %d -> FM_ERR_ARG at byte %s [%s]", i, off[i], fm_last_error());
    }
    char *text;
    size_t tl;
    int32_t oob[] = {5, 302};
    st = fm__tok_decode(t, oob, 2, &text, &tl);
    CHECK(st == FM_ERR_ARG && err_has("302"), "decode of an unknown id -> FM_ERR_ARG naming it");
    int32_t neg[] = {-1};
    st = fm__tok_decode(t, neg, 1, &text, &tl);
    CHECK(st == FM_ERR_ARG, "decode of a negative id -> FM_ERR_ARG");

    /* decode: byte-level ids of "€" (E2 82 AC) -> "€"; a lone continuation byte -> U+FFFD */
    int32_t euro[] = {0xE2, 0x82, 0xAC, 258};
    st = fm__tok_decode(t, euro, 4, &text, &tl);
    CHECK(st == FM_OK && tl == 7 && memcmp(text, "\xE2\x82\xAC the", 7) == 0, "byte-level decode of a 3-byte char");
    free(text);
    int32_t lone[] = {'a', 0x82, 'b'};
    st = fm__tok_decode(t, lone, 3, &text, &tl);
    CHECK(st == FM_OK && strcmp(text, "a\xEF\xBF\xBD" "b") == 0, "stray byte decodes to U+FFFD");
    free(text);

    /* streaming: "a€ the😀" pushed byte by byte must never cut a character */
    int32_t seq[] = {'a', 0xE2, 0x82, 0xAC, 258, 0xF0, 0x9F, 0x98, 0x80, 300};
    const char *want_pieces[] = {"a", "", "", "\xE2\x82\xAC", " the", "", "", "", "\xF0\x9F\x98\x80", "<|end|>"};
    fm__tok_stream *s = NULL;
    st = fm__tok_stream_new(t, &s);
    char all[128] = "";
    int ok = st == FM_OK;
    for (int i = 0; i < 10 && ok; i++) {
        const char *p;
        size_t pl;
        st = fm__tok_stream_push(s, seq[i], &p, &pl);
        ok = st == FM_OK && pl == strlen(want_pieces[i]) && memcmp(p, want_pieces[i], pl) == 0;
        if (!ok) printf("# piece %d: got '%.*s' (%zu), want '%s'\n", i, (int)pl, p, pl, want_pieces[i]);
        strncat(all, p, pl);
    }
    const char *p;
    size_t pl;
    st = fm__tok_stream_flush(s, &p, &pl);
    CHECK(ok && st == FM_OK && pl == 0, "streaming decode holds bytes until the character completes");
    CHECK(strcmp(all, "a\xE2\x82\xAC the\xF0\x9F\x98\x80<|end|>") == 0, "streamed pieces concatenate to the full text");
    fm__tok_stream_free(s);
    /* a stream that ends inside a character: flush returns the replacement */
    st = fm__tok_stream_new(t, &s);
    fm__tok_stream_push(s, 'x', &p, &pl);
    st = fm__tok_stream_push(s, 0xE2, &p, &pl);
    CHECK(st == FM_OK && pl == 0, "incomplete character is held back");
    st = fm__tok_stream_flush(s, &p, &pl);
    CHECK(st == FM_OK && pl == 3 && memcmp(p, "\xEF\xBF\xBD", 3) == 0, "flush of an unfinished character gives U+FFFD");
    st = fm__tok_stream_push(s, 999, &p, &pl);
    CHECK(st == FM_ERR_ARG, "stream push of an unknown id -> FM_ERR_ARG");
    fm__tok_stream_free(s);

    CHECK(fm__tok_token_id(t, "<|end|>") == 300 && fm__tok_token_id(t, "\xC4\xA0the") == 258 &&
          fm__tok_token_id(t, "nope") == -1, "token_id finds added and vocab tokens");
    CHECK(fm__tok_is_special(t, 300) && !fm__tok_is_special(t, 258), "is_special");
    CHECK(fm__tok_vocab_size(t) == 302, "vocab size counts added tokens");
    fm__tok_free(t);
}

/* SentencePiece-style: Prepend/Replace normalizers, byte_fallback, decoder chain. */
static void test_sentencepiece(void) {
    const char *j =
        "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"normalized\":false,\"special\":true},"
        "{\"id\":1,\"content\":\"<s>\",\"normalized\":false,\"special\":true},"
        "{\"id\":2,\"content\":\"</s>\",\"normalized\":false,\"special\":true}],"
        "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xE2\x96\x81\"},"
        "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"}]},"
        "\"pre_tokenizer\":null,"
        "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},"
        "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xE2\x96\x81\"},\"content\":\" \"},"
        "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
        "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,\"vocab\":{"
        "\"<unk>\":0,\"<s>\":1,\"</s>\":2,\"<0xE2>\":3,\"<0x82>\":4,\"<0xAC>\":5,\"\xE2\x96\x81\":6,\"h\":7,\"i\":8,"
        "\"\xE2\x96\x81h\":9,\"\xE2\x96\x81hi\":10},\"merges\":[\"\xE2\x96\x81 h\",\"\xE2\x96\x81h i\"]}}";
    fm__tokenizer *t = NULL;
    fm_status st = load_json(j, &t);
    CHECK(st == FM_OK && t, "sentencepiece fixture loads [%s]", fm_last_error());
    if (!t) return;
    int32_t *ids;
    size_t n;
    /* "hi €x" -> "▁hi▁€x": ▁hi, ▁, <0xE2><0x82><0xAC>, x unknown -> <unk> */
    st = fm__tok_encode(t, "hi \xE2\x82\xAC" "x", 7, 1, &ids, &n);
    int32_t want[] = {1, 10, 6, 3, 4, 5, 0};
    CHECK(st == FM_OK && ids_eq(ids, n, want, 7), "prepend/replace, byte_fallback, unk, BOS from post_processor");
    char *text;
    size_t tl;
    st = fm__tok_decode(t, ids + 1, n - 1, &text, &tl);
    CHECK(st == FM_OK && strcmp(text, "hi \xE2\x82\xAC<unk>") == 0, "decoder Replace/ByteFallback/Fuse/Strip");
    free(text);
    free(ids);
    /* streaming: the three byte tokens produce the euro sign only at the third */
    fm__tok_stream *s;
    fm__tok_stream_new(t, &s);
    int32_t seq[] = {10, 6, 3, 4, 5, 10};
    const char *want_pieces[] = {"hi", " ", "", "", "\xE2\x82\xAC", " hi"};
    int ok = 1;
    for (int i = 0; i < 6; i++) {
        const char *p;
        size_t pl;
        st = fm__tok_stream_push(s, seq[i], &p, &pl);
        if (st != FM_OK || pl != strlen(want_pieces[i]) || memcmp(p, want_pieces[i], pl) != 0) {
            ok = 0;
            printf("# sp piece %d: got '%.*s', want '%s'\n", i, (int)pl, p, want_pieces[i]);
        }
    }
    CHECK(ok, "streaming byte-fallback pieces (leading space stripped once)");
    fm__tok_stream_free(s);
    /* invalid byte-fallback group: each byte becomes U+FFFD (HF ByteFallback) */
    int32_t badg[] = {3, 4, 10};
    st = fm__tok_decode(t, badg, 3, &text, &tl);
    CHECK(st == FM_OK && strcmp(text, "\xEF\xBF\xBD\xEF\xBF\xBD hi") == 0, "invalid byte group -> one U+FFFD per byte");
    free(text);
    fm__tok_free(t);
}

static void test_config(void) {
    char *j = bytelevel_json(NULL, NULL, NULL);
    write_file("tokenizer.json", j);
    free(j);
    write_file("tokenizer_config.json",
               "{\"add_bos_token\":true,\"add_eos_token\":true,"
               "\"bos_token\":{\"__type\":\"AddedToken\",\"content\":\"<|start|>\"},\"eos_token\":\"<|end|>\","
               "\"chat_template\":[{\"name\":\"tool_use\",\"template\":\"T\"},{\"name\":\"default\",\"template\":\"D\"}]}");
    write_file("generation_config.json", "{\"eos_token_id\":[258, 300]}");
    write_file("config.json", "{\"eos_token_id\":97}");
    fm__tokenizer *t = NULL;
    fm_status st = fm__tok_load(g_dir, &t);
    CHECK(st == FM_OK, "loads with tokenizer_config/generation_config/config [%s]", fm_last_error());
    if (!t) return;
    int32_t *ids;
    size_t n;
    st = fm__tok_encode(t, "a", 1, 1, &ids, &n);
    int32_t want[] = {301, 'a', 300};
    CHECK(st == FM_OK && ids_eq(ids, n, want, 3), "add_bos_token/add_eos_token with object and string tokens");
    free(ids);
    st = fm__tok_encode(t, "a", 1, 0, &ids, &n);
    CHECK(st == FM_OK && n == 1 && ids[0] == 'a', "add_special=0 adds nothing");
    free(ids);
    const int32_t *eos;
    int ne = fm__tok_eos_ids(t, &eos);
    CHECK(ne == 3 && eos[0] == 258 && eos[1] == 300 && eos[2] == 97, "EOS ids from generation_config list, config.json, eos_token");
    CHECK(fm__tok_bos_token(t) && strcmp(fm__tok_bos_token(t), "<|start|>") == 0 && fm__tok_bos_id(t) == 301, "bos_token");
    CHECK(fm__tok_eos_token(t) && strcmp(fm__tok_eos_token(t), "<|end|>") == 0, "eos_token");
    CHECK(fm__tok_chat_template(t) && strcmp(fm__tok_chat_template(t), "D") == 0, "named chat_template list: default");
    fm__tok_free(t);
    write_file("chat_template.jinja", "{{ messages }}J");
    write_file("tokenizer_config.json", "{\"chat_template\":\"S\"}");
    write_file("generation_config.json", "{\"eos_token_id\":300}");
    st = fm__tok_load(g_dir, &t);
    CHECK(st == FM_OK && fm__tok_chat_template(t) && strcmp(fm__tok_chat_template(t), "{{ messages }}J") == 0,
          "chat_template.jinja is used when present");
    ne = fm__tok_eos_ids(t, &eos);
    CHECK(ne == 2 && eos[0] == 300 && eos[1] == 97, "EOS id from generation_config int");
    fm__tok_free(t);
    write_file("tokenizer_config.json", "{\"chat_template\": ");
    st = fm__tok_load(g_dir, &t);
    CHECK(st == FM_ERR_FORMAT && t == NULL && err_has("tokenizer_config.json"), "malformed tokenizer_config.json -> FM_ERR_FORMAT");
    rm_file("chat_template.jinja");
    rm_file("tokenizer_config.json");
    rm_file("generation_config.json");
    rm_file("config.json");
}

/* Added-token flags and pre-tokenizer variants whose expected ids follow from HF semantics. */
static void test_added_flags(void) {
    /* lstrip on <|start|>, rstrip on <|end|>, single_word on "ab" */
    char *j = bytelevel_json(NULL, NULL, NULL);
    char *p = strstr(j, "\"content\":\"<|end|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false");
    memcpy(strstr(p, "\"rstrip\":false") + 9, "true ", 5);
    p = strstr(j, "\"content\":\"<|start|>\",\"single_word\":false,\"lstrip\":false");
    memcpy(strstr(p, "\"lstrip\":false") + 9, "true ", 5);
    fm__tokenizer *t = NULL;
    fm_status st = load_json(j, &t);
    free(j);
    CHECK(st == FM_OK, "added-token flags fixture loads [%s]", fm_last_error());
    if (!t) return;
    int32_t *ids;
    size_t n;
    st = fm__tok_encode(t, "a  <|start|>b<|end|>  \nc", 24, 0, &ids, &n);
    int32_t want[] = {'a', 301, 'b', 300, 'c'};
    CHECK(st == FM_OK && ids_eq(ids, n, want, 5), "lstrip/rstrip take the adjacent whitespace");
    free(ids);
    fm__tok_free(t);

    /* single_word (HF: the match must not touch \w on either side; a rejected match is
     * skipped whole): added token "ab" (id 300) */
    j = bytelevel_json(NULL, NULL, "null");
    p = strstr(j, "\"content\":\"<|end|>\",\"single_word\":false");
    const char *rep = "\"content\":\"ab\",     \"single_word\":true ";
    memcpy(p, rep, strlen(rep)); /* same length as the text it replaces */
    st = load_json(j, &t);
    free(j);
    CHECK(st == FM_OK, "single_word fixture loads [%s]", fm_last_error());
    if (!t) return;
    st = fm__tok_encode(t, "ab.cab(ab)ab_", 13, 0, &ids, &n);
    int32_t want2[] = {300, '.', 'c', 'a', 'b', '(', 300, ')', 'a', 'b', '_'};
    CHECK(st == FM_OK && ids_eq(ids, n, want2, 11), "single_word matches only outside words");
    free(ids);
    fm__tok_free(t);
}

/* No decoder: HF joins the token strings with one space. No pre-tokenizer/normalizer:
 * the whole text is one word. */
static void test_no_decoder(void) {
    fm__tokenizer *t = NULL;
    fm_status st = load_json("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                             "\"merges\":[\"a b\"]},\"decoder\":null}", &t);
    CHECK(st == FM_OK, "minimal tokenizer.json loads [%s]", fm_last_error());
    if (!t) return;
    int32_t *ids;
    size_t n;
    st = fm__tok_encode(t, "abba", 4, 0, &ids, &n);
    int32_t want[] = {2, 1, 0};
    CHECK(st == FM_OK && ids_eq(ids, n, want, 3), "whole text is one word when there is no pre-tokenizer");
    free(ids);
    int32_t d[] = {0, 1, 2};
    char *text;
    size_t tl;
    st = fm__tok_decode(t, d, 3, &text, &tl);
    CHECK(st == FM_OK && strcmp(text, "a b ab") == 0, "no decoder: tokens joined by one space");
    free(text);
    fm__tok_free(t);
    /* Split on a String pattern with behaviour Removed, and the Lowercase normalizer */
    st = load_json("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]},"
                   "\"normalizer\":{\"type\":\"Lowercase\"},"
                   "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Removed\",\"invert\":false}}", &t);
    CHECK(st == FM_OK, "String-pattern Split loads [%s]", fm_last_error());
    if (!t) return;
    st = fm__tok_encode(t, "A B  AB", 7, 0, &ids, &n);
    int32_t want2[] = {0, 1, 2};
    CHECK(st == FM_OK && ids_eq(ids, n, want2, 3), "Split String Removed drops the delimiters; Lowercase");
    free(ids);
    /* a character outside the vocabulary with no unk and no byte_fallback is dropped (HF),
     * also when its word comes again from the cache */
    st = fm__tok_encode(t, "x A x B x", 9, 0, &ids, &n);
    int32_t want3[] = {0, 1};
    CHECK(st == FM_OK && ids_eq(ids, n, want3, 2), "unknown characters without unk_token are dropped");
    free(ids);
    fm__tok_free(t);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fm-test-tok-%d", (int)getpid());
    mkdir(g_dir, 0700);
    test_malformed();
    test_bytelevel();
    test_sentencepiece();
    test_config();
    test_added_flags();
    test_no_decoder();
    rm_file("tokenizer.json");
    rmdir(g_dir);
    return TAP_DONE();
}
