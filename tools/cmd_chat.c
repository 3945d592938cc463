/* cmd_chat.c: flash-moe chat: interactive multi-turn chat. On a terminal it reads lines
 * with libedit (history, editing) and shows progress while the model loads; with stdin
 * not a terminal it reads one user message per line. The conversation is re-rendered with
 * the chat template each turn and the session reuses the common token prefix, so only the
 * new text is prefilled. Commands: /reset, /stats, /quit (also /exit, EOF). Ctrl-C during
 * a prefill or an answer cancels that turn (fm_session_cancel from the signal handler),
 * prints "[cancelled]" and returns to the prompt; Ctrl-C at the prompt exits. */
#include "cli.h"
#include "model.h"

#include <editline/readline.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- loading progress ------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} spinner;

static void *spin(void *arg) {
    spinner *sp = arg;
    static const char marks[] = "|/-\\";
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_mutex_lock(&sp->mu);
    /* quick loads show nothing: start drawing after 300 ms */
    struct timespec first;
    clock_gettime(CLOCK_REALTIME, &first);
    first.tv_nsec += 300000000L;
    if (first.tv_nsec >= 1000000000L) { first.tv_sec++; first.tv_nsec -= 1000000000L; }
    while (!sp->done && pthread_cond_timedwait(&sp->cv, &sp->mu, &first) == 0) {}
    int drawn = 0;
    for (int i = 0; !sp->done; i++) {
        drawn = 1;
        struct timespec now, until;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double el = (double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) * 1e-9;
        fprintf(stderr, "\r%c loading model... %.1f s", marks[i % 4], el);
        fflush(stderr);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200000000L;
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&sp->cv, &sp->mu, &until);
    }
    pthread_mutex_unlock(&sp->mu);
    if (drawn) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
    }
    return NULL;
}

fm_model *gen_open_model_progress(const char *dir, const cli_model_opts *mo) {
    if (!isatty(2)) return cli_open_model(dir, mo);
    spinner sp;
    pthread_mutex_init(&sp.mu, NULL);
    pthread_cond_init(&sp.cv, NULL);
    sp.done = 0;
    pthread_t th;
    int started = pthread_create(&th, NULL, spin, &sp) == 0;
    fm_model *m = cli_open_model(dir, mo);
    if (started) {
        pthread_mutex_lock(&sp.mu);
        sp.done = 1;
        pthread_cond_signal(&sp.cv);
        pthread_mutex_unlock(&sp.mu);
        pthread_join(th, NULL);
    }
    pthread_cond_destroy(&sp.cv);
    pthread_mutex_destroy(&sp.mu);
    return m;
}

/* ---- the conversation -------------------------------------------------------------- */

typedef struct {
    fm_chat_msg *v;
    char **owned; /* owned[i]: the content string of v[i] */
    size_t n, cap;
} convo;

static int convo_add(convo *c, const char *role, const char *content) {
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 16;
        fm_chat_msg *nv = realloc(c->v, nc * sizeof *nv);
        if (!nv) return -1;
        c->v = nv;
        char **no = realloc(c->owned, nc * sizeof *no);
        if (!no) return -1;
        c->owned = no;
        c->cap = nc;
    }
    char *d = strdup(content);
    if (!d) return -1;
    memset(&c->v[c->n], 0, sizeof c->v[c->n]);
    c->v[c->n].role = role;
    c->v[c->n].content = d;
    c->owned[c->n++] = d;
    return 0;
}

static void convo_truncate(convo *c, size_t n) {
    while (c->n > n) free(c->owned[--c->n]);
}

/* ---- Ctrl-C ---------------------------------------------------------------------------
 * The handler is installed only while a turn runs. It does two async-signal-safe things:
 * sets a sig_atomic_t flag, which the progress and stream callbacks return, and calls
 * fm_session_cancel, which does nothing but store to a lock-free atomic int (C11 allows
 * that in a handler), so the library stops at its next cancellation point even between
 * callbacks. SIGINT is blocked in the library's threads (they inherit the mask at model
 * open), so it lands on this thread and interrupts a blocking write with EINTR. */
