/* flashmoe.h: the one public header of flash-moe.
 *
 * flash-moe runs Mixture-of-Experts language models whose routed experts do not fit in
 * memory: non-expert weights stay resident, experts stream from disk into a bounded
 * per-layer cache. This header is the whole public surface: opaque handles, fm_status,
 * parameter structs. It compiles as C (C99 or later) and as C++.
 *
 * Conventions:
 * - Every fallible call returns fm_status; outputs come through out-parameters that are
 *   left NULL (or 0) on failure. fm_last_error() then holds a message naming the file,
 *   tensor, field or byte offset at fault.
 * - Every *_open / *_new has a matching *_free; passing NULL to a *_free is a no-op.
 * - Memory returned by the library (strings, id arrays) is released with fm_free().
 * - The library never calls exit() and never aborts on bad input.
 */
#ifndef FLASHMOE_H
#define FLASHMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FM_VERSION_STRING "0.1.0"

/* ---- status and errors ------------------------------------------------------------ */

typedef enum fm_status {
    FM_OK = 0,
    FM_ERR_ARG,           /* invalid argument from the caller */
    FM_ERR_IO,            /* a read, write or open failed (errno text in the message) */
    FM_ERR_FORMAT,        /* a file is malformed: safetensors, config.json, tokenizer.json, store */
    FM_ERR_UNSUPPORTED,   /* well-formed but not supported: architecture, dtype, quant mode */
    FM_ERR_NOMEM,         /* allocation failed, or the memory budget cannot hold the minimum */
    FM_ERR_CONTEXT_FULL,  /* the session's context length would be exceeded */
    FM_ERR_CANCELLED,     /* a callback asked to stop */
    FM_ERR_TEMPLATE,      /* chat template parse or render error (message has line:col) */
    FM_ERR_TOKENIZER,     /* tokenizer error */
    FM_ERR_INTERNAL       /* a bug in flash-moe */
} fm_status;

/* Returns a static, human-readable name of a status ("ok", "I/O error", ...). */
const char *fm_status_str(fm_status st);

/* Returns the message of the last failed call on this thread ("" if none). The pointer is
 * valid until the next library call on this thread. */
const char *fm_last_error(void);

/* Log levels for fm_set_log. */
enum { FM_LOG_ERROR = 0, FM_LOG_WARN = 1, FM_LOG_INFO = 2, FM_LOG_DEBUG = 3 };

/* Library logging goes through one callback. fn == NULL restores the default (stderr,
 * levels <= FM_LOG_WARN unless FM_LOG_LEVEL is set in the environment). */
typedef void (*fm_log_fn)(int level, const char *msg, void *user);
void fm_set_log(fm_log_fn fn, void *user, int max_level);

/* Releases memory returned by the library. fm_free(NULL) is a no-op. */
void fm_free(void *p);

/* ---- model ------------------------------------------------------------------------ */

typedef struct fm_model fm_model;

enum {
    FM_MISS_EXACT = 0, /* default: a cache miss reads the expert, then computes it */
    FM_MISS_SKIP = 1   /* approximate: drop uncached experts, renormalize; every drop counted */
};

typedef struct fm_model_params {
    int32_t capacity;      /* routed experts cached per MoE layer; 0 = derive from mem_limit,
                              or size automatically from available memory when both are 0 */
    int64_t mem_limit;     /* total memory budget in bytes (resident + KV + cache); 0 = none */
    const char *profile;   /* profile JSON whose universal experts are pinned; NULL = none */
    const char *cache_dir; /* packed expert store directory; NULL = ~/.cache/flash-moe,
                              "" = no store (read experts from the checkpoint files) */
    int32_t n_threads;     /* compute threads; 0 = number of online cores */
    int32_t miss_policy;   /* FM_MISS_EXACT (0, default) or FM_MISS_SKIP */
    int32_t n_ctx;         /* context length in tokens; 0 = min(model maximum, 4096) */
    int32_t verbose;       /* 1 = print the memory plan and load progress to the log */
    int64_t cache_max;     /* size cap in bytes of the store directory: creating a store there
                              first evicts the least recently used other stores over it;
                              0 = $FM_CACHE_MAX if set, else no cap */
} fm_model_params;

