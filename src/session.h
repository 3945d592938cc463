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

/* Tests: makes the session treat its state like recurrent state (truncation only to 0 or
 * to a snapshot position), to exercise the snapshot fallback on attention-only models. */
void fm__session_emulate_recurrent(fm_session *s, int on);

#endif
