/* dispatch.c: fm__matmul for the CPU backend. Picks the kernel path once at run time
 * (cpuid on x86-64, NEON on ARM64, scalar elsewhere; $FM_KERNEL names another available
 * path, fm__kernel_force overrides it for tests), makes the per-call preparations of X
 * that the quantized SIMD kernels need (the activation digits: 3 per column, or 2 with
 * $FM_ACT_DIGITS=2 or fm__kern_set_act_digits), and splits the output rows over the
 * thread pool. Work is split only over rows, so results are bitwise the same for any
 * thread count and any batch size. */
#include "backend/cpu/kern.h"
#include "common.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    fm__rows_fn fn;
    int (*avail)(void);
    /* affine activation digits (fm__kargs.xq), or NULL */
    void (*xq_prep)(const float *x, int64_t cols, int bits, int digits, int8_t *xq, float *s);
    int xq_all; /* the digits are used for every bit width, not only 4 */
} kpath;

static int avail_yes(void) { return 1; }
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* cpuid feature bits, with the OS saving the registers (XCR0) checked too. */
static struct { int avx2, avx512, vnni; } g_x86;
static pthread_once_t g_x86_once = PTHREAD_ONCE_INIT;

static void x86_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    int ymm = (xlo & 0x6) == 0x6, zmm = (xlo & 0xE6) == 0xE6;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    int avx2 = (b >> 5) & 1, f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
    g_x86.avx2 = ymm && avx2 && fma && f16c;
    g_x86.avx512 = g_x86.avx2 && zmm && f && dq && bw && vl;
    g_x86.vnni = g_x86.avx512 && ((c >> 11) & 1) && ((c >> 1) & 1); /* VNNI and VBMI */
}
static int avail_avx2(void) { pthread_once(&g_x86_once, x86_probe); return g_x86.avx2; }
static int avail_avx512(void) { pthread_once(&g_x86_once, x86_probe); return g_x86.avx512; }
static int avail_avx512vnni(void) { pthread_once(&g_x86_once, x86_probe); return g_x86.vnni; }
#endif

/* Best first. */
static const kpath g_paths[] = {
#if defined(__x86_64__) || defined(__i386__)
    {"avx512vnni", fm__rows_avx512vnni, avail_avx512vnni, fm__xq_prep_avx512, 1},
    {"avx512", fm__rows_avx512, avail_avx512, NULL, 0},
    {"avx2", fm__rows_avx2, avail_avx2, fm__xq_prep_avx2, 0},
#endif
#if defined(__aarch64__)
    {"neon", fm__rows_neon, avail_yes, fm__xq_prep_ref, 0},
#endif
    {"scalar", fm__rows_scalar, avail_yes, NULL, 0},
};
static const kpath *g_cur;
static int g_digits = 3; /* activation digits of the integer kernels */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* The best available path, or the one named by $FM_KERNEL when it is available; the
 * activation digits from $FM_ACT_DIGITS (2 or 3). */
static void pick_path(void) {
    const char *dg = getenv("FM_ACT_DIGITS");
    if (dg && (strcmp(dg, "2") == 0 || strcmp(dg, "3") == 0)) g_digits = dg[0] - '0';
    const char *env = getenv("FM_KERNEL");
    for (size_t i = 0; env && *env && i < FM_ARRAY_LEN(g_paths); i++)
        if (strcmp(g_paths[i].name, env) == 0 && g_paths[i].avail()) { g_cur = &g_paths[i]; return; }
    for (size_t i = 0; i < FM_ARRAY_LEN(g_paths); i++)
        if (g_paths[i].avail()) { g_cur = &g_paths[i]; return; }
}

static const kpath *cur_path(void) {
    pthread_once(&g_once, pick_path);
    return g_cur;
}

const char *fm__kernel_path(void) { return cur_path()->name; }

int fm__kern_set_act_digits(int digits) {
    cur_path();
    int old = g_digits;
    if (digits == 2 || digits == 3) g_digits = digits;
    return old;
}

