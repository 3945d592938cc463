/* test_cache.c: the expert cache over a synthetic expert map (a temporary checkpoint-like
 * file of random bytes at unaligned offsets; no model needed): exact bytes of fetched
 * experts (O_DIRECT and buffered paths), LFRU eviction order against the formula
 * freq * 0.25^(age/128) computed here, pinning, protection of the current request, async
 * begin/fetch, skip policy accounting, read errors, profiles, the packed store and its
 * corruption cases, and the memory plan arithmetic. */
#include "ec_internal.h"
#include "tap.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NL 3
#define NE 8
#define TOPK 2

static char g_dir[256];
static int g_scale = 1; /* multiplies the rows of every matrix (bigger experts) */

typedef struct tmodel {
    fm__expert_map map;
    char *paths[2];
    uint8_t *bytes[2];
    size_t size[2];
    fm__expert_src src[NL * NE];
} tmodel;

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void set_mat(fm__mat_src *m, int64_t rows, int64_t cols) {
    memset(m, 0, sizeof *m);
    m->meta.type = FM_W_QAFFINE;
    m->meta.rows = rows;
    m->meta.cols = cols;
    m->meta.bits = 4;
    m->meta.group = 32;
    m->meta.sdt = FM_DT_BF16;
}

/* Builds a model: layer 2 lives in file 1 (path1), layers 0-1 in file 0. Stacked arrays,
 * MLX style: for each layer and array, [NE][len] contiguous, after a 1001-byte header. */
static void tm_build(tmodel *t, const char *name0, const char *name1, const char *key) {
    memset(t, 0, sizeof *t);
    uint64_t pos[2] = {1001, 1001};
    for (int l = 0; l < NL; l++) {
        int f = l == 2 ? 1 : 0;
        for (int e = 0; e < NE; e++) {
            fm__expert_src *s = &t->src[l * NE + e];
            set_mat(&s->gate, 32 * g_scale, 64);
            set_mat(&s->up, 32 * g_scale, 64);
            set_mat(&s->down, 64 * g_scale, 32);
        }
        for (int a = 0; a < EC_NARR; a++) {
            for (int e = 0; e < NE; e++) {
                fm__expert_src *s = &t->src[l * NE + e];
                fm__mat_src *m = a < 3 ? &s->gate : a < 6 ? &s->up : &s->down;
                fm__range *r = a % 3 == 0 ? &m->data : a % 3 == 1 ? &m->scales : &m->biases;
                r->file = f;
                r->len = a % 3 == 0 ? fm__mat_data_bytes(&m->meta) : fm__mat_scale_bytes(&m->meta);
                r->off = pos[f];
                pos[f] += r->len + 2; /* odd gaps: nothing is aligned */
            }
        }
    }
    for (int f = 0; f < 2; f++) {
        t->size[f] = pos[f] + 333;
        t->bytes[f] = malloc(t->size[f]);
        for (size_t i = 0; i < t->size[f]; i++) t->bytes[f][i] = (uint8_t)(rnd() >> 24);
        t->paths[f] = fm__path_join(g_dir, f ? name1 : name0);
        FILE *fp = fopen(t->paths[f], "wb");
        if (fp) {
            fwrite(t->bytes[f], 1, t->size[f], fp);
            fclose(fp);
        }
    }
    t->map.n_files = 2;
    t->map.paths = t->paths;
    t->map.n_moe_layers = NL;
    t->map.n_experts = NE;
    t->map.top_k = TOPK;
    t->map.src = t->src;
    t->map.expert_bytes = (uint64_t)g_scale * 3 * (1024 + 128 + 128);
    t->map.content_key = (char *)key;
}

static void tm_free(tmodel *t) {
    for (int f = 0; f < 2; f++) {
        free(t->paths[f]);
        free(t->bytes[f]);
    }
}

/* True if every array of view w equals the file bytes of expert (l, e). */
static bool view_ok(const tmodel *t, int l, int e, const fm__expert_w *w) {
    const fm__expert_src *s = &t->src[l * NE + e];
    const fm__mat_src *ms[3] = {&s->gate, &s->up, &s->down};
    const fm__mat *mw[3] = {&w->gate, &w->up, &w->down};
    for (int i = 0; i < 3; i++) {
        const fm__range *r[3] = {&ms[i]->data, &ms[i]->scales, &ms[i]->biases};
        const void *p[3] = {mw[i]->data, mw[i]->scales, mw[i]->biases};
        if (mw[i]->rows != ms[i]->meta.rows || mw[i]->cols != ms[i]->meta.cols ||
            mw[i]->type != ms[i]->meta.type || mw[i]->bits != 4 || mw[i]->group != 32)
            return false;
        for (int k = 0; k < 3; k++) {
            if (!p[k]) return false;
            if (memcmp(p[k], t->bytes[r[k]->file] + r[k]->off, r[k]->len) != 0) return false;
        }
    }
    return true;
}

