/* cmd_info.c: flash-moe info (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_info(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'info' is not available in this build yet\n");
    return 2;
}