int fm__kernel_force(const char *path) {
    cur_path();
    if (!path) return 0;
    for (size_t i = 0; i < FM_ARRAY_LEN(g_paths); i++)
        if (strcmp(g_paths[i].name, path) == 0) {
            if (!g_paths[i].avail()) return 0;
            g_cur = &g_paths[i];
            return 1;
        }
    return 0;
}

typedef struct {
    fm__rows_fn fn;
    const fm__mat *W;
    const float *X;
    float *Y;
    int64_t ldx, n, ldy, rows_per_task;
    int64_t n_big, tail_rpt; /* run_rows: tasks >= n_big take tail_rpt rows (the tail) */
    fm__kargs ka;
} mm_job;

static void mm_task(int64_t t, void *c) {
    const mm_job *j = c;
    int64_t r0, r1;
    if (t < j->n_big) {
        r0 = t * j->rows_per_task;
        r1 = r0 + j->rows_per_task;
    } else {
        r0 = j->n_big * j->rows_per_task + (t - j->n_big) * j->tail_rpt;
        r1 = r0 + j->tail_rpt;
    }
    j->fn(j->W, r0, FM_MIN(j->W->rows, r1), j->X, j->ldx, j->n, j->Y, j->ldy, &j->ka);
}

/* Rows per task of a single matrix: at least 8 tasks per thread, each streaming at most
 * TASK_MAX bytes and at least TASK_MIN (the claim and the prefetch ramp are amortized).
 * The last rows, as many as one task per thread, go in tasks of TASK_TAIL bytes, so the
 * threads finish within a short task of each other: a thread may still be in a large
 * task when the other runs out (the LM head's tasks take ~80 us each). */
#define TASK_MAX (1u << 20)
#define TASK_MIN (16u << 10)
#define TASK_TAIL (32u << 10)

static int64_t task_rows(int nt, int64_t rows, uint64_t row_bytes) {
    uint64_t target = row_bytes * (uint64_t)rows / ((uint64_t)nt * 8);
    target = target > TASK_MAX ? TASK_MAX : target < TASK_MIN ? TASK_MIN : target;
    int64_t rpt = (int64_t)(target / (row_bytes ? row_bytes : 1));
    if (rpt < 1) rpt = 1;
    int64_t ntask = (rows + rpt - 1) / rpt;
    return (rows + ntask - 1) / ntask; /* the rows spread evenly over the tasks */
}

/* Splits rows over the pool (serially for small work). */
static void run_rows(fm__pool *p, mm_job *j) {
    int nt = fm__pool_size(p);
    uint64_t row_bytes = fm__mat_data_bytes(j->W) / (uint64_t)FM_MAX(j->W->rows, 1) + (uint64_t)j->n * 64;
    uint64_t work = row_bytes * (uint64_t)j->W->rows;
    if (nt <= 1 || work < (64u << 10) || j->W->rows < 2) {
        j->fn(j->W, 0, j->W->rows, j->X, j->ldx, j->n, j->Y, j->ldy, &j->ka);
        return;
    }
    int64_t rows = j->W->rows, rpt = task_rows(nt, rows, row_bytes);
    int64_t tail = FM_MIN(rows, (int64_t)nt * rpt);
    int64_t trpt = FM_MAX((int64_t)(TASK_TAIL / row_bytes) & ~(int64_t)1, 2); /* even: row pairs */
    if (trpt >= rpt) { /* tasks already small: all equal */
        tail = 0;
        trpt = rpt;
    }
    j->rows_per_task = rpt;
    j->n_big = (rows - tail) / rpt;
    j->tail_rpt = trpt;
    int64_t rest = rows - j->n_big * rpt;
    fm__pool_run(p, j->n_big + (rest + trpt - 1) / trpt, mm_task, j);
}

/* Per-call buffers live on the caller's stack (no allocation): batch rows are taken in
 * chunks that fit. Whether a matrix uses the xq kernels depends only on its shape. */