static fm__ec_params params(int cap) {
    fm__ec_params p;
    memset(&p, 0, sizeof p);
    p.capacity = cap;
    p.miss_policy = FM_MISS_EXACT;
    p.io_threads = 3;
    return p;
}

static int fetch1(fm__ecache *c, int l, int e) {
    fm__expert_w w;
    return fm__ec_fetch(c, l, &e, 1, &w);
}

static bool resident(fm__ecache *c, int l, int e) { return fm__ec_lookup(c, l, e, NULL); }

/* LFRU score of the spec, computed independently of the cache. */
static double score(int freq, int age) { return freq * pow(0.25, age / 128.0); }

static char *write_tmp(const char *name, const char *text) {
    char *p = fm__path_join(g_dir, name);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return p;
}

static void test_content(tmodel *t, int direct) {
    if (!direct) setenv("FM_NO_DIRECT", "1", 1);
    else unsetenv("FM_NO_DIRECT");
    fm__ec_params p = params(4);
    fm__ecache *c = NULL;
    fm_status st = fm__ec_open(&t->map, &p, &c);
    CHECK(st == FM_OK && c, "open (%s)%s%s", direct ? "O_DIRECT" : "buffered",
          st ? ": " : "", st ? fm_last_error() : "");
    if (!c) return;
    CHECK(fm__ec_capacity(c) == 4, "capacity");
    CHECK(fm__ec_bytes(c) >= 4ull * NL * 4096, "bytes >= slots");
    bool all = true;
    int ok_calls = 0;
    for (int l = 0; l < NL; l++) {
        int ids[4] = {7, 0, 3, 5};
        fm__expert_w w[4];
        if (fm__ec_fetch(c, l, ids, 4, w) == FM_OK) ok_calls++;
        for (int i = 0; i < 4; i++) all = all && view_ok(t, l, ids[i], &w[i]);
    }
    CHECK(ok_calls == NL, "fetch 4 experts on every layer");
    CHECK(all, "fetched bytes equal the file (gate/up/down data, scales, biases; %s)",
          direct ? "O_DIRECT" : "pread+fadvise");
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(s.misses == 4 * NL && s.hits == 0, "cold fetches are misses (%lld/%lld)",
          (long long)s.misses, (long long)s.hits);
    CHECK(s.direct == direct, "read path is %s (direct=%d)", direct ? "O_DIRECT" : "buffered",
          s.direct);
    CHECK(s.bytes_read >= 4 * NL * (int64_t)t->map.expert_bytes, "bytes read counted (%lld)",
          (long long)s.bytes_read);
    int ids2[2] = {3, 1};
    fm__expert_w w2[2];
    st = fm__ec_fetch(c, 1, ids2, 2, w2);
    fm__ec_get_stats2(c, &s);
    CHECK(st == FM_OK && s.hits == 1 && s.misses == 4 * NL + 1, "hit and miss counted");
    CHECK(view_ok(t, 1, 3, &w2[0]) && view_ok(t, 1, 1, &w2[1]), "views after eviction correct");
    fm__ec_stats s1;
    fm__ec_get_stats(c, &s1);
    CHECK(s1.layer_hits[1] == 1 && s1.layer_misses[1] == 5 && s1.layer_misses[0] == 4,
          "per-layer hits/misses");
    fm__ec_free(c);
    unsetenv("FM_NO_DIRECT");
}

static void test_args(tmodel *t) {
    fm__ec_params p = params(3);
    fm__ecache *c = NULL;
    fm__ec_open(&t->map, &p, &c);
    if (!c) return;
    fm__expert_w w[4];
    int dup[2] = {1, 1}, big[4] = {0, 1, 2, 3}, bad[1] = {NE};
    CHECK(fm__ec_fetch(c, 0, dup, 2, w) == FM_ERR_ARG, "duplicate ids rejected");
    CHECK(fm__ec_fetch(c, 0, big, 4, w) == FM_ERR_ARG, "more ids than capacity rejected");
    CHECK(fm__ec_fetch(c, 0, bad, 1, w) == FM_ERR_ARG, "id out of range rejected");
    CHECK(fm__ec_fetch(c, NL, big, 1, w) == FM_ERR_ARG, "layer out of range rejected");
    fm__ec_free(c);
    p.capacity = TOPK - 1;
    CHECK(fm__ec_open(&t->map, &p, &c) == FM_ERR_ARG && !c, "capacity below top_k rejected");
    fm__ec_free(NULL);
}

