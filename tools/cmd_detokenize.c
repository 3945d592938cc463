/* cmd_detokenize.c: flash-moe detokenize MODEL --ids 1,2,3: prints the decoded text exactly
 * (no newline added). Loads only the tokenizer files of MODEL, never the weights. */
#include "cli.h"
#include "common.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses "1,2,3", "1 2 3" or "[1, 2, 3]". Returns the count, or -1 on bad syntax. */
static long parse_ids(const char *s, int32_t **out) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '[' || *p == ']') { p++; continue; }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) { free(ids); return -1; }
        if (n == cap) {
            cap *= 2;
            int32_t *ni = realloc(ids, cap * sizeof *ni);
            if (!ni) { free(ids); return -1; }
            ids = ni;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    return (long)n;
}

int cmd_detokenize(int argc, char **argv) {
    const char *ids_arg = NULL, *ids_file = NULL;
    cli_opt opts[] = {
        {"--ids", NULL, CLI_STR, &ids_arg, "token ids: 1,2,3 or a JSON array"},
        {"--ids-file", NULL, CLI_STR, &ids_file, "file holding the ids in the same syntax"},
    };
    const char *usage = "flash-moe detokenize MODEL (--ids 1,2,3 | --ids-file F)";
    const char *pos[1];
    int npos;
    int rc = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &npos);
    if (rc) return rc == 1 ? 0 : 2;
    if (npos != 1 || (!ids_arg) == (!ids_file)) {
        fprintf(stderr, "flash-moe: detokenize needs MODEL and one of --ids / --ids-file\n");
        return 2;
    }
    char *file_text = NULL;
    size_t flen;
    if (ids_file && fm__read_file(ids_file, &file_text, &flen) != FM_OK) return cli_fail("cannot read --ids-file");
    int32_t *ids = NULL;
    long n = parse_ids(ids_file ? file_text : ids_arg, &ids);
    free(file_text);
    if (n < 0) {
        fprintf(stderr, "flash-moe: bad token ids (expected non-negative integers separated by commas)\n");
        return 2;
    }
    fm__tokenizer *t = NULL;
    if (fm__tok_load(pos[0], &t) != FM_OK) {
        free(ids);
        return cli_fail("cannot load the tokenizer");
    }
    char *text = NULL;
    size_t len = 0;
    fm_status st = fm__tok_decode(t, ids, (size_t)n, &text, &len);
    free(ids);
    fm__tok_free(t);
    if (st != FM_OK) return cli_fail("cannot detokenize");
    fwrite(text, 1, len, stdout);
    free(text);
    return 0;
}
