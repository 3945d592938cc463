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
    int32_t *layer_index;      /* [n_moe_layers]: model layer index of each MoE layer, for
                                  profiles (which use model layer numbers); NULL = identity */
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
    uint64_t store_max;   /* size cap of store_dir when a store is packed; 0 = FM_CACHE_MAX */
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
    uint64_t work_bytes; /* set by the model: forward scratch + process allowance, taken
                          * off a --mem-limit budget before the plan is made */
    int32_t capacity;
    double fraction; /* capacity / n_experts */
} fm__ec_plan;
fm_status fm__ec_make_plan(const fm__expert_map *map, uint64_t resident_bytes,
                           uint64_t kv_bytes, int64_t mem_limit, int32_t capacity_req,
                           fm__ec_plan *out);

/* ---- additions (the declarations above are the stable core contract) ----------------- */

/* Threading: calls on one cache come from one thread at a time (the forward pass); the
 * cache's I/O threads never touch the caller's views. fm__ec_make_plan's cache_bytes (and
 * fm__ec_bytes) include the I/O threads' bounce buffers: 8 x (largest array rounded up to
 * 4 KiB + 8 KiB) at the default thread count. */

/* Starts reading the misses among ids[0..n) of `layer` and returns without waiting, so the
 * caller can compute what does not depend on them (the shared expert; with
 * fm__ec_fetch_any, the experts that are already resident). Like a fetch, it ends the
 * validity of earlier views of that layer. The
 * following fm__ec_fetch on that layer with the same ids waits for them and fills w; it
 * counts nothing twice. Same argument rules and errors as fm__ec_fetch (read errors are
 * reported by the fetch that waits). Calling fm__ec_fetch with other ids is allowed: the
 * begun reads still land in the cache. */
fm_status fm__ec_fetch_begin(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n);

/* After fm__ec_fetch_begin(layer, ids, n): returns the experts one at a time, each as soon
 * as it is resident (resident ones without waiting, misses as their reads land), so compute
 * overlaps
 * the remaining reads. done[0..n) starts zeroed; each call sets done[*which] = 1 and fills
 * *w with expert ids[*which]; *which = -1 once all are done. Views stay valid until the next
 * fetch / fetch_begin on the layer. FM_ERR_IO (file, offset) if that expert's read failed.
 * Usage: begin(ids); memset(done); while (fetch_any(..., &i, &w) == FM_OK && i >= 0) run(i). */
fm_status fm__ec_fetch_any(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n,
                           uint8_t *done, int32_t *which, fm__expert_w *w);

/* Speculative: queues reads of ids[0..n) of `layer` (non-resident ones, at most what the
 * layer can hold without evicting experts requested by an unfinished fetch) at low
 * priority; counts them as prefetched, not as misses. Does nothing unless prefetching is
 * enabled (FM_PREFETCH=1 in the environment, or fm__ec_set_prefetch). */
void fm__ec_prefetch(fm__ecache *c, int32_t layer, const int32_t *ids, int32_t n);
void fm__ec_set_prefetch(fm__ecache *c, int enable);
int fm__ec_prefetch_enabled(const fm__ecache *c);

/* The most distinct ids one fetch of `layer` can take: capacity minus the pinned experts
 * of that layer not among the ids. Prefill should fetch the union of a batch's experts in
 * chunks of at most fm__ec_fetch_limit(c) (capacity minus the largest pin count). A fetch
 * of up to capacity ids still succeeds: if it must, it evicts a pinned expert. */
int32_t fm__ec_fetch_limit(const fm__ecache *c);

/* In FM_MISS_SKIP mode fm__ec_fetch / fm__ec_fetch_begin count no hits or misses and no
 * frequency: fm__ec_note_routed (called once per token) does. */

/* The map the cache was opened over. */
const fm__expert_map *fm__ec_map(const fm__ecache *c);

/* Routing trace: fn is called (on the calling thread) with every fetch / note_routed /
 * fetch_begin's ids, once per request. NULL disables. For `flash-moe profile`. */
