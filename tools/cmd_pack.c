/* cmd_pack.c: flash-moe pack MODEL [--cache-dir D] [--check]
 * Writes the packed expert store of a model (every expert as one 4 KiB-aligned blob, so a
 * cache miss is one aligned read), or with --check verifies an existing one blob by blob.
 * Shows a progress bar when stderr is a terminal. */
#include "cli.h"
#include "expert_cache.h"
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    double t0, last;
    uint64_t blob_bytes;
    int tty;
} pack_progress;

static void progress(void *user, int64_t done, int64_t total) {
    pack_progress *pp = user;
    double now = fm__now();
    if (done != total && now - pp->last < 0.1) return;
    pp->last = now;
    double el = now - pp->t0;
    double gbs = el > 0 ? (double)done * (double)pp->blob_bytes / el / 1e9 : 0;
    if (pp->tty) {
        int w = 30, k = total ? (int)(w * done / total) : w;
        char bar[64];
        for (int i = 0; i < w; i++) bar[i] = i < k ? '#' : ' ';
        bar[w] = 0;
        fprintf(stderr, "\rpacking [%s] %3d%% %lld/%lld experts, %.2f GB/s", bar,
                total ? (int)(100 * done / total) : 100, (long long)done, (long long)total, gbs);
        if (done == total) fputc('\n', stderr);
    } else if (done == total) {
        fprintf(stderr, "packed %lld experts in %.1f s (%.2f GB/s)\n", (long long)total, el, gbs);
    }
}

static const char *default_dir(char *buf, size_t n) {
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    snprintf(buf, n, "%s/.cache/flash-moe", home);
    return buf;
}

int cmd_pack(int argc, char **argv) {
    const char *cache_dir = NULL;
    int check = 0;
    cli_opt opts[] = {
        {"--cache-dir", NULL, CLI_STR, &cache_dir, "store directory (default ~/.cache/flash-moe)"},
        {"--check", NULL, CLI_FLAG, &check, "verify the existing store (every blob) instead of writing"},
    };
    const char *usage = "flash-moe pack MODEL [--cache-dir DIR] [--check]";
    const char *pos[1];
    int n_pos = 0;
    int r = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &n_pos);
    if (r == 1) return 0;
    if (r) return 2;
    const char *dir_arg = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir_arg) return 2;
    char dbuf[1024];
    if (!cache_dir) cache_dir = default_dir(dbuf, sizeof dbuf);
    if (!cache_dir || !*cache_dir) {
        fprintf(stderr, "flash-moe: pack needs --cache-dir (HOME is not set)\n");
        return 2;
    }
    /* The smallest cache, no store: we only need the expert map. */
    fm_model_params p;
    fm_model_params_default(&p);
    p.capacity = 1;
    p.cache_dir = "";
    p.n_ctx = 16;
    fm_model *m = NULL;
    if (fm_model_open(dir_arg, &p, &m) != FM_OK) return cli_fail("cannot open model");
    const fm__expert_map *map = fm__ec_map(fm__model_cache(m));
    int rc = 0;
    char *path = map ? fm__store_path(map, cache_dir) : NULL;
    if (!map || !path) {
        fprintf(stderr, "flash-moe: model has no expert map\n");
        rc = 1;
    } else if (check) {
        if (fm__store_check(map, cache_dir, 1) != FM_OK) rc = cli_fail("store check failed");
        else printf("%s: valid\n", path);
    } else {
        uint64_t slot = 0;
        fm__ec_slot_bytes(map, &slot);
        pack_progress pp = {fm__now(), 0, slot, isatty(2)};
        fprintf(stderr, "packing %d x %d experts (%.1f MiB) into %s\n", map->n_moe_layers,
                map->n_experts,
                (double)slot * map->n_moe_layers * map->n_experts / 1048576.0, path);
        if (fm__store_pack(map, cache_dir, 0, progress, &pp) != FM_OK) rc = cli_fail("pack failed");
        else printf("%s\n", path);
    }
    free(path);
    fm_model_free(m);
    return rc;
}