/* Eviction: scenario A distinguishes LFRU from LRU, B from LFU. */
static void test_eviction(tmodel *t) {
    fm__ec_params p = params(3);
    fm__ecache *c = NULL;
    fm__ec_open(&t->map, &p, &c);
    if (!c) return;
    /* A: 0 x4 (ticks 1-4), 1 x1 (tick 5), 2 x2 (ticks 6-7), then 3 at tick 8. */
    for (int i = 0; i < 4; i++) fetch1(c, 0, 0);
    fetch1(c, 0, 1);
    fetch1(c, 0, 2);
    fetch1(c, 0, 2);
    double s0 = score(4, 8 - 4), s1 = score(1, 8 - 5), s2 = score(2, 8 - 7);
    int want = s0 < s1 && s0 < s2 ? 0 : s1 < s2 ? 1 : 2;
    fetch1(c, 0, 3);
    CHECK(want == 1 && !resident(c, 0, 1) && resident(c, 0, 0) && resident(c, 0, 2) &&
              resident(c, 0, 3),
          "LFRU evicts the least freq*0.25^(age/128) (expert 1; LRU would evict 0)");
    /* B: layer 1: 0 x8 (ticks 1-8), 2 x400 (ticks 9-408), 1 x2 (ticks 409-410), then 3. */
    for (int i = 0; i < 8; i++) fetch1(c, 1, 0);
    for (int i = 0; i < 400; i++) fetch1(c, 1, 2);
    fetch1(c, 1, 1);
    fetch1(c, 1, 1);
    double b0 = score(8, 411 - 8), b1 = score(2, 411 - 410), b2 = score(400, 411 - 408);
    fetch1(c, 1, 3);
    CHECK(b0 < b1 && b0 < b2 && !resident(c, 1, 0) && resident(c, 1, 1) && resident(c, 1, 2),
          "LFRU evicts the old frequent expert (score %.3g < %.3g; LFU would evict 1)", b0, b1);
    /* Current request protected: layer 2: 2 x5, then {0,1,2}, then {3,0,1}: 0 and 1 score
     * lowest, but they are requested, so 2 (the highest score) is the only victim. */
    for (int i = 0; i < 5; i++) fetch1(c, 2, 2);
    int a[3] = {0, 1, 2}, b[3] = {3, 0, 1};
    fm__expert_w w[3];
    fm__ec_fetch(c, 2, a, 3, w);
    fm_status st = fm__ec_fetch(c, 2, b, 3, w);
    CHECK(st == FM_OK && !resident(c, 2, 2) && view_ok(t, 2, 3, &w[0]) &&
              view_ok(t, 2, 0, &w[1]) && view_ok(t, 2, 1, &w[2]),
          "experts of the current fetch are never evicted by it");
    fm__ec_free(c);
}

static void test_pinning(tmodel *t) {
    char *prof = write_tmp("pin.json",
                           "{\"num_experts\": 8, \"layers\": {\"0\": {\"universal\": [1]}}}");
    fm__ec_params p = params(3);
    p.profile = prof;
    fm__ecache *c = NULL;
    fm_status st = fm__ec_open(&t->map, &p, &c);
    CHECK(st == FM_OK && c, "open with profile");
    if (c) {
        CHECK(fm__ec_fetch_limit(c) == 2, "fetch limit = capacity - pins (%d)",
              fm__ec_fetch_limit(c));
        /* pinned experts are loaded at open (asynchronously) */
        for (int i = 0; i < 500 && !resident(c, 0, 1); i++) usleep(2000);
        CHECK(resident(c, 0, 1), "pinned expert preloaded at open");
        /* Scenario A again: 1 would be the LFRU victim, but it is pinned -> 2 goes. */
        for (int i = 0; i < 4; i++) fetch1(c, 0, 0);
        fetch1(c, 0, 1);
        fetch1(c, 0, 2);
        fetch1(c, 0, 2);
        fetch1(c, 0, 3);
        CHECK(resident(c, 0, 1) && !resident(c, 0, 2) && resident(c, 0, 0),
              "pinned expert never evicted (next LFRU victim taken)");
        for (int i = 4; i < NE; i++) fetch1(c, 0, i);
        CHECK(resident(c, 0, 1), "pinned expert survives a sweep of all experts");
        fm__ec_free(c);
    }
    free(prof);
}

