/* cmd_cache.c: `flash-moe cache list|clean`: the packed expert stores of a cache directory
 * (default ~/.cache/flash-moe): each store's model, size, last use and whether it is
 * stale or in use; clean removes the stale ones (model deleted or changed, older format,
 * invalidated, unfinished writes), optionally every store or the least recently used ones
 * above a size cap. Stores another process holds open are never removed. */
#include "cli.h"
#include "expert_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *USAGE =
    "flash-moe cache list|clean [--cache-dir DIR] [--max SIZE] [--all] [--dry-run]\n\n"
    "  list   each store: status (live, stale, other; in use), size, last use, model, file\n"
    "  clean  remove stale stores; with --max also the least recently used ones until the\n"
    "         stores fit in SIZE; with --all every store. Stores in use are kept.";

static const char *default_dir(char *buf, size_t n) {
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    snprintf(buf, n, "%s/.cache/flash-moe", home);
    return buf;
}

static void human(uint64_t b, char *buf, size_t n) {
    if (b >= (1ull << 30)) snprintf(buf, n, "%.1f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
    else snprintf(buf, n, "%.1f KiB", (double)b / 1024.0);
}

static const char *status(const fm__store_entry *e) {
    if (e->state == FM__STORE_LIVE) return "live";
    if (e->state == FM__STORE_STALE) return "stale";
    return "other";
}

static void on_removed(void *user, const fm__store_entry *e, const char *reason) {
    int dry = *(int *)user;
    char sz[32];
    human(e->bytes, sz, sizeof sz);
    printf("%s %s (%s): %s\n", dry ? "would remove" : "removed", e->file, sz, reason);
}

int cmd_cache(int argc, char **argv) {
    const char *cache_dir = NULL;
    int64_t max = 0;
    int all = 0, dry = 0;
    cli_opt opts[] = {
        {"--cache-dir", NULL, CLI_STR, &cache_dir, "store directory (default ~/.cache/flash-moe)"},
        {"--max", NULL, CLI_SIZE, &max, "clean: total size cap, e.g. 100G; least recently used go first (0 = none)"},
        {"--all", NULL, CLI_FLAG, &all, "clean: remove every store not in use"},
        {"--dry-run", NULL, CLI_FLAG, &dry, "clean: print what would be removed, remove nothing"},
    };
    const char *pos[1];
    int n_pos = 0;
    int r = cli_parse(argc, argv, 2, opts, (int)(sizeof opts / sizeof opts[0]), USAGE, pos, 1, &n_pos);
    if (r == 1) return 0;
    if (r) return 2;
    if (n_pos != 1 || (strcmp(pos[0], "list") != 0 && strcmp(pos[0], "clean") != 0)) {
        fprintf(stderr, "flash-moe: cache needs list or clean (see flash-moe cache --help)\n");
        return 2;
    }
    char dbuf[4096];
    if (!cache_dir) cache_dir = default_dir(dbuf, sizeof dbuf);
    if (!cache_dir || !*cache_dir) {
        fprintf(stderr, "flash-moe: cache needs --cache-dir (HOME is not set)\n");
        return 2;
    }
    if (strcmp(pos[0], "clean") == 0) {
        fm__store_gc_opts o = {(uint64_t)max, 0, NULL, all, dry};
        uint64_t freed = 0;
        int removed = 0;
        if (fm__store_gc(cache_dir, &o, on_removed, &dry, &freed, &removed) != FM_OK)
            return cli_fail("cache clean failed");
        char sz[32];
        human(freed, sz, sizeof sz);
        printf("%s %d file%s, %s\n", dry ? "would remove" : "removed", removed,
               removed == 1 ? "" : "s", sz);
        return 0;
    }
    fm__store_entry *v = NULL;
    size_t n = 0;
    if (fm__store_list(cache_dir, &v, &n) != FM_OK) return cli_fail("cache list failed");
    uint64_t total = 0;
    printf("%-14s %10s  %-16s  %-40s  %s\n", "STATUS", "SIZE", "LAST USE", "MODEL", "FILE");
    for (size_t i = 0; i < n; i++) {
        const fm__store_entry *e = &v[i];
        char st[24], sz[32], when[32];
        snprintf(st, sizeof st, "%s%s", status(e), e->in_use ? ",in-use" : "");
        human(e->bytes, sz, sizeof sz);
        time_t t = (time_t)e->last_use;
        struct tm tm;
        if (!localtime_r(&t, &tm) || !strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm))
            snprintf(when, sizeof when, "?");
        printf("%-14s %10s  %-16s  %-40s  %s", st, sz, when, e->model ? e->model : "(unknown)", e->file);
        if (e->state != FM__STORE_LIVE) printf("  [%s]", e->why);
        printf("\n");
        total += e->bytes;
    }
    char tb[32];
    human(total, tb, sizeof tb);
    printf("%zu file%s, %s in %s\n", n, n == 1 ? "" : "s", tb, cache_dir);
    fm__store_entries_free(v, n);
    return 0;
}
