/* meminfo.c: the memory plan. How much memory the machine (and the cgroup we run in) can
 * give us, and how many expert slots per layer a budget buys after resident weights and
 * the KV cache are paid for. */
#include "ec_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EC_DEFAULT_IO_THREADS 8 /* keep equal to the default in fm__ec_open */

/* Reads one unsigned number (or "max" -> UINT64_MAX) from a file. */
static bool read_u64_file(const char *path, uint64_t *v) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char buf[64] = {0};
    bool ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!ok) return false;
    if (strncmp(buf, "max", 3) == 0) {
        *v = UINT64_MAX;
        return true;
    }
    char *end;
    unsigned long long x = strtoull(buf, &end, 10);
    if (end == buf) return false;
    *v = x;
    return true;
}

static bool meminfo_available(const char *root, uint64_t *avail) {
    char path[4096];
    snprintf(path, sizeof path, "%s/proc/meminfo", root);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[256];
    bool ok = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            *avail = (uint64_t)kb * 1024;
            ok = true;
            break;
        }
    }
    fclose(f);
    return ok;
}

/* Tightest (limit - usage) over dir and its ancestors up to base. */
static void cgroup_walk(const char *base, const char *rel, const char *limit_name,
                        const char *usage_name, uint64_t *best, bool *found) {
    char path[4096], cur[2048];
    snprintf(cur, sizeof cur, "%s", rel);
    for (;;) {
        uint64_t lim, use = 0;
        snprintf(path, sizeof path, "%s%s/%s", base, cur, limit_name);
        if (read_u64_file(path, &lim) && lim < ((uint64_t)1 << 60)) {
            snprintf(path, sizeof path, "%s%s/%s", base, cur, usage_name);
            if (!read_u64_file(path, &use)) use = 0;
            uint64_t a = lim > use ? lim - use : 0;
            if (!*found || a < *best) *best = a;
            *found = true;
        }
        char *slash = strrchr(cur, '/');
        if (!slash || cur[0] == 0) break;
        *slash = 0; /* the parent; "/x" -> "" (the cgroup root) */
    }
}

bool fm__mem_available(const char *root, uint64_t *avail, char *src, size_t src_len) {
    if (!root) root = "";
    uint64_t mem = 0, cg = 0;
    bool have_mem = meminfo_available(root, &mem), have_cg = false;
    char path[4096];
    snprintf(path, sizeof path, "%s/proc/self/cgroup", root);
    FILE *f = fopen(path, "r");
    if (f) {
        char line[2048];
        while (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            char *c1 = strchr(line, ':');
            char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (!c2) continue;
            const char *rel = c2 + 1;
            if (strcmp(rel, "/") == 0) rel = "";
            char base[4096];
            if (c1 + 1 == c2 && strncmp(line, "0", 1) == 0) { /* v2: "0::/path" */
                snprintf(base, sizeof base, "%s/sys/fs/cgroup", root);
                cgroup_walk(base, rel, "memory.max", "memory.current", &cg, &have_cg);
            } else if (strstr(c1, "memory")) { /* v1: "N:memory:/path" */
                snprintf(base, sizeof base, "%s/sys/fs/cgroup/memory", root);
                cgroup_walk(base, rel, "memory.limit_in_bytes", "memory.usage_in_bytes", &cg,
                            &have_cg);
            }
        }
        fclose(f);
    }
    if (src && src_len) snprintf(src, src_len, "none");
    if (!have_mem && !have_cg) return false;
    if (have_cg && (!have_mem || cg < mem)) {
        *avail = cg;
        if (src && src_len) snprintf(src, src_len, "cgroup limit");
    } else {
        *avail = mem;
        if (src && src_len) snprintf(src, src_len, "MemAvailable");
    }
    return true;
}

uint64_t fm__ec_safety_margin(uint64_t avail) { return (256ull << 20) + avail / 20; }

fm_status fm__ec_make_plan(const fm__expert_map *map, uint64_t resident_bytes,
                           uint64_t kv_bytes, int64_t mem_limit, int32_t capacity_req,
                           fm__ec_plan *out) {
    memset(out, 0, sizeof *out);
    ec_layout lay;
    fm_status st = fm__ec_layout(map, &lay);
    if (st != FM_OK) return st;
    out->resident_bytes = resident_bytes;
    out->kv_bytes = kv_bytes;
    uint64_t per_cap = lay.slot_bytes * (uint64_t)map->n_moe_layers;
    uint64_t overhead = EC_DEFAULT_IO_THREADS * fm__ec_bounce_bytes(&lay);
    int32_t cap;
    if (capacity_req > 0) {
        cap = FM_MAX(map->top_k, FM_MIN(capacity_req, map->n_experts));
        out->budget = mem_limit > 0 ? (uint64_t)mem_limit : 0;
    } else {
        uint64_t budget;
        if (mem_limit > 0) {
            budget = (uint64_t)mem_limit;
        } else {
            uint64_t avail;
            char src[32];
            if (!fm__mem_available("", &avail, src, sizeof src))
                return fm__err(FM_ERR_UNSUPPORTED, "memory plan: cannot read available memory "
                               "(/proc/meminfo); give --capacity or --mem-limit");
            uint64_t margin = fm__ec_safety_margin(avail);
            budget = avail > margin ? avail - margin : 0;
        }
        out->budget = budget;
        uint64_t need = resident_bytes + kv_bytes + overhead;
        uint64_t min_cache = per_cap * (uint64_t)map->top_k;
        if (budget < need || budget - need < min_cache)
            return fm__err(FM_ERR_NOMEM,
                           "memory plan: budget %.1f MiB cannot hold resident weights %.1f MiB + "
                           "KV cache %.1f MiB + I/O buffers %.1f MiB + top_k %d experts x %d "
                           "layers (%.1f MiB)", (double)budget / 1048576.0,
                           (double)resident_bytes / 1048576.0, (double)kv_bytes / 1048576.0,
                           (double)overhead / 1048576.0, map->top_k, map->n_moe_layers,
                           (double)min_cache / 1048576.0);
        uint64_t c = (budget - need) / per_cap;
        cap = c > (uint64_t)map->n_experts ? map->n_experts : (int32_t)c;
    }
    out->capacity = cap;
    out->cache_bytes = (uint64_t)cap * per_cap + overhead;
    out->fraction = (double)cap / (double)map->n_experts;
    return FM_OK;
}

void fm__ec_log_plan(const fm__ec_plan *p, const fm__expert_map *map, int level) {
    fm__log(level, "memory plan: budget %.1f MiB = resident %.1f MiB + KV %.1f MiB + expert "
            "cache %.1f MiB (%d of %d experts per layer, %.1f%% of %.1f MiB of experts)",
            (double)p->budget / 1048576.0, (double)p->resident_bytes / 1048576.0,
            (double)p->kv_bytes / 1048576.0, (double)p->cache_bytes / 1048576.0, p->capacity,
            map->n_experts, 100.0 * p->fraction,
            (double)map->expert_bytes * (double)map->n_experts * (double)map->n_moe_layers /
                1048576.0);
}