static void test_begin(tmodel *t) {
    fm__expert_w w4[4];
    fm__ec_params p = params(4);
    fm__ecache *c = NULL;
    fm__ec_open(&t->map, &p, &c);
    if (!c) return;
    int ids[3] = {6, 2, 4};
    fm__expert_w w[3];
    fm_status st = fm__ec_fetch_begin(c, 1, ids, 3);
    fm_status st2 = fm__ec_fetch(c, 1, ids, 3, w);
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(st == FM_OK && st2 == FM_OK && view_ok(t, 1, 6, &w[0]) && view_ok(t, 1, 2, &w[1]) &&
              view_ok(t, 1, 4, &w[2]),
          "fetch_begin then fetch returns the experts");
    CHECK(s.misses == 3 && s.hits == 0, "begin+fetch counts once (%lld misses)",
          (long long)s.misses);
    int ids2[2] = {2, 5};
    fm__ec_fetch_begin(c, 1, ids, 3);   /* begun, then fetched with other ids */
    st = fm__ec_fetch(c, 1, ids2, 2, w);
    CHECK(st == FM_OK && view_ok(t, 1, 2, &w[0]) && view_ok(t, 1, 5, &w[1]),
          "fetch with other ids after begin");
    /* fetch_any: each begun id comes back exactly once, exact */
    {
        int a[4] = {7, 2, 0, 5}; /* 2 and 5 are resident, 7 and 0 are not */
        uint8_t done[4] = {0};
        int order[4], k = 0, which;
        fm__expert_w one;
        bool all = fm__ec_fetch_begin(c, 1, a, 4) == FM_OK;
        while (all && fm__ec_fetch_any(c, 1, a, 4, done, &which, &one) == FM_OK && which >= 0) {
            all = all && k < 4 && view_ok(t, 1, a[which], &one);
            if (k < 4) order[k++] = a[which];
        }
        CHECK(all && k == 4 && done[0] && done[1] && done[2] && done[3],
              "fetch_any returns every begun expert once, exact");
        (void)order; /* completion order of the misses depends on the I/O threads */
        fm__ec_get_stats2(c, &s);
        int64_t m0 = s.misses, h0 = s.hits;
        fm__ec_fetch(c, 1, a, 4, w4);
        fm__ec_get_stats2(c, &s);
        CHECK(s.misses == m0 && s.hits == h0 + 4, "a fetch after fetch_any counts again (all hits)");
    }
    /* prefetch: off by default, on with fm__ec_set_prefetch */
    int pf[2] = {0, 1};
    fm__ec_prefetch(c, 0, pf, 2);
    fm__ec_get_stats2(c, &s);
    CHECK(s.prefetched == 0, "prefetch off by default");
    fm__ec_set_prefetch(c, 1);
    fm__ec_prefetch(c, 0, pf, 2);
    st = fm__ec_fetch(c, 0, pf, 2, w);
    fm__ec_get_stats2(c, &s);
    CHECK(st == FM_OK && s.prefetched == 2 && s.prefetch_used == 2 && view_ok(t, 0, 0, &w[0]),
          "prefetched experts used by the next fetch");
    fm__ec_free(c);
}

static int g_trace_calls, g_trace_n;
static void trace_fn(void *user, int32_t layer, const int32_t *ids, int32_t n) {
    (void)user; (void)layer; (void)ids;
    g_trace_calls++;
    g_trace_n += n;
}

static char g_log[4096];
static void capture_log(int level, const char *msg, void *user) {
    (void)level; (void)user;
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s\n", msg);
}

static void test_skip(tmodel *t) {
    fm__ec_params p = params(3);
    p.miss_policy = FM_MISS_SKIP;
    fm__ecache *c = NULL;
    fm__ec_open(&t->map, &p, &c);
    if (!c) return;
    fm__ec_set_trace(c, trace_fn, NULL);
    int ids[2] = {4, 5};
    fm__expert_w w;
    CHECK(!fm__ec_lookup(c, 0, 4, &w), "lookup of a cold expert is false");
    fm__ec_note_routed(c, 0, ids, 2, 0, 2);
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(s.skipped == 2 && s.misses == 2 && s.hits == 0, "skipped experts counted");
    for (int i = 0; i < 500 && !(resident(c, 0, 4) && resident(c, 0, 5)); i++) usleep(2000);
    CHECK(fm__ec_lookup(c, 0, 4, &w) && view_ok(t, 0, 4, &w),
          "skip mode loads skipped experts for later tokens");
    fm__ec_note_routed(c, 0, ids, 2, 2, 0);
    fm__ec_get_stats2(c, &s);
    CHECK(s.hits == 2 && s.skipped == 2, "hits after loading");
    CHECK(g_trace_calls == 2 && g_trace_n == 4, "trace hook sees every routing");
    fm__expert_w w2[2];
    fm_status st = fm__ec_fetch(c, 0, ids, 2, w2);
    fm__ec_get_stats2(c, &s);
    CHECK(st == FM_OK && s.hits == 2 && s.misses == 2 && g_trace_calls == 2,
          "in skip mode fetch counts nothing (note_routed did)");
    g_log[0] = 0;
    fm_set_log(capture_log, NULL, FM_LOG_INFO);
    fm__ec_log_stats(c, FM_LOG_INFO);
    fm_set_log(NULL, NULL, FM_LOG_ERROR);
    CHECK(strstr(g_log, "2 skipped") && strstr(g_log, "hit rate per layer: 0:50% 1:0% 2:0%"),
          "statistics block: skipped and per-layer hit rates (%s)", g_log);
    fm__ec_free(c);
}

