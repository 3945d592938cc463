/* jinja_value.c: the Jinja interpreter's values: arena allocation, Python-style str()/repr()
 * of every value, and json.dumps with Python's exact layout (separators, indent, key order,
 * ensure_ascii), as transformers' tojson filter produces it. */
#include "jinja.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

struct jj_chunk {
    jj_chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *jj_alloc(jj_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    jj_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (a->total + cap > a->limit) longjmp(*a->oom, 2);
        c = malloc(sizeof(jj_chunk) + cap);
        if (!c) longjmp(*a->oom, 2);
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
        a->total += cap;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void jj_arena_free(jj_arena *a) {
    jj_chunk *c = a->head;
    while (c) {
        jj_chunk *nx = c->next;
        free(c);
        c = nx;
    }
    a->head = NULL;
    a->total = 0;
}

char *jj_strndup(jj_arena *a, const char *s, size_t n) {
    char *p = jj_alloc(a, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void jj_buf_put(jj_buf *b, const char *s, size_t n) {
    if (n == 0) return;
    if (b->n + n > b->limit) longjmp(*b->a->oom, 3);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = jj_alloc(b->a, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jj_buf_printf(jj_buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    jj_buf_put(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

/* ---- UTF-8 ---- */
size_t jj_utf8_dec(const char *s, size_t n, int32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    if (n == 0) { *cp = 0; return 1; }
    unsigned c = u[0];
    size_t len;
    int32_t v;
    if (c < 0x80) { *cp = c; return 1; }
    else if ((c & 0xE0) == 0xC0) { len = 2; v = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; v = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; v = c & 0x07; }
    else { *cp = 0xDC00 + c; return 1; }
    if (len > n) { *cp = 0xDC00 + c; return 1; }
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xC0) != 0x80) { *cp = 0xDC00 + c; return 1; }
        v = (v << 6) | (u[i] & 0x3F);
    }
    *cp = v;
    return len;
}

size_t jj_utf8_enc(int32_t cp, char out[4]) {
    if (cp >= 0xDC80 && cp <= 0xDCFF) { out[0] = (char)(cp - 0xDC00); return 1; } /* raw byte */
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF) cp = 0xFFFD;
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t jj_utf8_len(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += jj_utf8_dec(s + i, n - i, &cp);
        k++;
    }
    return k;
}

bool jj_py_isspace(int32_t c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
           c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- constructors ---- */
jv jv_str(jj_arena *a, const char *s, size_t n) { return jv_strref(jj_strndup(a, s, n), n); }

jv jv_list_new(jj_arena *a, size_t cap) {
    jv v = {JV_LIST, 0, {0}};
    v.u.l = jj_alloc(a, sizeof(jv_list));
    if (cap) {
        v.u.l->v = jj_alloc(a, cap * sizeof(jv));
        v.u.l->cap = cap;
    }
    return v;
}

void jv_list_push(jj_arena *a, jv *list, jv item) {
    jv_list *l = list->u.l;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *nv = jj_alloc(a, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = item;
}

jv jv_dict_new(jj_arena *a, size_t cap) {
    jv v = {JV_DICT, 0, {0}};
    v.u.d = jj_alloc(a, sizeof(jv_dict));
    if (cap) {
        v.u.d->k = jj_alloc(a, cap * sizeof(jv));
        v.u.d->v = jj_alloc(a, cap * sizeof(jv));
        v.u.d->cap = cap;
    }
    return v;
}

jv *jv_dict_getv(const jv_dict *d, jv key) {
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->k[i], key)) return &d->v[i];
    return NULL;
}

jv *jv_dict_get(const jv_dict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s.n == n && memcmp(d->k[i].u.s.p, k, n) == 0)
            return &d->v[i];
    return NULL;
}

void jv_dict_set(jj_arena *a, jv *dict, jv key, jv val) {
    jv_dict *d = dict->u.d;
    jv *slot = jv_dict_getv(d, key);
    if (slot) { *slot = val; return; }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = jj_alloc(a, cap * sizeof(jv)), *nv = jj_alloc(a, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = val;
    d->n++;
}

/* ---- truth and equality (Python semantics; bool is an int) ---- */
bool jv_truthy(jv v) {
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return false;
    case JV_BOOL: case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s.n != 0;
    case JV_LIST: return (v.flags & JL_GEN) ? true : v.u.l->n != 0;
    case JV_DICT: return v.u.d->n != 0;
    default: return true;
    }
}

static bool is_num(jv v) { return v.t == JV_BOOL || v.t == JV_INT || v.t == JV_FLOAT; }

bool jv_equal(jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return a.u.i == b.u.i;
        double x = a.t == JV_FLOAT ? a.u.f : (double)a.u.i;
        double y = b.t == JV_FLOAT ? b.u.f : (double)b.u.i;
        return x == y;
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return true;
    case JV_STR: return a.u.s.n == b.u.s.n && memcmp(a.u.s.p, b.u.s.p, a.u.s.n) == 0;
    case JV_LIST:
        if ((a.flags | b.flags) & JL_GEN) return a.u.l == b.u.l;
        if ((a.flags & JL_TUPLE) != (b.flags & JL_TUPLE)) return false;
        if (a.u.l->n != b.u.l->n) return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(a.u.l->v[i], b.u.l->v[i])) return false;
        return true;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv *o = jv_dict_getv(b.u.d, a.u.d->k[i]);
            if (!o || !jv_equal(a.u.d->v[i], *o)) return false;
        }
        return true;
    default: return a.u.ptr == b.u.ptr;
    }
}

