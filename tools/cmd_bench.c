/* cmd_bench.c: flash-moe bench. Measures, in one run, the machine's read memory bandwidth
 * (1 thread and all threads), the achieved bandwidth of the matrix-vector kernels (Q4 g64,
 * Q8 g64, BF16) on matrices many times the last-level cache, each next to the measured
 * bandwidth and to its own rate on a matrix that stays in the cache (the arithmetic's
 * ceiling), and with --model the decode speed of a resident model next to its bound
 * (weight bytes one token reads / the best read rate of the run), plus the same decode in
 * rounds each paired with a read pass right after it. Figures, not pass/fail. */
#include "cli.h"
#include "backend/backend.h"
#include "common.h"
#include "model.h"
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Every measured buffer and matrix is many times the last-level cache: a 72 MiB matrix
 * with a 32 MiB L3 read partly from the cache here (Q4 g64 matvec 47 GB/s at 72 MiB, 34
 * at 300 MiB), and such a rate is not a memory rate. */
static uint64_t g_llc; /* bytes of the last-level cache (0 = unknown) */
static uint64_t out_of_cache(uint64_t min_bytes, int times_llc) {
    return FM_MAX(min_bytes, g_llc * (uint64_t)times_llc);
}
#define BW_BYTES out_of_cache(512ull << 20, 16)
#define MAT_BYTES out_of_cache(256ull << 20, 8)

/* Size of the largest cache of cpu0 from sysfs (glibc's _SC_LEVEL3_CACHE_SIZE says 320 MiB
 * for this VM's 32 MiB L3), else from sysconf, else 0. */
static uint64_t llc_bytes(void) {
    uint64_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96], txt[32] = {0};
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        char unit = 0;
        unsigned long long v = 0;
        if (fgets(txt, sizeof txt, f) && sscanf(txt, "%llu%c", &v, &unit) >= 1) {
            uint64_t b = v * (unit == 'K' ? 1024ull : unit == 'M' ? 1048576ull : 1ull);
            best = FM_MAX(best, b);
        }
        fclose(f);
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (!best) {
        long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        best = l3 > 0 ? (uint64_t)l3 : 0;
    }
#endif
    return best;
}

/* The read rate is the best of several read loops. Each reads a 4 MiB task as S streams
 * side by side (the task's S parts, 64 bytes of each per step), with a software prefetch
 * `ahead` bytes on in each stream or none. The plain loop (one stream, no prefetch) leaves
 * the memory idle part of the time, and the kernels, which read several rows at once and
 * prefetch, outran it: one thread of the Zen 3 VM read 18-21 GB/s with it and 24-29 GB/s
 * as 4 streams, and 16 threads of a 16-core Xeon 160 GB/s against 214 GB/s as 2 streams
 * prefetching 2 KiB ahead, where the Q4 kernel reached 212 GB/s. No single loop was the
 * best on both machines. */
static const struct { int streams, ahead; } g_loops[] = {
    {1, 0}, {1, 4096}, {2, 512}, {2, 2048}, {4, 0}, {4, 1024}, {8, 0},
};
#define N_LOOPS ((int)FM_ARRAY_LEN(g_loops))
#define BW_TASK (4u << 20)

typedef uint64_t bw_vec __attribute__((vector_size(16)));

typedef struct {
    const char *buf;
    uint64_t bytes;
    int loop;
    bw_vec sink[256]; /* the tasks' results (task mod 256), so the loads are not dropped */
} bw_job;

/* Streams of `part` bytes from base, then the bytes from S * part to n. */
static inline __attribute__((always_inline)) bw_vec bw_streams(const char *base, uint64_t n, const int S,
                                                               int ahead) {
    const uint64_t part = n / S / 64 * 64;
    bw_vec acc[8];
    for (int s = 0; s < S; s++) acc[s] = (bw_vec){0, 0};
    for (uint64_t o = 0; o < part; o += 64)
        for (int s = 0; s < S; s++) {
            const bw_vec *q = (const bw_vec *)(base + s * part + o);
            if (ahead) __builtin_prefetch((const char *)q + ahead);
            acc[s] ^= (q[0] ^ q[1]) ^ (q[2] ^ q[3]);
        }
    for (uint64_t o = S * part; o + 16 <= n; o += 16) acc[0] ^= *(const bw_vec *)(base + o);
    for (int s = 1; s < S; s++) acc[0] ^= acc[s];
    return acc[0];
}

