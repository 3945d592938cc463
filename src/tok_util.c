/* tok_util.c: UTF-8 validation with an offset, and lossy UTF-8 repair that matches Rust's
 * String::from_utf8_lossy (used by the byte-level decoder). */
#include "tok_util.h"

/* Length of the valid UTF-8 sequence at s[0..n), 0 if the bytes there are not one;
 * *maximal receives the length of the longest prefix that could start a valid sequence. */
static size_t seq_len(const unsigned char *s, size_t n, size_t *maximal) {
    unsigned c = s[0];
    *maximal = 1;
    if (c < 0x80) return 1;
    size_t k;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) k = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        k = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    for (size_t j = 1; j <= k; j++) {
        if (j >= n) return 0;
        unsigned b = s[j];
        unsigned l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
        if (b < l || b > h) return 0;
        *maximal = j + 1;
    }
    return k + 1;
}

size_t fm__tok_utf8_invalid_at(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, m;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        size_t k = seq_len(s + i, n - i, &m);
        if (!k) return i;
        i += k;
    }
    return n;
}

size_t fm__tok_utf8_lossy(const char *str, size_t n, char *out) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, o = 0, m;
    while (i < n) {
        if (s[i] < 0x80) { out[o++] = (char)s[i++]; continue; }
        size_t k = seq_len(s + i, n - i, &m);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += m;
        }
    }
    return o;
}
