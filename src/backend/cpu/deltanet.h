/* deltanet.h: the gated delta rule of Gated DeltaNet (linear attention) layers on the CPU,
 * for one value head: the recurrent step (decode) and the chunked form (prefill), which
 * computes the same recurrence FM_GDR_CHUNK tokens at a time with matrix products.
 *
 * Per token t, with state S [dk][dv] (row i: key dimension i), key k and query q
 * (L2-normalised, q scaled by 1/sqrt(dk)), value v, log decay g <= 0 and beta in (0, 1):
 *   S *= exp(g);  delta = (v - S^T k) * beta;  S += k delta^T;  o = S^T q.
 * Both forms are pure: no allocation, no global state; a call depends only on its
 * arguments, so results do not depend on which thread runs which head. */
#ifndef FM_DELTANET_H
#define FM_DELTANET_H

#include <stddef.h>
#include <stdint.h>

#define FM_GDR_CHUNK 64 /* tokens per chunk of the chunked form */

/* One token: advances S [dk][dv] and writes o[dv]; delta: dv floats of scratch. */
void fm__gdr_step(float *S, const float *k, const float *q, const float *v, float beta,
                  float decay, int32_t dk, int32_t dv, float *delta, float *o);

/* Floats of work area fm__gdr_chunked needs for head dims dk, dv (any T). */
size_t fm__gdr_work_floats(int32_t dk, int32_t dv);

/* T tokens through the recurrence in the chunked form, starting from S and leaving the
 * state after the last token in S. Token t: q row q + t*ldq, k row k + t*ldk (dk floats),
 * v row v + t*ldv (dv floats), g[t], beta[t]; writes o row o + t*ldo (dv floats). The
 * outputs must not overlap the inputs. work: fm__gdr_work_floats(dk, dv) floats, not
 * shared with another concurrent call. Equal to T calls of fm__gdr_step (decay exp(g[t]))
 * up to float rounding. */
void fm__gdr_chunked(float *S, int32_t dk, int32_t dv, int32_t T, const float *q, int64_t ldq,
                     const float *k, int64_t ldk, const float *v, int64_t ldv, const float *g,
                     const float *beta, float *o, int64_t ldo, float *work);

/* The same with the portable vector code whatever the machine (for tests). */
void fm__gdr_chunked_generic(float *S, int32_t dk, int32_t dv, int32_t T, const float *q,
                             int64_t ldq, const float *k, int64_t ldk, const float *v, int64_t ldv,
                             const float *g, const float *beta, float *o, int64_t ldo, float *work);

#endif