static void test_read_errors(void) {
    tmodel t;
    tm_build(&t, "err0.bin", "err1.bin", "err-model");
    unlink(t.paths[1]); /* layer 2 lives in the missing file */
    fm__ec_params p = params(3);
    fm__ecache *c = NULL;
    fm_status st = fm__ec_open(&t.map, &p, &c);
    CHECK(st == FM_OK, "open succeeds with a missing file (read lazily)");
    if (!c) {
        tm_free(&t);
        return;
    }
    int ids[2] = {1, 2};
    fm__expert_w w[2];
    st = fm__ec_fetch(c, 2, ids, 2, w);
    const char *msg = fm_last_error();
    CHECK(st == FM_ERR_IO && strstr(msg, "err1.bin") && strstr(msg, "offset"),
          "missing file -> FM_ERR_IO naming file and offset (%s)", msg);
    CHECK(!resident(c, 2, 1) && !resident(c, 2, 2), "failed experts not resident");
    st = fm__ec_fetch(c, 0, ids, 2, w);
    CHECK(st == FM_OK && view_ok(&t, 0, 1, &w[0]) && view_ok(&t, 0, 2, &w[1]),
          "other layers still work after the error");
    st = fm__ec_fetch(c, 2, ids, 2, w);
    CHECK(st == FM_ERR_IO, "retry fails again, no stale slot");
    /* truncation after open: layer 1's experts lie at the end of file 0 */
    if (truncate(t.paths[0], 1500) != 0) perror("truncate");
    int last[1] = {NE - 1};
    st = fm__ec_fetch(c, 1, last, 1, w);
    msg = fm_last_error();
    CHECK(st == FM_ERR_IO && strstr(msg, "err0.bin") && strstr(msg, "offset"),
          "truncated file -> FM_ERR_IO (%s)", msg);
    CHECK(fm__ec_lookup(c, 0, 1, w) && view_ok(&t, 0, 1, &w[0]),
          "cache consistent: earlier residents still valid");
    fm__ec_free(c);
    tm_free(&t);
}

static void test_profiles(tmodel *t) {
    uint8_t pins[NL * NE];
    int32_t np;
    /* the original flash-moe's format (excerpt of a shipped profile's shape) */
    char *a = write_tmp("p_orig.json",
        "{\n  \"model\": \"x\", \"num_prompts\": 22, \"threshold\": 0.5, \"capacity\": 8,\n"
        "  \"num_experts\": 8, \"moe_layers\": 3,\n  \"layers\": {\n"
        "    \"0\": {\"universal\": [1, 4, 6], \"activation_counts\": {\"0\": 3, \"1\": 22,\n"
        "           \"4\": 12, \"6\": 17}, \"total_unique\": 4},\n"
        "    \"2\": {\"universal\": [7], \"activation_counts\": {\"7\": 11}, \"total_unique\": 1}\n"
        "  }\n}\n");
    memset(pins, 0, sizeof pins);
    fm_status st = fm__profile_load(a, &t->map, 8, pins, &np);
    CHECK(st == FM_OK && np == 4 && pins[1] && pins[4] && pins[6] && !pins[0] &&
              pins[2 * NE + 7] && !pins[NE + 7],
          "original profile: universal lists pinned per layer");
    memset(pins, 0, sizeof pins);
    st = fm__profile_load(a, &t->map, 2, pins, &np);
    CHECK(st == FM_OK && np == 3 && pins[1] && pins[6] && !pins[4],
          "pins beyond the per-layer bound dropped, highest counts kept");
    /* arrays; universal derived from counts (>= int(0.5 * 4) = 2) */
    char *b = write_tmp("p_arr.json",
        "{\"num_prompts\": 4, \"layers\": [ {\"activation_counts\": [0,4,1,2,0,0,3,0]}, null,"
        " {\"universal\": [0]} ]}");
    memset(pins, 0, sizeof pins);
    st = fm__profile_load(b, &t->map, 8, pins, &np);
    CHECK(st == FM_OK && np == 4 && pins[1] && pins[3] && pins[6] && !pins[2] && pins[2 * NE],
          "array style: universal derived from activation_counts and threshold");
    /* model layer numbering through layer_index */
    int32_t li[NL] = {1, 3, 5};
    t->map.layer_index = li;
    memset(pins, 0, sizeof pins);
    char *d = write_tmp("p_li.json", "{\"layers\": {\"3\": {\"universal\": [2]}, "
                                     "\"0\": {\"universal\": [5]}}}");
    st = fm__profile_load(d, &t->map, 8, pins, &np);
    CHECK(st == FM_OK && np == 1 && pins[NE + 2], "model layer numbers mapped to MoE layers");
    t->map.layer_index = NULL;
    const char *bad[][2] = {
        {"{\"layers\": {\"0\": {\"universal\": [1, 2,]}}}", "malformed JSON"},
        {"{\"layers\": {\"0\": {\"universal\": [9]}}}", "universal[0]"},
        {"{\"num_experts\": 512, \"layers\": {}}", "num_experts"},
        {"{\"layers\": {\"x\": {\"universal\": [1]}}}", "\"x\""},
        {"{\"layers\": {\"0\": {\"activation_counts\": {\"3\": \"many\"}}}}", "activation_counts.3"},
        {"[1, 2]", "object"},
        {"{\"nolayers\": 1}", "layers"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *f = write_tmp("p_bad.json", bad[i][0]);
        st = fm__profile_load(f, &t->map, 8, pins, &np);
        CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), bad[i][1]) &&
                  strstr(fm_last_error(), "p_bad.json"),
              "bad profile %zu rejected naming '%s' (%s)", i, bad[i][1], fm_last_error());
        free(f);
    }
    char *missing = fm__path_join(g_dir, "nope.json");
    st = fm__profile_load(missing, &t->map, 8, pins, &np);
    CHECK(st == FM_ERR_IO, "missing profile -> FM_ERR_IO");
    fm__ec_params p = params(3);
    p.profile = b;
    fm__ecache *c = NULL;
    st = fm__ec_open(&t->map, &p, &c);
    CHECK(st == FM_OK, "open with an array-style profile");
    fm__ec_free(c);
    char *f = write_tmp("p_bad.json", bad[0][0]);
    p.profile = f;
    st = fm__ec_open(&t->map, &p, &c);
    CHECK(st == FM_ERR_FORMAT && !c, "open with a malformed profile fails cleanly");
    free(a); free(b); free(d); free(f); free(missing);
}

