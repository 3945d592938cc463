/* main.c: the flash-moe command: dispatches to one subcommand per tools/cmd_<name>.c. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

typedef struct { const char *name; int (*fn)(int, char **); const char *help; } command;

static const command commands[] = {
    {"run", cmd_run, "generate from a prompt (chat template applied by default)"},
    {"chat", cmd_chat, "interactive multi-turn chat"},
    {"serve", cmd_serve, "OpenAI- and Anthropic-compatible HTTP server"},
    {"eval", cmd_eval, "write logits for a token sequence (conformance)"},
    {"info", cmd_info, "print architecture, sizes and the memory plan"},
    {"profile", cmd_profile, "record which experts prompts activate"},
    {"pack", cmd_pack, "write the packed expert store"},
    {"cache", cmd_cache, "list the packed expert stores, or clean stale ones"},
    {"bench", cmd_bench, "measure kernels, bandwidth and decode speed"},
    {"synth", cmd_synth, "write a random-weight model of a chosen shape"},
    {"tokenize", cmd_tokenize, "print token ids of a text as JSON"},
    {"detokenize", cmd_detokenize, "print the text of token ids"},
    {"template", cmd_template, "render a chat with the model's template"},
};

static void usage(void) {
    printf("flash-moe %s: run Mixture-of-Experts models larger than memory\n\n"
           "usage: flash-moe COMMAND [options]   (flash-moe COMMAND --help for options)\n\n"
           "commands:\n", FM_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("flash-moe %s\n", FM_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc, argv);
    fprintf(stderr, "flash-moe: unknown command '%s' (see flash-moe --help)\n", argv[1]);
    return 2;
}