/* Fills p with the defaults (all zero / NULL, as documented above). */
void fm_model_params_default(fm_model_params *p);

/* Opens the Hugging Face (or MLX) model directory dir. On success *out owns the model. */
fm_status fm_model_open(const char *dir, const fm_model_params *p, fm_model **out);
void fm_model_free(fm_model *m);

typedef struct fm_model_info {
    const char *arch;          /* config model_type, e.g. "qwen3_moe" (owned by the model) */
    int32_t n_layers, n_moe_layers, hidden, vocab, n_experts, top_k, n_ctx;
    int64_t resident_bytes;    /* non-expert weights */
    int64_t expert_bytes;      /* bytes of one routed expert (gate+up+down, scales included) */
    int64_t all_expert_bytes;  /* bytes of all routed experts */
    int32_t capacity;          /* cache slots per MoE layer in use */
    int32_t eos_count;
    const int32_t *eos_ids;    /* owned by the model */
} fm_model_info;

fm_status fm_model_get_info(const fm_model *m, fm_model_info *out);

/* ---- tokenizer ------------------------------------------------------------------- */

/* Encodes UTF-8 text (len bytes; invalid UTF-8 is an FM_ERR_ARG error). add_special = 1
 * adds the model's BOS if its tokenizer config asks for it. *ids is released with fm_free. */