static void bw_task(int64_t t, void *c) {
    bw_job *j = c;
    const uint64_t lo = (uint64_t)t * BW_TASK, n = FM_MIN((uint64_t)BW_TASK, j->bytes - lo);
    const int ahead = g_loops[j->loop].ahead;
    bw_vec v;
    switch (g_loops[j->loop].streams) {
    case 1: v = bw_streams(j->buf + lo, n, 1, ahead); break;
    case 2: v = bw_streams(j->buf + lo, n, 2, ahead); break;
    case 4: v = bw_streams(j->buf + lo, n, 4, ahead); break;
    default: v = bw_streams(j->buf + lo, n, 8, ahead); break;
    }
    j->sink[t & 255] = v;
}

/* One pass of read loop `loop` over bytes (a multiple of 16) at buf (64-byte aligned), in
 * 4 MiB tasks: GB/s. */
static double read_pass(fm__pool *p, const void *buf, uint64_t bytes, int loop) {
    bw_job j = {buf, bytes, loop, {{0}}};
    double t0 = fm__now();
    fm__pool_run(p, (int64_t)((bytes + BW_TASK - 1) / BW_TASK), bw_task, &j);
    return bytes / (fm__now() - t0) / 1e9;
}

/* Best read bandwidth (GB/s) of the read loops, taken in turn for `seconds` (each at least
 * once); per[] (if not NULL) gets each loop's best. */
static double read_bw(fm__pool *p, const void *buf, uint64_t bytes, double seconds, double per[N_LOOPS]) {
    double best[N_LOOPS] = {0}, all = 0, t_end = fm__now() + seconds;
    do
        for (int l = 0; l < N_LOOPS; l++) {
            best[l] = FM_MAX(best[l], read_pass(p, buf, bytes, l));
            all = FM_MAX(all, best[l]);
        }
    while (fm__now() < t_end);
    if (per) memcpy(per, best, sizeof best);
    return all;
}

static int best_loop(const double per[N_LOOPS]) {
    int b = 0;
    for (int l = 1; l < N_LOOPS; l++)
        if (per[l] > per[b]) b = l;
    return b;
}

