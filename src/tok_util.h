/* tok_util.h: small building blocks of the tokenizer: a byte-string hash, a string->id
 * hash map over an id-indexed string table, a (id,id)->(rank,id) merge map, UTF-8
 * decoding helpers and the GPT-2 byte<->unicode table. Internal to the tokenizer. */
#ifndef FM_TOK_UTIL_H
#define FM_TOK_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* 64-bit hash of a byte string (not cryptographic). */
static inline uint64_t fm__tok_hash(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ (v * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ (v * 0xC2B2AE3D27D4EB4Full)) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

/* Decodes one UTF-8 character of valid input at s[0..n) (n >= 1); returns its length. */
static inline int fm__tok_u8dec(const unsigned char *s, size_t n, int32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80 || n < 2) { *cp = (int32_t)c; return 1; }
    if (c < 0xE0) { *cp = (int32_t)(((c & 0x1F) << 6) | (s[1] & 0x3F)); return 2; }
    if (c < 0xF0 || n < 4) {
        if (n < 3) { *cp = (int32_t)c; return 1; }
        *cp = (int32_t)(((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F));
        return 3;
    }
    *cp = (int32_t)(((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F));
    return 4;
}

/* Length of the UTF-8 character starting with lead byte c (1 for stray bytes). */
static inline int fm__tok_u8len(unsigned char c) {
    return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Writes cp as UTF-8 into out (room for 4); returns the length. */
static inline int fm__tok_u8enc(int32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12)); o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18)); o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space (Rust char::is_whitespace). */
static inline bool fm__tok_is_ws(int32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Offset of the first invalid UTF-8 byte in s[0..n), or n when all of it is valid. */
size_t fm__tok_utf8_invalid_at(const char *s, size_t n);
/* Appends s[0..n) to out as Rust's String::from_utf8_lossy does (each maximal invalid
 * subpart becomes U+FFFD). out must have room for 3*n bytes. Returns bytes written. */
size_t fm__tok_utf8_lossy(const char *s, size_t n, char *out);

#endif