static void corrupt_at(const char *path, uint64_t off, uint8_t x) {
    int fd = open(path, O_RDWR);
    uint8_t v = 0;
    if (fd >= 0 && pread(fd, &v, 1, (off_t)off) == 1) {
        v ^= x;
        if (pwrite(fd, &v, 1, (off_t)off) != 1) perror("pwrite");
    }
    if (fd >= 0) close(fd);
}

static void test_store(tmodel *t) {
    char *sdir = fm__path_join(g_dir, "store/sub");
    fm_status st = fm__store_pack(&t->map, sdir, 0, NULL, NULL);
    CHECK(st == FM_OK, "pack%s%s", st ? ": " : "", st ? fm_last_error() : "");
    CHECK(fm__store_check(&t->map, sdir, 1) == FM_OK, "packed store validates, all blobs");
    char *sp = fm__store_path(&t->map, sdir);
    struct stat sb;
    stat(sp, &sb);
    uint64_t slot;
    fm__ec_slot_bytes(&t->map, &slot);
    CHECK(slot == 4096 && (uint64_t)sb.st_size > NL * NE * slot, "store holds every blob");

    fm__ec_params p = params(4);
    p.store_dir = sdir;
    fm__ecache *c = NULL;
    st = fm__ec_open(&t->map, &p, &c);
    int ids[4] = {1, 3, 5, 7};
    fm__expert_w w[4];
    bool ok = true;
    for (int l = 0; l < NL && c; l++) {
        ok = ok && fm__ec_fetch(c, l, ids, 4, w) == FM_OK;
        for (int i = 0; i < 4; i++) ok = ok && view_ok(t, l, ids[i], &w[i]);
    }
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(st == FM_OK && ok && s.store_reads == 4 * NL, "experts read from the store are exact "
          "(%lld store reads)", (long long)s.store_reads);
    /* some frequency so the warm start has an order */
    for (int i = 0; i < 3 && c; i++) fetch1(c, 0, 1);
    fm__ec_free(c);

    /* warm start: last resident set comes back without routing */
    c = NULL;
    fm__ec_open(&t->map, &p, &c);
    bool warm = false;
    for (int i = 0; i < 500 && c && !warm; i++) {
        warm = true;
        for (int l = 0; l < NL; l++)
            for (int k = 0; k < 4; k++) warm = warm && resident(c, l, ids[k]);
        if (!warm) usleep(2000);
    }
    CHECK(warm, "restart warms the cache with the last resident set");
    if (c) {
        fm__ec_get_stats2(c, &s);
        int64_t r0 = s.store_reads;
        fetch1(c, 2, 5);
        fm__ec_get_stats2(c, &s);
        CHECK(s.hits == 1 && s.store_reads == r0, "warm expert is a hit");
    }
    fm__ec_free(c);

    /* corruption cases */
    struct { const char *what; const char *why; } cases[] = {
        {"truncated blob", "truncated"},
        {"wrong version", "version"},
        {"header bytes", "checksum"},
        {"blob table", "table checksum"},
    };
    for (int k = 0; k < 4; k++) {
        if (k == 0) {
            if (truncate(sp, sb.st_size - 100) != 0) perror("truncate");
        } else if (k == 1) {
            corrupt_at(sp, 8, 0x01); /* version field */
        } else if (k == 2) {
            corrupt_at(sp, 200, 0x40); /* inside the content key */
        } else {
            corrupt_at(sp, 4096 + 3, 0x10); /* the blob checksum table */
        }
        st = fm__store_check(&t->map, sdir, 0);
        CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), cases[k].why),
              "store %s detected (%s)", cases[k].what, fm_last_error());
        c = NULL;
        st = fm__ec_open(&t->map, &p, &c);
        CHECK(st == FM_OK && fm__store_check(&t->map, sdir, 1) == FM_OK,
              "open rebuilds the store after %s", cases[k].what);
        fm__ec_free(c);
    }
    /* a corrupt blob: detected at read, correct bytes from the checkpoint, store invalidated */
    {
        uint64_t blob_off = 0;
        int fd = open(sp, O_RDONLY);
        uint64_t hdr[64];
        if (fd >= 0 && pread(fd, hdr, sizeof hdr, 0) > 0) {
            /* blob_off follows: magic(8) ver/hdr(8) hash(8) nl/ne(8) slot(8) off[9] len[9]
             * table_off state_off state_bytes blob_off */
            blob_off = hdr[5 + 18 + 3];
        }
        if (fd >= 0) close(fd);
        corrupt_at(sp, blob_off + (uint64_t)(0 * NE + 2) * slot + 10, 0xff);
        unsetenv("FM_STORE_VERIFY");
        c = NULL;
        fm__ec_open(&t->map, &p, &c);
        int one[1] = {2};
        st = c ? fm__ec_fetch(c, 0, one, 1, w) : FM_ERR_INTERNAL;
        CHECK(st == FM_OK && view_ok(t, 0, 2, &w[0]),
              "blob failing its checksum is not used: exact bytes from the checkpoint");
        fm__ec_free(c);
        CHECK(fm__store_check(&t->map, sdir, 0) == FM_ERR_FORMAT,
              "store with a bad blob is invalidated on close");
        c = NULL;
        fm__ec_open(&t->map, &p, &c);
        fm__ec_free(c);
        CHECK(fm__store_check(&t->map, sdir, 1) == FM_OK, "and rebuilt on the next open");
    }
    /* changed model: the old store under the new key's name is refused */
    {
        tmodel t2 = *t;
        t2.map.content_key = "another-model";
        t2.map.src = t->src;
        char *sp2 = fm__store_path(&t2.map, sdir);
        char cmd[2048];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", sp, sp2);
        if (system(cmd) != 0) perror("cp");
        st = fm__store_check(&t2.map, sdir, 0);
        CHECK(st == FM_ERR_FORMAT && strstr(fm_last_error(), "content key"),
              "store of another model refused (%s)", fm_last_error());
        free(sp2);
    }
    free(sp);
    free(sdir);
}

