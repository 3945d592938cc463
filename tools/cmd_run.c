/* cmd_run.c: flash-moe run: generates from one prompt and streams the answer to stdout.
 * The chat template is applied by default (one user message, optional system message);
 * --raw feeds the text as is. Sampling defaults come from the model's generation_config.json
 * unless a flag sets them. --stats prints speed, cache, memory and repetition figures
 * to stderr. Ctrl-C stops generation and still prints the statistics. */
#include "cli.h"
#include "model.h"
#include "sampler.h"
#include "genconfig.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Opens a model; on a terminal, shows elapsed time while loading (tools/cmd_chat.c). */
/* Prints the statistics of a finished call to stderr (tools/cmd_chat.c). */

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

/* Streaming state: the text so far, for repetition metrics at chosen token counts. */
typedef struct {
    char *text;
    size_t len, cap;
    const int32_t *rep_at;
    int n_rep_at, next;
} run_out;

static int stream_out(const char *piece, size_t len, const fm_stats *st, void *user) {
    run_out *o = user;
    if (len) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
        if (o->len + len + 1 > o->cap) {
            size_t nc = o->cap ? o->cap * 2 : 4096;
            while (nc < o->len + len + 1) nc *= 2;
            char *nt = realloc(o->text, nc);
            if (!nt) return 1;
            o->text = nt;
            o->cap = nc;
        }
        memcpy(o->text + o->len, piece, len);
        o->len += len;
    }
    while (o->next < o->n_rep_at && st->generated_tokens >= o->rep_at[o->next]) {
        fm__rep r;
        fm__rep_metrics(o->text ? o->text : "", o->len, &r);
        fprintf(stderr, "\n[repetition @ %lld tokens: top trigram share %.3f, distinct word "
                "4-grams %.3f]\n", (long long)st->generated_tokens, r.trigram_share, r.distinct4);
        o->next++;
    }
    return interrupted != 0;
}

static const char *finish_name(int f) {
    switch (f) {
    case FM_FINISH_EOS: return "eos";
    case FM_FINISH_STOP: return "stop";
    case FM_FINISH_LENGTH: return "length";
    case FM_FINISH_CANCEL: return "cancelled";
    default: return "none";
    }
}

static double gib(int64_t b) { return (double)b / (1024.0 * 1024.0 * 1024.0); }

void gen_print_stats(const fm_stats *st, int finish, const char *text, size_t len) {
    fprintf(stderr, "\n--- stats\n");
    fprintf(stderr, "tokens: prompt %lld (%lld reused), generated %lld, finish %s\n",
            (long long)st->prompt_tokens, (long long)st->reused_tokens,
            (long long)st->generated_tokens, finish_name(finish));
    fprintf(stderr, "speed: TTFT %.1f ms, prefill %.1f tok/s, decode %.2f tok/s\n", st->ttft_ms,
            st->prefill_tok_s, st->decode_tok_s);
    fprintf(stderr, "expert cache: hit rate %.1f%% (%lld hits, %lld misses), read %.3f GiB, "
            "io wait %.1f ms, skipped %lld\n", st->hit_rate * 100.0, (long long)st->cache_hits,
            (long long)st->cache_misses, gib(st->bytes_read), st->io_wait_ms,
            (long long)st->experts_skipped);
    fprintf(stderr, "memory: RSS %.3f GiB, expert cache %.3f GiB, KV %.3f GiB\n",
            gib(st->rss_bytes), gib(st->cache_bytes), gib(st->kv_bytes));
    if (text) {
        fm__rep r;
        fm__rep_metrics(text, len, &r);
        fprintf(stderr, "repetition @ %lld tokens: top trigram share %.3f (last 200 chars), "
                "distinct word 4-grams %.3f\n", (long long)st->generated_tokens,
                r.trigram_share, r.distinct4);
    }
}

/* The sampling options whose values can come from generation_config.json. */
static const struct { const char *name; uint32_t bit; } GEN_OPTS[] = {
    {"--temp", FM_GENCFG_TEMPERATURE}, {"--top-p", FM_GENCFG_TOP_P},
    {"--top-k", FM_GENCFG_TOP_K}, {"--min-p", FM_GENCFG_MIN_P},
    {"--repeat-penalty", FM_GENCFG_REPEAT_PENALTY}, {"--max-tokens", FM_GENCFG_MAX_TOKENS},
};

/* FM_GENCFG_* bits of the sampling options argv sets explicitly: argv (already parsed
 * successfully with opts) is parsed again with every destination redirected to scratch
 * holding a value no flag can produce. */
