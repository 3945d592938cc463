/* expert_cache.c: the bounded per-layer cache of routed experts.
 *
 * Each MoE layer owns `capacity` slots; a slot is one aligned buffer holding one expert
 * laid out gate|up|down, each with data/scales/biases (ec_layout). A table maps expert ->
 * slot. Misses are read by a pool of I/O threads (checkpoint files through O_DIRECT or
 * pread + fadvise(DONTNEED), or one aligned read per expert from the packed store), all
 * misses of one request in parallel. Eviction is LFRU: the victim minimises
 * freq * 0.25^(age/128), computed as the equivalent key log(freq) + ln(4)/128 * last_use,
 * so no power is evaluated per candidate. Pinned experts and experts of the current
 * request are never evicted; slots still loading are never victims.
 *
 * Threading: every fm__ec_* call comes from one thread at a time (the forward pass). The
 * I/O threads only fill slot buffers and flip the slot state (atomic) under the pool
 * mutex; the tables belong to the calling thread. */
#include "ec_internal.h"

#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { SLOT_EMPTY = 0, SLOT_LOADING, SLOT_READY, SLOT_ERROR };

/* Request flags. */
enum {
    R_STATS = 1,    /* count hits and misses */
    R_FREQ = 2,     /* update frequency / recency */
    R_URGENT = 4,   /* jobs go to the front of the queue */
    R_MAYFAIL = 8,  /* give up on an id when no victim is free (never wait, never unpin) */
    R_PREFETCH = 16 /* mark loaded slots as prefetched */
};

#define LFRU_C (1.3862943611198906 / 128.0) /* ln(4)/128: 0.25^(age/128) as a log slope */

/* One part of a slot's read: a chunk of a store blob (by default the whole blob), or one
 * array of the checkpoint. The parts of a slot are read in parallel; the last one to
 * finish verifies the blob and publishes the slot. */
typedef struct ec_job {
    struct ec_job *next;
    int32_t layer, slot, expert, part;
    int from_store;
} ec_job;

#define EC_ERRLEN 384

typedef struct ec_layer {
    uint8_t *mem;            /* capacity * slot_bytes, EC_ALIGN aligned */
    int32_t *slot_of;        /* [n_experts] slot or -1 */
    int32_t *expert_of;      /* [capacity] expert or -1 */
    _Atomic int *state;      /* [capacity] SLOT_* */
    uint32_t *protect;       /* [capacity] epoch of the request that last asked for it */
    uint8_t *prefetched;     /* [capacity] loaded by prefetch and not used since */
    ec_job *jobs;            /* [capacity * max_parts] the parts of each slot's read */
    _Atomic int *remaining;  /* [capacity] parts of the slot's read not finished */
    _Atomic unsigned char *store_bad; /* [capacity] a store part failed: use the checkpoint */
    char (*err)[EC_ERRLEN];  /* [capacity] first error of the slot's read (under c->mu) */
    int32_t *free_slots, n_free;
    uint32_t *mark2, stamp2; /* [n_experts] stamps: comparing with a begun request */
    uint32_t *freq;          /* [n_experts] times routed */
    uint64_t *last;          /* [n_experts] tick of last use */
    double *key;             /* [n_experts] log(freq) + LFRU_C * last */
    uint8_t *pinned;         /* [n_experts] */
    int32_t n_pinned;
    uint32_t epoch;
    uint64_t tick;
    int32_t pend_n, *pend_ids; /* ids of a fetch_begin not yet fetched */
} ec_layer;

typedef struct ec_worker {
    struct fm__ecache *c;
    uint8_t *bounce;
    pthread_t th;
    int started;
} ec_worker;

struct fm__ecache {
    const fm__expert_map *map;
    ec_layout lay;
    int32_t cap, n_layers, n_experts, miss_policy, pin_max;
    ec_layer *L;
    ec_files files;
    fm__store *store;
    uint64_t bounce_bytes;
    int32_t max_parts, store_parts, ckpt_parts, ckpt_part[EC_NARR];
    uint64_t chunk; /* bytes per part of a store read: the whole blob, or FM_EC_CHUNK
                       (multiple of 4 KiB). Measured here (2.6 MB blobs, virtio disk, 8 I/O
                       threads): 1 MiB parts waited 10-40% longer than whole-blob reads. */

    int n_threads;
    ec_worker *w;
    pthread_mutex_t mu;
    pthread_cond_t job_cv, done_cv;
    ec_job *head, *tail;
    int stop, inflight;
    double busy_t0, busy_s;
    int64_t bytes_read, reads, store_reads;
    int direct_used;
    int warned_store;

    int64_t *layer_hits, *layer_misses;
    int64_t skipped, prefetched, prefetch_used;
    double io_wait_s;
    int prefetch_on;
    fm__ec_trace_fn trace;
    void *trace_user;
};

/* ---- layout ------------------------------------------------------------------------ */

void fm__ec_ranges(const fm__expert_src *e, const fm__range *r[EC_NARR]) {
    const fm__mat_src *m[3] = {&e->gate, &e->up, &e->down};
    for (int i = 0; i < 3; i++) {
        r[3 * i] = &m[i]->data;
        r[3 * i + 1] = &m[i]->scales;
        r[3 * i + 2] = &m[i]->biases;
    }
}

static const char *g_arr_names[EC_NARR] = {"gate.data", "gate.scales", "gate.biases",
                                           "up.data",   "up.scales",   "up.biases",
                                           "down.data", "down.scales", "down.biases"};

