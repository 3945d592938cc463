/* server.h: internals of `flash-moe serve`, shared by the HTTP layer (server_http.c), the
 * generation queue and session cache (server_queue.c), the output pipeline that finds stop
 * sequences and tool calls (server_toolcall.c) and the two API families (server_openai.c,
 * server_anthropic.c). Only the public API of include/flashmoe.h is used. */
#ifndef FM_SERVER_H
#define FM_SERVER_H

#include "flashmoe.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable byte buffer -------------------------------------------------------- */

typedef struct srv_buf {
    char *p;      /* NUL-terminated when non-NULL */
    size_t n, cap;
    int oom;      /* set when an append failed; later appends are dropped */
} srv_buf;

void sb_put(srv_buf *b, const char *s, size_t n);
void sb_puts(srv_buf *b, const char *s);
void sb_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends a cJSON value printed without whitespace. */
void sb_json(srv_buf *b, const cJSON *j);
void sb_free(srv_buf *b);

/* Returns 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or values > U+10FFFF). */
int srv_utf8_valid(const char *s, size_t n);

/* ---- configuration and server state ---------------------------------------------- */

typedef struct srv_config {
    const char *host;
    int32_t port;
    const char *api_key;        /* NULL = no authentication */
    int32_t max_tokens;         /* upper bound on generated tokens per request */
    int32_t queue;              /* requests that may wait behind the running one */
    int64_t max_body;           /* request body limit in bytes */
    int32_t sessions;           /* KV-cache sessions kept for prefix reuse */
    int32_t timeout;            /* idle connection timeout in seconds */
    const char *force_completion; /* testing only: fixed text instead of sampled tokens */
    const char *model_id;       /* name reported by /v1/models and in responses */
    int stats;                  /* print speed and expert-cache statistics per generation */
} srv_config;

typedef struct srv_job srv_job;

typedef struct server {
    srv_config cfg;
    fm_model *model;
    fm_model_info info;
    fm_gen_params defaults;     /* sampling defaults: the model's generation_config.json */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;     /* worker waits here for jobs */
    srv_job *head, *tail;       /* waiting jobs, FIFO */
    int n_waiting, busy, stopping;
    int n_jobs;                 /* jobs alive (shutdown waits for their replies) */
    pthread_t worker;
    int worker_started;
    /* sessions, touched by the worker thread only */
    fm_session **sess;
    uint64_t *sess_used;
    int n_sess;
    uint64_t clock;
    /* counters (under mu) */
    int64_t n_requests, n_generations, n_rejected, n_cancelled, reused_tokens;
    int64_t prefill_tokens;     /* prompt tokens prefilled, all jobs (whole chunks) */
    int64_t prefill_done, prefill_total; /* the running job's prefill progress, 0 when none */
    int32_t *forced_ids;        /* --force-completion tokens */
    size_t n_forced;
} server;

/* ---- jobs ------------------------------------------------------------------------ */

enum { API_CHAT = 0, API_COMPLETION, API_MESSAGES };
enum { JOB_QUEUED = 0, JOB_RUNNING, JOB_DONE };
/* How a job ended. */
enum { FIN_NONE = 0, FIN_STOP, FIN_STOPSEQ, FIN_LENGTH, FIN_TOOLS, FIN_CANCEL, FIN_ERROR };

typedef struct srv_call {
    char *id, *name, *args;   /* args: the arguments as compact JSON text */
} srv_call;

