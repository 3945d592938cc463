/* cmd_profile.c: flash-moe profile (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_profile(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'profile' is not available in this build yet\n");
    return 2;
}