static void print_loop(int l) {
    if (g_loops[l].ahead) printf("%d stream%s, prefetch %d B ahead", g_loops[l].streams, g_loops[l].streams > 1 ? "s" : "", g_loops[l].ahead);
    else printf("%d stream%s, no prefetch", g_loops[l].streams, g_loops[l].streams > 1 ? "s" : "");
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

/* Best GB/s of the matrix-vector product y = W x over `seconds`, and in *mean (if not NULL)
 * the rate of all the passes together: a pass inside decode meets the memory's rate of
 * the moment, which on a shared VM is often below its best. */
static double matvec_bw(fm__pool *p, const fm__mat *m, double seconds, double *mean) {
    float *x = malloc((size_t)m->cols * sizeof *x), *y = malloc((size_t)m->rows * sizeof *y);
    if (!x || !y) { free(x); free(y); return 0; }
    for (int64_t i = 0; i < m->cols; i++) x[i] = (float)((i % 17) - 8) * 0.01f;
    double best = 0, t_end = fm__now() + seconds, t_all = 0;
    int passes = 0;
    fm__matmul(p, m, x, m->cols, 1, y, m->rows); /* warm up */
    do {
        double t0 = fm__now();
        fm__matmul(p, m, x, m->cols, 1, y, m->rows);
        double dt = fm__now() - t0;
        t_all += dt;
        passes++;
        if (mat_bytes(m) / dt / 1e9 > best) best = mat_bytes(m) / dt / 1e9;
    } while (fm__now() < t_end);
    if (mean) *mean = mat_bytes(m) * passes / t_all / 1e9;
    free(x); free(y);
    return best;
}

static int bench_model(const char *dir, const cli_model_opts *mo, int n_decode, double bw_all, int loop,
                       double seconds);

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

    g_llc = llc_bytes();
    fm__pool *p1 = fm__pool_new(1), *pn = fm__pool_new(mo.threads);
    if (!p1 || !pn) { fm__pool_free(p1); fm__pool_free(pn); fprintf(stderr, "flash-moe: cannot start threads\n"); return 1; }
    int nt = fm__pool_size(pn);
    printf("kernel path: %s, threads: %d, last-level cache %.0f MiB: read buffer %.0f MiB, matrices about %.0f MiB\n",
           fm__kernel_path(), nt, g_llc / 1048576.0, BW_BYTES / 1048576.0, MAT_BYTES / 1048576.0);

    double bw[2][2], per[2][2][N_LOOPS]; /* [4 KiB, 2 MiB pages][1, all threads] */
    for (int huge = 0; huge < 2; huge++) {
        void *buf = big_alloc(BW_BYTES, huge);
        if (!buf) { fprintf(stderr, "flash-moe: out of memory\n"); return 1; }
        fill_random(buf, BW_BYTES);
        bw[huge][0] = read_bw(p1, buf, BW_BYTES, seconds, per[huge][0]);
        bw[huge][1] = read_bw(pn, buf, BW_BYTES, seconds, per[huge][1]);
        free(buf);
    }
    /* The bound uses the best figure seen: on a shared VM the rate moves between runs. */
    const int h1 = bw[1][0] >= bw[0][0], hn = bw[1][1] >= bw[0][1];
    double bw1 = bw[h1][0], bwn = bw[hn][1], best_read = FM_MAX(bw1, bwn);
    const int loop_n = best_loop(per[hn][1]); /* the read loop of the passes beside decode */
    printf("memory read bandwidth (%llu MiB buffer, best of %d read loops on 2 MiB and 4 KiB pages): %.1f GB/s "
           "with 1 thread, %.1f GB/s with %d threads\n",
           (unsigned long long)(BW_BYTES >> 20), N_LOOPS, bw1, bwn, nt);
    printf("  best loops: 1 thread: ");
    print_loop(best_loop(per[h1][0]));
    printf("; %d threads: ", nt);
    print_loop(loop_n);
    printf("; 2 MiB pages %.1f and %.1f GB/s, 4 KiB pages %.1f and %.1f GB/s; the plain loop (1 stream, no "
           "prefetch) %.1f and %.1f GB/s\n", bw[1][0], bw[1][1], bw[0][0], bw[0][1],
           FM_MAX(per[0][0][0], per[1][0][0]), FM_MAX(per[0][1][0], per[1][1][0]));

    static const struct { const char *name; fm__wtype t; int bits; int64_t cols; } mats[] = {
        /* 2048 columns: the hidden size of Qwen3-30B-A3B (most of its decode bytes) */
        {"Q4 g64 (MLX affine, BF16 scales)", FM_W_QAFFINE, 4, 2048},
        {"Q8 g64 (MLX affine, BF16 scales)", FM_W_QAFFINE, 8, 2048},
        {"BF16", FM_W_BF16, 0, 2048},
        {"Q4 g64, 8192 columns", FM_W_QAFFINE, 4, 8192},
    };
    for (size_t i = 0; i < FM_ARRAY_LEN(mats); i++) {
        fm__mat m;
        void *mem;
        /* rows for MAT_BYTES: bits/8 bytes per weight plus 2+2 bytes of scale and bias per 64 */
        double row_bytes = mats[i].cols * (mats[i].t == FM_W_BF16 ? 2.0 : mats[i].bits / 8.0 + 4.0 / 64);
        int64_t rows = ((int64_t)(MAT_BYTES / row_bytes) + 1023) / 1024 * 1024;
        if (make_mat(&m, mats[i].t, rows, mats[i].cols, mats[i].bits, &mem)) {
            fprintf(stderr, "flash-moe: out of memory\n");
            return 1;
        }
        double gn_mean = 0, g1 = matvec_bw(p1, &m, seconds, NULL), gn = matvec_bw(pn, &m, seconds, &gn_mean);
        best_read = FM_MAX(best_read, FM_MAX(g1, gn));
        printf("matvec %-34s %lldx%lld (%.0f MiB): 1 thread %.1f GB/s (%.0f%% of %.1f), %d threads %.1f GB/s (%.0f%% of %.1f; mean of the passes %.1f)",
               mats[i].name, (long long)m.rows, (long long)m.cols, mat_bytes(&m) / 1048576.0,
               g1, 100 * g1 / bw1, bw1, nt, gn, 100 * gn / bwn, bwn, gn_mean);
        free(mem);
        /* The kernel's own ceiling: the same product on a matrix a quarter of the last-level
         * cache, read from the cache, where the arithmetic rather than the memory sets it. */
        int64_t crows = g_llc ? (int64_t)(g_llc / 4 / row_bytes) / 64 * 64 : 0;
        if (crows >= 64 && make_mat(&m, mats[i].t, crows, mats[i].cols, mats[i].bits, &mem) == 0) {
            double c1 = matvec_bw(p1, &m, seconds, NULL), cn = matvec_bw(pn, &m, seconds, NULL);
            printf("; from the cache (%.0f MiB): %.1f and %.1f GB/s", mat_bytes(&m) / 1048576.0, c1, cn);
            free(mem);
        }
        printf("\n");
    }
    fm__pool_free(p1);
    fm__pool_free(pn);
    /* Any rate a kernel reached is a rate the memory delivered: the bound takes the best
     * figure seen. */
    if (best_read > bwn)
        printf("the kernels read faster than the read loop: the bound uses %.1f GB/s\n", best_read);
    if (model) return bench_model(model, &mo, n_decode, best_read, loop_n, seconds);
    return 0;
}

