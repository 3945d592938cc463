/* cmd_synth.c: flash-moe synth (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_synth(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'synth' is not available in this build yet\n");
    return 2;
}
