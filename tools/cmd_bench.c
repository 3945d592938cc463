/* cmd_bench.c: flash-moe bench (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_bench(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'bench' is not available in this build yet\n");
    return 2;
}