/* Store blobs read in several parts by several threads (bigger experts, small parts). */
static void test_store_parts(void) {
    g_scale = 8;
    tmodel t;
    tm_build(&t, "big-0.bin", "big-1.bin", "big-model");
    g_scale = 1;
    char *sdir = fm__path_join(g_dir, "store-big");
    uint64_t slot = 0;
    fm__ec_slot_bytes(&t.map, &slot);
    fm_status st = fm__store_pack(&t.map, sdir, 0, NULL, NULL);
    setenv("FM_EC_CHUNK", "8192", 1);
    fm__ec_params p = params(4);
    p.store_dir = sdir;
    p.io_threads = 4;
    fm__ecache *c = NULL;
    if (st == FM_OK) st = fm__ec_open(&t.map, &p, &c);
    unsetenv("FM_EC_CHUNK");
    bool ok = st == FM_OK && c;
    for (int l = 0; l < NL && ok; l++)
        for (int e0 = 0; e0 < NE && ok; e0 += 4) {
            int ids[4] = {e0, e0 + 1, e0 + 2, e0 + 3};
            fm__expert_w w[4];
            ok = fm__ec_fetch(c, l, ids, 4, w) == FM_OK;
            for (int i = 0; i < 4 && ok; i++) ok = view_ok(&t, l, ids[i], &w[i]);
        }
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(ok && slot >= 4 * 8192 && s.store_reads == NL * NE,
          "store blobs of %llu bytes read in 8 KiB parts in parallel: all exact",
          (unsigned long long)slot);
    fm__ec_free(c);
    free(sdir);
    tm_free(&t);
}