typedef void (*fm__ec_trace_fn)(void *user, int32_t layer, const int32_t *ids, int32_t n);
void fm__ec_set_trace(fm__ecache *c, fm__ec_trace_fn fn, void *user);

/* Extended statistics (a superset of fm__ec_stats). */
typedef struct fm__ec_stats2 {
    int64_t hits, misses, skipped, bytes_read, reads, prefetched, prefetch_used;
    double io_wait_s;   /* time fetch waited for reads */
    double read_s;      /* wall time with at least one read in flight */
    double read_gbps;   /* bytes_read / read_s / 1e9 */
    int64_t store_reads;/* reads served by the packed store */
    int32_t capacity, n_layers, io_threads, direct; /* direct: 1 if O_DIRECT reads are used */
} fm__ec_stats2;
void fm__ec_get_stats2(const fm__ecache *c, fm__ec_stats2 *out);
/* Zeroes the counters (per layer too); resident experts stay. */
void fm__ec_reset_stats(fm__ecache *c);
/* Writes a human-readable statistics block (per layer hit rates included) to the log. */
void fm__ec_log_stats(const fm__ecache *c, int level);

/* Bytes of one cache slot (an expert laid out gate|up|down with data/scales/biases, each
 * 64-byte aligned, rounded up to 4 KiB). FM_ERR_FORMAT if experts differ in layout. */
fm_status fm__ec_slot_bytes(const fm__expert_map *map, uint64_t *out);

/* Available memory: min(MemAvailable, cgroup v2 memory.max - memory.current, cgroup v1
 * memory.limit_in_bytes - memory.usage_in_bytes). root: "" for the real system, else a
 * directory holding proc/meminfo, proc/self/cgroup, sys/fs/cgroup/... (tests). Returns
 * false if nothing could be read. src (may be NULL) receives which figure won. */
bool fm__mem_available(const char *root, uint64_t *avail, char *src, size_t src_len);
/* The automatic plan's safety margin for a given available memory: 256 MiB + 5%. */
uint64_t fm__ec_safety_margin(uint64_t avail);
/* Writes the plan as one log line: resident, KV, cache bytes, capacity, coverage. */
void fm__ec_log_plan(const fm__ec_plan *p, const fm__expert_map *map, int level);

/* Packed store. Path of the store for map under dir (caller frees). */
char *fm__store_path(const fm__expert_map *map, const char *dir);
/* Writes (or rewrites) the packed store of map under dir. First cleans dir as
 * fm__store_gc does (expert_store.h): stale stores and abandoned pack files no process
 * holds go, and with a size cap (FM_CACHE_MAX) the least recently used stores go until the
 * new store fits; a failed clean-up does not stop the pack. progress (may be NULL) is
 * called with done/total experts. Writes to a temporary file and renames it into place,
 * so a crash never leaves a store that looks valid. max_bytes caps the directory's size
 * (0 = $FM_CACHE_MAX, else no cap). */
typedef void (*fm__progress_fn)(void *user, int64_t done, int64_t total);
fm_status fm__store_pack(const fm__expert_map *map, const char *dir, uint64_t max_bytes,
                         fm__progress_fn progress, void *user);
/* Checks the store for map under dir: FM_OK if valid (complete, same model and version,
 * checksums of header and tables right); else an error whose message says why. With
 * verify_blobs, also verifies every blob's checksum (reads the whole store). */
fm_status fm__store_check(const fm__expert_map *map, const char *dir, int verify_blobs);

/* Profiles. Parses a profile JSON (the original flash-moe's: {"layers": {"<layer>":
 * {"universal": [ids], "activation_counts": {"<id>": n}}}}, or "layers" as an array,
 * activation_counts as an array) into pins[n_moe_layers * n_experts] (1 = pinned),
 * ordered by count where counts exist. max_per_layer caps the pins of a layer (extra ones
 * are dropped with a warning). FM_ERR_FORMAT naming the field on malformed input. */
fm_status fm__profile_load(const char *path, const fm__expert_map *map, int32_t max_per_layer,
                           uint8_t *pins, int32_t *n_pinned);

#endif
