/* jinja.h: internals shared by the Jinja interpreter's files (template.c: lexer, parser and
 * evaluator; jinja_value.c: values, Python-style printing and JSON). Everything a render
 * allocates lives in one arena, so an error can unwind with longjmp and free it at once. */
#ifndef FM_JINJA_H
#define FM_JINJA_H

#include "common.h"
#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- arena ---- */
typedef struct jj_chunk jj_chunk;
typedef struct jj_arena {
    jj_chunk *head;
    size_t total, limit;
    jmp_buf *oom; /* longjmp target when the limit is reached (value 2) */
} jj_arena;

void *jj_alloc(jj_arena *a, size_t n); /* zeroed, 16-aligned; longjmps on failure */
void jj_arena_free(jj_arena *a);
char *jj_strndup(jj_arena *a, const char *s, size_t n);

/* ---- growable byte buffer in the arena ---- */
typedef struct jj_buf {
    char *p;
    size_t n, cap, limit;
    jj_arena *a;
} jj_buf;
void jj_buf_put(jj_buf *b, const char *s, size_t n); /* longjmps (value 3) past limit */
static inline void jj_buf_puts(jj_buf *b, const char *s) { jj_buf_put(b, s, __builtin_strlen(s)); }
static inline void jj_buf_putc(jj_buf *b, char c) { jj_buf_put(b, &c, 1); }
void jj_buf_printf(jj_buf *b, const char *fmt, ...) FM_PRINTF(2, 3);

/* ---- values ---- */
typedef enum {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
    JV_NS, JV_LOOP, JV_MACRO, JV_BUILTIN, JV_METHOD, JV_CALLER
} jv_type;

enum { JL_TUPLE = 1, JL_GEN = 2, JL_ITEMS = 8, JL_KEYS = 16, JL_VALUES = 32, JL_POISON = 64 };
/* list flags: a tuple; a one-shot iterator; a dict view (printed as dict_items(...)); a lazy
 * generator whose evaluation failed (its only item is the error, raised when it is consumed) */
enum { JS_MARKUP = 4 };           /* string flag: markupsafe.Markup (from |safe, |e) */

typedef struct jv_list jv_list;
typedef struct jv_dict jv_dict;

typedef struct jv {
    uint8_t t;
    uint8_t flags;
    union {
        int64_t i;
        double f;
        struct { const char *p; size_t n; } s; /* JV_STR; JV_UNDEF: the missing name */
        jv_list *l;
        jv_dict *d; /* JV_DICT and JV_NS */
        void *ptr;  /* loop state, macro node, method, caller */
    } u;
} jv;

struct jv_list { size_t n, cap; jv *v; };
struct jv_dict { size_t n, cap; jv *k; jv *v; };

jv jv_str(jj_arena *a, const char *s, size_t n); /* copies */
static inline jv jv_strref(const char *s, size_t n) { jv v = {JV_STR, 0, {0}}; v.u.s.p = s; v.u.s.n = n; return v; }
static inline jv jv_int(int64_t i) { jv v = {JV_INT, 0, {0}}; v.u.i = i; return v; }
static inline jv jv_float(double f) { jv v = {JV_FLOAT, 0, {0}}; v.u.f = f; return v; }
static inline jv jv_bool(bool b) { jv v = {JV_BOOL, 0, {0}}; v.u.i = b; return v; }
static inline jv jv_none(void) { jv v = {JV_NONE, 0, {0}}; return v; }
static inline jv jv_undef(const char *name) { jv v = {JV_UNDEF, 0, {0}}; v.u.s.p = name; return v; }
jv jv_list_new(jj_arena *a, size_t cap);
void jv_list_push(jj_arena *a, jv *list, jv item);
jv jv_dict_new(jj_arena *a, size_t cap);
/* Sets key (replacing an equal key in place, so insertion order is kept). */
void jv_dict_set(jj_arena *a, jv *dict, jv key, jv val);
/* Looks a string key up; returns NULL when absent. */
jv *jv_dict_get(const jv_dict *d, const char *k, size_t n);
jv *jv_dict_getv(const jv_dict *d, jv key);

bool jv_truthy(jv v);
bool jv_equal(jv a, jv b);
/* Python's str() of v appended to b; repr=true gives repr() (strings quoted). */
void jv_print(jj_buf *b, jv v, bool repr);
/* Python float repr: shortest digits that round-trip, 1e+16 / 1e-05 style exponents. */
void jv_float_repr(jj_buf *b, double f);
/* json.dumps(v, ensure_ascii, indent (NULL: none), separators, sort_keys). Returns false
 * (with *bad set to the offending value) for values JSON cannot hold. */
typedef struct jj_json_opts {
    bool ensure_ascii, sort_keys;
    const char *indent; /* NULL: compact layout */
    const char *item_sep, *key_sep;
} jj_json_opts;
bool jv_to_json(jj_buf *b, jv v, const jj_json_opts *o, int depth, jv *bad);

/* UTF-8 helpers (invalid bytes decode as U+FFFD-like single bytes, never crash). */
size_t jj_utf8_dec(const char *s, size_t n, int32_t *cp); /* returns bytes consumed (>=1) */
size_t jj_utf8_enc(int32_t cp, char out[4]);
size_t jj_utf8_len(const char *s, size_t n);
bool jj_py_isspace(int32_t cp);
const char *jv_type_name(jv v);

#endif
