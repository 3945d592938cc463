/* tensor.h: how a weight matrix is described in memory, for every storage type the
 * engine computes with. A fm__mat is a view: it never owns its bytes. */
#ifndef FM_TENSOR_H
#define FM_TENSOR_H

#include <stdint.h>

/* Element types as stored on disk (safetensors dtypes the engine reads). */
typedef enum fm__dtype {
    FM_DT_F32 = 0, FM_DT_F16, FM_DT_BF16, FM_DT_U32, FM_DT_I32, FM_DT_U8, FM_DT_I8,
    FM_DT_I64, FM_DT_F64, FM_DT_BOOL, FM_DT_U16, FM_DT_I16, FM_DT_U64, FM_DT_COUNT
} fm__dtype;

/* Bytes per element of a dtype. */
int fm__dtype_size(fm__dtype dt);
const char *fm__dtype_name(fm__dtype dt);

/* Storage type of a weight matrix. */
typedef enum fm__wtype {
    FM_W_F32 = 0, /* data: float   [rows][cols] */
    FM_W_F16,     /* data: uint16  [rows][cols] IEEE half */
    FM_W_BF16,    /* data: uint16  [rows][cols] bfloat16 */
    FM_W_QAFFINE  /* MLX affine: data uint32 [rows][cols*bits/32] packed;
                     scales, biases [rows][cols/group] of dtype sdt; w = scale*q + bias */
} fm__wtype;

/* A weight matrix W of shape [rows = out features][cols = in features]; y = W x. */
typedef struct fm__mat {
    fm__wtype type;
    int64_t rows, cols;
    const void *data;
    const void *scales, *biases; /* QAFFINE only */
    int32_t bits, group;         /* QAFFINE only: bits in {2,3,4,5,6,8}, group in {32,64,128} */
    fm__dtype sdt;               /* QAFFINE only: dtype of scales/biases (BF16, F16 or F32) */
} fm__mat;

/* Bytes of the data / scales / biases arrays of m (0 where absent). */
uint64_t fm__mat_data_bytes(const fm__mat *m);
uint64_t fm__mat_scale_bytes(const fm__mat *m); /* bytes of scales; biases are the same */

/* Scalar conversions. */
static inline float fm__bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
float fm__f16_to_f32(uint16_t h);
uint16_t fm__f32_to_bf16(float f); /* round to nearest even */
uint16_t fm__f32_to_f16(float f);

#endif
