/* cmd_pack.c: flash-moe pack (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_pack(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'pack' is not available in this build yet\n");
    return 2;
}
