/* session.h: internal view of sessions for tools and tests: the tokens the last
 * generation produced (token-level generation works without a tokenizer), and the
 * repetition metrics of its text. */
#ifndef FM_SESSION_H
#define FM_SESSION_H

#include "common.h"
#include "sampler.h"

/* The ids the last fm_session_generate call produced (EOS included when it ended on one),
 * owned by the session; valid until the next call. */
const int32_t *fm__session_generated(const fm_session *s, size_t *n);

/* The model the session runs. */
fm_model *fm__session_model(const fm_session *s);

/* Context length of the session in tokens. */
int32_t fm__session_n_ctx(const fm_session *s);

/* Number of positions the forward pass has processed (at most the number of held
 * tokens: the last generated token is processed lazily, by the next call). */
int32_t fm__session_pos(const fm_session *s);

/* Tokens for a rendered chat prompt p[0..plen) on session s: the canonical tokenization,
 * except that where a longer run of the tokens s holds (an earlier answer as the model
 * generated it) decodes to a prefix of p, those tokens are kept and only the rest of p is
 * tokenized, so prefix reuse survives non-canonical splits. *ids: malloc'd (free()).
 * fm_session_chat uses it; a server that renders and tokenizes itself can too. */
fm_status fm__session_chat_tokens(fm_session *s, const char *p, size_t plen, int32_t **ids,
                                  size_t *n_ids);

/* Tests: tokens per prefill chunk (n <= 0 restores the default, 256). */
void fm__session_set_chunk(fm_session *s, int32_t n);

/* Tokens the current (or last) call prefilled: whole chunks, so fewer than asked for when
 * it was cancelled. */
int64_t fm__session_prefilled(const fm_session *s);

/* Tests: makes the session treat its state like recurrent state (truncation only to 0 or
 * to a snapshot position), to exercise the snapshot fallback on attention-only models. */
void fm__session_emulate_recurrent(fm_session *s, int on);

#endif
