/* test_cache_cli.c: the cache's commands end to end on a synthetic model ($FM_BIN synth):
 * `profile` (counts per layer against the routing trace it writes, the universal rule,
 * and the profile loading back with --profile), and `pack` / `pack --check` (a corrupt
 * blob is reported, a rebuilt store validates). */
#include "common.h"
#include "tap.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[256];
static const char *g_bin;

static int sh(const char *fmt, ...) FM_PRINTF(1, 2);
static int sh(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static void test_profile(void) {
    char prompts[512];
    snprintf(prompts, sizeof prompts, "%s/prompts.txt", g_dir);
    FILE *f = fopen(prompts, "w");
    if (!f) return;
    fputs("1,2,3,4\n5,6,7\n\n100,200,300,7,8\n9\n10,11,12,13,14,15\n", f);
    fclose(f);
    int r = sh("'%s' profile '%s/m' --prompts '%s' --ids -o '%s/prof.json' --gen 3 --trace "
               "'%s/trace.txt' --cache-dir '' 2>'%s/profile.log'", g_bin, g_dir, prompts, g_dir,
               g_dir, g_dir);
    CHECK(r == 0, "profile runs");
    char path[512];
    snprintf(path, sizeof path, "%s/prof.json", g_dir);
    char *text = NULL;
    size_t len;
    if (fm__read_file(path, &text, &len) != FM_OK) {
        CHECK(0, "profile written");
        return;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    CHECK(root != NULL, "profile is JSON");
    if (!root) return;
    int np = cJSON_GetObjectItem(root, "num_prompts")->valueint;
    int ne = cJSON_GetObjectItem(root, "num_experts")->valueint;
    int nl = cJSON_GetObjectItem(root, "moe_layers")->valueint;
    CHECK(np == 5 && ne == 8 && nl == 2, "num_prompts 5 (blank line skipped), 8 experts, 2 layers");
    /* counts recomputed from the trace: per prompt, the union of every request's ids */
    int want[2][8] = {{0}}, seen[2][8] = {{0}}, cur = -1;
    snprintf(path, sizeof path, "%s/trace.txt", g_dir);
    FILE *t = fopen(path, "r");
    char line[1024];
    while (t && fgets(line, sizeof line, t)) {
        char *q = line, *end;
        int p = (int)strtol(q, &end, 10);
        q = end;
        int l = (int)strtol(q, &end, 10);
        q = end;
        if (p != cur) {
            for (int a = 0; a < 2; a++)
                for (int e = 0; e < 8; e++) want[a][e] += seen[a][e], seen[a][e] = 0;
            cur = p;
        }
        for (;;) {
            long e = strtol(q, &end, 10);
            if (end == q) break;
            q = end;
            if (l >= 0 && l < 2 && e >= 0 && e < 8) seen[l][e] = 1;
        }
    }
    for (int a = 0; a < 2; a++)
        for (int e = 0; e < 8; e++) want[a][e] += seen[a][e];
    if (t) fclose(t);
    cJSON *layers = cJSON_GetObjectItem(root, "layers");
    bool counts_ok = true, uni_ok = true, topk_ok = true;
    for (int l = 0; l < 2; l++) {
        char key[8];
        snprintf(key, sizeof key, "%d", l);
        cJSON *ly = cJSON_GetObjectItem(layers, key);
        if (!ly) { counts_ok = false; continue; }
        cJSON *ac = cJSON_GetObjectItem(ly, "activation_counts");
        cJSON *uni = cJSON_GetObjectItem(ly, "universal");
        int uniq = 0;
        for (int e = 0; e < 8; e++) {
            char ek[8];
            snprintf(ek, sizeof ek, "%d", e);
            cJSON *c = cJSON_GetObjectItem(ac, ek);
            int got = c ? c->valueint : 0;
            counts_ok = counts_ok && got == want[l][e];
            uniq += got > 0;
            bool in_uni = false;
            cJSON *u;
            cJSON_ArrayForEach(u, uni) in_uni = in_uni || u->valueint == e;
            uni_ok = uni_ok && in_uni == (got > 0 && got >= (int)(0.5 * np));
        }
        topk_ok = topk_ok && cJSON_GetObjectItem(ly, "total_unique")->valueint == uniq && uniq >= 2;
    }
    CHECK(counts_ok, "activation_counts = prompts whose routing (trace) used each expert");
    CHECK(uni_ok, "universal = count >= int(threshold * prompts)");
    CHECK(topk_ok, "total_unique matches, >= top_k");
    cJSON_Delete(root);
    r = sh("'%s' eval '%s/m' --tokens 1,2,3 -o '%s/x.bin' --capacity 4 --profile '%s/prof.json' "
           "--cache-dir '' 2>/dev/null", g_bin, g_dir, g_dir, g_dir);
    CHECK(r == 0, "the written profile loads back with --profile");
    r = sh("'%s' profile '%s/m' --prompts '%s/nope.txt' --ids -o '%s/p2.json' 2>/dev/null", g_bin,
           g_dir, g_dir, g_dir);
    CHECK(r != 0, "missing prompts file is an error");
}

static void test_pack(void) {
    int r = sh("'%s' pack '%s/m' --cache-dir '%s/store' >'%s/pack.out' 2>/dev/null", g_bin, g_dir,
               g_dir, g_dir);
    CHECK(r == 0, "pack writes the store");
    r = sh("'%s' pack '%s/m' --cache-dir '%s/store' --check >/dev/null 2>&1", g_bin, g_dir, g_dir);
    CHECK(r == 0, "pack --check: valid");
    char path[512] = {0};
    snprintf(path, sizeof path, "%s/pack.out", g_dir);
    FILE *f = fopen(path, "r");
    char sp[512] = {0};
    if (f && fgets(sp, sizeof sp, f)) sp[strcspn(sp, "\n")] = 0;
    if (f) fclose(f);
    int fd = open(sp, O_RDWR);
    off_t end = fd >= 0 ? lseek(fd, 0, SEEK_END) : 0;
    unsigned char b = 0;
    if (fd >= 0 && pread(fd, &b, 1, end - 5000) == 1) {
        b ^= 0x55;
        if (pwrite(fd, &b, 1, end - 5000) != 1) perror("pwrite");
    }
    if (fd >= 0) close(fd);
    r = sh("'%s' pack '%s/m' --cache-dir '%s/store' --check >/dev/null 2>'%s/check.err'", g_bin,
           g_dir, g_dir, g_dir);
    snprintf(path, sizeof path, "%s/check.err", g_dir);
    char *err = NULL;
    size_t len;
    fm__read_file(path, &err, &len);
    CHECK(r != 0 && err && strstr(err, "checksum"), "pack --check reports the corrupt blob (%s)",
          err ? err : "");
    free(err);
    r = sh("'%s' pack '%s/m' --cache-dir '%s/store' >/dev/null 2>&1 && '%s' pack '%s/m' "
           "--cache-dir '%s/store' --check >/dev/null 2>&1", g_bin, g_dir, g_dir, g_bin, g_dir,
           g_dir);
    CHECK(r == 0, "repacked store validates");
    r = sh("'%s' eval '%s/m' --tokens 1,2,3,4 -o '%s/a.bin' --capacity 2 --cache-dir '' "
           "2>/dev/null && '%s' eval '%s/m' --tokens 1,2,3,4 -o '%s/b.bin' --capacity 2 "
           "--cache-dir '%s/store' 2>/dev/null && cmp -s '%s/a.bin' '%s/b.bin'", g_bin, g_dir,
           g_dir, g_bin, g_dir, g_dir, g_dir, g_dir, g_dir);
    CHECK(r == 0, "logits through the store equal logits through the checkpoint");
}

int main(void) {
    g_bin = getenv("FM_BIN");
    if (!g_bin || access(g_bin, X_OK) != 0) {
        printf("ok - cache CLI # SKIP no $FM_BIN\n");
        return 0;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/fm_test_cache_cli_XXXXXX");
    if (!mkdtemp(g_dir)) return 1;
    int r = sh("'%s' synth '%s/m' --preset tiny --seed 3 >/dev/null 2>&1", g_bin, g_dir);
    CHECK(r == 0, "synth tiny model");
    if (r == 0) {
        test_profile();
        test_pack();
    }
    sh("rm -rf '%s'", g_dir);
    return TAP_DONE();
}
