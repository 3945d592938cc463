/* cmd_bench.c: flash-moe bench. Measures, in one run, the machine's read memory bandwidth
 * (1 thread and all threads), the achieved bandwidth of the matrix-vector kernels (Q4 g64,
 * Q8 g64, BF16) on matrices larger than the last-level cache, each next to the measured
 * bandwidth, and with --model the decode speed of a resident model next to its bound
 * (active weight bytes per token / bandwidth). Figures, not pass/fail. */
#include "cli.h"
#include "backend/backend.h"
#include "common.h"
#include "model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define BW_BYTES (512ull << 20)

typedef struct {
    const uint64_t *buf;
    uint64_t words, per_task;
    uint64_t sink[256]; /* one per task (bytes / 4 MiB <= 256) */
} bw_job;

static void bw_task(int64_t t, void *c) {
    bw_job *j = c;
    uint64_t lo = (uint64_t)t * j->per_task, hi = FM_MIN(j->words, lo + j->per_task);
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    const uint64_t *p = j->buf;
    for (uint64_t i = lo; i + 8 <= hi; i += 8) {
        a0 ^= p[i]; a1 ^= p[i + 1]; a2 ^= p[i + 2]; a3 ^= p[i + 3];
        a4 ^= p[i + 4]; a5 ^= p[i + 5]; a6 ^= p[i + 6]; a7 ^= p[i + 7];
    }
    j->sink[t & 255] = a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;
}

/* Best read bandwidth (GB/s) over repeated passes of `seconds`, in 4 MiB tasks. */
static double read_bw(fm__pool *p, const uint64_t *buf, uint64_t bytes, double seconds) {
    bw_job j = {buf, bytes / 8, 0, {0}};
    j.per_task = (4u << 20) / 8; /* 4 MiB tasks: the threads share the passes evenly */
    int64_t ntask = (int64_t)((j.words + j.per_task - 1) / j.per_task);
    double best = 0, t_end = fm__now() + seconds;
    do {
        double t0 = fm__now();
        fm__pool_run(p, ntask, bw_task, &j);
        double dt = fm__now() - t0;
        if (bytes / dt / 1e9 > best) best = bytes / dt / 1e9;
    } while (fm__now() < t_end);
    return best;
}

/* n bytes, 2 MiB aligned, asking the kernel for transparent huge pages (huge != 0) or
 * refusing them. The model's streamed weights are on huge pages (model.c), where page
 * walks cost less of the read rate, so the kernels are measured on huge pages and the
 * bandwidth on both (the bound takes the best figure). free() it. */