#define XS_FLOATS FM_XSUM_MAX            /* group sums */
#define XQ_BYTES (64 * 1024)             /* activation digits + chunk scales */
#define XQ_ROW_BYTES(cols, D) (FM_XQ_BYTES(cols, D) + (cols) / 64 * 4)

void fm__matmul(fm__pool *p, const fm__mat *W, const float *X, int64_t ldx, int64_t n,
                float *Y, int64_t ldy) {
    if (n <= 0 || W->rows <= 0) return;
    const kpath *k = cur_path();
    mm_job j = {k->fn, W, X, Y, ldx, n, ldy, 0, 0, 0, {0}};
    if (W->type != FM_W_QAFFINE || k->fn == fm__rows_scalar) {
        run_rows(p, &j);
        return;
    }
    /* shape invariants the loader checks (fm__mat contract) */
    FM_ASSERT(W->group > 0 && W->cols % W->group == 0 && W->bits >= 2 && W->bits <= 8);
    int64_t ng = W->cols / W->group;
    if (ng == 0) {
        for (int64_t b = 0; b < n; b++)
            for (int64_t r = 0; r < W->rows; r++) Y[b * ldy + r] = 0;
        return;
    }
    if (ng > FM_XSUM_MAX) { /* too wide for the group-sum buffer: reference numerics */
        j.fn = fm__rows_scalar;
        run_rows(p, &j);
        return;
    }
    const int D = g_digits;
    const int64_t xqb = FM_XQ_BYTES(W->cols, D);
    int use_xq = k->xq_prep && (W->bits == 4 || k->xq_all) && W->cols % 64 == 0 && XQ_ROW_BYTES(W->cols, D) <= XQ_BYTES;
    float xs[XS_FLOATS];
    _Alignas(64) int8_t xq[XQ_BYTES];
    int64_t per = XS_FLOATS / ng;
    if (use_xq) per = FM_MIN(per, XQ_BYTES / XQ_ROW_BYTES(W->cols, D));
    for (int64_t b0 = 0; b0 < n; b0 += per) {
        int64_t nb = FM_MIN(per, n - b0);
        float *xqs = use_xq ? (float *)(xq + nb * xqb) : NULL;
        for (int64_t b = 0; b < nb; b++) {
            fm__xsum(X + (b0 + b) * ldx, W->cols, W->group, xs + b * ng);
            if (use_xq) k->xq_prep(X + (b0 + b) * ldx, W->cols, W->bits, D, xq + b * xqb, xqs + b * (W->cols / 64));
        }
        j.X = X + b0 * ldx;
        j.Y = Y + b0 * ldy;
        j.n = nb;
        j.ka = (fm__kargs){xs, ng, use_xq ? xq : NULL, xqb, xqs, W->cols / 64, D};
        run_rows(p, &j);
    }
}

/* ---- many matrix-vector products in one dispatch --------------------------------- */

#define MV_MAX 32 /* matrices per pool dispatch */
#define MV_TASK (128u << 10)

typedef struct {
    mm_job j[MV_MAX];
    int64_t first[MV_MAX + 1]; /* first task of each job */
    int nj;
} mv_batch;

static void mv_task(int64_t t, void *c) {
    const mv_batch *b = c;
    int i = 0;
    while (t >= b->first[i + 1]) i++;
    const mm_job *j = &b->j[i];
    int64_t r0 = (t - b->first[i]) * j->rows_per_task, r1 = FM_MIN(j->W->rows, r0 + j->rows_per_task);
    j->fn(j->W, r0, r1, j->X, j->ldx, 1, j->Y, j->ldy, &j->ka);
}

