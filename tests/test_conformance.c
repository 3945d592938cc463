/* test_conformance.c: every tests/fixtures/<name>/ with a ref.json (reference logits from
 * a PyTorch transcription of transformers' modeling code, scripts/ref/) must match:
 * prefill and token-by-token decode within ||ours-ref||/||ref|| <= 1e-4 with the same
 * argmax at every position; and runs at cache capacity top_k and n_experts/2 must give
 * logits bitwise equal to the full-capacity run. */
#include "model.h"
#include "tap.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <string.h>

typedef struct {
    int32_t *tokens, n, vocab;
    float *ref;
} fixture;

static bool load_fixture(const char *dir, fixture *fx) {
    memset(fx, 0, sizeof *fx);
    char *p = fm__path_join(dir, "ref.json"), *text = NULL;
    size_t len = 0;
    bool ok = p && fm__read_file(p, &text, &len) == FM_OK;
    free(p);
    if (!ok) return false;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *tk = cJSON_GetObjectItem(j, "tokens"), *nv = cJSON_GetObjectItem(j, "n_vocab");
    ok = cJSON_IsArray(tk) && cJSON_IsNumber(nv) && cJSON_GetArraySize(tk) > 0;
    if (ok) {
        fx->n = cJSON_GetArraySize(tk);
        fx->vocab = (int32_t)nv->valuedouble;
        fx->tokens = malloc((size_t)fx->n * sizeof *fx->tokens);
        const cJSON *it;
        int i = 0;
        cJSON_ArrayForEach(it, tk) fx->tokens[i++] = (int32_t)it->valuedouble;
    }
    cJSON_Delete(j);
    if (!ok) return false;
    p = fm__path_join(dir, "logits.f32");
    ok = p && fm__read_file(p, &text, &len) == FM_OK;
    free(p);
    if (!ok) return false;
    if (len != (size_t)fx->n * fx->vocab * 4) { free(text); return false; }
    fx->ref = (float *)text; /* read_file allocates with malloc */
    return true;
}

/* Runs the fixture's tokens: decode = 0 one prefill, 1 one token at a time. */
static float *run(const char *dir, const fixture *fx, int32_t capacity, int decode, int miss,
                  fm_model_info *info) {
    fm_model_params p;
    fm_model_params_default(&p);
    p.capacity = capacity;
    p.n_ctx = fx->n;
    p.cache_dir = "";
    p.miss_policy = miss;
    fm_model *m = NULL;
    if (fm_model_open(dir, &p, &m) != FM_OK) {
        printf("# %s: %s\n", dir, fm_last_error());
        return NULL;
    }
    if (info) fm_model_get_info(m, info);
    float *out = malloc((size_t)fx->n * fx->vocab * sizeof *out);
    fm__state *s = NULL;
    bool ok = out && fm__model_vocab(m) == fx->vocab && fm__state_new(m, fx->n, &s) == FM_OK;
    if (ok && decode) {
        for (int32_t i = 0; i < fx->n && ok; i++)
            ok = fm__forward(m, s, fx->tokens + i, 1, out + (size_t)i * fx->vocab, 0) == FM_OK;
    } else if (ok) {
        ok = fm__forward(m, s, fx->tokens, fx->n, out, 1) == FM_OK;
    }
    if (!ok) printf("# %s: %s\n", dir, fm_last_error());
    fm__state_free(s);
    fm_model_free(m);
    if (!ok) { free(out); return NULL; }
    return out;
}

static double rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static bool same_argmax(const float *a, const float *ref, int32_t n, int32_t V) {
    for (int32_t t = 0; t < n; t++) {
        int32_t ia = 0, ir = 0;
        for (int32_t v = 1; v < V; v++) {
            if (a[(size_t)t * V + v] > a[(size_t)t * V + ia]) ia = v;
            if (ref[(size_t)t * V + v] > ref[(size_t)t * V + ir]) ir = v;
        }
        if (ia != ir) return false;
    }
    return true;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(void) {
    char *fdir = fm__path_join(tap_root(), "tests/fixtures");
    DIR *d = opendir(fdir);
    CHECK(d != NULL, "fixtures directory %s exists", fdir);
    char *names[256];
    int nn = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) && nn < 256) {
        if (de->d_name[0] == '.') continue;
        char *dir = fm__path_join(fdir, de->d_name);
        char *rj = fm__path_join(dir, "ref.json");
        if (fm__file_exists(rj)) names[nn++] = fm__strdup(de->d_name);
        free(rj);
        free(dir);
    }
    if (d) closedir(d);
    qsort(names, (size_t)nn, sizeof *names, cmp_str);
    CHECK(nn >= 4, "found %d reference fixtures", nn);
    for (int i = 0; i < nn; i++) {
        char *dir = fm__path_join(fdir, names[i]);
        fixture fx;
        if (!load_fixture(dir, &fx)) {
            CHECK(0, "%s: ref.json and logits.f32 readable and consistent", names[i]);
            free(dir);
            continue;
        }
        size_t nl = (size_t)fx.n * fx.vocab;
        fm_model_info info;
        memset(&info, 0, sizeof info);
        float *pre = run(dir, &fx, 0x7fffffff, 0, FM_MISS_EXACT, &info);
        float *dec = run(dir, &fx, 0x7fffffff, 1, FM_MISS_EXACT, NULL);
        double ep = pre ? rel_err(pre, fx.ref, nl) : INFINITY;
        double ed = dec ? rel_err(dec, fx.ref, nl) : INFINITY;
        CHECK(pre && ep <= 1e-4, "%s: prefill rel err %.3g <= 1e-4 (%d tokens)", names[i], ep, fx.n);
        CHECK(pre && same_argmax(pre, fx.ref, fx.n, fx.vocab), "%s: prefill argmax equal at every position", names[i]);
        CHECK(dec && ed <= 1e-4, "%s: decode rel err %.3g <= 1e-4", names[i], ed);
        CHECK(dec && same_argmax(dec, fx.ref, fx.n, fx.vocab), "%s: decode argmax equal at every position", names[i]);
        int32_t caps[2] = {info.top_k, info.n_experts / 2};
        for (int c = 0; c < 2 && pre && dec; c++) {
            if (caps[c] < info.top_k) continue;
            float *p2 = run(dir, &fx, caps[c], 0, FM_MISS_EXACT, NULL);
            float *d2 = run(dir, &fx, caps[c], 1, FM_MISS_EXACT, NULL);
            CHECK(p2 && memcmp(p2, pre, nl * 4) == 0, "%s: prefill at capacity %d bitwise equal to capacity %d",
                  names[i], caps[c], info.n_experts);
            CHECK(d2 && memcmp(d2, dec, nl * 4) == 0, "%s: decode at capacity %d bitwise equal to capacity %d",
                  names[i], caps[c], info.n_experts);
            free(p2);
            free(d2);
        }
        free(pre);
        free(dec);
        free(fx.tokens);
        free(fx.ref);
        free(dir);
        free(names[i]);
    }
    free(fdir);
    return TAP_DONE();
}
