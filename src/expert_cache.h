/* expert_cache.h: where routed experts live, and the bounded per-layer cache that makes
 * them resident on demand. Exact by default: a miss changes when an expert runs, never
 * which one.
 *
 * The loader fills a fm__expert_map (byte ranges of every expert in the checkpoint
 * files); the cache owns slots, the expert->slot table, LFRU eviction, pins, the I/O
 * threads and the optional packed store. The forward pass only calls fetch/lookup. */
#ifndef FM_EXPERT_CACHE_H
#define FM_EXPERT_CACHE_H

#include "common.h"
#include "tensor.h"

/* A contiguous byte range inside checkpoint file `file` (index into fm__expert_map.paths). */
typedef struct fm__range {
    int32_t file;
    uint64_t off, len;
} fm__range;

/* One matrix of one expert: its shape/type (meta.data/scales/biases are NULL) and where
 * its arrays are. scales/biases have len 0 unless meta.type == FM_W_QAFFINE. */
typedef struct fm__mat_src {
    fm__mat meta;
    fm__range data, scales, biases;
} fm__mat_src;

/* gate/up: [inter][hidden]; down: [hidden][inter]. */
typedef struct fm__expert_src {
    fm__mat_src gate, up, down;
} fm__expert_src;

typedef struct fm__expert_map {
    int32_t n_files;
    char **paths;              /* checkpoint files holding expert bytes */
    int32_t n_moe_layers;      /* layers with routed experts, numbered 0..n_moe_layers-1 */
    int32_t n_experts, top_k;
    fm__expert_src *src;       /* [n_moe_layers * n_experts], layer-major */
    uint64_t expert_bytes;     /* bytes of one expert: all its ranges summed */
    char *content_key;         /* identifies the checkpoint (sizes, mtimes, config hash) */
} fm__expert_map;

/* The three matrices of a resident expert: views into a cache slot. */
typedef struct fm__expert_w {
    fm__mat gate, up, down;
} fm__expert_w;

typedef struct fm__ecache fm__ecache;

typedef struct fm__ec_params {
    int32_t capacity;     /* slots per MoE layer, top_k <= capacity <= n_experts */
    int32_t miss_policy;  /* FM_MISS_EXACT or FM_MISS_SKIP */
    const char *profile;  /* profile JSON to pin, or NULL */
    const char *store_dir;/* packed store directory, or NULL/"" for none */
    int32_t io_threads;   /* 0 = default */
} fm__ec_params;

typedef struct fm__ec_stats {
    int64_t hits, misses, skipped, bytes_read;
    double io_wait_s, read_s;
    int64_t *layer_hits, *layer_misses; /* [n_moe_layers], owned by the cache */
} fm__ec_stats;

/* Opens a cache over map (which must outlive it). On success *out owns the cache. */
fm_status fm__ec_open(const fm__expert_map *map, const fm__ec_params *p, fm__ecache **out);
void fm__ec_free(fm__ecache *c);
int32_t fm__ec_capacity(const fm__ecache *c);
/* Bytes the cache holds for its slots. */
uint64_t fm__ec_bytes(const fm__ecache *c);

/* Makes experts ids[0..n) of MoE layer `layer` resident (n <= capacity, ids distinct) and
 * fills w[0..n). Misses are read in parallel. Views stay valid until the next
 * fm__ec_fetch on the same layer. Returns FM_ERR_IO (file, offset in the message) if a
 * read fails; the cache stays consistent. */
fm_status fm__ec_fetch(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                       fm__expert_w *w);

/* Non-blocking: fills *w and returns true if the expert is resident; counts nothing. */
bool fm__ec_lookup(fm__ecache *c, int32_t layer, int32_t id, fm__expert_w *w);

/* Records the routing of one token (for frequency counters and statistics) without I/O. */
void fm__ec_note_routed(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                        int32_t n_hit, int32_t n_skipped);

void fm__ec_get_stats(const fm__ecache *c, fm__ec_stats *out);

/* Memory plan: how many slots per layer a budget buys. capacity_req > 0 wins (clamped to
 * [top_k, n_experts]); else mem_limit > 0 is the budget; else the budget is available
 * memory (MemAvailable and any cgroup v1/v2 limit) minus a safety margin. The budget pays
 * for resident_bytes + kv_bytes first. FM_ERR_NOMEM if it cannot hold top_k experts per
 * layer, with the numbers in the message. */
typedef struct fm__ec_plan {
    uint64_t budget, resident_bytes, kv_bytes, cache_bytes;
    int32_t capacity;
    double fraction; /* capacity / n_experts */
} fm__ec_plan;
fm_status fm__ec_make_plan(const fm__expert_map *map, uint64_t resident_bytes,
                           uint64_t kv_bytes, int64_t mem_limit, int32_t capacity_req,
                           fm__ec_plan *out);

#endif