const char *jv_type_name(jv v) {
    switch (v.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST:
        return (v.flags & JL_GEN) ? "generator" : (v.flags & JL_TUPLE) ? "tuple" : (v.flags & JL_ITEMS) ? "dict_items"
               : (v.flags & JL_KEYS) ? "dict_keys" : (v.flags & JL_VALUES) ? "dict_values" : "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_LOOP: return "LoopContext";
    case JV_MACRO: return "Macro";
    default: return "function";
    }
}

/* ---- printing ---- */
void jv_float_repr(jj_buf *b, double f) {
    if (isnan(f)) { jj_buf_puts(b, "nan"); return; }
    if (isinf(f)) { jj_buf_puts(b, f < 0 ? "-inf" : "inf"); return; }
    if (f == 0) { jj_buf_puts(b, signbit(f) ? "-0.0" : "0.0"); return; }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[32];
    int nd = 0;
    const char *p = tmp;
    bool neg = false;
    if (*p == '-') { neg = true; p++; }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int exp = atoi(p + 1);
    if (neg) jj_buf_putc(b, '-');
    if (exp >= -5 + 1 && exp < 16) {
        int decpt = exp + 1;
        if (decpt <= 0) {
            jj_buf_puts(b, "0.");
            for (int i = 0; i < -decpt; i++) jj_buf_putc(b, '0');
            jj_buf_put(b, digits, (size_t)nd);
        } else if (nd <= decpt) {
            jj_buf_put(b, digits, (size_t)nd);
            for (int i = nd; i < decpt; i++) jj_buf_putc(b, '0');
            jj_buf_puts(b, ".0");
        } else {
            jj_buf_put(b, digits, (size_t)decpt);
            jj_buf_putc(b, '.');
            jj_buf_put(b, digits + decpt, (size_t)(nd - decpt));
        }
    } else {
        jj_buf_putc(b, digits[0]);
        if (nd > 1) {
            jj_buf_putc(b, '.');
            jj_buf_put(b, digits + 1, (size_t)(nd - 1));
        }
        jj_buf_printf(b, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    }
}

static bool py_printable(int32_t cp) {
    if (cp == ' ') return true;
    if (cp < 0x20 || cp == 0x7F) return false;
    if (cp < 0x7F) return true;
    if (cp >= 0xDC80 && cp <= 0xDCFF) return false;
    utf8proc_category_t c = utf8proc_category(cp);
    switch (c) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
        return false;
    default: return true;
    }
}