static void mv_flush(fm__pool *p, mv_batch *b) {
    if (b->nj == 0) return;
    int nt = fm__pool_size(p);
    int64_t rows = 0;
    uint64_t bytes = 0;
    for (int i = 0; i < b->nj; i++) {
        rows += b->j[i].W->rows;
        bytes += fm__mat_data_bytes(b->j[i].W);
    }
    /* at least 8 tasks per thread, and tasks of at most MV_TASK bytes: the threads finish
     * a dispatch at most one short task apart */
    int64_t ntask = FM_MAX((int64_t)FM_MAX(nt, 1) * 8, (int64_t)(bytes / MV_TASK));
    int64_t rpt = FM_MAX((rows + ntask - 1) / ntask, 4);
    rpt = (rpt + 1) & ~(int64_t)1; /* even: the kernels take rows in pairs */
    b->first[0] = 0;
    for (int i = 0; i < b->nj; i++) {
        b->j[i].rows_per_task = rpt;
        b->first[i + 1] = b->first[i] + (b->j[i].W->rows + rpt - 1) / rpt;
    }
    fm__pool_run(nt > 1 ? p : NULL, b->first[b->nj], mv_task, b);
    b->nj = 0;
}

void fm__matvec_multi(fm__pool *p, int32_t nm, const fm__mat *const *W, const float *const *x,
                      float *const *y) {
    const kpath *k = cur_path();
    mv_batch b;
    b.nj = 0;
    float xs[XS_FLOATS];
    _Alignas(64) int8_t xq[XQ_BYTES];
    int64_t xs_used = 0, xq_used = 0;
    int last = -1; /* job whose preparations the next one may share */
    const int D = g_digits;
    for (int32_t i = 0; i < nm; i++) {
        const fm__mat *w = W[i];
        if (w->rows <= 0) continue;
        int64_t ng = w->type == FM_W_QAFFINE && w->group > 0 ? w->cols / w->group : 0;
        if (w->type != FM_W_QAFFINE || k->fn == fm__rows_scalar || ng == 0 || ng > FM_XSUM_MAX) {
            fm__matmul(p, w, x[i], w->cols, 1, y[i], w->rows); /* no preparations: as is */
            continue;
        }
        int use_xq = k->xq_prep && (w->bits == 4 || k->xq_all) && w->cols % 64 == 0 &&
                     XQ_ROW_BYTES(w->cols, D) <= XQ_BYTES;
        mm_job j = {k->fn, w, x[i], y[i], w->cols, 1, w->rows, 0, 0, 0, {0}};
        const mm_job *lj = last >= 0 && b.nj > last ? &b.j[last] : NULL;
        if (lj && lj->X == x[i] && lj->W->cols == w->cols && lj->W->group == w->group &&
            lj->W->bits == w->bits && (lj->ka.xq != NULL) == use_xq) {
            j.ka = lj->ka; /* same input, same preparations */
        } else {
            int64_t xqb = use_xq ? (XQ_ROW_BYTES(w->cols, D) + 63) / 64 * 64 : 0;
            if (b.nj == MV_MAX || xs_used + ng > XS_FLOATS || xq_used + xqb > XQ_BYTES) {
                mv_flush(p, &b);
                xs_used = xq_used = 0;
            }
            float *s = xs + xs_used;
            fm__xsum(x[i], w->cols, w->group, s);
            j.ka = (fm__kargs){s, ng, NULL, FM_XQ_BYTES(w->cols, D), NULL, w->cols / 64, D};
            if (use_xq) {
                int8_t *q = xq + xq_used;
                float *qs = (float *)(q + FM_XQ_BYTES(w->cols, D));
                k->xq_prep(x[i], w->cols, w->bits, D, q, qs);
                j.ka.xq = q;
                j.ka.xqs = qs;
            }
            xs_used += ng;
            xq_used += xqb;
            last = b.nj;
        }
        if (b.nj == MV_MAX) {
            mv_flush(p, &b);
            xs_used = xq_used = 0;
            /* the shared preparations were in the flushed buffers: redo them */
            i--;
            last = -1;
            continue;
        }
        b.j[b.nj++] = j;
    }
    mv_flush(p, &b);
}
