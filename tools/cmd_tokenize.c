/* cmd_tokenize.c: flash-moe tokenize (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_tokenize(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'tokenize' is not available in this build yet\n");
    return 2;
}
