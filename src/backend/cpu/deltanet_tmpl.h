/* deltanet_tmpl.h: the chunked gated delta rule, written once over a small vector
 * vocabulary and included by deltanet.c (portable GCC vectors) and deltanet_avx2.c
 * (AVX2 + FMA), which define:
 *   VW lanes; vf; VZERO(); VLOAD(const float *); VSTORE(float *, vf); VSET1(float);
 *   VMUL(a, b); VFMA(a, b, c) = a*b + c;  GDR_FN: the name of the function defined here.
 *
 * Algorithm: transformers' torch_chunk_gated_delta_rule
 * (src/transformers/models/qwen3_next/modeling_qwen3_next.py), per value head, chunk of
 * n <= FM_GDR_CHUNK tokens (a short last chunk is the padded one without its padding):
 *   G = cumsum(g);  Gam[i][j] = exp(G_i - G_j), j <= i (the exponent summed directly)
 *   L[i][j]  = -beta_i (k_i . k_j) Gam[i][j], j < i          (strictly lower)
 *   X = (I - L)^-1 = I + Xs, by forward substitution row by row (the loop over i there)
 *   U = X (beta v);  W = X (beta exp(G) k)
 *   Vnew = U - W S                                 (S: the state at the chunk start)
 *   o_i = exp(G_i) q_i S + sum_{j<=i} (q_i . k_j) Gam[i][j] Vnew_j
 *   S = exp(G_last) S + sum_j exp(G_last - G_j) k_j Vnew_j^T
 * Every product is C (+)= A B with B row-major: rows of C are accumulated as 4 x 16 tiles
 * held in registers, each element summed over the inner index in increasing order. */
#include "backend/cpu/deltanet.h"

#include <math.h>
#include <string.h>

#define CH FM_GDR_CHUNK
#define MR 4        /* rows of C per tile */
#define NR (2 * VW) /* columns of C per tile */

static inline int32_t imin(int32_t a, int32_t b) { return a < b ? a : b; }
static inline int32_t up(int32_t x, int32_t m) { return (x + m - 1) / m * m; }

/* C[i][j] = (load ? cs * C[i][j] : 0) + sum_{a < K_i} A[i][a] B[a][j], i < M, j < N_i.
 * kdiag >= 0: A is lower triangular: a tile of rows i0..i1 sums over a < min(K, i1 + kdiag)
 * (A must hold zeros beyond each row's own limit, up to that bound).
 * ndiag >= 0: only the lower part of C is wanted: a tile of rows i0..i1 computes columns
 * j < min(N, up(i1 + ndiag, NR)); the others are left alone. */