fm_status fm__ec_layout(const fm__expert_map *map, ec_layout *out) {
    memset(out, 0, sizeof *out);
    if (!map || !map->src || map->n_moe_layers <= 0 || map->n_experts <= 0)
        return fm__err(FM_ERR_ARG, "expert map: no MoE layers or experts");
    const fm__range *r0[EC_NARR];
    fm__ec_ranges(&map->src[0], r0);
    uint64_t off = 0;
    for (int a = 0; a < EC_NARR; a++) {
        out->len[a] = r0[a]->len;
        off = (off + 63) & ~(uint64_t)63;
        out->off[a] = off;
        if (!fm__add_u64(off, r0[a]->len, &off))
            return fm__err(FM_ERR_FORMAT, "expert map: %s of layer 0 expert 0 too large",
                           g_arr_names[a]);
        if (out->len[a] > out->max_len) out->max_len = out->len[a];
    }
    out->slot_bytes = (off + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN;
    if (out->slot_bytes == 0) return fm__err(FM_ERR_FORMAT, "expert map: experts have no bytes");
    size_t n = (size_t)map->n_moe_layers * (size_t)map->n_experts;
    for (size_t i = 0; i < n; i++) {
        const fm__range *r[EC_NARR];
        fm__ec_ranges(&map->src[i], r);
        for (int a = 0; a < EC_NARR; a++) {
            if (r[a]->len != out->len[a])
                return fm__err(FM_ERR_FORMAT,
                               "expert map: %s of MoE layer %zu expert %zu has %llu bytes, "
                               "expert 0 of layer 0 has %llu", g_arr_names[a],
                               i / (size_t)map->n_experts, i % (size_t)map->n_experts,
                               (unsigned long long)r[a]->len, (unsigned long long)out->len[a]);
            if (r[a]->len && (r[a]->file < 0 || r[a]->file >= map->n_files))
                return fm__err(FM_ERR_FORMAT, "expert map: %s of MoE layer %zu expert %zu: "
                               "file index %d out of range", g_arr_names[a],
                               i / (size_t)map->n_experts, i % (size_t)map->n_experts,
                               (int)r[a]->file);
            uint64_t end;
            if (!fm__add_u64(r[a]->off, r[a]->len, &end))
                return fm__err(FM_ERR_FORMAT, "expert map: %s of MoE layer %zu expert %zu: "
                               "offset overflows", g_arr_names[a],
                               i / (size_t)map->n_experts, i % (size_t)map->n_experts);
        }
    }
    return FM_OK;
}

fm_status fm__ec_slot_bytes(const fm__expert_map *map, uint64_t *out) {
    ec_layout lay;
    *out = 0;
    fm_status st = fm__ec_layout(map, &lay);
    if (st == FM_OK) *out = lay.slot_bytes;
    return st;
}

/* ---- I/O threads -------------------------------------------------------------------- */

/* Reads one part of a slot. On the last part: verifies a store blob (falling back to the
 * checkpoint if a store part failed or the checksum does not match) and publishes the
 * slot as READY or ERROR. */
static void run_job(fm__ecache *c, ec_worker *w, ec_job *j) {
    ec_layer *L = &c->L[j->layer];
    int32_t s = j->slot;
    uint8_t *dst = L->mem + (size_t)s * c->lay.slot_bytes;
    char err[EC_ERRLEN];
    int rc = 0, direct = 0, from_store = 0;
    uint64_t nread = 0;
    if (j->from_store) {
        uint64_t off = (uint64_t)j->part * c->chunk;
        uint64_t len = FM_MIN(c->chunk, c->lay.slot_bytes - off);
        if (fm__store_read_part(c->store, j->layer, j->expert, dst + off, off, len, err,
                                sizeof err) == 0) {
            nread = len;
            direct = 1;
        } else {
            atomic_store(&L->store_bad[s], 1);
            pthread_mutex_lock(&c->mu);
            int warn = !c->warned_store;
            c->warned_store = 1;
            pthread_mutex_unlock(&c->mu);
            if (warn) FM_LOGW("%s; reading experts from the checkpoint instead", err);
        }
    } else {
        rc = fm__ec_read_ckpt_array(&c->files, &c->lay, j->layer, j->expert, j->part, dst,
                                    w->bounce, &direct, &nread, err, sizeof err);
    }
    /* counted before this part is marked done: once the last part is, a fetcher may
     * return and read the statistics */
    pthread_mutex_lock(&c->mu);
    c->bytes_read += (int64_t)nread;
    if (direct) c->direct_used = 1;
    if (rc != 0 && !L->err[s][0]) snprintf(L->err[s], EC_ERRLEN, "%s", err);
    pthread_mutex_unlock(&c->mu);
    nread = 0;
    int final = -1;
    if (atomic_fetch_sub(&L->remaining[s], 1) == 1) { /* the last part */
        pthread_mutex_lock(&c->mu);
        int failed = L->err[s][0] != 0;
        pthread_mutex_unlock(&c->mu);
        if (!failed && j->from_store) {
            int bad = atomic_load(&L->store_bad[s]);
            if (!bad && fm__store_verify(c->store, j->layer, j->expert, dst, err, sizeof err) != 0) {
                bad = 1;
                FM_LOGW("%s; reading it from the checkpoint ('flash-moe pack' rebuilds the "
                        "store)", err);
            }
            if (bad) {
                uint64_t n2 = 0;
                int d2 = 0;
                if (fm__ec_read_ckpt(&c->files, &c->lay, j->layer, j->expert, dst, w->bounce,
                                     &d2, &n2, err, sizeof err) != 0) {
                    pthread_mutex_lock(&c->mu);
                    snprintf(L->err[s], EC_ERRLEN, "%s", err);
                    pthread_mutex_unlock(&c->mu);
                    failed = 1;
                }
                nread = n2;
                if (d2) direct = 1;
            } else {
                from_store = 1;
            }
        }
        final = failed ? SLOT_ERROR : SLOT_READY;
    }
    pthread_mutex_lock(&c->mu);
    if (--c->inflight == 0) c->busy_s += fm__now() - c->busy_t0;
    c->bytes_read += (int64_t)nread;
    if (direct) c->direct_used = 1;
    if (final >= 0) {
        if (final == SLOT_READY) {
            c->reads++;
            c->store_reads += from_store;
        }
        atomic_store_explicit(&L->state[s], final, memory_order_release);
        pthread_cond_broadcast(&c->done_cv);
    }
    pthread_mutex_unlock(&c->mu);
}

static void *worker_main(void *arg) {
    ec_worker *w = arg;
    struct fm__ecache *c = w->c;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->head && !c->stop) pthread_cond_wait(&c->job_cv, &c->mu);
        if (c->stop) break;
        ec_job *j = c->head;
        c->head = j->next;
        if (!c->head) c->tail = NULL;
        if (c->inflight++ == 0) c->busy_t0 = fm__now();
        pthread_mutex_unlock(&c->mu);
        run_job(c, w, j);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Queues jobs first..last (linked) at the front (urgent) or the back. */
static void enqueue(fm__ecache *c, ec_job *first, ec_job *last, int urgent) {
    if (!first) return;
    pthread_mutex_lock(&c->mu);
    if (urgent) {
        last->next = c->head;
        c->head = first;
        if (!c->tail) c->tail = last;
    } else {
        last->next = NULL;
        if (c->tail) c->tail->next = first;
        else c->head = first;
        c->tail = last;
    }
    pthread_cond_broadcast(&c->job_cv);
    pthread_mutex_unlock(&c->mu);
}

static inline int slot_state(ec_layer *L, int32_t s) {
    return atomic_load_explicit(&L->state[s], memory_order_acquire);
}

/* Frees a slot whose read failed (or that is being dropped). */
static void slot_release(ec_layer *L, int32_t s) {
    int32_t e = L->expert_of[s];
    if (e >= 0) L->slot_of[e] = -1;
    L->expert_of[s] = -1;
    L->prefetched[s] = 0;
    atomic_store_explicit(&L->state[s], SLOT_EMPTY, memory_order_relaxed);
    L->free_slots[L->n_free++] = s;
}

/* Drops slots whose asynchronous reads failed (logged; a later request re-reads them). */
static void harvest_errors(fm__ecache *c, ec_layer *L) {
    for (int32_t s = 0; s < c->cap; s++) {
        if (slot_state(L, s) == SLOT_ERROR) {
            FM_LOGW("expert cache: %s", L->err[s]);
            slot_release(L, s);
        }
    }
}

/* LFRU victim: a free slot, else the resident, unprotected, not loading slot of least key;
 * pinned experts only if allow_pinned and nothing else qualifies. -1 if none. */
static int32_t pick_victim(fm__ecache *c, ec_layer *L, int allow_pinned) {
    if (L->n_free > 0) return L->free_slots[--L->n_free];
    for (int pass = 0; pass < (allow_pinned ? 2 : 1); pass++) {
        int32_t best = -1;
        double bk = 0;
        for (int32_t s = 0; s < c->cap; s++) {
            if (L->protect[s] == L->epoch) continue;
            if (slot_state(L, s) == SLOT_LOADING) continue;
            int32_t e = L->expert_of[s];
            if (e < 0) return s;
            if (pass == 0 && L->pinned[e]) continue;
            double k = L->key[e];
            if (best < 0 || k < bk) {
                best = s;
                bk = k;
            }
        }
        if (best >= 0) {
            if (pass == 1)
                FM_LOGD("expert cache: request needs a pinned expert's slot (expert %d)",
                        L->expert_of[best]);
            return best;
        }
    }
    return -1;
}

/* Blocks until some slot of L that is loading finishes. */
static void wait_any_loading(fm__ecache *c, ec_layer *L) {
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int any = 0;
        for (int32_t s = 0; s < c->cap && !any; s++) any = slot_state(L, s) == SLOT_LOADING;
        if (!any) break;
        pthread_cond_wait(&c->done_cv, &c->mu);
        break;
    }
    pthread_mutex_unlock(&c->mu);
}