#if ATOMIC_INT_LOCK_FREE != 2
#error "fm_session_cancel is called from a signal handler: atomic_int must be lock-free"
#endif

static volatile sig_atomic_t interrupted;
static fm_session *volatile chat_session; /* set before the handler is first installed */
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
    fm_session_cancel(chat_session);
}

static int stream_out(const char *piece, size_t len, const fm_stats *st, void *user) {
    (void)st; (void)user;
    if (len && !interrupted) {
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
    }
    return interrupted != 0;
}

/* Prefill progress: on a terminal, "[prefill done/total]" on stderr for prompts of more
 * than one chunk, erased at the end. Returns the Ctrl-C flag (non-zero cancels). */
static int prefill_progress(int64_t done, int64_t total, void *user) {
    int *shown = user;
    if (isatty(2) && total > 256) {
        if (done < total) fprintf(stderr, "\r[prefill %lld/%lld tokens]", (long long)done, (long long)total);
        else fprintf(stderr, "\r\033[K");
        *shown = done < total;
    }
    return interrupted != 0;
}

/* Reads one line (without the newline); NULL at EOF. Caller frees. */
static char *read_line(int tty, const char *prompt) {
    if (tty) {
        char *l = readline(prompt);
        if (l && *l) add_history(l);
        return l;
    }
    size_t cap = 0;
    char *l = NULL;
    ssize_t n = getline(&l, &cap, stdin);
    if (n < 0) {
        free(l);
        return NULL;
    }
    while (n > 0 && (l[n - 1] == '\n' || l[n - 1] == '\r')) l[--n] = 0;
    return l;
}

