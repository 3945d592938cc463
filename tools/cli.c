/* cli.c: option parsing driven by a table, --help with defaults, model option handling. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_fail(const char *what) {
    const char *e = fm_last_error();
    fprintf(stderr, "flash-moe: %s%s%s\n", what ? what : "", (what && *e) ? ": " : "", e);
    return 1;
}

void cli_model_opts_default(cli_model_opts *mo) {
    memset(mo, 0, sizeof *mo);
    mo->miss_policy = "exact";
}

bool cli_model_params(const cli_model_opts *mo, fm_model_params *p) {
    fm_model_params_default(p);
    p->capacity = mo->capacity;
    p->mem_limit = mo->mem_limit;
    p->profile = mo->profile;
    p->cache_dir = mo->cache_dir;
    p->n_threads = mo->threads;
    p->n_ctx = mo->ctx;
    if (!mo->miss_policy || strcmp(mo->miss_policy, "exact") == 0) p->miss_policy = FM_MISS_EXACT;
    else if (strcmp(mo->miss_policy, "skip") == 0) p->miss_policy = FM_MISS_SKIP;
    else {
        fprintf(stderr, "flash-moe: --miss-policy must be exact or skip, not '%s'\n", mo->miss_policy);
        return false;
    }
    if (mo->capacity < 0 || mo->mem_limit < 0 || mo->threads < 0 || mo->ctx < 0) {
        fprintf(stderr, "flash-moe: --capacity, --mem-limit, --threads and --ctx must be >= 0\n");
        return false;
    }
    p->cache_max = mo->cache_max;
    return true;
}

static void print_default(const cli_opt *o) {
    switch (o->kind) {
    case CLI_FLAG: break;
    case CLI_INT: printf(" (default %d)", *(int32_t *)o->dst); break;
    case CLI_FLOAT: printf(" (default %g)", (double)*(float *)o->dst); break;
    case CLI_SIZE: printf(" (default %lld)", (long long)*(int64_t *)o->dst); break;
    case CLI_STR: {
        const char *s = *(const char **)o->dst;
        if (s) printf(" (default \"%s\")", s);
        else printf(" (default none)");
        break;
    }
    case CLI_LIST: printf(" (repeatable)"); break;
    }
}

void cli_help(const char *usage, const cli_opt *opts, int n_opts) {
    printf("usage: %s\n\noptions:\n", usage);
    for (int i = 0; i < n_opts; i++) {
        const cli_opt *o = &opts[i];
        char head[64];
        snprintf(head, sizeof head, "%s%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "",
                 o->name, o->kind == CLI_FLAG ? "" : " V");
        printf("  %-24s %s", head, o->help);
        print_default(o);
        printf("\n");
    }
    printf("  %-24s %s\n", "-h, --help", "show this help");
}

static int set_value(const cli_opt *o, const char *v) {
    char *end;
    switch (o->kind) {
    case CLI_FLAG: *(int *)o->dst = 1; return 0;
    case CLI_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < INT32_MIN || x > INT32_MAX) goto bad;
        *(int32_t *)o->dst = (int32_t)x;
        return 0;
    }
    case CLI_FLOAT: {
        errno = 0;
        float x = strtof(v, &end);
        if (errno || *end || end == v) goto bad;
        *(float *)o->dst = x;
        return 0;
    }
    case CLI_SIZE: {
        /* Same syntax as the library's sizes: 4096, 512M, 8G, 1.5GiB. */
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || x < 0) goto bad;
        double mul = 1;
        if (*end == 'k' || *end == 'K') { mul = 1024.0; end++; }
        else if (*end == 'm' || *end == 'M') { mul = 1048576.0; end++; }
        else if (*end == 'g' || *end == 'G') { mul = 1073741824.0; end++; }
        else if (*end == 't' || *end == 'T') { mul = 1099511627776.0; end++; }
        if (*end == 'i') end++;
        if (*end == 'B' || *end == 'b') end++;
        if (*end || x * mul > 9e18) goto bad;
        *(int64_t *)o->dst = (int64_t)(x * mul);
        return 0;
    }
    case CLI_STR: *(const char **)o->dst = v; return 0;
    case CLI_LIST: {
        cli_list *l = o->dst;
        if (l->n == l->cap) {
            int nc = l->cap ? l->cap * 2 : 8;
            const char **ni = realloc(l->items, (size_t)nc * sizeof *ni);
            if (!ni) return 2;
            l->items = ni;
            l->cap = nc;
        }
        l->items[l->n++] = v;
        return 0;
    }
    }
bad:
    fprintf(stderr, "flash-moe: bad value '%s' for %s\n", v, o->name);
    return 2;
}

int cli_parse(int argc, char **argv, int start, const cli_opt *opts, int n_opts,
              const char *usage, const char **pos, int max_pos, int *n_pos) {
    *n_pos = 0;
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_help(usage, opts, n_opts);
            return 1;
        }
        if (a[0] == '-' && a[1] != 0) {
            const char *eq = strchr(a, '=');
            size_t nl = eq && a[1] == '-' ? (size_t)(eq - a) : strlen(a);
            const cli_opt *o = NULL;
            for (int k = 0; k < n_opts; k++) {
                if ((strlen(opts[k].name) == nl && strncmp(opts[k].name, a, nl) == 0) ||
                    (opts[k].alias && strcmp(opts[k].alias, a) == 0)) {
                    o = &opts[k];
                    break;
                }
            }
            if (!o) {
                fprintf(stderr, "flash-moe: unknown option %s (see --help)\n", a);
                return 2;
            }
            const char *v = NULL;
            if (o->kind != CLI_FLAG) {
                if (eq && a[1] == '-') v = eq + 1;
                else if (i + 1 < argc) v = argv[++i];
                else {
                    fprintf(stderr, "flash-moe: %s needs a value\n", o->name);
                    return 2;
                }
            }
            int rc = set_value(o, v);
            if (rc) return rc;
            continue;
        }
        if (*n_pos >= max_pos) {
            fprintf(stderr, "flash-moe: unexpected argument '%s'\n", a);
            return 2;
        }
        pos[(*n_pos)++] = a;
    }
    return 0;
}

const char *cli_demo_model(void) {
    static char buf[4096];
    const char *e = getenv("FM_DEMO_MODEL");
    if (e && *e) return e;
    /* Next to the binary: <root>/build/flash-moe -> <root>/models/demo */
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 64);
    if (n > 0) {
        buf[n] = 0;
        for (int up = 0; up < 3; up++) {
            char *s = strrchr(buf, '/');
            if (!s) break;
            *s = 0;
            char cand[4200];
            snprintf(cand, sizeof cand, "%s/models/demo/config.json", buf);
            if (access(cand, R_OK) == 0) {
                strcat(buf, "/models/demo");
                return buf;
            }
        }
    }
    if (access("models/demo/config.json", R_OK) == 0) return "models/demo";
    return NULL;
}

const char *cli_model_or_demo(const char *arg) {
    if (arg) return arg;
    const char *d = cli_demo_model();
    if (!d) {
        fprintf(stderr, "flash-moe: no MODEL given and the bundled demo model was not found\n");
        return NULL;
    }
    fprintf(stderr, "flash-moe: no MODEL given, using the bundled demo model (%s)\n", d);
    return d;
}

fm_model *cli_open_model(const char *dir, const cli_model_opts *mo) {
    fm_model_params p;
    if (!cli_model_params(mo, &p)) return NULL;
    p.verbose = 1;
    fm_model *m = NULL;
    if (fm_model_open(dir, &p, &m) != FM_OK) {
        cli_fail("cannot open model");
        return NULL;
    }
    return m;
}
