/* cmd_run.c: flash-moe run (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_run(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'run' is not available in this build yet\n");
    return 2;
}
