/* sampler.h: token sampling (penalties, temperature, top-k, top-p, min-p, seeded PRNG),
 * the stop-string matcher that turns streamed text into output pieces, and the repetition
 * metrics of generated text. All scratch is allocated once per sampler; nothing allocates
 * per token.
 *
 * Sampling order and semantics (documented so tests can check them by hand):
 *  1. repeat_penalty (llama.cpp): every distinct token among the last FM__REPEAT_WINDOW
 *     tokens of the context gets logit /= penalty if logit > 0, else logit *= penalty.
 *  2. presence/frequency penalties (OpenAI): logit -= count * frequency
 *     + (count > 0) * presence, count = times the token was generated in this call.
 *  3. temperature <= 0: greedy, the arg max of the penalized logits (lowest id on ties).
 *  4. else logits / temperature, softmax, then (as Hugging Face's warpers do) top-k keeps
 *     the k most probable tokens; top-p keeps the smallest most-probable set whose mass,
 *     renormalized over what top-k kept, reaches top_p (0 keeps one token, >= 1 is off);
 *     min-p keeps tokens with p >= min_p * p_max. Ties in probability are ordered by lower id.
 *  5. one uniform draw in [0, 1) from xoshiro256** (seeded by splitmix64; seed 0 means a
 *     fixed default seed) picks a token from the kept set, renormalized. */
#ifndef FM_SAMPLER_H
#define FM_SAMPLER_H

#include "common.h"

#define FM__REPEAT_WINDOW 64

typedef struct fm__cand {
    float p;    /* logit, then probability */
    int32_t id;
} fm__cand;

typedef struct fm__sampler {
    int32_t n_vocab;
    fm__cand *cand;     /* [n_vocab] scratch */
    float *work;        /* [n_vocab] penalized logits */
    int32_t *counts;    /* [n_vocab] generated-token counts of this call */
    int32_t *seen;      /* [n_vocab] distinct generated ids (those with counts > 0) */
    int32_t n_seen;
    uint64_t rng[4];
} fm__sampler;

/* Allocates the scratch for a vocabulary of n_vocab. FM_ERR_NOMEM on failure. */
fm_status fm__sampler_init(fm__sampler *s, int32_t n_vocab);
void fm__sampler_free(fm__sampler *s);

/* Seeds the PRNG (0 = the fixed default seed). */
void fm__sampler_seed(fm__sampler *s, uint64_t seed);

/* Next uniform double in [0, 1). */
double fm__sampler_uniform(fm__sampler *s);

/* Clears the generated-token counts (a new call starts from zero) in O(distinct ids). */
void fm__sampler_reset_counts(fm__sampler *s);

/* Records a generated token for the presence/frequency penalties. */
void fm__sampler_accept(fm__sampler *s, int32_t id);

/* Picks the next token from logits[n_vocab] (not modified). ctx[0..n_ctx) is the context
 * so far (its last FM__REPEAT_WINDOW tokens feed the repeat penalty). Returns the token. */
int32_t fm__sampler_sample(fm__sampler *s, const fm_gen_params *p, const float *logits,
                           const int32_t *ctx, size_t n_ctx);

/* The distribution step 4 samples from, for tests: fills probs[n_vocab] with the
 * renormalized probability of every token (0 for removed ones) for the given params and
 * logits (penalties included). Greedy puts 1 on the arg max. */
void fm__sampler_probs(fm__sampler *s, const fm_gen_params *p, const float *logits,
                       const int32_t *ctx, size_t n_ctx, float *probs);

/* ---- stop strings ------------------------------------------------------------------- */

/* Turns a stream of text pieces into output: holds back any tail that could start a stop
 * string (and any incomplete UTF-8 character), and reports the first stop-string match,
 * which ends the output just before it. Buffers grow amortized; no per-piece allocation
 * once warm. */
typedef struct fm__stopper {
    const char *const *stop;
    int32_t n_stop;
    char *buf;        /* buf[off..len): held-back text; buf[0..off): last released */
    size_t len, cap, off;
    int matched;
} fm__stopper;

void fm__stopper_init(fm__stopper *st, const char *const *stop, int32_t n_stop);
/* Starts a new stream with a new stop list, keeping the buffer (no allocation). */
void fm__stopper_reset(fm__stopper *st, const char *const *stop, int32_t n_stop);
void fm__stopper_free(fm__stopper *st);

/* Feeds piece[0..len). *out and *out_len receive the text that can be released now (a view
 * valid until the next call). Returns 1 if a stop string matched (output ends before it;
 * feed nothing more), 0 otherwise, -1 on allocation failure. */
int fm__stopper_feed(fm__stopper *st, const char *piece, size_t len, const char **out,
                     size_t *out_len);

/* At the end of generation: releases whatever is held back (a partial stop prefix that
 * never completed, or an incomplete character). */
void fm__stopper_flush(fm__stopper *st, const char **out, size_t *out_len);

/* ---- repetition metrics --------------------------------------------------------------- */

typedef struct fm__rep {
    double trigram_share; /* count of the most common character trigram / all trigrams,
                             over the last 200 characters (code points); 0 if < 3 */
    double distinct4;     /* distinct word 4-grams / all word 4-grams (whitespace-split
                             words); 1 if fewer than 4 words */
} fm__rep;

void fm__rep_metrics(const char *text, size_t len, fm__rep *out);

#endif