static uint32_t gen_given(int argc, char **argv, const cli_opt *opts, int n_opts) {
    typedef union { int flag; int32_t i; float f; int64_t z; const char *s; cli_list l; } scratch;
    cli_opt *o = calloc((size_t)n_opts, sizeof *o);
    scratch *v = calloc((size_t)n_opts, sizeof *v);
    const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    uint32_t given = 0;
    if (o && v && pos) {
        for (int i = 0; i < n_opts; i++) {
            o[i] = opts[i];
            o[i].dst = &v[i];
            if (o[i].kind == CLI_FLOAT) v[i].f = NAN;
            else if (o[i].kind == CLI_INT) v[i].i = INT32_MIN;
        }
        int n_pos = 0;
        if (cli_parse(argc, argv, 2, o, n_opts, "", pos, argc, &n_pos) == 0) {
            for (int i = 0; i < n_opts; i++)
                for (size_t k = 0; k < sizeof GEN_OPTS / sizeof GEN_OPTS[0]; k++) {
                    if (strcmp(o[i].name, GEN_OPTS[k].name) != 0) continue;
                    if ((o[i].kind == CLI_FLOAT && !isnan(v[i].f)) ||
                        (o[i].kind == CLI_INT && v[i].i != INT32_MIN))
                        given |= GEN_OPTS[k].bit;
                }
        }
        for (int i = 0; i < n_opts; i++)
            if (o[i].kind == CLI_LIST) free(v[i].l.items);
    }
    free(o);
    free(v);
    free(pos);
    return given;
}

/* Generation parameters for run and chat (declared in tools/cmd_chat.c): *gp holds the
 * values after parsing (flags or the command's defaults); each sampling field no flag set
 * explicitly takes the value of dir/generation_config.json when the file has one. verbose
 * prints every value with its source. Returns false (error printed) on a malformed file. */
bool gen_resolve_params(const char *dir, int argc, char **argv, const cli_opt *opts, int n_opts,
                        fm_gen_params *gp, int verbose) {
    fm_gen_defaults d;
    if (fm_gen_defaults_load(dir, &d) != FM_OK) {
        cli_fail("cannot read the generation defaults");
        return false;
    }
    uint32_t given = gen_given(argc, argv, opts, n_opts);
    fm__gen_apply(gp, &d, given);
    if (verbose) {
        char line[640];
        fm__gen_describe(gp, &d, given, line, sizeof line);
        fprintf(stderr, "flash-moe: sampling: %s\n", line);
    }
    return true;
}