static void mm(float *restrict C, int64_t ldc, const float *restrict A, int64_t lda,
               const float *restrict B, int64_t ldb, int32_t M, int32_t N, int32_t K,
               int32_t kdiag, int32_t ndiag, int load, float cs) {
    for (int32_t i0 = 0; i0 < M; i0 += MR) {
        int32_t mr = imin(MR, M - i0), i1 = i0 + mr - 1;
        int32_t kk = kdiag < 0 ? K : imin(K, i1 + kdiag);
        int32_t nn = ndiag < 0 ? N : imin(N, up(i1 + ndiag, NR));
        const float *a0 = A + (size_t)i0 * lda;
        int32_t j0 = 0;
        if (mr == MR)
            for (; j0 + NR <= nn; j0 += NR) { /* 4 x 2 vectors, named so they stay in registers */
                const float *r0 = a0, *r1 = a0 + lda, *r2 = a0 + 2 * lda, *r3 = a0 + 3 * lda;
                float *c0 = C + (size_t)i0 * ldc + j0, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
                vf c00 = VZERO(), c01 = VZERO(), c10 = VZERO(), c11 = VZERO();
                vf c20 = VZERO(), c21 = VZERO(), c30 = VZERO(), c31 = VZERO();
                if (load) {
                    vf s = VSET1(cs);
                    c00 = VMUL(VLOAD(c0), s), c01 = VMUL(VLOAD(c0 + VW), s);
                    c10 = VMUL(VLOAD(c1), s), c11 = VMUL(VLOAD(c1 + VW), s);
                    c20 = VMUL(VLOAD(c2), s), c21 = VMUL(VLOAD(c2 + VW), s);
                    c30 = VMUL(VLOAD(c3), s), c31 = VMUL(VLOAD(c3 + VW), s);
                }
                const float *b = B + j0;
                for (int32_t a = 0; a < kk; a++, b += ldb) {
                    vf b0 = VLOAD(b), b1 = VLOAD(b + VW), x;
                    x = VSET1(r0[a]), c00 = VFMA(x, b0, c00), c01 = VFMA(x, b1, c01);
                    x = VSET1(r1[a]), c10 = VFMA(x, b0, c10), c11 = VFMA(x, b1, c11);
                    x = VSET1(r2[a]), c20 = VFMA(x, b0, c20), c21 = VFMA(x, b1, c21);
                    x = VSET1(r3[a]), c30 = VFMA(x, b0, c30), c31 = VFMA(x, b1, c31);
                }
                VSTORE(c0, c00), VSTORE(c0 + VW, c01), VSTORE(c1, c10), VSTORE(c1 + VW, c11);
                VSTORE(c2, c20), VSTORE(c2 + VW, c21), VSTORE(c3, c30), VSTORE(c3 + VW, c31);
            }
        for (int32_t r = 0; r < mr; r++) /* edge rows / columns, one element at a time */
            for (int32_t j = j0; j < nn; j++) {
                float *cp = C + (size_t)(i0 + r) * ldc + j;
                float acc = load ? *cp * cs : 0.0f;
                for (int32_t a = 0; a < kk; a++) acc += a0[(size_t)r * lda + a] * B[(size_t)a * ldb + j];
                *cp = acc;
            }
    }
}