static void touch(ec_layer *L, int32_t id) {
    L->freq[id]++;
    L->last[id] = L->tick;
    L->key[id] = log((double)L->freq[id]) + LFRU_C * (double)L->tick;
}

static fm_status check_ids(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                           const char *what) {
    if (!c) return fm__err(FM_ERR_ARG, "%s: no cache", what);
    if (layer < 0 || layer >= c->n_layers)
        return fm__err(FM_ERR_ARG, "%s: MoE layer %d out of range [0, %d)", what, layer,
                       c->n_layers);
    if (n < 0 || n > c->cap)
        return fm__err(FM_ERR_ARG, "%s: %d experts requested, capacity is %d", what, n, c->cap);
    if (n > 0 && !ids) return fm__err(FM_ERR_ARG, "%s: ids is NULL", what);
    ec_layer *L = &c->L[layer];
    uint32_t st = ++L->stamp2;
    if (st == 0) { /* wrapped: clear the stamps */
        memset(L->mark2, 0, sizeof(uint32_t) * (size_t)c->n_experts);
        st = ++L->stamp2;
    }
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->n_experts)
            return fm__err(FM_ERR_ARG, "%s: expert id %d out of range [0, %d) (MoE layer %d)",
                           what, ids[i], c->n_experts, layer);
        if (L->mark2[ids[i]] == st)
            return fm__err(FM_ERR_ARG, "%s: expert %d requested twice (MoE layer %d)", what,
                           ids[i], layer);
        L->mark2[ids[i]] = st;
    }
    return FM_OK;
}

/* Makes ids (validated) resident or loading. Returns FM_OK; with R_MAYFAIL ids without a
 * victim are skipped. */
