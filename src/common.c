/* common.c: error state, logging, checked allocation and small utilities (see common.h). */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char g_err[2048];
static fm_log_fn g_log_fn;
static void *g_log_user;
static int g_log_level = -1;

const char *fm_status_str(fm_status st) {
    switch (st) {
    case FM_OK: return "ok";
    case FM_ERR_ARG: return "invalid argument";
    case FM_ERR_IO: return "I/O error";
    case FM_ERR_FORMAT: return "malformed input";
    case FM_ERR_UNSUPPORTED: return "unsupported";
    case FM_ERR_NOMEM: return "out of memory";
    case FM_ERR_CONTEXT_FULL: return "context full";
    case FM_ERR_CANCELLED: return "cancelled";
    case FM_ERR_TEMPLATE: return "template error";
    case FM_ERR_TOKENIZER: return "tokenizer error";
    case FM_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *fm_last_error(void) { return g_err; }
void fm__clear_err(void) { g_err[0] = 0; }

fm_status fm__err(fm_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return st;
}

fm_status fm__err_ctx(fm_status st, const char *fmt, ...) {
    char prev[sizeof g_err], ctx[512];
    memcpy(prev, g_err, sizeof prev);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    snprintf(g_err, sizeof g_err, "%s: %s", ctx, prev);
    return st;
}

void fm__assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "flash-moe: internal assertion failed at %s:%d: %s\n", file, line, expr);
    abort();
}

void fm_set_log(fm_log_fn fn, void *user, int max_level) {
    g_log_fn = fn;
    g_log_user = user;
    g_log_level = max_level;
}

void fm__log(int level, const char *fmt, ...) {
    if (g_log_level < 0) {
        const char *e = getenv("FM_LOG_LEVEL");
        g_log_level = e ? atoi(e) : FM_LOG_WARN;
    }
    if (level > g_log_level) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (g_log_fn) g_log_fn(level, buf, g_log_user);
    else fprintf(stderr, "%s\n", buf);
}

void fm_free(void *p) { free(p); }

void *fm__malloc(size_t n) { return malloc(n ? n : 1); }
void *fm__calloc(size_t n, size_t size) { return calloc(n ? n : 1, size ? size : 1); }
void *fm__malloc_array(size_t n, size_t size) {
    size_t t;
    if (__builtin_mul_overflow(n, size, &t)) return NULL;
    return malloc(t ? t : 1);
}
void *fm__aligned_alloc(size_t align, size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, align, n ? n : align) != 0) return NULL;
    return p;
}
char *fm__strdup(const char *s) { return s ? strdup(s) : NULL; }
char *fm__strndup(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}
char *fm__asprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *r = NULL;
    if (vasprintf(&r, fmt, ap) < 0) r = NULL;
    va_end(ap);
    return r;
}

fm_status fm__read_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return fm__err(FM_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fm__err(FM_ERR_IO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return fm__err(FM_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return fm__err(FM_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return FM_OK;
}

char *fm__path_join(const char *dir, const char *name) {
    size_t n = strlen(dir);
    return fm__asprintf("%s%s%s", dir, (n && dir[n - 1] == '/') ? "" : "/", name);
}

bool fm__file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

double fm__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t fm__rss_bytes(int peak) {
    /* open/read, no stdio: cheap enough to call per token and allocation-free. */
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *key = peak ? "VmHWM:" : "VmRSS:";
    const char *at = strstr(buf, key);
    return at ? strtoll(at + strlen(key), NULL, 10) * 1024 : 0;
}

bool fm__parse_size(const char *s, int64_t *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return false;
    double mul = 1;
    switch (*end) {
    case 0: break;
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return false;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return false;
    double r = v * mul;
    if (r > 9.0e18) return false;
    *out = (int64_t)r;
    return true;
}

bool fm__utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { k = 1; cp = c & 0x1F; if (c < 0xC2) return false; }
        else if ((c & 0xF0) == 0xE0) { k = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { k = 3; cp = c & 0x07; if (c > 0xF4) return false; }
        else return false;
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

size_t fm__utf8_complete_prefix(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    /* Walk back over at most 3 continuation bytes to the last lead byte. */
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && (s[i - 1] & 0xC0) == 0x80) { i--; back++; }
    if (i == 0) return back ? 0 : n;
    unsigned c = s[i - 1];
    size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                : (c & 0xF8) == 0xF0 ? 4 : 1;
    return (back + 1 >= need) ? n : i - 1;
}