static void str_repr(jj_buf *b, const char *s, size_t n) {
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = (sq && !dq) ? '"' : '\'';
    jj_buf_putc(b, q);
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = jj_utf8_dec(s + i, n - i, &cp);
        if (cp == q || cp == '\\') { jj_buf_putc(b, '\\'); jj_buf_putc(b, (char)cp); }
        else if (cp == '\n') jj_buf_puts(b, "\\n");
        else if (cp == '\r') jj_buf_puts(b, "\\r");
        else if (cp == '\t') jj_buf_puts(b, "\\t");
        else if (cp >= 0xDC80 && cp <= 0xDCFF) jj_buf_printf(b, "\\udc%02x", (unsigned)(cp & 0xFF));
        else if (!py_printable(cp)) {
            if (cp < 0x100) jj_buf_printf(b, "\\x%02x", (unsigned)cp);
            else if (cp < 0x10000) jj_buf_printf(b, "\\u%04x", (unsigned)cp);
            else jj_buf_printf(b, "\\U%08x", (unsigned)cp);
        } else jj_buf_put(b, s + i, k);
        i += k;
    }
    jj_buf_putc(b, q);
}

static void print_rec(jj_buf *b, jv v, bool repr, int depth) {
    if (depth > 200) { jj_buf_puts(b, "[...]"); return; }
    switch (v.t) {
    case JV_UNDEF: if (repr) jj_buf_puts(b, "Undefined"); break;
    case JV_NONE: jj_buf_puts(b, "None"); break;
    case JV_BOOL: jj_buf_puts(b, v.u.i ? "True" : "False"); break;
    case JV_INT: jj_buf_printf(b, "%lld", (long long)v.u.i); break;
    case JV_FLOAT: jv_float_repr(b, v.u.f); break;
    case JV_STR:
        if (repr && (v.flags & JS_MARKUP)) {
            jj_buf_puts(b, "Markup(");
            str_repr(b, v.u.s.p, v.u.s.n);
            jj_buf_putc(b, ')');
        } else if (repr) str_repr(b, v.u.s.p, v.u.s.n);
        else jj_buf_put(b, v.u.s.p, v.u.s.n);
        break;
    case JV_LIST:
        if (v.flags & JL_GEN) { jj_buf_puts(b, "<generator object>"); break; }
        if (v.flags & (JL_ITEMS | JL_KEYS | JL_VALUES)) {
            jv plain = v;
            plain.flags = 0;
            jj_buf_puts(b, (v.flags & JL_ITEMS) ? "dict_items(" : (v.flags & JL_KEYS) ? "dict_keys(" : "dict_values(");
            print_rec(b, plain, true, depth + 1);
            jj_buf_putc(b, ')');
            break;
        }
        jj_buf_putc(b, (v.flags & JL_TUPLE) ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jj_buf_puts(b, ", ");
            print_rec(b, v.u.l->v[i], true, depth + 1);
        }
        if ((v.flags & JL_TUPLE) && v.u.l->n == 1) jj_buf_putc(b, ',');
        jj_buf_putc(b, (v.flags & JL_TUPLE) ? ')' : ']');
        break;
    case JV_NS:
        jj_buf_puts(b, "<Namespace ");
        /* fall through */
    case JV_DICT:
        jj_buf_putc(b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) jj_buf_puts(b, ", ");
            print_rec(b, v.u.d->k[i], true, depth + 1);
            jj_buf_puts(b, ": ");
            print_rec(b, v.u.d->v[i], true, depth + 1);
        }
        jj_buf_putc(b, '}');
        if (v.t == JV_NS) jj_buf_putc(b, '>');
        break;
    case JV_LOOP: jj_buf_puts(b, "<LoopContext>"); break;
    case JV_MACRO: jj_buf_puts(b, "<Macro>"); break;
    default: jj_buf_puts(b, "<function>"); break;
    }
}

void jv_print(jj_buf *b, jv v, bool repr) { print_rec(b, v, repr, 0); }

/* ---- JSON ---- */
static void json_str(jj_buf *b, const char *s, size_t n, bool ascii) {
    jj_buf_putc(b, '"');
    size_t run = 0; /* start of pending literal bytes */
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[16];
        size_t k = 1;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20 || (ascii && c == 0x7F)) { snprintf(tmp, sizeof tmp, "\\u%04x", c); esc = tmp; }
        else if (c >= 0x80 && ascii) {
            int32_t cp;
            k = jj_utf8_dec(s + i, n - i, &cp);
            if (cp >= 0x10000) {
                int32_t v = cp - 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else snprintf(tmp, sizeof tmp, "\\u%04x", (unsigned)cp);
            esc = tmp;
        }
        if (esc) {
            jj_buf_put(b, s + run, i - run);
            jj_buf_puts(b, esc);
            i += k;
            run = i;
        } else i++;
    }
    jj_buf_put(b, s + run, n - run);
    jj_buf_putc(b, '"');
}