static void request(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n, int flags) {
    ec_layer *L = &c->L[layer];
    harvest_errors(c, L);
    if (++L->epoch == 0) {
        memset(L->protect, 0, sizeof(uint32_t) * (size_t)c->cap);
        L->epoch = 1;
    }
    if (flags & R_FREQ) L->tick++;
    int64_t hits = 0, misses = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = ids[i], s = L->slot_of[id];
        if (flags & R_FREQ) touch(L, id);
        if (s >= 0) {
            L->protect[s] = L->epoch;
            if (slot_state(L, s) == SLOT_READY) hits++;
            else misses++;
            if (!(flags & R_PREFETCH) && L->prefetched[s]) {
                L->prefetched[s] = 0;
                c->prefetch_used++;
            }
        } else {
            misses++;
        }
    }
    ec_job *first = NULL, *last = NULL;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (L->slot_of[id] >= 0) continue;
        int32_t s;
        for (;;) {
            s = pick_victim(c, L, !(flags & R_MAYFAIL));
            if (s >= 0 || (flags & R_MAYFAIL)) break;
            /* Every other slot is loading: start what we have, wait for one to land. */
            enqueue(c, first, last, flags & R_URGENT);
            first = last = NULL;
            wait_any_loading(c, L);
            harvest_errors(c, L);
        }
        if (s < 0) continue;
        int32_t old = L->expert_of[s];
        if (old >= 0) L->slot_of[old] = -1;
        L->expert_of[s] = id;
        L->slot_of[id] = s;
        L->protect[s] = L->epoch;
        L->prefetched[s] = (flags & R_PREFETCH) != 0;
        if (flags & R_PREFETCH) c->prefetched++;
        atomic_store_explicit(&L->state[s], SLOT_LOADING, memory_order_relaxed);
        int from_store = c->store != NULL;
        int np = from_store ? c->store_parts : c->ckpt_parts;
        L->err[s][0] = 0;
        atomic_store(&L->store_bad[s], 0);
        atomic_store(&L->remaining[s], np);
        for (int k = 0; k < np; k++) {
            ec_job *j = &L->jobs[(size_t)s * (size_t)c->max_parts + (size_t)k];
            j->layer = layer;
            j->slot = s;
            j->expert = id;
            j->part = from_store ? k : c->ckpt_part[k];
            j->from_store = from_store;
            j->next = NULL;
            if (last) last->next = j;
            else first = j;
            last = j;
        }
    }
    enqueue(c, first, last, flags & R_URGENT);
    if (flags & R_STATS) {
        c->layer_hits[layer] += hits;
        c->layer_misses[layer] += misses;
    }
    if ((flags & R_STATS) && c->trace) c->trace(c->trace_user, layer, ids, n);
}

/* In approximate mode fm__ec_note_routed already counted the token's routing. */
static int fetch_flags(const fm__ecache *c) {
    return c->miss_policy == FM_MISS_SKIP ? R_URGENT : R_STATS | R_FREQ | R_URGENT;
}

fm_status fm__ec_fetch_begin(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n) {
    fm_status st = check_ids(c, layer, ids, n, "expert cache fetch");
    if (st != FM_OK) return st;
    ec_layer *L = &c->L[layer];
    request(c, layer, ids, n, fetch_flags(c));
    memcpy(L->pend_ids, ids, sizeof(int32_t) * (size_t)n);
    L->pend_n = n;
    return FM_OK;
}

fm_status fm__ec_fetch(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                       fm__expert_w *w) {
    fm_status st = check_ids(c, layer, ids, n, "expert cache fetch");
    if (st != FM_OK) return st;
    ec_layer *L = &c->L[layer];
    /* A continuation of fm__ec_fetch_begin with the same ids (check_ids stamped them)? */
    int cont = L->pend_n == n;
    for (int32_t i = 0; cont && i < L->pend_n; i++) cont = L->mark2[L->pend_ids[i]] == L->stamp2;
    L->pend_n = 0;
    if (!cont) request(c, layer, ids, n, fetch_flags(c));

    double t0 = 0;
    int waited = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int any = 0;
        for (int32_t i = 0; i < n && !any; i++) {
            int32_t s = L->slot_of[ids[i]];
            any = s >= 0 && slot_state(L, s) == SLOT_LOADING;
        }
        if (!any) break;
        if (!waited) t0 = fm__now();
        waited = 1;
        pthread_cond_wait(&c->done_cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    if (waited) c->io_wait_s += fm__now() - t0;

    char msg[EC_ERRLEN];
    msg[0] = 0;
    int bad = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t s = L->slot_of[ids[i]];
        if (s >= 0 && slot_state(L, s) == SLOT_READY) continue;
        if (s >= 0) {
            if (!bad) snprintf(msg, sizeof msg, "%s", L->err[s]);
            slot_release(L, s);
        } else if (!bad) {
            snprintf(msg, sizeof msg, "expert %d of MoE layer %d was not loaded", ids[i], layer);
        }
        bad = 1;
    }
    if (bad) return fm__err(FM_ERR_IO, "%s", msg);
    for (int32_t i = 0; i < n; i++) fm__ec_lookup(c, layer, ids[i], &w[i]);
    return FM_OK;
}

/* Waits (counted as I/O wait) until one of ids[i] with done[i] == 0 is no longer loading;
 * returns its index, or -1 when all are done. */
