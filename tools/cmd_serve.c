/* cmd_serve.c: `flash-moe serve`: options, model loading and shutdown of the OpenAI- and
 * Anthropic-compatible HTTP server (server_*.c). */
#include "cli.h"
#include "server.h"
#include "genconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *USAGE =
    "flash-moe serve [MODEL] [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--max-tokens N]\n"
    "       [--queue N] [--max-body BYTES] [model options]\n\n"
    "Serves POST /v1/chat/completions, /v1/completions, /v1/messages,\n"
    "/v1/messages/count_tokens and GET /v1/models, /health. Without MODEL it serves the\n"
    "bundled demo model. One generation runs at a time; others wait in a FIFO queue.";

/* Sampling defaults: the model's generation_config.json as transformers reads it
 * (fm_gen_defaults_load); request fields override them. Returns false (error printed) if
 * the file is malformed. */
static bool generation_defaults(const char *dir, fm_gen_params *gp) {
    fm_gen_defaults d;
    if (fm_gen_defaults_load(dir, &d) != FM_OK) {
        cli_fail("cannot read the generation defaults");
        return false;
    }
    *gp = d.params;
    if (!d.found) return true;
    char line[512];
    fm__gen_describe(gp, &d, 0, line, sizeof line);
    fprintf(stderr, "flash-moe: sampling defaults from generation_config.json: %s\n", line);
    return true;
}

/* The model's name: the last component of its directory. */
static const char *base_name(const char *dir, char *buf, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(buf, cap, "%.*s", (int)(n - b), dir + b);
    return buf;
}

int cmd_serve(int argc, char **argv) {
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    srv_config cfg = {
        .host = "127.0.0.1",
        .port = 8080,
        .api_key = NULL,
        .max_tokens = 4096,
        .queue = 16,
        .max_body = 4 << 20,
        .sessions = 4,
        .timeout = 60,
        .force_completion = NULL,
        .model_id = NULL,
    };
    const char *alias = NULL;
    cli_opt opts[] = {
        {"--host", NULL, CLI_STR, &cfg.host, "address to bind (loopback by default)"},
        {"--port", "-p", CLI_INT, &cfg.port, "TCP port (0 = any free port, printed at start)"},
        {"--api-key", NULL, CLI_STR, &cfg.api_key, "require this key (Authorization: Bearer or x-api-key)"},
        {"--max-tokens", NULL, CLI_INT, &cfg.max_tokens, "upper bound on tokens generated per request (larger requests are clamped)"},
        {"--queue", NULL, CLI_INT, &cfg.queue, "requests that may wait for the generator (more get 429)"},
        {"--max-body", NULL, CLI_SIZE, &cfg.max_body, "request body limit in bytes (more gets 413)"},
        {"--sessions", NULL, CLI_INT, &cfg.sessions, "conversations whose KV cache is kept for prefix reuse"},
        {"--timeout", NULL, CLI_INT, &cfg.timeout, "idle connection timeout in seconds"},
        {"--alias", NULL, CLI_STR, &alias, "model name to report (none = the model directory's name)"},
        {"--force-completion", NULL, CLI_STR, &cfg.force_completion,
         "TESTING ONLY: answer every request with this text, streamed token by token"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *pos[1];
    int n_pos = 0;
    int rc = cli_parse(argc, argv, 2, opts, (int)(sizeof opts / sizeof opts[0]), USAGE, pos, 1, &n_pos);
    if (rc == 1) return 0;
    if (rc) return 2;
    if (cfg.port < 0 || cfg.port > 65535) { fprintf(stderr, "flash-moe: --port must be 0..65535\n"); return 2; }
    if (cfg.max_tokens < 1 || cfg.queue < 0 || cfg.max_body < 1 || cfg.sessions < 1 || cfg.timeout < 1) {
        fprintf(stderr, "flash-moe: --max-tokens, --max-body, --sessions and --timeout must be >= 1, --queue >= 0\n");
        return 2;
    }
    if (cfg.api_key && !cfg.api_key[0]) { fprintf(stderr, "flash-moe: --api-key must not be empty\n"); return 2; }
    const char *dir = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir) return 1;
    char name[256];
    cfg.model_id = alias ? alias : base_name(dir, name, sizeof name);

    server *s = calloc(1, sizeof *s);
    if (!s) return 1;
    cfg.stats = mo.stats;
    s->cfg = cfg;
    if (!generation_defaults(dir, &s->defaults)) {
        free(s);
        return 1;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    int ret = 1;
    s->model = cli_open_model(dir, &mo);
    if (!s->model) goto done;
    if (fm_model_get_info(s->model, &s->info) != FM_OK) { cli_fail("cannot read model info"); goto done; }
    if (cfg.force_completion) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (fm_tokenize(s->model, cfg.force_completion, strlen(cfg.force_completion), 0, &ids, &n) != FM_OK) {
            cli_fail("cannot tokenize --force-completion");
            goto done;
        }
        s->forced_ids = ids;
        s->n_forced = n;
        fprintf(stderr, "flash-moe: --force-completion is for testing only: every reply is fixed text\n");
    }
    ret = srv_run(s);
done:
    fm_free(s->forced_ids);
    fm_model_free(s->model);
    pthread_cond_destroy(&s->work_cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return ret;
}