void GDR_FN(float *restrict S, int32_t dk, int32_t dv, int32_t T, const float *q, int64_t ldq,
            const float *k, int64_t ldk, const float *v, int64_t ldv, const float *g,
            const float *beta, float *o, int64_t ldo, float *work) {
    float *G = work, *E = G + CH;           /* [CH]: cumulative log decay; exp(G_last - G_j) */
    float *Kt = E + CH;                     /* [dk][CH]: keys, transposed */
    float *Qg = Kt + (size_t)dk * CH;       /* [CH][dk]: exp(G_i) q_i */
    float *NKb = Qg + (size_t)CH * dk;      /* [CH][dk]: -beta_i exp(G_i) k_i */
    float *Wn = NKb + (size_t)CH * dk;      /* [CH][dk]: -W */
    float *Vb = Wn + (size_t)CH * dk;       /* [CH][dv]: beta_i v_i */
    float *U = Vb + (size_t)CH * dv;        /* [CH][dv]: U, then Vnew */
    float *L = U + (size_t)CH * dv;         /* [CH][CH]: L, then Xs */
    float *Aq = L + (size_t)CH * CH;        /* [CH][CH]: (q_i . k_j) Gam[i][j] */
    for (int32_t t0 = 0; t0 < T; t0 += CH) {
        const int32_t n = imin(CH, T - t0), np = up(n, NR);
        const float *qc = q + (size_t)t0 * ldq, *kc = k + (size_t)t0 * ldk, *vc = v + (size_t)t0 * ldv;
        float *oc = o + (size_t)t0 * ldo;
        /* 1. cumulative log decay; per-token rows */
        float acc = 0;
        for (int32_t i = 0; i < n; i++) G[i] = acc += g[t0 + i];
        for (int32_t i = 0; i < n; i++) {
            const float *ki = kc + (size_t)i * ldk, *qi = qc + (size_t)i * ldq, *vi = vc + (size_t)i * ldv;
            float eg = expf(G[i]), b = beta[t0 + i], nbe = -b * eg;
            for (int32_t a = 0; a < dk; a++) {
                Kt[(size_t)a * CH + i] = ki[a];
                Qg[(size_t)i * dk + a] = qi[a] * eg;
                NKb[(size_t)i * dk + a] = ki[a] * nbe;
            }
            for (int32_t j = 0; j < dv; j++) Vb[(size_t)i * dv + j] = vi[j] * b;
        }
        if (n < CH)
            for (int32_t a = 0; a < dk; a++) memset(Kt + (size_t)a * CH + n, 0, (size_t)(CH - n) * 4);
        /* 2. lower triangles of K K^T and Q K^T */
        mm(L, CH, kc, ldk, Kt, CH, n, np, dk, -1, 1, 0, 1.0f);
        mm(Aq, CH, qc, ldq, Kt, CH, n, np, dk, -1, 1, 0, 1.0f);
        /* 3. decay and beta; zero the upper parts. G_i - G_j is summed directly (g_{j+1}
         * + ... + g_i) rather than subtracted: after a strong decay G is large and the
         * difference would lose the small decays between close tokens */
        for (int32_t i = 0; i < n; i++) {
            float *li = L + (size_t)i * CH, *ai = Aq + (size_t)i * CH, nb = -beta[t0 + i], gs = 0;
            for (int32_t j = i - 1; j >= 0; j--) {
                gs += g[t0 + j + 1];
                float d = expf(gs);
                li[j] = nb * li[j] * d;
                ai[j] *= d;
            }
            memset(li + i, 0, (size_t)(CH - i) * 4);
            memset(ai + i + 1, 0, (size_t)(CH - i - 1) * 4);
        }
        /* 4. forward substitution: Xs[i][j] = L[i][j] + sum_{j<m<i} L[i][m] Xs[m][j], in
         * place, row by row (row m of Xs is zero from column m on) */
        for (int32_t i = 2; i < n; i++) {
            float *ri = L + (size_t)i * CH;
            for (int32_t m = 1; m < i; m++) {
                const float *xm = L + (size_t)m * CH;
                vf c = VSET1(ri[m]);
                for (int32_t j = 0; j < m; j += VW) VSTORE(ri + j, VFMA(c, VLOAD(xm + j), VLOAD(ri + j)));
            }
        }
        /* 5. U = (I + Xs) beta v;  -W = (I + Xs) (-beta exp(G) k) */
        memcpy(U, Vb, (size_t)n * dv * 4);
        mm(U, dv, L, CH, Vb, dv, n, dv, n, 0, -1, 1, 1.0f);
        memcpy(Wn, NKb, (size_t)n * dk * 4);
        mm(Wn, dk, L, CH, NKb, dk, n, dk, n, 0, -1, 1, 1.0f);
        /* 6. Vnew = U - W S */
        mm(U, dv, Wn, dk, S, dv, n, dv, dk, -1, -1, 1, 1.0f);
        /* 7. o = exp(G) q S + Aq Vnew */
        mm(oc, ldo, Qg, dk, S, dv, n, dv, dk, -1, -1, 0, 1.0f);
        mm(oc, ldo, Aq, CH, U, dv, n, dv, n, 1, -1, 1, 1.0f);
        /* 8. S = exp(G_last) S + (exp(G_last - G) k)^T Vnew */
        float gs = 0;
        E[n - 1] = 1.0f;
        for (int32_t j = n - 2; j >= 0; j--) E[j] = expf(gs += g[t0 + j + 1]);
        for (int32_t a = 0; a < dk; a++)
            for (int32_t j = 0; j < n; j++) Kt[(size_t)a * CH + j] *= E[j];
        mm(S, dv, Kt, CH, U, dv, dk, dv, n, -1, -1, 1, expf(G[n - 1]));
    }
}

#undef CH
#undef MR
#undef NR