static int32_t wait_one(fm__ecache *c, ec_layer *L, const int32_t *ids, int32_t n,
                        const uint8_t *done) {
    double t0 = 0;
    int waited = 0;
    int32_t pick = -1;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int pending = 0;
        for (int32_t i = 0; i < n && pick < 0; i++) {
            if (done[i]) continue;
            pending = 1;
            int32_t s = L->slot_of[ids[i]];
            if (s < 0 || slot_state(L, s) != SLOT_LOADING) pick = i;
        }
        if (pick >= 0 || !pending) break;
        if (!waited) t0 = fm__now();
        waited = 1;
        pthread_cond_wait(&c->done_cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    if (waited) c->io_wait_s += fm__now() - t0;
    return pick;
}

fm_status fm__ec_fetch_any(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                           uint8_t *done, int32_t *which, fm__expert_w *w) {
    *which = -1;
    if (!c || layer < 0 || layer >= c->n_layers || n < 0 || (n > 0 && (!ids || !done)))
        return fm__err(FM_ERR_ARG, "expert cache fetch_any: bad arguments");
    ec_layer *L = &c->L[layer];
    int32_t i = wait_one(c, L, ids, n, done);
    if (i < 0) {
        L->pend_n = 0; /* the begun request is consumed */
        return FM_OK;
    }
    done[i] = 1;
    int32_t s = L->slot_of[ids[i]];
    if (s >= 0 && slot_state(L, s) == SLOT_READY) {
        *which = i;
        fm__ec_lookup(c, layer, ids[i], w);
        return FM_OK;
    }
    if (s < 0)
        return fm__err(FM_ERR_ARG, "expert cache fetch_any: expert %d of MoE layer %d was not "
                       "begun", ids[i], layer);
    char msg[EC_ERRLEN];
    snprintf(msg, sizeof msg, "%s", L->err[s]);
    slot_release(L, s);
    return fm__err(FM_ERR_IO, "%s", msg);
}

static void fill_view(const fm__ecache *c, const fm__expert_src *src, const uint8_t *base,
                      fm__expert_w *w) {
    const fm__mat_src *m[3] = {&src->gate, &src->up, &src->down};
    fm__mat *o[3] = {&w->gate, &w->up, &w->down};
    for (int i = 0; i < 3; i++) {
        *o[i] = m[i]->meta;
        o[i]->data = c->lay.len[3 * i] ? base + c->lay.off[3 * i] : NULL;
        o[i]->scales = c->lay.len[3 * i + 1] ? base + c->lay.off[3 * i + 1] : NULL;
        o[i]->biases = c->lay.len[3 * i + 2] ? base + c->lay.off[3 * i + 2] : NULL;
    }
}

bool fm__ec_lookup(fm__ecache *c, int32_t layer, int32_t id, fm__expert_w *w) {
    if (!c || layer < 0 || layer >= c->n_layers || id < 0 || id >= c->n_experts) return false;
    ec_layer *L = &c->L[layer];
    int32_t s = L->slot_of[id];
    if (s < 0 || slot_state(L, s) != SLOT_READY) return false;
    if (w)
        fill_view(c, &c->map->src[(size_t)layer * (size_t)c->n_experts + (size_t)id],
                  L->mem + (size_t)s * c->lay.slot_bytes, w);
    return true;
}

void fm__ec_note_routed(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                        int32_t n_hit, int32_t n_skipped) {
    if (!c || layer < 0 || layer >= c->n_layers || n < 0 || (n > 0 && !ids)) return;
    ec_layer *L = &c->L[layer];
    L->tick++;
    for (int32_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < c->n_experts) touch(L, ids[i]);
    c->layer_hits[layer] += n_hit;
    c->layer_misses[layer] += n - n_hit > 0 ? n - n_hit : 0;
    c->skipped += n_skipped;
    if (c->trace) c->trace(c->trace_user, layer, ids, n);
    /* Approximate mode never waits, but loads what it skipped for the tokens to come. */
    if (c->miss_policy == FM_MISS_SKIP && n <= c->cap &&
        check_ids(c, layer, ids, n, "note_routed") == FM_OK) {
        fm__clear_err();
        request(c, layer, ids, n, R_MAYFAIL | R_URGENT);
    }
}

void fm__ec_prefetch(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n) {
    if (!c || !c->prefetch_on || layer < 0 || layer >= c->n_layers) return;
    if (c->L[layer].pend_n > 0) return; /* never disturb a begun fetch */
    if (n > c->cap) n = c->cap;
    if (check_ids(c, layer, ids, n, "prefetch") != FM_OK) {
        fm__clear_err();
        return;
    }
    request(c, layer, ids, n, R_MAYFAIL | R_PREFETCH);
}

void fm__ec_set_prefetch(fm__ecache *c, int enable) {
    if (c) c->prefetch_on = enable != 0;
}
int fm__ec_prefetch_enabled(const fm__ecache *c) { return c ? c->prefetch_on : 0; }

void fm__ec_set_trace(fm__ecache *c, fm__ec_trace_fn fn, void *user) {
    if (!c) return;
    c->trace = fn;
    c->trace_user = user;
}

int32_t fm__ec_capacity(const fm__ecache *c) { return c ? c->cap : 0; }

const fm__expert_map *fm__ec_map(const fm__ecache *c) { return c ? c->map : NULL; }

int32_t fm__ec_fetch_limit(const fm__ecache *c) {
    if (!c) return 0;
    int32_t mx = 0;
    for (int32_t l = 0; l < c->n_layers; l++) mx = FM_MAX(mx, c->L[l].n_pinned);
    return c->cap - mx;
}

uint64_t fm__ec_bytes(const fm__ecache *c) {
    if (!c) return 0;
    return (uint64_t)c->cap * (uint64_t)c->n_layers * c->lay.slot_bytes +
           (uint64_t)c->n_threads * c->bounce_bytes;
}

/* ---- statistics --------------------------------------------------------------------- */

void fm__ec_get_stats(const fm__ecache *c, fm__ec_stats *out) {
    memset(out, 0, sizeof *out);
    if (!c) return;
    fm__ec_stats2 s2;
    fm__ec_get_stats2(c, &s2);
    out->hits = s2.hits;
    out->misses = s2.misses;
    out->skipped = s2.skipped;
    out->bytes_read = s2.bytes_read;
    out->io_wait_s = s2.io_wait_s;
    out->read_s = s2.read_s;
    out->layer_hits = c->layer_hits;
    out->layer_misses = c->layer_misses;
}

void fm__ec_get_stats2(const fm__ecache *c, fm__ec_stats2 *out) {
    memset(out, 0, sizeof *out);
    if (!c) return;
    for (int32_t l = 0; l < c->n_layers; l++) {
        out->hits += c->layer_hits[l];
        out->misses += c->layer_misses[l];
    }
    out->skipped = c->skipped;
    out->prefetched = c->prefetched;
    out->prefetch_used = c->prefetch_used;
    out->io_wait_s = c->io_wait_s;
    fm__ecache *m = (fm__ecache *)c;
    pthread_mutex_lock(&m->mu);
    out->bytes_read = c->bytes_read;
    out->reads = c->reads;
    out->store_reads = c->store_reads;
    out->read_s = c->busy_s + (c->inflight ? fm__now() - c->busy_t0 : 0);
    out->direct = c->direct_used;
    pthread_mutex_unlock(&m->mu);
    out->read_gbps = out->read_s > 0 ? (double)out->bytes_read / out->read_s / 1e9 : 0;
    out->capacity = c->cap;
    out->n_layers = c->n_layers;
    out->io_threads = c->n_threads;
}

void fm__ec_reset_stats(fm__ecache *c) {
    if (!c) return;
    memset(c->layer_hits, 0, sizeof(int64_t) * (size_t)c->n_layers);
    memset(c->layer_misses, 0, sizeof(int64_t) * (size_t)c->n_layers);
    c->skipped = c->prefetched = c->prefetch_used = 0;
    c->io_wait_s = 0;
    pthread_mutex_lock(&c->mu);
    c->bytes_read = c->reads = c->store_reads = 0;
    c->busy_s = 0;
    if (c->inflight) c->busy_t0 = fm__now();
    pthread_mutex_unlock(&c->mu);
}

void fm__ec_log_stats(const fm__ecache *c, int level) {
    if (!c) return;
    fm__ec_stats2 s;
    fm__ec_get_stats2(c, &s);
    int64_t tot = s.hits + s.misses;
    fm__log(level, "expert cache: capacity %d/%d per layer, %lld hits, %lld misses (hit rate "
            "%.1f%%), %lld skipped, %.1f MB read in %lld reads (%.2f GB/s%s), I/O wait %.3f s, "
            "prefetched %lld (used %lld)", c->cap, c->n_experts, (long long)s.hits,
            (long long)s.misses, tot ? 100.0 * (double)s.hits / (double)tot : 0.0,
            (long long)s.skipped, (double)s.bytes_read / 1e6, (long long)s.reads, s.read_gbps,
            s.direct ? ", O_DIRECT" : "", s.io_wait_s, (long long)s.prefetched,
            (long long)s.prefetch_used);
    char line[1024];
    size_t k = 0;
    line[0] = 0;
    for (int32_t l = 0; l < c->n_layers; l++) {
        int64_t t = c->layer_hits[l] + c->layer_misses[l];
        int r = snprintf(line + k, sizeof line - k, " %d:%.0f%%", l,
                         t ? 100.0 * (double)c->layer_hits[l] / (double)t : 0.0);
        if (r < 0 || (size_t)r >= sizeof line - k) break;
        k += (size_t)r;
    }
    fm__log(level, "expert cache: hit rate per layer:%s", line);
}

/* ---- open / free ---------------------------------------------------------------------- */

static void layer_free(ec_layer *L) {
    free(L->mem);
    free(L->slot_of); free(L->expert_of); free((void *)L->state); free(L->protect);
    free(L->prefetched); free(L->jobs); free(L->free_slots); free(L->mark2);
    free((void *)L->remaining); free((void *)L->store_bad); free(L->err);
    free(L->freq); free(L->last); free(L->key); free(L->pinned); free(L->pend_ids);
}

static bool layer_alloc(ec_layer *L, int32_t cap, int32_t ne, uint64_t slot_bytes,
                        int32_t max_parts) {
    memset(L, 0, sizeof *L);
    /* Slots start on a 2 MiB boundary and ask for transparent huge pages: decode streams
     * every selected expert once per token, and 4 KiB page walks cost up to a third of the
     * read rate on virtual machines. The alignment costs address space only; the pages
     * touched are the slots' own bytes, so the memory plan is unchanged. */
    const size_t huge = (size_t)2 << 20, bytes = (size_t)cap * slot_bytes;
    L->mem = fm__aligned_alloc(bytes >= huge ? huge : EC_ALIGN, bytes);
#ifdef MADV_HUGEPAGE
    if (L->mem && bytes >= huge) madvise(L->mem, bytes, MADV_HUGEPAGE); /* advice only */
#endif
    L->slot_of = fm__malloc_array((size_t)ne, sizeof(int32_t));
    L->expert_of = fm__malloc_array((size_t)cap, sizeof(int32_t));
    L->state = fm__calloc((size_t)cap, sizeof(_Atomic int));
    L->protect = fm__calloc((size_t)cap, sizeof(uint32_t));
    L->prefetched = fm__calloc((size_t)cap, 1);
    L->jobs = fm__calloc((size_t)cap * (size_t)max_parts, sizeof(ec_job));
    L->remaining = fm__calloc((size_t)cap, sizeof(_Atomic int));
    L->store_bad = fm__calloc((size_t)cap, sizeof(_Atomic unsigned char));
    L->err = fm__calloc((size_t)cap, EC_ERRLEN);
    L->free_slots = fm__malloc_array((size_t)cap, sizeof(int32_t));
    L->mark2 = fm__calloc((size_t)ne, sizeof(uint32_t));
    L->freq = fm__calloc((size_t)ne, sizeof(uint32_t));
    L->last = fm__calloc((size_t)ne, sizeof(uint64_t));
    L->key = fm__calloc((size_t)ne, sizeof(double));
    L->pinned = fm__calloc((size_t)ne, 1);
    L->pend_ids = fm__malloc_array((size_t)cap, sizeof(int32_t));
    if (!L->mem || !L->slot_of || !L->expert_of || !L->state || !L->protect || !L->prefetched ||
        !L->jobs || !L->remaining || !L->store_bad || !L->err || !L->free_slots || !L->mark2 || !L->freq || !L->last || !L->key ||
        !L->pinned || !L->pend_ids)
        return false;
    for (int32_t e = 0; e < ne; e++) {
        L->slot_of[e] = -1;
        L->key[e] = -1e300;
    }
    for (int32_t s = 0; s < cap; s++) {
        L->expert_of[s] = -1;
        atomic_init(&L->state[s], SLOT_EMPTY);
        L->free_slots[s] = cap - 1 - s; /* pops 0, 1, 2, ... */
    }
    L->n_free = cap;
    return true;
}

/* Queues the warm-start set of each layer: pinned experts, then the store's last resident
 * set (by key), up to capacity. */
static void warm_start(fm__ecache *c) {
    const uint32_t *freq = NULL;
    const uint64_t *last = NULL, *tick = NULL;
    const uint8_t *res = NULL;
    const char *nw = getenv("FM_NO_WARM"); /* benchmarks: start cold */
    bool have = c->store && !(nw && *nw && strcmp(nw, "0") != 0) &&
                fm__store_state(c->store, &freq, &last, &res, &tick);
    int32_t *ids = fm__malloc_array((size_t)c->n_experts, sizeof(int32_t));
    if (!ids) return;
    for (int32_t l = 0; l < c->n_layers; l++) {
        ec_layer *L = &c->L[l];
        size_t base = (size_t)l * (size_t)c->n_experts;
        if (have) {
            L->tick = tick[l];
            for (int32_t e = 0; e < c->n_experts; e++) {
                L->freq[e] = freq[base + e];
                L->last[e] = last[base + e];
                L->key[e] = L->freq[e] ? log((double)L->freq[e]) + LFRU_C * (double)L->last[e]
                                       : -1e300;
            }
        }
        int32_t n = 0;
        for (int32_t e = 0; e < c->n_experts && n < c->cap; e++)
            if (L->pinned[e]) ids[n++] = e;
        if (have) {
            int32_t n0 = n;
            for (int32_t e = 0; e < c->n_experts; e++)
                if (res[base + e] && !L->pinned[e]) ids[n++] = e;
            /* keep the cap - n0 best by key */
            for (int32_t i = n0; i < n; i++)
                for (int32_t j = i + 1; j < n; j++)
                    if (L->key[ids[j]] > L->key[ids[i]]) {
                        int32_t t = ids[i];
                        ids[i] = ids[j];
                        ids[j] = t;
                    }
            if (n > c->cap) n = c->cap;
        }
        if (n > 0) request(c, l, ids, n, R_MAYFAIL);
    }
    free(ids);
}

fm_status fm__ec_open(const fm__expert_map *map, const fm__ec_params *p, fm__ecache **out) {
    *out = NULL;
    if (!map || !p) return fm__err(FM_ERR_ARG, "expert cache: map and params are required");
    ec_layout lay;
    fm_status st = fm__ec_layout(map, &lay);
    if (st != FM_OK) return st;
    if (map->top_k <= 0 || map->top_k > map->n_experts)
        return fm__err(FM_ERR_ARG, "expert cache: top_k %d out of range [1, %d]", map->top_k,
                       map->n_experts);
    if (p->capacity < map->top_k || p->capacity > map->n_experts)
        return fm__err(FM_ERR_ARG, "expert cache: capacity %d out of range [top_k %d, %d experts]",
                       p->capacity, map->top_k, map->n_experts);
    if (p->miss_policy != FM_MISS_EXACT && p->miss_policy != FM_MISS_SKIP)
        return fm__err(FM_ERR_ARG, "expert cache: unknown miss policy %d", p->miss_policy);

    fm__ecache *c = fm__calloc(1, sizeof *c);
    if (!c) return fm__err(FM_ERR_NOMEM, "expert cache: out of memory");
    c->map = map;
    c->lay = lay;
    c->cap = p->capacity;
    c->n_layers = map->n_moe_layers;
    c->n_experts = map->n_experts;
    c->miss_policy = p->miss_policy;
    c->pin_max = c->cap - map->top_k;
    const char *pf = getenv("FM_PREFETCH");
    c->prefetch_on = pf && *pf && strcmp(pf, "0") != 0;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->job_cv, NULL);
    pthread_cond_init(&c->done_cv, NULL);
    st = fm__ec_files_init(&c->files, map);
    if (st != FM_OK) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->job_cv);
        pthread_cond_destroy(&c->done_cv);
        free(c);
        return st;
    }
    c->chunk = lay.slot_bytes;
    const char *ch = getenv("FM_EC_CHUNK");
    if (ch && atoll(ch) >= (long long)EC_ALIGN) c->chunk = (uint64_t)atoll(ch) / EC_ALIGN * EC_ALIGN;
    c->store_parts = (int32_t)((lay.slot_bytes + c->chunk - 1) / c->chunk);
    for (int a = 0; a < EC_NARR; a++)
        if (lay.len[a]) c->ckpt_part[c->ckpt_parts++] = a;
    c->max_parts = FM_MAX(c->store_parts, c->ckpt_parts);
    c->L = fm__calloc((size_t)c->n_layers, sizeof(ec_layer));
    c->layer_hits = fm__calloc((size_t)c->n_layers, sizeof(int64_t));
    c->layer_misses = fm__calloc((size_t)c->n_layers, sizeof(int64_t));
    if (!c->L || !c->layer_hits || !c->layer_misses) goto nomem;
    for (int32_t l = 0; l < c->n_layers; l++)
        if (!layer_alloc(&c->L[l], c->cap, c->n_experts, lay.slot_bytes, c->max_parts)) goto nomem;

    if (p->profile && *p->profile) {
        size_t n = (size_t)c->n_layers * (size_t)c->n_experts;
        uint8_t *pins = fm__calloc(n, 1);
        if (!pins) goto nomem;
        int32_t np = 0;
        st = fm__profile_load(p->profile, map, c->pin_max, pins, &np);
        if (st != FM_OK) {
            free(pins);
            fm__ec_free(c);
            return st;
        }
        for (int32_t l = 0; l < c->n_layers; l++) {
            ec_layer *L = &c->L[l];
            for (int32_t e = 0; e < c->n_experts; e++)
                if (pins[(size_t)l * (size_t)c->n_experts + e]) {
                    L->pinned[e] = 1;
                    L->n_pinned++;
                }
        }
        free(pins);
        FM_LOGI("expert cache: pinned %d experts from %s", np, p->profile);
    }

    if (p->store_dir && *p->store_dir) {
        st = fm__store_open(map, &lay, p->store_dir, &c->store);
        if (st != FM_OK) {
            FM_LOGW("expert store: %s; packing %d x %d experts (%.1f MiB, first use)",
                    fm_last_error(), map->n_moe_layers, map->n_experts,
                    (double)lay.slot_bytes * map->n_moe_layers * map->n_experts / 1048576.0);
            double t0 = fm__now();
            st = fm__store_pack(map, p->store_dir, p->store_max, NULL, NULL);
            if (st == FM_OK) FM_LOGW("expert store: packed in %.1f s", fm__now() - t0);
            if (st == FM_OK) st = fm__store_open(map, &lay, p->store_dir, &c->store);
            if (st != FM_OK) {
                FM_LOGW("expert store unusable, reading experts from the checkpoint: %s",
                        fm_last_error());
                c->store = NULL;
            }
        }
        fm__clear_err();
    }

    c->n_threads = p->io_threads > 0 ? p->io_threads : 8;
    if (c->n_threads > 64) c->n_threads = 64;
    c->bounce_bytes = fm__ec_bounce_bytes(&lay);
    c->w = fm__calloc((size_t)c->n_threads, sizeof(ec_worker));
    if (!c->w) goto nomem;
    for (int i = 0; i < c->n_threads; i++) {
        c->w[i].c = c;
        c->w[i].bounce = fm__aligned_alloc(EC_ALIGN, (size_t)c->bounce_bytes);
        if (!c->w[i].bounce) goto nomem;
        if (pthread_create(&c->w[i].th, NULL, worker_main, &c->w[i]) != 0) {
            fm__ec_free(c);
            return fm__err(FM_ERR_INTERNAL, "expert cache: cannot start I/O thread: %s",
                           strerror(errno));
        }
        c->w[i].started = 1;
    }
    warm_start(c);
    *out = c;
    return FM_OK;
