/* cli.h: the flash-moe command line's shared pieces. One options table per subcommand
 * drives both parsing and --help (which shows every default). Only tools/ may exit(). */
#ifndef FM_CLI_H
#define FM_CLI_H

#include "flashmoe.h"
#include <stdbool.h>
#include <stdint.h>

typedef enum { CLI_FLAG, CLI_INT, CLI_FLOAT, CLI_STR, CLI_SIZE, CLI_LIST } cli_kind;

/* One option. dst points at: FLAG int, INT int32_t, FLOAT float, STR const char *,
 * SIZE int64_t (accepts 8G, 512M), LIST cli_list. The default shown by --help is read
 * from *dst before parsing, so initialise dst with the default. */
typedef struct cli_opt {
    const char *name;   /* "--capacity" */
    const char *alias;  /* "-n" or NULL */
    cli_kind kind;
    void *dst;
    const char *help;
} cli_opt;

typedef struct cli_list {
    const char **items;
    int n, cap;
} cli_list;

/* Model options every model-running command accepts (eval, run, chat, serve, bench,
 * profile), meaning the same thing everywhere. */
typedef struct cli_model_opts {
    int32_t capacity;
    int64_t mem_limit;
    const char *profile;
    const char *cache_dir;
    int64_t cache_max;       /* size cap of the store directory; 0 = FM_CACHE_MAX or none */
    const char *miss_policy; /* "exact" or "skip" */
    int32_t threads;
    int32_t ctx;
    int stats;
} cli_model_opts;

#define CLI_MODEL_OPTS(mo) \
    {"--capacity", NULL, CLI_INT, &(mo)->capacity, "routed experts cached per layer (0 = from --mem-limit or automatic)"}, \
    {"--mem-limit", NULL, CLI_SIZE, &(mo)->mem_limit, "total memory budget, e.g. 8G (0 = automatic)"}, \
    {"--profile", NULL, CLI_STR, &(mo)->profile, "profile JSON whose universal experts are pinned"}, \
    {"--cache-dir", NULL, CLI_STR, &(mo)->cache_dir, "packed expert store directory (\"\" = none)"}, \
    {"--cache-max", NULL, CLI_SIZE, &(mo)->cache_max, "size cap of the store directory, e.g. 100G: creating a store evicts the least recently used ones (0 = $FM_CACHE_MAX, else none)"}, \
    {"--miss-policy", NULL, CLI_STR, &(mo)->miss_policy, "exact | skip (skip is approximate and counted)"}, \
    {"--threads", "-t", CLI_INT, &(mo)->threads, "compute threads (0 = all cores)"}, \
    {"--ctx", NULL, CLI_INT, &(mo)->ctx, "context length in tokens (0 = min(model, 4096))"}, \
    {"--stats", NULL, CLI_FLAG, &(mo)->stats, "print cache and speed statistics to stderr"}

void cli_model_opts_default(cli_model_opts *mo);
/* Converts to library params; returns false (after printing why) on a bad value. A
 * --cache-max above 0 becomes fm_model_params.cache_max (it overrides FM_CACHE_MAX). */
bool cli_model_params(const cli_model_opts *mo, fm_model_params *p);

/* Parses argv[start..argc). Positional arguments are collected into pos (up to max_pos).
 * Returns 0 on success, 1 if --help was printed, 2 on a usage error (message printed). */
int cli_parse(int argc, char **argv, int start, const cli_opt *opts, int n_opts,
              const char *usage, const char **pos, int max_pos, int *n_pos);
void cli_help(const char *usage, const cli_opt *opts, int n_opts);

/* The bundled demo model's directory (next to the binary or $FM_DEMO_MODEL), or NULL. */
const char *cli_demo_model(void);
/* Resolves an optional MODEL argument: returns it, or the demo model with a note to
 * stderr, or NULL with an error printed. */
const char *cli_model_or_demo(const char *arg);
/* Opens a model, printing the library's error on failure. */
fm_model *cli_open_model(const char *dir, const cli_model_opts *mo);
/* Prints fm_last_error() prefixed by "flash-moe: ". Returns 1. */
int cli_fail(const char *what);

/* Opens a model with a loading indicator on a terminal (tools/cmd_chat.c). */
fm_model *gen_open_model_progress(const char *dir, const cli_model_opts *mo);
/* Prints generation statistics (tokens, speed, cache, memory, repetition) to stderr
 * (tools/cmd_run.c). text/len: the generated text for the repetition measures, or NULL. */
void gen_print_stats(const fm_stats *st, int finish, const char *text, size_t len);
/* Generation parameters: explicit flags (those of opts found in argv), then the model's
 * generation_config.json, then the defaults already in *gp; verbose prints each value's
 * source to stderr. Returns false (after printing why) if the file is malformed
 * (tools/cmd_run.c). */
bool gen_resolve_params(const char *dir, int argc, char **argv, const cli_opt *opts, int n_opts,
                        fm_gen_params *gp, int verbose);

/* Subcommands: each lives in tools/cmd_<name>.c. */
int cmd_info(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_template(int argc, char **argv);

#endif