int cmd_run(int argc, char **argv) {
    const char *prompt = NULL, *system = NULL;
    int32_t max_tokens = 256, top_k = 0, seed = 0;
    float temp = 0.7f, top_p = 0.95f, min_p = 0.0f, rep = 1.0f, pres = 0.0f, freq = 0.0f;
    int chat = 0, raw = 0, ignore_eos = 0;
    cli_list stops = {0};
    const char *rep_at_s = NULL;
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    cli_opt opts[] = {
        {"--prompt", "-p", CLI_STR, &prompt, "prompt text (required)"},
        {"--max-tokens", "-n", CLI_INT, &max_tokens, "tokens to generate (0 = until EOS or the context is full)"},
        {"--temp", NULL, CLI_FLOAT, &temp, "sampling temperature (0 = greedy)"},
        {"--top-p", NULL, CLI_FLOAT, &top_p, "nucleus sampling mass (1 = off)"},
        {"--top-k", NULL, CLI_INT, &top_k, "keep the k most probable tokens (0 = off)"},
        {"--min-p", NULL, CLI_FLOAT, &min_p, "drop tokens below min-p x the top probability (0 = off)"},
        {"--repeat-penalty", NULL, CLI_FLOAT, &rep, "llama.cpp repeat penalty over the last 64 tokens (1 = off)"},
        {"--presence-penalty", NULL, CLI_FLOAT, &pres, "OpenAI presence penalty (0 = off)"},
        {"--frequency-penalty", NULL, CLI_FLOAT, &freq, "OpenAI frequency penalty (0 = off)"},
        {"--seed", NULL, CLI_INT, &seed, "sampling seed (0 = fixed default seed)"},
        {"--chat", NULL, CLI_FLAG, &chat, "apply the model's chat template (the default)"},
        {"--raw", NULL, CLI_FLAG, &raw, "feed the prompt as is, without the chat template"},
        {"--system", NULL, CLI_STR, &system, "system message (chat mode)"},
        {"--stop", NULL, CLI_LIST, &stops, "stop string; output ends before it"},
        {"--ignore-eos", NULL, CLI_FLAG, &ignore_eos, "do not stop at the model's EOS tokens"},
        {"--rep-at", NULL, CLI_STR, &rep_at_s, "print repetition metrics to stderr at these token counts, e.g. 250,500,1000"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *usage = "flash-moe run [MODEL] -p PROMPT [options]\n\n"
                        "  Sampling options not given take the model's generation_config.json values\n"
                        "  (as transformers reads it), else the defaults shown.";
    const char *pos[1];
    int n_pos = 0;
    int rc = cli_parse(argc, argv, 2, opts, (int)(sizeof opts / sizeof opts[0]), usage, pos, 1, &n_pos);
    if (rc == 1) return 0;
    if (rc) return 2;
    if (!prompt) {
        fprintf(stderr, "flash-moe: run needs -p PROMPT (see flash-moe run --help)\n");
        free(stops.items);
        return 2;
    }
    if (chat && raw) {
        fprintf(stderr, "flash-moe: --chat and --raw exclude each other\n");
        free(stops.items);
        return 2;
    }
    if (max_tokens < 0) {
        fprintf(stderr, "flash-moe: --max-tokens must be >= 0\n");
        free(stops.items);
        return 2;
    }
    int32_t rep_at[32];
    int n_rep_at = 0;
    for (const char *q = rep_at_s; q && *q;) {
        char *end;
        long v = strtol(q, &end, 10);
        if (end == q || v <= 0 || n_rep_at == 32 || (*end && *end != ',')) {
            fprintf(stderr, "flash-moe: --rep-at wants increasing positive counts like 250,500,1000\n");
            free(stops.items);
            return 2;
        }
        rep_at[n_rep_at++] = (int32_t)v;
        q = *end ? end + 1 : end;
    }
    const char *dir = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir) {
        free(stops.items);
        return 1;
    }
    fm_gen_params gp;
    fm_gen_params_default(&gp);
    gp.max_tokens = max_tokens;
    gp.temperature = temp;
    gp.top_p = top_p;
    gp.top_k = top_k;
    gp.min_p = min_p;
    gp.repeat_penalty = rep;
    gp.presence_penalty = pres;
    gp.frequency_penalty = freq;
    gp.seed = (uint64_t)(uint32_t)seed;
    gp.stop = stops.items;
    gp.n_stop = stops.n;
    gp.ignore_eos = ignore_eos;
    if (!gen_resolve_params(dir, argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &gp,
                            mo.stats)) {
        free(stops.items);
        return 1;
    }
    fm_model *m = gen_open_model_progress(dir, &mo);
    if (!m) {
        free(stops.items);
        return 1;
    }
    fm_session *s = NULL;
    if (fm_session_new(m, &s) != FM_OK) {
        fm_model_free(m);
        free(stops.items);
        return cli_fail("cannot create a session");
    }
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    char *text = NULL;
    fm_status st;
    run_out out = {NULL, 0, 0, rep_at, n_rep_at, 0};
    fm_chat_msg msgs[2];
    size_t n = 0;
    memset(msgs, 0, sizeof msgs);
    if (system) {
        msgs[n].role = "system";
        msgs[n++].content = system;
    }
    msgs[n].role = "user";
    msgs[n++].content = prompt;
    if (!raw && !chat) {
        /* default: the chat template, or the raw prompt for a model that has none */
        char *probe = NULL;
        if (fm_chat_render(m, msgs, n, NULL, NULL, 1, &probe) == FM_ERR_TEMPLATE &&
            strstr(fm_last_error(), "has no chat template")) {
            fprintf(stderr, "flash-moe: the model has no chat template; using the prompt as is\n");
            raw = 1;
        }
        fm_free(probe);
    }
    if (raw) st = fm_generate(s, prompt, &gp, stream_out, &out, &text);
    else st = fm_session_chat(s, msgs, n, NULL, NULL, &gp, stream_out, &out, &text);
    sigaction(SIGINT, &old, NULL);
    printf("\n");
    fflush(stdout);
    int ret = 0;
    if (st != FM_OK && st != FM_ERR_CANCELLED) ret = cli_fail("generation failed");
    if (mo.stats) {
        fm_stats fs;
        fm_session_stats(s, &fs);
        /* the streamed text: also there after Ctrl-C */
        gen_print_stats(&fs, fm_session_finish_reason(s), out.text ? out.text : "", out.len);
        fm__ec_log_stats(fm__model_cache(m), FM_LOG_WARN); /* per-layer hit rates, I/O */
    }
    fm_free(text);
    free(out.text);
    fm_session_free(s);
    fm_model_free(m);
    free(stops.items);
    return ret;
}
