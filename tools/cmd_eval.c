/* cmd_eval.c: flash-moe eval (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_eval(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'eval' is not available in this build yet\n");
    return 2;
}