nomem:
    fm__ec_free(c);
    return fm__err(FM_ERR_NOMEM, "expert cache: cannot allocate %d slots x %d layers of %llu bytes",
                   p->capacity, map->n_moe_layers, (unsigned long long)lay.slot_bytes);
}

void fm__ec_free(fm__ecache *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    c->head = c->tail = NULL; /* queued reads are dropped; reads in flight finish */
    pthread_cond_broadcast(&c->job_cv);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; c->w && i < c->n_threads; i++)
        if (c->w[i].started) pthread_join(c->w[i].th, NULL);
    if (c->store && c->L) {
        size_t n = (size_t)c->n_layers * (size_t)c->n_experts;
        uint32_t *freq = fm__malloc_array(n, sizeof(uint32_t));
        uint64_t *last = fm__malloc_array(n, sizeof(uint64_t));
        uint64_t *tick = fm__malloc_array((size_t)c->n_layers, sizeof(uint64_t));
        uint8_t *res = fm__calloc(n, 1);
        if (freq && last && tick && res) {
            for (int32_t l = 0; l < c->n_layers; l++) {
                ec_layer *L = &c->L[l];
                tick[l] = L->tick;
                memcpy(freq + (size_t)l * c->n_experts, L->freq, sizeof(uint32_t) * c->n_experts);
                memcpy(last + (size_t)l * c->n_experts, L->last, sizeof(uint64_t) * c->n_experts);
                for (int32_t s = 0; s < c->cap; s++)
                    if (L->expert_of[s] >= 0 && slot_state(L, s) == SLOT_READY)
                        res[(size_t)l * c->n_experts + L->expert_of[s]] = 1;
            }
            if (fm__store_save_state(c->store, freq, last, res, tick) != FM_OK)
                FM_LOGW("expert store: could not record the cache state: %s", fm_last_error());
        }
        free(freq); free(last); free(tick); free(res);
    }
    fm__store_close(c->store);
    for (int i = 0; c->w && i < c->n_threads; i++) free(c->w[i].bounce);
    free(c->w);
    for (int32_t l = 0; c->L && l < c->n_layers; l++) layer_free(&c->L[l]);
    free(c->L);
    free(c->layer_hits);
    free(c->layer_misses);
    fm__ec_files_close(&c->files);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->job_cv);
    pthread_cond_destroy(&c->done_cv);
    free(c);
}