struct srv_job {
    server *srv;
    srv_job *next;
    int refs;                   /* under srv->mu; freed at 0 */
    pthread_cond_t cv;          /* with srv->mu: the job's state or output changed */
    double last_signal;         /* monotonic seconds of the last output signal */
    int api, stream, include_usage;
    char id[48];
    long created;
    /* prompt and parameters */
    int32_t *ids;
    size_t n_ids;
    fm_gen_params gp;
    char **stops;
    int n_stops;
    char *prefix;               /* assistant text forced before sampling (tool_choice), or NULL */
    int parse_tools;
    cJSON *tools;               /* the request's tools (OpenAI form), for argument types */
    int parse_think;            /* split a leading <think>...</think> into reasoning */
    int count_only;             /* count_tokens: no context check */
    /* state, under srv->mu */
    int state, cancel;
    srv_buf out;                /* streaming: bytes for the client */
    size_t out_sent;
    int finish;
    int stop_idx;               /* FIN_STOPSEQ: index of the matched stop sequence */
    int64_t prompt_tokens, completion_tokens, reused_tokens;
    int64_t prefilled, prefill_total; /* tokens prefilled of those the prompt needed */
    double last_progress;       /* --stats: when prefill progress was last printed */
    int err_status;
    char err_type[40];
    char err_msg[300];
    /* results and pipeline state, worker only until JOB_DONE */
    srv_buf text;               /* non-streaming: content */
    srv_buf reasoning;          /* non-streaming: reasoning (<think> text) */
    srv_call *calls;
    int n_calls;
    srv_buf acc;                /* stop matcher: text not yet passed on */
    int stop_hit;
    srv_buf tb;                 /* tool parser buffer */
    int in_call;
    srv_buf ws;                 /* held-back whitespace */
    srv_buf th;                 /* think splitter buffer */
    int think_state;            /* 0 undecided, 1 inside <think>, 2 past it */
    int skip_ws;                /* drop whitespace right after </think> */
    int any_text;
    int64_t n_pieces;
    /* streaming emitter state */
    int blk_open, blk_index, blk_kind; /* blk_kind: 0 text, 1 thinking, 2 tool_use */
};

/* Creates a job with one reference held by the caller. NULL on allocation failure. */
srv_job *srv_job_new(server *s, int api);
void srv_job_ref(srv_job *j);
/* Appends streaming output for the client (locks srv->mu and wakes the reader, at most
 * once per SRV_COALESCE_S so that fast decoding is sent in batches). */
