/* tensor.c: dtype tables, fm__mat sizes and scalar float conversions. */
#include "tensor.h"

#include <string.h>

static const struct { int size; const char *name; } g_dtypes[FM_DT_COUNT] = {
    [FM_DT_F32] = {4, "F32"},  [FM_DT_F16] = {2, "F16"},   [FM_DT_BF16] = {2, "BF16"},
    [FM_DT_U32] = {4, "U32"},  [FM_DT_I32] = {4, "I32"},   [FM_DT_U8] = {1, "U8"},
    [FM_DT_I8] = {1, "I8"},    [FM_DT_I64] = {8, "I64"},   [FM_DT_F64] = {8, "F64"},
    [FM_DT_BOOL] = {1, "BOOL"}, [FM_DT_U16] = {2, "U16"},  [FM_DT_I16] = {2, "I16"},
    [FM_DT_U64] = {8, "U64"},
};

int fm__dtype_size(fm__dtype dt) { return (unsigned)dt < FM_DT_COUNT ? g_dtypes[dt].size : 0; }
const char *fm__dtype_name(fm__dtype dt) {
    return (unsigned)dt < FM_DT_COUNT ? g_dtypes[dt].name : "?";
}

uint64_t fm__mat_data_bytes(const fm__mat *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols;
    switch (m->type) {
    case FM_W_F32: return n * 4;
    case FM_W_F16: case FM_W_BF16: return n * 2;
    case FM_W_QAFFINE: return (uint64_t)m->rows * ((uint64_t)m->cols * (uint64_t)m->bits / 32) * 4;
    }
    return 0;
}

uint64_t fm__mat_scale_bytes(const fm__mat *m) {
    if (m->type != FM_W_QAFFINE || m->group <= 0) return 0;
    return (uint64_t)m->rows * (uint64_t)(m->cols / m->group) * (uint64_t)fm__dtype_size(m->sdt);
}

float fm__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
    if (exp == 0) {
        if (man == 0) u = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3FF;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) u = sign | 0x7F800000u | (man << 13);
    else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t fm__f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7FFFu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t fm__f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xFF) - 127 + 15;
    uint32_t man = u & 0x7FFFFF;
    if (((u >> 23) & 0xFF) == 0xFF) return (uint16_t)(sign | 0x7C00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7C00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)h;
}