static void *big_alloc(size_t n, int huge) {
    const size_t h = 2u << 20;
    void *p = NULL;
    n = (n + h - 1) & ~(h - 1);
    if (posix_memalign(&p, h, n) != 0) return NULL;
#if defined(MADV_HUGEPAGE) && defined(MADV_NOHUGEPAGE)
    madvise(p, n, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
    (void)huge;
#endif
    return p;
}

static uint64_t g_seed = 0x243F6A8885A308D3ull;
static void fill_random(void *dst, size_t bytes) {
    uint64_t *w = dst;
    for (size_t i = 0; i < bytes / 8; i++) {
        g_seed ^= g_seed << 13; g_seed ^= g_seed >> 7; g_seed ^= g_seed << 17;
        w[i] = g_seed;
    }
}

/* A weight matrix with random contents; scales/biases are small BF16 values. */
static int make_mat(fm__mat *m, fm__wtype type, int64_t rows, int64_t cols, int bits, void **mem) {
    memset(m, 0, sizeof *m);
    m->type = type; m->rows = rows; m->cols = cols;
    if (type == FM_W_QAFFINE) { m->bits = bits; m->group = 64; m->sdt = FM_DT_BF16; }
    uint64_t db = fm__mat_data_bytes(m), sb = fm__mat_scale_bytes(m);
    char *p = big_alloc(db + 2 * sb + 64, 1);
    if (!p) return -1;
    fill_random(p, db);
    if (type == FM_W_BF16) /* keep values finite: random sign and exponent around 2^-6 */
        for (uint64_t i = 0; i < db / 2; i++) ((uint16_t *)p)[i] = (uint16_t)((((uint16_t *)p)[i] & 0x807F) | 0x3C00);
    uint16_t *s = (uint16_t *)(p + db);
    for (uint64_t i = 0; i < 2 * sb / 2; i++) s[i] = fm__f32_to_bf16(i & 1 ? -0.01f : 0.001f);
    m->data = p;
    if (type == FM_W_QAFFINE) { m->scales = s; m->biases = (char *)s + sb; }
    *mem = p;
    return 0;
}

static uint64_t mat_bytes(const fm__mat *m) { return fm__mat_data_bytes(m) + 2 * fm__mat_scale_bytes(m); }

/* Best GB/s of the matrix-vector product y = W x over `seconds`. */
static double matvec_bw(fm__pool *p, const fm__mat *m, double seconds) {
    float *x = malloc((size_t)m->cols * sizeof *x), *y = malloc((size_t)m->rows * sizeof *y);
    if (!x || !y) { free(x); free(y); return 0; }
    for (int64_t i = 0; i < m->cols; i++) x[i] = (float)((i % 17) - 8) * 0.01f;
    double best = 0, t_end = fm__now() + seconds;
    fm__matmul(p, m, x, m->cols, 1, y, m->rows); /* warm up */
    do {
        double t0 = fm__now();
        fm__matmul(p, m, x, m->cols, 1, y, m->rows);
        double dt = fm__now() - t0;
        if (mat_bytes(m) / dt / 1e9 > best) best = mat_bytes(m) / dt / 1e9;
    } while (fm__now() < t_end);
    free(x); free(y);
    return best;
}

static int bench_model(const char *dir, const cli_model_opts *mo, int n_decode, double bw_all, double seconds);

int cmd_bench(int argc, char **argv) {
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    const char *model = NULL;
    float seconds = 1.0f;
    int32_t n_decode = 32;
    cli_opt opts[] = {
        {"--model", NULL, CLI_STR, &model, "model directory: also measure decode tok/s against its bound"},
        {"--seconds", NULL, CLI_FLOAT, &seconds, "seconds per measurement"},
        {"--decode", NULL, CLI_INT, &n_decode, "tokens to decode with --model"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *pos[1];
    int n_pos = 0;
    int rc = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), "flash-moe bench [options]", pos, 0, &n_pos);
    if (rc) return rc == 1 ? 0 : 2;
    if (seconds <= 0 || n_decode <= 0) { fprintf(stderr, "flash-moe: --seconds and --decode must be > 0\n"); return 2; }

    fm__pool *p1 = fm__pool_new(1), *pn = fm__pool_new(mo.threads);
    if (!p1 || !pn) { fm__pool_free(p1); fm__pool_free(pn); fprintf(stderr, "flash-moe: cannot start threads\n"); return 1; }
    int nt = fm__pool_size(pn);
    printf("kernel path: %s, threads: %d\n", fm__kernel_path(), nt);

    double bw[2][2]; /* [4 KiB, 2 MiB pages][1, all threads] */
    for (int huge = 0; huge < 2; huge++) {
        void *buf = big_alloc(BW_BYTES, huge);
        if (!buf) { fprintf(stderr, "flash-moe: out of memory\n"); return 1; }
        fill_random(buf, BW_BYTES);
        bw[huge][0] = read_bw(p1, buf, BW_BYTES, seconds);
        bw[huge][1] = read_bw(pn, buf, BW_BYTES, seconds);
        free(buf);
    }
    /* The bound uses the best figure seen: on a shared VM the rate moves between runs. */
    double bw1 = FM_MAX(bw[0][0], bw[1][0]), bwn = FM_MAX(bw[0][1], bw[1][1]), best_read = FM_MAX(bw1, bwn);
    printf("memory read bandwidth (%llu MiB buffer, best of 2 MiB and 4 KiB pages): %.1f GB/s with 1 thread, "
           "%.1f GB/s with %d threads (2 MiB pages: %.1f and %.1f; 4 KiB pages: %.1f and %.1f)\n",
           (unsigned long long)(BW_BYTES >> 20), bw1, bwn, nt, bw[1][0], bw[1][1], bw[0][0], bw[0][1]);

    static const struct { const char *name; fm__wtype t; int bits; int64_t rows, cols; } mats[] = {
        /* 2048 columns: the hidden size of Qwen3-30B-A3B (most of its decode bytes) */
        {"Q4 g64 (MLX affine, BF16 scales)", FM_W_QAFFINE, 4, 65536, 2048},
        {"Q8 g64 (MLX affine, BF16 scales)", FM_W_QAFFINE, 8, 32768, 2048},
        {"BF16", FM_W_BF16, 0, 32768, 2048},
        {"Q4 g64, 8192 columns", FM_W_QAFFINE, 4, 16384, 8192},
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(mats); i++) {
        fm__mat m;
        void *mem;
        if (make_mat(&m, mats[i].t, mats[i].rows, mats[i].cols, mats[i].bits, &mem)) {
            fprintf(stderr, "flash-moe: out of memory\n");
            return 1;
        }
        double g1 = matvec_bw(p1, &m, seconds), gn = matvec_bw(pn, &m, seconds);
        best_read = FM_MAX(best_read, FM_MAX(g1, gn));
        printf("matvec %-34s %lldx%lld (%.0f MiB): 1 thread %.1f GB/s (%.0f%% of %.1f), %d threads %.1f GB/s (%.0f%% of %.1f)\n",
               mats[i].name, (long long)m.rows, (long long)m.cols, mat_bytes(&m) / 1048576.0,
               g1, 100 * g1 / bw1, bw1, nt, gn, 100 * gn / bwn, bwn);
        free(mem);
    }
    fm__pool_free(p1);
    fm__pool_free(pn);
    /* Any rate a kernel reached is a rate the memory delivered: the bound takes the best
     * figure seen (on this VM the plain read loop sometimes stays well below it). */
    if (best_read > bwn)
        printf("the kernels read faster than the read loop: the bound uses %.1f GB/s\n", best_read);
    if (model) return bench_model(model, &mo, n_decode, best_read, seconds);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Bytes of the embedding table from config.json (only one row of it is read per token). */
static double embed_bytes(const char *dir, const fm_model_info *info, int *tied) {
    char *path = fm__path_join(dir, "config.json"), *txt = NULL;
    size_t len;
    double bytes = (double)info->vocab * info->hidden * 2; /* BF16/F16 */
    *tied = 0;
    if (path && fm__read_file(path, &txt, &len) == FM_OK) {
        cJSON *root = cJSON_Parse(txt);
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization");
        const cJSON *b = q ? cJSON_GetObjectItemCaseSensitive(q, "bits") : NULL;
        const cJSON *g = q ? cJSON_GetObjectItemCaseSensitive(q, "group_size") : NULL;
        if (cJSON_IsNumber(b) && cJSON_IsNumber(g) && g->valueint > 0)
            bytes = (double)info->vocab * info->hidden * b->valueint / 8.0 +
                    2.0 * info->vocab * (info->hidden / g->valueint) * 2;
        *tied = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings"));
        cJSON_Delete(root);
    }
    free(txt);
    free(path);
    return bytes;
}

static int bench_model(const char *dir, const cli_model_opts *mo, int n_decode, double bw_all, double seconds) {
    fm_model_params mp;
    if (!cli_model_params(mo, &mp)) return 2;
    fm_model *m = NULL;
    fm__state *s = NULL;
    float *logits = NULL;
    int rc = 1;
    double t0 = fm__now();
    if (fm__model_load(dir, &mp, &m) != FM_OK) return cli_fail("cannot load the model");
    fm_model_info info;
    fm_model_get_info(m, &info);
    printf("model %s: %s, %d layers (%d MoE), hidden %d, %d experts top-%d, capacity %d; loaded in %.1f s\n", dir,
           info.arch, info.n_layers, info.n_moe_layers, info.hidden, info.n_experts, info.top_k, info.capacity,
           fm__now() - t0);
    const int warm = 64; /* touches ~98% of 128 experts at top-8; keeps the context short */
    if (fm__state_new(m, warm + n_decode + 8, &s) != FM_OK) { cli_fail("cannot make the state"); goto out; }
    logits = malloc((size_t)info.vocab * sizeof *logits);
    int32_t *toks = malloc(warm * sizeof *toks);
    if (!logits || !toks) { free(toks); fprintf(stderr, "flash-moe: out of memory\n"); goto out; }
    for (int i = 0; i < warm; i++) toks[i] = (int32_t)((i * 7919u + 17) % (uint32_t)info.vocab);
    /* Warm-up: a prefill of `warm` tokens loads most experts into the cache (misses during
     * the timed decode are counted below). */
    t0 = fm__now();
    fm_status st = fm__forward(m, s, toks, warm, logits, 0);
    double tp = fm__now() - t0;
    free(toks);
    if (st != FM_OK) { cli_fail("forward failed"); goto out; }
    printf("prefill %d tokens (cold, includes expert loading): %.2f s, %.1f tok/s\n", warm, tp, warm / tp);
    fm__ecache *c = fm__model_cache(m);
    /* Fully resident: when the cache holds every expert, load the ones the prefill did not
     * route to, so the timed decode reads no expert from the files. */
    if (c && info.capacity >= info.n_experts) {
        int32_t *ids = malloc((size_t)info.n_experts * sizeof *ids);
        fm__expert_w *ew = malloc((size_t)info.n_experts * sizeof *ew);
        st = ids && ew ? FM_OK : FM_ERR_NOMEM;
        for (int32_t e = 0; ids && e < info.n_experts; e++) ids[e] = e;
        for (int32_t l = 0; st == FM_OK && l < info.n_moe_layers; l++) st = fm__ec_fetch(c, l, ids, info.n_experts, ew);
        free(ids);
        free(ew);
        if (st != FM_OK) { cli_fail("cannot load the experts"); goto out; }
        printf("experts: all %d of each of the %d MoE layers resident\n", info.n_experts, info.n_moe_layers);
    }
    fm__ec_stats s0 = {0}, s1 = {0};
    if (c) fm__ec_get_stats(c, &s0);
    double best = 1e30, total = 0;
    double *times = malloc((size_t)n_decode * sizeof *times);
    if (!times) { fprintf(stderr, "flash-moe: out of memory\n"); goto out; }
    /* One token: greedy choice (argmax) over the last logits, then the forward pass. */
    for (int i = 0; i < n_decode; i++) {
        double t1 = fm__now();
        int32_t next = 0;
        for (int32_t v = 1; v < info.vocab; v++) if (logits[v] > logits[next]) next = v;
        if ((st = fm__forward(m, s, &next, 1, logits, 0)) != FM_OK) { cli_fail("forward failed"); goto out; }
        double dt = fm__now() - t1;
        total += dt;
        times[i] = dt;
        if (dt < best) best = dt;
    }
    qsort(times, (size_t)n_decode, sizeof *times, cmp_double);
    double median = times[n_decode / 2];
    free(times);
    if (c) fm__ec_get_stats(c, &s1);
    /* The machine may be shared: measure the bandwidth again now and bound with the larger. */
    fm__pool *pn = fm__pool_new(mo->threads);
    int nt = fm__pool_size(pn);
    void *buf = big_alloc(BW_BYTES, 1);
    if (pn && buf) {
        fill_random(buf, BW_BYTES);
        double again = read_bw(pn, buf, BW_BYTES, seconds);
        printf("memory read bandwidth after decode: %.1f GB/s (%d threads, 2 MiB pages); the bound uses %.1f GB/s\n", again,
               nt, FM_MAX(again, bw_all));
        bw_all = FM_MAX(again, bw_all);
    }
    free(buf);
    fm__pool_free(pn);
    int tied = 0;
    double eb = embed_bytes(dir, &info, &tied);
    double active = (double)info.resident_bytes - (tied ? 0 : eb) + eb / info.vocab +
                    (double)info.n_moe_layers * info.top_k * (double)info.expert_bytes;
    double bound = bw_all * 1e9 / active;
    printf("active weight bytes per token: %.1f MB (resident %.1f MB - embedding table %.1f MB + one row, "
           "+ %d MoE layers x top-%d x %.2f MB per expert)\n",
           active / 1e6, info.resident_bytes / 1e6, tied ? 0.0 : eb / 1e6, info.n_moe_layers, info.top_k,
           info.expert_bytes / 1e6);
    printf("decode %d tokens: %.2f tok/s mean, %.2f median, %.2f best token; bound %.2f tok/s at %.1f GB/s: "
           "mean %.0f%%, median %.0f%%, best %.0f%% of the bound\n",
           n_decode, n_decode / total, 1 / median, 1 / best, bound, bw_all, 100 * (n_decode / total) / bound,
           100 * (1 / median) / bound, 100 * (1 / best) / bound);
    if (c)
        printf("expert cache during decode: %lld hits, %lld misses, %.1f MB read\n", (long long)(s1.hits - s0.hits),
               (long long)(s1.misses - s0.misses), (s1.bytes_read - s0.bytes_read) / 1e6);
    printf("DECODE VS BOUND: %.2f tok/s (median token) = %.0f%% of the bound %.2f tok/s "
           "(%.1f MB of weights per token at %.1f GB/s, the best read rate measured, %d threads)\n",
           1 / median, 100 * (1 / median) / bound, bound, active / 1e6, bw_all, nt);
    rc = 0;
out:
    free(logits);
    fm__state_free(s);
    fm_model_free(m);
    return rc;
}