#define SRV_COALESCE_S 0.002
/* How long a waiting connection thread sleeps between checks of its client (ms). */
#define SRV_POLL_MS 50
double srv_now(void);
void srv_job_write(srv_job *j, const char *s, size_t n);
/* Drops one reference; the last one frees the job. */
void srv_job_unref(srv_job *j);
/* Sets an error on the job (status, API error type, message). */
void srv_job_fail(srv_job *j, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Queue: starts the worker thread. Returns 0 on success. */
int srv_queue_start(server *s);
/* Stops the worker (the running generation is cancelled) and frees the sessions. */
void srv_queue_stop(server *s);
/* Enqueues j (taking a reference). Returns 0, or -1 when the queue is full. */
int srv_queue_push(srv_job *j);
/* Cancels j: a queued job is dropped, a running one stops at its next token. */
void srv_job_cancel(srv_job *j);

/* Strings owned by a request while its prompt is built. */
typedef struct srv_pool {
    char **p;
    int n, cap;
} srv_pool;
/* Takes ownership of str and returns it (NULL, with str freed, on allocation failure). */
char *srv_pool_add(srv_pool *pl, char *str);
void srv_pool_free(srv_pool *pl);

/* Reads an optional number field. Returns 0 when absent or null, 1 when present (*out
 * set), -1 when of the wrong type or outside [lo, hi] (or not an integer when integer is
 * set), with msg and *param set. */
int srv_num(const cJSON *obj, const char *key, double lo, double hi, int integer, double *out,
            char *msg, size_t msg_len, const char **param);
/* Returns the first key of obj not in the NULL-terminated list allowed, or NULL. */
const char *srv_unknown_key(const cJSON *obj, const char *const *allowed);

/* ---- output pipeline (server_toolcall.c) ----------------------------------------- */

/* Feeds generated text through stop matching and tool-call parsing into the API emitter.
 * Returns non-zero when a stop sequence ended generation. */
int srv_pipe_feed(srv_job *j, const char *s, size_t n);
/* Flushes the pipeline at the end of generation. */
void srv_pipe_finish(srv_job *j);
/* Parses one tool call body (between <tool_call> and </tool_call>): JSON
 * {"name": ..., "arguments": {...}} (Qwen, Hermes) or XML <function=NAME><parameter=P>
 * VALUE</parameter></function> (Qwen3-Coder; values typed by the tool's JSON schema in
 * tools, an OpenAI-form array, when given). On success returns 0 and sets *name and *args
 * (malloc'd; args is compact JSON). */
int srv_parse_tool_call(const char *s, size_t n, const cJSON *tools, char **name, char **args);

/* ---- API emitters (called by the worker; they lock srv->mu to append output) ------- */

void srv_emit_start(srv_job *j);
void srv_emit_text(srv_job *j, const char *s, size_t n);
void srv_emit_reasoning(srv_job *j, const char *s, size_t n);
void srv_emit_call(srv_job *j, const char *name, const char *args);
void srv_emit_end(srv_job *j);

/* OpenAI: builds a job from a parsed request, or fills *status/msg and returns NULL. */
srv_job *srv_openai_chat(server *s, cJSON *req, int *status, char *msg, size_t msg_len,
                         const char **param);
srv_job *srv_openai_completion(server *s, cJSON *req, int *status, char *msg, size_t msg_len,
                               const char **param);
/* Non-streaming response body of a finished OpenAI job (malloc'd JSON). */
char *srv_openai_result(srv_job *j);
char *srv_openai_error(const char *type, const char *msg, const char *param);
void srv_openai_stream_text(srv_job *j, const char *s, size_t n);
void srv_openai_stream_reasoning(srv_job *j, const char *s, size_t n);
void srv_openai_stream_call(srv_job *j, int index, const srv_call *c);
void srv_openai_stream_start(srv_job *j);
void srv_openai_stream_end(srv_job *j);

/* Anthropic. */
srv_job *srv_anthropic_messages(server *s, cJSON *req, int *status, char *msg, size_t msg_len);
/* count_tokens: returns the JSON body, or NULL with *status/msg set. */
char *srv_anthropic_count(server *s, cJSON *req, int *status, char *msg, size_t msg_len);
char *srv_anthropic_result(srv_job *j);
char *srv_anthropic_error(const char *type, const char *msg);
void srv_anthropic_stream_start(srv_job *j);
void srv_anthropic_stream_text(srv_job *j, const char *s, size_t n);
void srv_anthropic_stream_reasoning(srv_job *j, const char *s, size_t n);
void srv_anthropic_stream_call(srv_job *j, const srv_call *c);
void srv_anthropic_stream_end(srv_job *j);

/* Shared request helpers (server_openai.c). */
/* Fills gp from OpenAI/Anthropic sampling fields. Returns 0 or sets msg/param. */
int srv_sampling(server *s, cJSON *req, int anthropic, fm_gen_params *gp, char *msg,
                 size_t msg_len, const char **param);
/* Stop sequences from a string or array of strings into j. Returns 0 or -1 (msg set). */
int srv_stops(srv_job *j, const cJSON *v, char *msg, size_t msg_len);
/* Renders msgs with the template, appends prefix, tokenizes into j->ids, and checks
 * the context and token limits (max_tokens is clamped to what fits). Returns 0 or an
 * HTTP status with msg set. */
int srv_prepare_prompt(srv_job *j, const fm_chat_msg *msgs, size_t n, const char *tools_json,
                       const char *extra_json, char *msg, size_t msg_len);
/* Random-looking id with a prefix, e.g. "chatcmpl-1a2b...". */
void srv_make_id(char *dst, size_t cap, const char *prefix);

/* Runs the HTTP server until SIGINT/SIGTERM. Returns the process exit code. */
int srv_run(server *s);

#endif
