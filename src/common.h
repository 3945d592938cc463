/* common.h: internal helpers every module shares: error reporting, logging, asserts,
 * checked allocation and small file utilities. Internal symbols are fm__ or static. */
#ifndef FM_COMMON_H
#define FM_COMMON_H

#include "flashmoe.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define FM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FM_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define FM_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define FM_NORETURN __attribute__((noreturn))
#else
#define FM_PRINTF(f, a)
#define FM_NORETURN
#endif

/* Broken internal invariant (never bad input): logs file:line and aborts. */
#define FM_ASSERT(c) do { if (!(c)) fm__assert_fail(__FILE__, __LINE__, #c); } while (0)
FM_NORETURN void fm__assert_fail(const char *file, int line, const char *expr);

/* Records msg as this thread's last error and returns st, so callers can write
 * `return fm__err(FM_ERR_FORMAT, "%s: tensor %s: ...", path, name);`. */
fm_status fm__err(fm_status st, const char *fmt, ...) FM_PRINTF(2, 3);
/* Prefixes the current last-error message with "ctx: " and returns st. */
fm_status fm__err_ctx(fm_status st, const char *fmt, ...) FM_PRINTF(2, 3);
void fm__clear_err(void);

void fm__log(int level, const char *fmt, ...) FM_PRINTF(2, 3);
#define FM_LOGE(...) fm__log(FM_LOG_ERROR, __VA_ARGS__)
#define FM_LOGW(...) fm__log(FM_LOG_WARN, __VA_ARGS__)
#define FM_LOGI(...) fm__log(FM_LOG_INFO, __VA_ARGS__)
#define FM_LOGD(...) fm__log(FM_LOG_DEBUG, __VA_ARGS__)

/* Allocation that never aborts: returns NULL on failure (and on overflow of n*size). */
void *fm__malloc(size_t n);
void *fm__calloc(size_t n, size_t size);
void *fm__malloc_array(size_t n, size_t size);
/* Aligned allocation (align: power of two >= sizeof(void*)); release with free(). */
void *fm__aligned_alloc(size_t align, size_t n);
char *fm__strdup(const char *s);
char *fm__strndup(const char *s, size_t n);
/* printf into a new heap string (NULL on failure). */
char *fm__asprintf(const char *fmt, ...) FM_PRINTF(1, 2);

/* Checked arithmetic on byte counts: return false on overflow. */
static inline bool fm__mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool fm__add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* Reads a whole file into a NUL-terminated heap buffer. On failure returns FM_ERR_IO with
 * the path and errno text in the message. *len excludes the NUL. */
fm_status fm__read_file(const char *path, char **out, size_t *len);
/* Joins dir and name with one '/'. Returns NULL on allocation failure. */
char *fm__path_join(const char *dir, const char *name);
bool fm__file_exists(const char *path);

/* Monotonic clock in seconds. */
double fm__now(void);
/* Resident set size of this process in bytes (0 if unknown); peak if peak != 0. */
int64_t fm__rss_bytes(int peak);

/* Parses "8G", "512M", "1.5G", "4096" (bytes). Returns false on bad syntax. */
bool fm__parse_size(const char *s, int64_t *out);

/* UTF-8: returns true if s[0..n) is valid UTF-8. */
bool fm__utf8_valid(const char *s, size_t n);
/* Length of the longest prefix of s[0..n) that ends on a character boundary. */
size_t fm__utf8_complete_prefix(const char *s, size_t n);

#endif
