/* cmd_detokenize.c: flash-moe detokenize (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_detokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'detokenize' is not available in this build yet\n");
    return 2;
}