fm_status fm_tokenize(const fm_model *m, const char *text, size_t len, int add_special,
                      int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8. *text (NUL-terminated; *len excludes the NUL) is released with
 * fm_free. Decoded text may itself contain NUL bytes; use *len. */
fm_status fm_detokenize(const fm_model *m, const int32_t *ids, size_t n_ids, char **text,
                        size_t *len);

/* ---- sessions and generation ----------------------------------------------------- */

typedef struct fm_session fm_session;

typedef struct fm_stats {
    int64_t prompt_tokens;     /* tokens of context fed by the last call (whole prompt) */
    int64_t reused_tokens;     /* of those, the prefix kept from the session's KV cache */
    int64_t generated_tokens;  /* tokens generated by the last call */
    double ttft_ms;            /* time to first token of the last call */
    double prefill_tok_s, decode_tok_s;
    int64_t cache_hits, cache_misses;   /* expert cache, cumulative over the model's life */
    double hit_rate;
    int64_t experts_skipped;   /* FM_MISS_SKIP only */
    int64_t bytes_read;        /* expert bytes read from disk, cumulative */
    double io_wait_ms;         /* time compute waited for expert reads, cumulative */
    int64_t rss_bytes;         /* current resident set of the process */
    int64_t cache_bytes;       /* bytes held by the expert cache */
    int64_t kv_bytes;          /* bytes held by this session's KV cache and recurrent state */
} fm_stats;

typedef struct fm_gen_params {
    int32_t max_tokens;        /* 0 = until EOS or the context is full */
    float temperature;         /* 0 = greedy */
    float top_p;               /* 1 = off; 0 keeps only the most probable token */
    int32_t top_k;             /* 0 = off */
    float min_p;               /* 0 = off */
    float repeat_penalty;      /* 1 = off (llama.cpp style, over the last 64 tokens) */
    float presence_penalty;    /* 0 = off (OpenAI semantics) */
    float frequency_penalty;   /* 0 = off (OpenAI semantics) */
    uint64_t seed;             /* 0 = a fixed default seed, so runs are reproducible */
    const char *const *stop;   /* stop strings; output ends before the first match */
    int32_t n_stop;
    int32_t ignore_eos;        /* 1 = do not stop at the model's EOS ids */
} fm_gen_params;

void fm_gen_params_default(fm_gen_params *p);

/* Streaming callback, called once per generated token: piece is len bytes of UTF-8 that
 * never ends inside a character (len may be 0 while a character or a possible stop string
 * is held back). Returning non-zero cancels generation (the call then returns FM_ERR_CANCELLED, and the
 * text produced so far stays in the session). */
typedef int (*fm_stream_fn)(const char *piece, size_t len, const fm_stats *st, void *user);

/* Why the last generation ended. */
enum { FM_FINISH_NONE = 0, FM_FINISH_EOS, FM_FINISH_STOP, FM_FINISH_LENGTH, FM_FINISH_CANCEL };

fm_status fm_session_new(fm_model *m, fm_session **out);
void fm_session_free(fm_session *s);

/* Forgets the context (KV cache and recurrent state). */
void fm_session_reset(fm_session *s);

/* Prefill progress callback. A call that prefills prompt tokens runs them in chunks of at
 * most 256 tokens and calls fn before each chunk and once at the end: done = tokens of this
 * prefill processed so far (0, 256, ..., then total), total = tokens it prefills (the prefix
 * reused from the session's cache counts in neither). Chunking does not change the logits.
 * Returning non-zero cancels the call: it returns FM_ERR_CANCELLED, and the session keeps
 * exactly the whole chunks processed (fm_session_tokens lists them), so a later prompt that
 * starts with them reuses them. */
typedef int (*fm_progress_fn)(int64_t done, int64_t total, void *user);

/* Sets (fn non-NULL) or clears the session's prefill progress callback, used by every later
 * call that prefills: fm_session_set_tokens, fm_session_append_tokens, fm_session_generate,
 * fm_session_chat, fm_generate. */
void fm_session_set_progress(fm_session *s, fm_progress_fn fn, void *user);

/* Asks the call running on s to stop: before its next prefill chunk or generated token it
 * returns FM_ERR_CANCELLED, leaving the session as a cancelling progress callback (prefill)
 * or stream callback (generation) would. The only session function that may be called from
 * another thread while a call runs. The request lasts until the current turn ends: it is
 * cleared when fm_session_set_tokens or fm_session_append_tokens starts, or when
 * fm_session_generate starts other than right after one of them, so a cancel made after a
 * turn ended does not cancel the next turn. It only stores to a lock-free atomic int, so a
 * signal handler may call it too (flash-moe chat does on Ctrl-C). */
void fm_session_cancel(fm_session *s);

/* Sets the session's full token context to ids[0..n): the longest common prefix with what
 * the session holds is kept, only the rest is prefilled. FM_ERR_CONTEXT_FULL if n > n_ctx. */
fm_status fm_session_set_tokens(fm_session *s, const int32_t *ids, size_t n);

/* Appends tokens after what the session holds and prefills them. */
fm_status fm_session_append_tokens(fm_session *s, const int32_t *ids, size_t n);

/* Returns the tokens the session holds (owned by the session, valid until the next call). */
const int32_t *fm_session_tokens(const fm_session *s, size_t *n);

/* Generates after the current context. If cb is non-NULL, text streams through it; if
 * text is non-NULL, *text receives the whole generated text (release with fm_free).
 * Generation that fills the context ends with FM_FINISH_LENGTH and returns FM_OK. */
fm_status fm_session_generate(fm_session *s, const fm_gen_params *p, fm_stream_fn cb,
                              void *user, char **text);

/* One-shot: appends prompt (raw text, no template) and generates. */
fm_status fm_generate(fm_session *s, const char *prompt, const fm_gen_params *p,
                      fm_stream_fn cb, void *user, char **text);

/* A chat message. content may be NULL (rendered as "") for an assistant turn with only
 * tool calls. tool_calls_json: a JSON array of {"name","arguments"} or of the OpenAI shape
 * {"type":"function","function":{"name","arguments"}}; arguments given as a JSON string
 * are parsed into an object, as transformers' templates expect. */
typedef struct fm_chat_msg {
    const char *role;              /* "system", "user", "assistant", "tool" */
    const char *content;
    const char *reasoning_content; /* assistant thinking, or NULL */
    const char *tool_calls_json;   /* assistant: JSON array of {"name","arguments"}; or NULL */
    const char *tool_call_id;      /* tool: id of the call answered, or NULL */
    const char *name;              /* tool: name of the tool answered, or NULL */
} fm_chat_msg;

/* Renders msgs (and tools_json, a JSON array of tool definitions, or NULL) with the
 * model's chat template plus the generation prompt, sets that as the session context
 * (prefix reuse applies), and generates. extra_vars_json is a JSON object of extra template
 * variables (e.g. {"enable_thinking": false}) or NULL. */
fm_status fm_session_chat(fm_session *s, const fm_chat_msg *msgs, size_t n_msgs,
                          const char *tools_json, const char *extra_vars_json,
                          const fm_gen_params *p, fm_stream_fn cb, void *user, char **text);

/* Renders msgs with the model's chat template into *text (fm_free). add_generation_prompt
 * adds the assistant header. */
fm_status fm_chat_render(const fm_model *m, const fm_chat_msg *msgs, size_t n_msgs,
                         const char *tools_json, const char *extra_vars_json,
                         int add_generation_prompt, char **text);

/* Logits after the last token processed ([n_vocab], owned by the session). NULL if none. */
const float *fm_session_logits(const fm_session *s, int32_t *n_vocab);

/* Stats of the last call, with current memory figures. */
void fm_session_stats(const fm_session *s, fm_stats *out);

/* Why the last generation ended (FM_FINISH_*). */
int fm_session_finish_reason(const fm_session *s);

/* ---- generation defaults of a model ------------------------------------------------ */

/* Bits of fm_gen_defaults.from_file: the fields of params that the file set. */
enum {
    FM_GENCFG_TEMPERATURE = 1u << 0,    /* temperature, or 0 (greedy) because do_sample is not true */
    FM_GENCFG_TOP_P = 1u << 1,
    FM_GENCFG_TOP_K = 1u << 2,
    FM_GENCFG_MIN_P = 1u << 3,
    FM_GENCFG_REPEAT_PENALTY = 1u << 4, /* from repetition_penalty */
    FM_GENCFG_MAX_TOKENS = 1u << 5,     /* from max_new_tokens */
    FM_GENCFG_EOS = 1u << 6             /* eos_ids (informational: the model applies them) */
};

#define FM_GENCFG_MAX_EOS 16

/* A model's generation defaults, as transformers derives them from generation_config.json:
 * greedy (temperature 0) unless do_sample is true; with do_sample, transformers' defaults
 * (temperature 1, top_k 50, top_p 1) where the file has no value. repetition_penalty and
 * max_new_tokens apply either way. */
typedef struct fm_gen_defaults {
    fm_gen_params params;   /* fm_gen_params_default() with the file's values applied */
    uint32_t from_file;     /* FM_GENCFG_* bits of the fields that came from the file */
    int32_t found;          /* 1 = the file exists and was read; 0 = no file (params are
                               fm_gen_params_default(), from_file is 0) */
    int32_t do_sample;      /* -1 = absent, 0 = false, 1 = true */
    int32_t n_eos;          /* eos_token_id (an int or a list), at most FM_GENCFG_MAX_EOS */
    int32_t eos_ids[FM_GENCFG_MAX_EOS];
} fm_gen_defaults;

/* Reads model_dir/generation_config.json into *out. A missing file is not an error (found
 * = 0). FM_ERR_FORMAT naming the file if it is not a JSON object, and naming the field if
 * a known field has the wrong type or range (temperature >= 0, 0 <= top_p <= 1, top_k an
 * integer >= 0, 0 <= min_p <= 1, repetition_penalty > 0, max_new_tokens an integer >= 0,
 * eos_token_id an integer >= 0 or a list of them, do_sample a boolean; null = absent).
 * Unknown fields are ignored. On error *out holds fm_gen_params_default() and found = 0. */
fm_status fm_gen_defaults_load(const char *model_dir, fm_gen_defaults *out);

#ifdef __cplusplus
}
#endif
#endif /* FLASHMOE_H */