static void write_file(const char *root, const char *rel, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    mkdir(root, 0755);
    for (char *q = dir + strlen(root) + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(dir, 0755);
            *q = '/';
        }
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_plan(tmodel *t) {
    uint64_t slot;
    fm__ec_slot_bytes(&t->map, &slot);
    /* documented: overhead = 8 I/O threads x (round_up(largest array, 4096) + 8192) */
    uint64_t overhead = 8 * (4096 + 8192);
    uint64_t res = 1000000, kv = 300000;
    uint64_t per = slot * NL;
    fm__ec_plan pl;
    int64_t lim = (int64_t)(res + kv + overhead + 5 * per + 123);
    fm_status st = fm__ec_make_plan(&t->map, res, kv, lim, 0, &pl);
    CHECK(st == FM_OK && pl.capacity == 5 && pl.budget == (uint64_t)lim &&
              pl.cache_bytes == 5 * per + overhead && fabs(pl.fraction - 5.0 / NE) < 1e-12,
          "mem-limit plan: capacity %d (want 5)", pl.capacity);
    st = fm__ec_make_plan(&t->map, res, kv, (int64_t)(res + kv + overhead + 100 * per), 0, &pl);
    CHECK(st == FM_OK && pl.capacity == NE, "plan clamps to n_experts");
    st = fm__ec_make_plan(&t->map, res, kv, (int64_t)(res + kv + overhead + per), 0, &pl);
    CHECK(st == FM_ERR_NOMEM && strstr(fm_last_error(), "top_k"),
          "budget below top_k experts -> FM_ERR_NOMEM with numbers (%s)", fm_last_error());
    st = fm__ec_make_plan(&t->map, res, kv, 0, 1, &pl);
    CHECK(st == FM_OK && pl.capacity == TOPK, "requested capacity clamped to top_k");
    st = fm__ec_make_plan(&t->map, res, kv, 0, 99, &pl);
    CHECK(st == FM_OK && pl.capacity == NE, "requested capacity clamped to n_experts");
    st = fm__ec_make_plan(&t->map, res, kv, 0, 0, &pl);
    uint64_t avail = 0;
    fm__mem_available("", &avail, NULL, 0);
    /* MemAvailable moves between the two reads: allow 256 MiB of drift */
    uint64_t want = avail - fm__ec_safety_margin(avail);
    CHECK(st == FM_OK && pl.budget + (256u << 20) > want && pl.budget < want + (256u << 20) &&
              pl.capacity == NE,
          "automatic plan: available memory minus the safety margin");

    /* cgroup v2 / v1 / none, from a fake root */
    char root[512];
    snprintf(root, sizeof root, "%s/fakeroot", g_dir);
    write_file(root, "proc/meminfo", "MemTotal: 24000000 kB\nMemAvailable: 8388608 kB\n");
    write_file(root, "proc/self/cgroup", "0::/a/b\n");
    write_file(root, "sys/fs/cgroup/a/b/memory.max", "max\n");
    write_file(root, "sys/fs/cgroup/a/memory.max", "1073741824\n");
    write_file(root, "sys/fs/cgroup/a/memory.current", "209715200\n");
    char src[32];
    bool ok = fm__mem_available(root, &avail, src, sizeof src);
    CHECK(ok && avail == 1073741824ull - 209715200ull && strstr(src, "cgroup"),
          "cgroup v2 limit of a parent cgroup wins over MemAvailable");
    write_file(root, "sys/fs/cgroup/a/memory.max", "max\n");
    ok = fm__mem_available(root, &avail, src, sizeof src);
    CHECK(ok && avail == 8388608ull * 1024, "no cgroup limit -> MemAvailable");
    write_file(root, "proc/self/cgroup", "4:memory:/box\n0::/\n");
    write_file(root, "sys/fs/cgroup/memory/box/memory.limit_in_bytes", "2147483648\n");
    write_file(root, "sys/fs/cgroup/memory/box/memory.usage_in_bytes", "1073741824\n");
    ok = fm__mem_available(root, &avail, src, sizeof src);
    CHECK(ok && avail == 1073741824ull, "cgroup v1 memory.limit_in_bytes - usage");
    write_file(root, "sys/fs/cgroup/memory/box/memory.limit_in_bytes", "9223372036854771712\n");
    ok = fm__mem_available(root, &avail, src, sizeof src);
    CHECK(ok && avail == 8388608ull * 1024, "cgroup v1 'unlimited' ignored");
}

/* Many random fetches / begins / prefetches with 4 I/O threads; every view checked. */
static void test_stress(tmodel *t) {
    fm__ec_params p = params(4);
    p.io_threads = 4;
    fm__ecache *c = NULL;
    fm__ec_open(&t->map, &p, &c);
    if (!c) return;
    fm__ec_set_prefetch(c, 1);
    bool ok = true;
    int calls = 0;
    for (int it = 0; it < 600 && ok; it++) {
        int l = (int)(rnd() % NL), n = 1 + (int)(rnd() % 4), ids[4];
        for (int i = 0; i < n; i++) {
            int e;
            bool dup;
            do {
                e = (int)(rnd() % NE);
                dup = false;
                for (int k = 0; k < i; k++) dup = dup || ids[k] == e;
            } while (dup);
            ids[i] = e;
        }
        fm__expert_w w[4];
        if (rnd() % 2) ok = fm__ec_fetch_begin(c, l, ids, n) == FM_OK;
        if (rnd() % 3 == 0) fm__ec_prefetch(c, (l + 1) % NL, ids, n);
        ok = ok && fm__ec_fetch(c, l, ids, n, w) == FM_OK;
        for (int i = 0; i < n && ok; i++) ok = view_ok(t, l, ids[i], &w[i]);
        calls++;
    }
    CHECK(ok, "600 random fetches with 4 I/O threads, begin and prefetch: all views exact");
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    CHECK(s.hits + s.misses > 0 && s.read_s > 0 && s.read_gbps > 0, "read time and GB/s measured");
    fm__ec_free(c);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "%s/fm_test_cache_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    fm_set_log(NULL, NULL, FM_LOG_ERROR);
    tmodel t;
    tm_build(&t, "model-0.safetensors", "model-1.safetensors", "synthetic-model-v1");
    test_content(&t, 1);
    test_content(&t, 0);
    test_args(&t);
    test_eviction(&t);
    test_pinning(&t);
    test_begin(&t);
    test_skip(&t);
    test_read_errors();
    test_profiles(&t);
    test_store(&t);
    test_store_parts();
    test_plan(&t);
    test_stress(&t);
    tm_free(&t);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    return TAP_DONE();
}