static void json_nl(jj_buf *b, const jj_json_opts *o, int depth) {
    jj_buf_putc(b, '\n');
    for (int i = 0; i < depth; i++) jj_buf_puts(b, o->indent);
}

static int key_cmp(const void *x, const void *y) {
    const jv *a = *(const jv *const *)x, *c = *(const jv *const *)y;
    size_t n = a->u.s.n < c->u.s.n ? a->u.s.n : c->u.s.n;
    int r = memcmp(a->u.s.p, c->u.s.p, n);
    if (r) return r;
    return a->u.s.n < c->u.s.n ? -1 : a->u.s.n > c->u.s.n;
}

bool jv_to_json(jj_buf *b, jv v, const jj_json_opts *o, int depth, jv *bad) {
    if (depth > 500) { *bad = v; return false; }
    switch (v.t) {
    case JV_NONE: jj_buf_puts(b, "null"); return true;
    case JV_BOOL: jj_buf_puts(b, v.u.i ? "true" : "false"); return true;
    case JV_INT: jj_buf_printf(b, "%lld", (long long)v.u.i); return true;
    case JV_FLOAT:
        if (isnan(v.u.f)) jj_buf_puts(b, "NaN");
        else if (isinf(v.u.f)) jj_buf_puts(b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else jv_float_repr(b, v.u.f);
        return true;
    case JV_STR: json_str(b, v.u.s.p, v.u.s.n, o->ensure_ascii); return true;
    case JV_LIST:
        if (v.flags & (JL_GEN | JL_ITEMS | JL_KEYS | JL_VALUES)) { *bad = v; return false; }
        if (v.u.l->n == 0) { jj_buf_puts(b, "[]"); return true; }
        jj_buf_putc(b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jj_buf_puts(b, o->item_sep);
            if (o->indent) json_nl(b, o, depth + 1);
            if (!jv_to_json(b, v.u.l->v[i], o, depth + 1, bad)) return false;
        }
        if (o->indent) json_nl(b, o, depth);
        jj_buf_putc(b, ']');
        return true;
    case JV_DICT: {
        jv_dict *d = v.u.d;
        if (d->n == 0) { jj_buf_puts(b, "{}"); return true; }
        const jv **keys = NULL;
        if (o->sort_keys) {
            keys = jj_alloc(b->a, d->n * sizeof *keys);
            for (size_t i = 0; i < d->n; i++) {
                if (d->k[i].t != JV_STR) { *bad = d->k[i]; return false; }
                keys[i] = &d->k[i];
            }
            qsort(keys, d->n, sizeof *keys, key_cmp);
        }
        jj_buf_putc(b, '{');
        bool ok = true;
        for (size_t j = 0; j < d->n && ok; j++) {
            size_t i = keys ? (size_t)(keys[j] - d->k) : j;
            if (j) jj_buf_puts(b, o->item_sep);
            if (o->indent) json_nl(b, o, depth + 1);
            jv k = d->k[i];
            /* Python coerces int/float/bool/None keys to strings */
            if (k.t == JV_STR) json_str(b, k.u.s.p, k.u.s.n, o->ensure_ascii);
            else if (k.t == JV_INT) jj_buf_printf(b, "\"%lld\"", (long long)k.u.i);
            else if (k.t == JV_BOOL) jj_buf_puts(b, k.u.i ? "\"true\"" : "\"false\"");
            else if (k.t == JV_NONE) jj_buf_puts(b, "\"null\"");
            else if (k.t == JV_FLOAT) { jj_buf_putc(b, '"'); jv_float_repr(b, k.u.f); jj_buf_putc(b, '"'); }
            else { *bad = k; ok = false; break; }
            jj_buf_puts(b, o->key_sep);
            ok = jv_to_json(b, d->v[i], o, depth + 1, bad);
        }
        if (!ok) return false;
        if (o->indent) json_nl(b, o, depth);
        jj_buf_putc(b, '}');
        return true;
    }
    default: *bad = v; return false;
    }
}