/* Index of the largest of x[0..n) (the lowest index on ties; NaNs are never chosen): the
 * greedy choice. Blocks of 256 reduced in 8 independent lanes (vector max), and only a
 * block whose maximum beats the best so far is scanned for the index. */
static int32_t argmax(const float *x, int32_t n) {
    int32_t bi = 0, i = 0;
    float best = x[0];
    for (; i + 256 <= n; i += 256) {
        float l[8];
        for (int k = 0; k < 8; k++) l[k] = x[i + k];
        for (int j = 8; j < 256; j += 8)
            for (int k = 0; k < 8; k++) l[k] = x[i + j + k] > l[k] ? x[i + j + k] : l[k];
        float mx = l[0];
        for (int k = 1; k < 8; k++) mx = l[k] > mx ? l[k] : mx;
        if (mx > best)
            for (int j = 0; j < 256; j++)
                if (x[i + j] > best) { best = x[i + j]; bi = i + j; }
    }
    for (; i < n; i++)
        if (x[i] > best) { best = x[i]; bi = i; }
    return bi;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Bytes of the token embedding tensors in the checkpoint (weight, and scales and biases
 * when quantized), read from the safetensors headers; 0 if they cannot be read. */
static double embed_bytes(const char *dir) {
    fm__st_set *st = NULL;
    if (fm__st_open_dir(dir, &st) != FM_OK) { fm__clear_err(); return 0; }
    double b = 0;
    static const char *const part[] = {"weight", "scales", "biases"};
    for (size_t i = 0; i < FM_ARRAY_LEN(part); i++) {
        const fm__st_tensor *t = fm__st_findf(st, "model.embed_tokens.%s", part[i]);
        if (t) b += (double)t->nbytes;
    }
    fm__st_free(st);
    return b;
}

static int bench_model(const char *dir, const cli_model_opts *mo, int n_decode, double bw_all, int loop,
                       double seconds) {
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
    /* the timed decode, then the paired rounds (at most max(32, n_decode) tokens) */
    if (fm__state_new(m, warm + 2 * n_decode + 40, &s) != FM_OK) { cli_fail("cannot make the state"); goto out; }
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
    double best = 1e30, total = 0, t_argmax = 0;
    double *times = malloc((size_t)n_decode * sizeof *times);
    if (!times) { fprintf(stderr, "flash-moe: out of memory\n"); goto out; }
    /* One token: greedy choice (argmax) over the last logits, then the forward pass. */
    for (int i = 0; i < n_decode; i++) {
        double t1 = fm__now();
        int32_t next = argmax(logits, info.vocab);
        t_argmax += fm__now() - t1;
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
    /* Bytes of weights one token reads: every resident tensor (attention or linear mixer,
     * norms, routers, shared experts or dense MLPs, final norm, LM head) except the
     * embedding table, of which one row is read (all of it when it is also the LM head),
     * plus top-k routed experts per MoE layer. */
    int tied = 0;
    {
        char *cp = fm__path_join(dir, "config.json"), *txt = NULL;
        size_t len;
        if (cp && fm__read_file(cp, &txt, &len) == FM_OK) {
            cJSON *root = cJSON_Parse(txt);
            tied = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings"));
            cJSON_Delete(root);
        }
        fm__clear_err();
        free(txt);
        free(cp);
    }
    double eb = embed_bytes(dir);
    double experts = (double)info.n_moe_layers * info.top_k * (double)info.expert_bytes;
    double active = (double)info.resident_bytes - (tied ? 0 : eb) + eb / info.vocab + experts;
    /* The machine is shared and its read rate moves within seconds: rounds of 8 tokens,
     * each followed by one read pass over a buffer out of cache, put every decode figure
     * next to a bandwidth measured right after it. */
    fm__pool *pn = fm__pool_new(mo->threads);
    int nt = fm__pool_size(pn);
    uint64_t bwb = BW_BYTES;
    void *buf = big_alloc(bwb, 1);
    int rounds = FM_MAX(4, n_decode / 8);
    double *ratio = malloc((size_t)rounds * sizeof *ratio), *rbw = malloc((size_t)rounds * sizeof *rbw);
    double *rtok = malloc((size_t)rounds * sizeof *rtok);
    if (!pn || !buf || !ratio || !rbw || !rtok) {
        fm__pool_free(pn); free(buf); free(ratio); free(rbw); free(rtok);
        fprintf(stderr, "flash-moe: out of memory\n");
        goto out;
    }
    fill_random(buf, bwb);
    for (int r = 0; r < rounds; r++) {
        double t1 = fm__now();
        for (int i = 0; i < 8 && st == FM_OK; i++) {
            int32_t next = argmax(logits, info.vocab);
            st = fm__forward(m, s, &next, 1, logits, 0);
        }
        if (st != FM_OK) break;
        rtok[r] = 8 / (fm__now() - t1);
        rbw[r] = read_pass(pn, buf, bwb, loop); /* one pass of the loop best with all threads */
        ratio[r] = rtok[r] * active / (rbw[r] * 1e9);
    }
    double again = read_bw(pn, buf, bwb, seconds, NULL);
    free(buf);
    fm__pool_free(pn);
    if (st != FM_OK) { free(ratio); free(rbw); free(rtok); cli_fail("forward failed"); goto out; }
    double best_pass = again;
    for (int r = 0; r < rounds; r++) best_pass = FM_MAX(best_pass, rbw[r]);
    qsort(ratio, (size_t)rounds, sizeof *ratio, cmp_double);
    qsort(rbw, (size_t)rounds, sizeof *rbw, cmp_double);
    qsort(rtok, (size_t)rounds, sizeof *rtok, cmp_double);
    double p_ratio = ratio[rounds / 2], p_bw = rbw[rounds / 2], p_tok = rtok[rounds / 2];
    free(ratio); free(rbw); free(rtok);
    printf("memory read bandwidth after decode: %.1f GB/s (%d threads, 2 MiB pages, best over %.1f s), best pass "
           "between decode rounds %.1f GB/s; the bound uses %.1f GB/s, the best read rate of the run\n",
           again, nt, seconds, best_pass, FM_MAX(best_pass, bw_all));
    bw_all = FM_MAX(best_pass, bw_all);
    double bound = bw_all * 1e9 / active;
    printf("active weight bytes per token: %.1f MB = resident tensors %.1f MB - embedding table %.1f MB + one "
           "row %.1f KB, + %d MoE layers x top-%d x %.2f MB per expert (%.1f MB)\n",
           active / 1e6, info.resident_bytes / 1e6, tied ? 0.0 : eb / 1e6, eb / info.vocab / 1e3,
           info.n_moe_layers, info.top_k, info.expert_bytes / 1e6, experts / 1e6);
    printf("decode %d tokens: %.2f tok/s mean, %.2f median, %.2f best token; bound %.2f tok/s at %.1f GB/s: "
           "mean %.0f%%, median %.0f%%, best %.0f%% of the bound\n",
           n_decode, n_decode / total, 1 / median, 1 / best, bound, bw_all, 100 * (n_decode / total) / bound,
           100 * (1 / median) / bound, 100 * (1 / best) / bound);
    printf("argmax over the logits: %.3f ms per token\n", 1e3 * t_argmax / n_decode);
    if (c)
        printf("expert cache during decode: %lld hits, %lld misses, %.1f MB read\n", (long long)(s1.hits - s0.hits),
               (long long)(s1.misses - s0.misses), (s1.bytes_read - s0.bytes_read) / 1e6);
    printf("decode paired with the bandwidth: %d rounds of 8 tokens, each followed by one read pass: median "
           "%.2f tok/s, median pass %.1f GB/s, median round %.0f%% of its own bound\n",
           rounds, p_tok, p_bw, 100 * p_ratio);
    printf("DECODE VS BOUND: %.2f tok/s (median token) = %.0f%% of the bound %.2f tok/s "
           "(%.1f MB of weights per token at %.1f GB/s, the best read rate measured, %d threads); "
           "paired with the read rate of the moment: %.0f%%\n",
           1 / median, 100 * (1 / median) / bound, bound, active / 1e6, bw_all, nt, 100 * p_ratio);
    rc = 0;
out:
    free(logits);
    fm__state_free(s);
    fm_model_free(m);
    return rc;
}