int cmd_chat(int argc, char **argv) {
    const char *system = NULL;
    int32_t max_tokens = 1024, top_k = 20, seed = 0;
    float temp = 0.7f, top_p = 0.8f, min_p = 0.0f, rep = 1.0f;
    cli_model_opts mo;
    cli_model_opts_default(&mo);
    cli_opt opts[] = {
        {"--system", NULL, CLI_STR, &system, "system message"},
        {"--max-tokens", "-n", CLI_INT, &max_tokens, "most tokens per answer (0 = until EOS or the context is full)"},
        {"--temp", NULL, CLI_FLOAT, &temp, "sampling temperature (0 = greedy)"},
        {"--top-p", NULL, CLI_FLOAT, &top_p, "nucleus sampling mass (1 = off)"},
        {"--top-k", NULL, CLI_INT, &top_k, "keep the k most probable tokens (0 = off)"},
        {"--min-p", NULL, CLI_FLOAT, &min_p, "drop tokens below min-p x the top probability (0 = off)"},
        {"--repeat-penalty", NULL, CLI_FLOAT, &rep, "llama.cpp repeat penalty over the last 64 tokens (1 = off)"},
        {"--seed", NULL, CLI_INT, &seed, "sampling seed (0 = fixed default seed)"},
        CLI_MODEL_OPTS(&mo),
    };
    const char *usage = "flash-moe chat [MODEL] [options]\n\n"
                        "  In the chat: /reset clears the conversation, /stats shows statistics,\n"
                        "  /quit leaves (so does end of input). Ctrl-C during a prefill or an\n"
                        "  answer cancels it and returns to the prompt; Ctrl-C at the prompt exits.\n"
                        "  Sampling options not given take the model's generation_config.json values\n"
                        "  (as transformers reads it), else the defaults shown.";
    const char *pos[1];
    int n_pos = 0;
    int rc = cli_parse(argc, argv, 2, opts, (int)(sizeof opts / sizeof opts[0]), usage, pos, 1, &n_pos);
    if (rc == 1) return 0;
    if (rc) return 2;
    if (max_tokens < 0) {
        fprintf(stderr, "flash-moe: --max-tokens must be >= 0\n");
        return 2;
    }
    const char *dir = cli_model_or_demo(n_pos ? pos[0] : NULL);
    if (!dir) return 1;
    fm_gen_params gp;
    fm_gen_params_default(&gp);
    gp.max_tokens = max_tokens;
    gp.temperature = temp;
    gp.top_p = top_p;
    gp.top_k = top_k;
    gp.min_p = min_p;
    gp.repeat_penalty = rep;
    gp.seed = (uint64_t)(uint32_t)seed;
    if (!gen_resolve_params(dir, argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), &gp,
                            mo.stats))
        return 1;
    /* The library's threads start at model open: they inherit SIGINT blocked. */
    sigset_t sigint_set;
    sigemptyset(&sigint_set);
    sigaddset(&sigint_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigint_set, NULL);
    fm_model *m = gen_open_model_progress(dir, &mo);
    pthread_sigmask(SIG_UNBLOCK, &sigint_set, NULL);
    if (!m) return 1;
    fm_session *s = NULL;
    if (fm_session_new(m, &s) != FM_OK) {
        fm_model_free(m);
        return cli_fail("cannot create a session");
    }
    int progress_shown = 0;
    fm_session_set_progress(s, prefill_progress, &progress_shown);
    chat_session = s;

    int tty = isatty(0);
    if (tty) fprintf(stderr, "flash-moe chat: /reset, /stats, /quit. Ctrl-C cancels a turn.\n");
    convo c = {0};
    size_t base = 0;
    int ret = 0;
    if (system && convo_add(&c, "system", system) == 0) base = 1;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint; /* no SA_RESTART: a blocking write returns at once */
    sigemptyset(&sa.sa_mask);
    for (;;) {
        char *line = read_line(tty, "> ");
        if (!line) break;
        char *l = line;
        while (*l == ' ' || *l == '\t') l++;
        if (!*l) {
            free(line);
            continue;
        }
        if (strcmp(l, "/quit") == 0 || strcmp(l, "/exit") == 0) {
            free(line);
            break;
        }
        if (strcmp(l, "/reset") == 0) {
            convo_truncate(&c, base);
            fm_session_reset(s);
            fprintf(stderr, "(conversation cleared)\n");
            free(line);
            continue;
        }
        if (strcmp(l, "/stats") == 0) {
            fm_stats st;
            fm_session_stats(s, &st);
            size_t nt = 0;
            fm_session_tokens(s, &nt);
            gen_print_stats(&st, fm_session_finish_reason(s), NULL, 0);
            fm__ec_log_stats(fm__model_cache(m), FM_LOG_WARN);
            fprintf(stderr, "context: %zu tokens held, %zu messages\n", nt, c.n);
            free(line);
            continue;
        }
        if (l[0] == '/' && strchr(l, ' ') == NULL) {
            fprintf(stderr, "unknown command %s (/reset, /stats, /quit)\n", l);
            free(line);
            continue;
        }
        size_t before = c.n;
        if (convo_add(&c, "user", l) != 0) {
            free(line);
            ret = 1;
            fprintf(stderr, "flash-moe: out of memory\n");
            break;
        }
        free(line);
        interrupted = 0;
        sigaction(SIGINT, &sa, &old);
        char *text = NULL;
        fm_status st = fm_session_chat(s, c.v, c.n, NULL, NULL, &gp, stream_out, NULL, &text);
        sigaction(SIGINT, &old, NULL);
        if (progress_shown) fprintf(stderr, "\r\033[K");
        progress_shown = 0;
        clearerr(stdout); /* a write interrupted by Ctrl-C */
        printf("\n");
        if (st == FM_ERR_CANCELLED) printf("[cancelled]\n");
        fflush(stdout);
        if (st == FM_OK) {
            if (convo_add(&c, "assistant", text ? text : "") != 0) convo_truncate(&c, before);
        } else if (st == FM_ERR_CANCELLED) {
            fprintf(stderr, "(turn cancelled; it is not kept in the conversation)\n");
            convo_truncate(&c, before);
        } else {
            cli_fail("chat turn failed");
            if (st == FM_ERR_CONTEXT_FULL) fprintf(stderr, "(use /reset to start over)\n");
            convo_truncate(&c, before);
        }
        if (mo.stats) {
            fm_stats fs;
            fm_session_stats(s, &fs);
            gen_print_stats(&fs, fm_session_finish_reason(s), text, text ? strlen(text) : 0);
        }
        fm_free(text);
    }
    convo_truncate(&c, 0);
    free(c.v);
    free(c.owned);
    fm_session_free(s);
    fm_model_free(m);
    return ret;
}
