/* cmd_serve.c: flash-moe serve (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_serve(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'serve' is not available in this build yet\n");
    return 2;
}
