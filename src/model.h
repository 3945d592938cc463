/* model.h: a loaded model (config, resident weights, expert map and cache, tokenizer,
 * chat template) and the per-sequence state the forward pass advances. */
#ifndef FM_MODEL_H
#define FM_MODEL_H

#include "common.h"
#include "backend/backend.h"
#include "config.h"
#include "expert_cache.h"

typedef struct fm__state fm__state;

/* Loads the model directory. Architecture-specific work happens in src/arch_*.c, named in
 * one table (src/arch.c). Defined in model.c; fm_model_open wraps it. */
fm_status fm__model_load(const char *dir, const fm_model_params *p, fm_model **out);

/* Per-sequence state: KV cache for attention layers, recurrent and convolution state for
 * linear-attention layers. n_ctx: positions it can hold. */
fm_status fm__state_new(fm_model *m, int32_t n_ctx, fm__state **out);
void fm__state_free(fm__state *s);
int32_t fm__state_pos(const fm__state *s);
int32_t fm__state_n_ctx(const fm__state *s);
uint64_t fm__state_bytes(const fm__state *s);

/* Keeps the first n positions. Attention-only models always succeed. Models with
 * recurrent state succeed when a snapshot at exactly n exists (or n == 0), else return
 * FM_ERR_UNSUPPORTED and leave the state unchanged (the caller re-prefills). */
fm_status fm__state_truncate(fm__state *s, int32_t n);

/* Records a snapshot of the recurrent state at the current position (no-op for
 * attention-only models). Sessions call it at turn boundaries. */
fm_status fm__state_snapshot(fm__state *s);

/* Runs tokens[0..n) at positions pos..pos+n-1 and advances the state. logits receives
 * [vocab] floats for the last token, or [n][vocab] when all_logits != 0 (logits may be
 * NULL to skip the head). FM_ERR_CONTEXT_FULL if pos+n > n_ctx (state unchanged). */
fm_status fm__forward(fm_model *m, fm__state *s, const int32_t *tokens, int32_t n,
                      float *logits, int all_logits);

/* Accessors the rest of the library uses. */
int32_t fm__model_vocab(const fm_model *m);
fm__ecache *fm__model_cache(fm_model *m);
struct fm__tokenizer *fm__model_tokenizer(const fm_model *m);
const char *fm__model_dir(const fm_model *m);
/* The memory plan the model was opened with (for `flash-moe info`). */
const fm__ec_plan *fm__model_plan(const fm_model *m);
/* Working memory a model of config c with context n_ctx needs besides its weights, KV cache
 * and expert cache: forward scratch, RoPE tables and a fixed process allowance. A
 * --mem-limit budget pays for it before the plan sizes the expert cache. */
uint64_t fm__model_work_bytes(const fm__config *c, int32_t n_ctx);

#endif
