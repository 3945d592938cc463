/* cmd_tokenize.c: flash-moe tokenize MODEL (--text-file F | --text S): prints the token ids
 * of the text as a JSON array. Loads only the tokenizer files of MODEL, never the weights. */
#include "cli.h"
#include "common.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cmd_tokenize(int argc, char **argv) {
    const char *text_file = NULL, *text = NULL;
    int add_special = 0, bench = 0;
    cli_opt opts[] = {
        {"--text-file", "-f", CLI_STR, &text_file, "file whose bytes are tokenized (\"-\" = stdin)"},
        {"--text", NULL, CLI_STR, &text, "text to tokenize"},
        {"--add-special", NULL, CLI_FLAG, &add_special, "add BOS/EOS as the tokenizer config asks"},
        {"--bench", NULL, CLI_FLAG, &bench, "print load time and encode throughput instead of the ids"},
    };
    const char *usage = "flash-moe tokenize MODEL (--text-file F | --text S) [--add-special]";
    const char *pos[1];
    int npos;
    int rc = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &npos);
    if (rc) return rc == 1 ? 0 : 2;
    if (npos != 1 || (!text_file) == (!text)) {
        fprintf(stderr, "flash-moe: tokenize needs MODEL and exactly one of --text-file / --text\n");
        return 2;
    }
    char *buf = NULL;
    size_t len = 0;
    if (text_file) {
        if (strcmp(text_file, "-") == 0) {
            size_t cap = 0;
            for (;;) {
                if (len + 65536 > cap) {
                    cap = cap ? cap * 2 : 1 << 17;
                    char *nb = realloc(buf, cap);
                    if (!nb) { free(buf); fprintf(stderr, "flash-moe: out of memory\n"); return 1; }
                    buf = nb;
                }
                size_t r = fread(buf + len, 1, cap - len, stdin);
                len += r;
                if (r == 0) break;
            }
        } else if (fm__read_file(text_file, &buf, &len) != FM_OK) {
            return cli_fail("cannot read --text-file");
        }
    }
    fm__tokenizer *t = NULL;
    double t0 = fm__now();
    if (fm__tok_load(pos[0], &t) != FM_OK) {
        free(buf);
        return cli_fail("cannot load the tokenizer");
    }
    int32_t *ids = NULL;
    size_t n = 0;
    double t1 = fm__now(), c1 = cpu_now();
    fm_status st = text ? fm__tok_encode(t, text, strlen(text), add_special, &ids, &n)
                        : fm__tok_encode(t, buf, len, add_special, &ids, &n);
    free(buf);
    if (st != FM_OK) {
        fm__tok_free(t);
        return cli_fail("cannot tokenize");
    }
    if (bench) {
        /* CPU time is the one-core figure; wall time also counts waiting for a busy CPU */
        double t2 = fm__now(), c2 = cpu_now();
        size_t bytes = text ? strlen(text) : len;
        printf("load %.3f s, encode %zu bytes -> %zu tokens: %.2f MB/s per CPU second "
               "(%.3f s CPU, %.3f s wall = %.2f MB/s), %.2f bytes/token\n",
               t1 - t0, bytes, n, (double)bytes / 1e6 / (c2 - c1), c2 - c1, t2 - t1,
               (double)bytes / 1e6 / (t2 - t1), n ? (double)bytes / (double)n : 0.0);
        free(ids);
        fm__tok_free(t);
        return 0;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("]\n");
    free(ids);
    fm__tok_free(t);
    return 0;
}
