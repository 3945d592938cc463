/* cmd_template.c: flash-moe template (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_template(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'template' is not available in this build yet\n");
    return 2;
}
