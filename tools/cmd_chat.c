/* cmd_chat.c: flash-moe chat (not yet built; see the open issues). */
#include "cli.h"
#include <stdio.h>

int cmd_chat(int argc, char **argv) {
    (void)argc; (void)argv;
    fprintf(stderr, "flash-moe: 'chat' is not available in this build yet\n");
    return 2;
}
