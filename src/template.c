/* template.c: a Jinja interpreter for the subset chat templates use, rendering as Hugging
 * Face transformers does (jinja2 ImmutableSandboxedEnvironment with trim_blocks and
 * lstrip_blocks, the loopcontrols extension, the {% generation %} tag, tojson with
 * ensure_ascii=False, and the raise_exception / strftime_now globals).
 * Lexer -> tokens -> AST (compile arena) -> tree-walking evaluator (render arena).
 * Errors unwind with longjmp; every allocation lives in an arena freed at the end. */
#include "template.h"
#include "jinja.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#define MAX_PARSE_DEPTH 120
#define MAX_RENDER_DEPTH 200
#define MAX_STEPS 20000000ULL
#define COMPILE_ARENA_LIMIT ((size_t)256 << 20)
#define RENDER_ARENA_LIMIT ((size_t)256 << 20)
#define OUTPUT_LIMIT ((size_t)64 << 20)
#define RANGE_LIMIT 1000000

/* ================================================================ tokens */
enum { TK_DATA, TK_VAR_BEGIN, TK_VAR_END, TK_BLOCK_BEGIN, TK_BLOCK_END, TK_NAME, TK_STRING,
       TK_INT, TK_FLOAT, TK_OP, TK_EOF };
enum { OP_POW = 256, OP_FLOORDIV, OP_EQ, OP_NE, OP_LE, OP_GE, OP_IN, OP_NOTIN };

typedef struct tok {
    int type, op, line, col;
    const char *p;
    size_t n;
    int64_t i;
    double f;
} tok;

/* ================================================================ AST */
enum {
    N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SETATTR, N_SETBLOCK, N_MACRO, N_CALLBLOCK,
    N_BREAK, N_CONTINUE, N_GENERATION, N_FILTERBLOCK,
    E_CONST, E_NAME, E_GETATTR, E_GETITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN,
    E_NEG, E_POS, E_NOT, E_AND, E_OR, E_COMPARE, E_COND, E_LIST, E_TUPLE, E_DICT, E_CONCAT
};

typedef struct node node;
struct node {
    int kind, line, col, op;
    const char *name; /* names, attribute, filter/test/macro name, text */
    size_t name_n;
    jv cval;
    node *a, *b, *c;
    node **kids;        /* args, list items, dict keys/values interleaved, compare operands */
    const char **kwn;   /* keyword names for kids (NULL entries: positional) */
    int nkids;
    int *ops;           /* compare operators */
    node **body, **els; /* statement bodies */
    int nbody, nels;
    const char **names; /* for-targets, macro/call params */
    int nnames;
    node **defs;        /* macro/call param defaults (NULL: none) */
    int negate;
};

struct fm__tmpl {
    jj_arena arena;
    node **body;
    int nbody;
};

/* ================================================================ compile state */
typedef struct P {
    jj_arena *a;
    jmp_buf jb;
    char err[512];
    const char *s;
    size_t n;
    tok *t;
    size_t nt, cap, i;
    int depth;
    size_t pos_off; /* pos_of cache */
    int pos_line, pos_col;
} P;

static void pfail_at(P *p, int line, int col, const char *fmt, ...) FM_PRINTF(4, 5);
static void pfail_at(P *p, int line, int col, const char *fmt, ...) {
    int k = snprintf(p->err, sizeof p->err, "line %d, column %d: ", line, col);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, sizeof p->err - (size_t)k, fmt, ap);
    va_end(ap);
    longjmp(p->jb, 1);
}

/* Line and column (1-based, columns in bytes) of a source offset. Offsets mostly grow while
 * lexing, so scanning resumes from the previous answer. */
static void pos_of(P *p, size_t off, int *line, int *col) {
    if (off < p->pos_off) { p->pos_off = 0; p->pos_line = 1; p->pos_col = 1; }
    int l = p->pos_line, c = p->pos_col;
    for (size_t i = p->pos_off; i < off && i < p->n; i++) {
        if (p->s[i] == '\n') { l++; c = 1; }
        else c++;
    }
    p->pos_off = off < p->n ? off : p->n;
    p->pos_line = l;
    p->pos_col = c;
    *line = l;
    *col = c;
}

static tok *push_tok(P *p, int type, size_t off) {
    if (p->nt == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        tok *nt = jj_alloc(p->a, cap * sizeof(tok));
        if (p->nt) memcpy(nt, p->t, p->nt * sizeof(tok));
        p->t = nt;
        p->cap = cap;
    }
    tok *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->type = type;
    pos_of(p, off, &t->line, &t->col);
    return t;
}

/* Python's str.rstrip(): trailing Unicode whitespace. */
static size_t rstrip_len(const char *s, size_t n) {
    while (n > 0) {
        size_t k = 1;
        while (k < n && k < 4 && ((unsigned char)s[n - k] & 0xC0) == 0x80) k++;
        int32_t cp;
        size_t used = jj_utf8_dec(s + n - k, k, &cp);
        if (used != k) { k = 1; cp = (unsigned char)s[n - 1]; }
        if (!jj_py_isspace(cp)) break;
        n -= k;
    }
    return n;
}

static bool all_space(const char *s, size_t n) {
    if (n == 0) return false;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += jj_utf8_dec(s + i, n - i, &cp);
        if (!jj_py_isspace(cp)) return false;
    }
    return true;
}

static size_t skip_ws(const char *s, size_t n, size_t i) {
    while (i < n) {
        int32_t cp;
        size_t k = jj_utf8_dec(s + i, n - i, &cp);
        if (!jj_py_isspace(cp)) break;
        i += k;
    }
    return i;
}

static void emit_data(P *p, size_t off, const char *s, size_t n) {
    if (n == 0) return;
    tok *t = push_tok(p, TK_DATA, off);
    t->p = s;
    t->n = n;
}

/* Decodes a Python string literal body (unicode-escape rules). */
static void decode_string(P *p, tok *t, const char *s, size_t n) {
    char *o = jj_alloc(p->a, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) { o[k++] = s[i]; continue; }
        char c = s[++i];
        int32_t cp = -1;
        switch (c) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\n': break;
        case 'x': case 'u': case 'U': {
            int want = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            int32_t v = 0;
            int got = 0;
            while (got < want && i + 1 < n) {
                char h = s[i + 1];
                int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                        : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
                if (d < 0) break;
                v = v * 16 + d;
                got++;
                i++;
            }
            if (got != want || v > 0x10FFFF)
                pfail_at(p, t->line, t->col, "invalid \\%c escape in string literal", c);
            cp = v;
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                int32_t v = c - '0';
                for (int j = 0; j < 2 && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '7'; j++)
                    v = v * 8 + (s[++i] - '0');
                cp = v;
            } else {
                o[k++] = '\\';
                o[k++] = c;
            }
        }
        if (cp >= 0) {
            char e[4];
            size_t m = jj_utf8_enc(cp, e);
            memcpy(o + k, e, m); /* an escape is never shorter than its encoding */
            k += m;
        }
    }
    o[k] = 0;
    t->p = o;
    t->n = k;
}

static bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_ident(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }

/* Tokenizes the inside of a {{ }} or {% %} tag starting at i; returns the position after
 * the closing delimiter (with its whitespace control applied). */
static size_t lex_tag(P *p, size_t i, bool block, size_t open_off) {
    const char *s = p->s;
    size_t n = p->n;
    char stack[MAX_PARSE_DEPTH + 1]; /* open brackets: the tag cannot end inside them (as jinja2) */
    int depth = 0;
    for (;;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f' || s[i] == '\v'))
            i++;
        if (i >= n) {
            int l, c;
            pos_of(p, open_off, &l, &c);
            pfail_at(p, l, c, "unexpected end of template: tag opened here is never closed");
        }
        if (depth > 0) {
            /* inside brackets "}}" and "%}" are operators */
        } else if (block) {
            if (s[i] == '-' && n - i >= 3 && s[i + 1] == '%' && s[i + 2] == '}') {
                push_tok(p, TK_BLOCK_END, i);
                return skip_ws(s, n, i + 3);
            }
            if (s[i] == '+' && n - i >= 3 && s[i + 1] == '%' && s[i + 2] == '}') {
                push_tok(p, TK_BLOCK_END, i);
                return i + 3;
            }
            if (s[i] == '%' && n - i >= 2 && s[i + 1] == '}') {
                push_tok(p, TK_BLOCK_END, i);
                i += 2;
                if (i < n && s[i] == '\n') i++; /* trim_blocks */
                return i;
            }
        } else {
            if (s[i] == '-' && n - i >= 3 && s[i + 1] == '}' && s[i + 2] == '}') {
                push_tok(p, TK_VAR_END, i);
                return skip_ws(s, n, i + 3);
            }
            if (s[i] == '}' && n - i >= 2 && s[i + 1] == '}') {
                push_tok(p, TK_VAR_END, i);
                return i + 2;
            }
        }
        char c = s[i];
        if (c >= '0' && c <= '9') {
            size_t st = i;
            bool isf = false;
            while (i < n && ((s[i] >= '0' && s[i] <= '9') || (s[i] == '_' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9'))) i++;
            if (i + 1 < n && s[i] == '.' && s[i + 1] >= '0' && s[i + 1] <= '9') {
                isf = true;
                i++;
                while (i < n && ((s[i] >= '0' && s[i] <= '9') || (s[i] == '_' && i + 1 < n && s[i + 1] >= '0' && s[i + 1] <= '9'))) i++;
            }
            if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                size_t j = i + 1;
                if (j < n && (s[j] == '+' || s[j] == '-')) j++;
                if (j < n && s[j] >= '0' && s[j] <= '9') {
                    isf = true;
                    i = j;
                    while (i < n && s[i] >= '0' && s[i] <= '9') i++;
                }
            }
            char buf[64];
            size_t k = 0;
            for (size_t j = st; j < i && k < sizeof buf - 1; j++)
                if (s[j] != '_') buf[k++] = s[j];
            buf[k] = 0;
            tok *t = push_tok(p, isf ? TK_FLOAT : TK_INT, st);
            if (isf) t->f = strtod(buf, NULL);
            else {
                errno = 0;
                unsigned long long v = strtoull(buf, NULL, 10);
                if (errno || v > INT64_MAX) pfail_at(p, t->line, t->col, "integer literal too large");
                t->i = (int64_t)v;
            }
            continue;
        }
        if (is_ident_start(c)) {
            size_t st = i;
            while (i < n && is_ident(s[i])) i++;
            tok *t = push_tok(p, TK_NAME, st);
            t->p = s + st;
            t->n = i - st;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t st = i++;
            while (i < n && s[i] != c) {
                if (s[i] == '\\' && i + 1 < n) i++;
                i++;
            }
            tok *t = push_tok(p, TK_STRING, st);
            if (i >= n) pfail_at(p, t->line, t->col, "unterminated string literal");
            decode_string(p, t, s + st + 1, i - st - 1);
            i++;
            continue;
        }
        int op = 0;
        size_t len = 1;
        char d = i + 1 < n ? s[i + 1] : 0;
        if (c == '*' && d == '*') { op = OP_POW; len = 2; }
        else if (c == '/' && d == '/') { op = OP_FLOORDIV; len = 2; }
        else if (c == '=' && d == '=') { op = OP_EQ; len = 2; }
        else if (c == '!' && d == '=') { op = OP_NE; len = 2; }
        else if (c == '<' && d == '=') { op = OP_LE; len = 2; }
        else if (c == '>' && d == '=') { op = OP_GE; len = 2; }
        else if (strchr("+-*/%~<>=.,:|()[]{}", c) && c) op = c;
        if (!op) {
            int l, cc;
            pos_of(p, i, &l, &cc);
            pfail_at(p, l, cc, "unexpected character '%c'", c);
        }
        tok *t = push_tok(p, TK_OP, i);
        if (op == '(' || op == '[' || op == '{') {
            if (depth == MAX_PARSE_DEPTH) pfail_at(p, t->line, t->col, "brackets nested too deeply");
            stack[depth++] = op == '(' ? ')' : op == '[' ? ']' : '}';
        } else if (op == ')' || op == ']' || op == '}') {
            if (depth == 0) pfail_at(p, t->line, t->col, "unexpected '%c'", op);
            if (stack[depth - 1] != op) pfail_at(p, t->line, t->col, "unexpected '%c', expected '%c'", op, stack[depth - 1]);
            depth--;
        }
        t->op = op;
        i += len;
    }
}

/* Matches `{%[-+]? raw [-+]?%}` at i (i at '{'); returns the end or 0. */
static size_t match_word_tag(const char *s, size_t n, size_t i, const char *word, char *sign_out, char *endsign) {
    size_t j = i + 2;
    *sign_out = 0;
    if (j < n && (s[j] == '-' || s[j] == '+')) *sign_out = s[j++];
    while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
    size_t wl = strlen(word);
    if (n - j < wl || memcmp(s + j, word, wl) != 0) return 0;
    j += wl;
    if (j < n && is_ident(s[j])) return 0;
    while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
    *endsign = 0;
    if (j < n && (s[j] == '-' || s[j] == '+')) *endsign = s[j++];
    if (n - j < 2 || s[j] != '%' || s[j + 1] != '}') return 0;
    return j + 2;
}

static void lex(P *p) {
    const char *s = p->s;
    size_t n = p->n, pos = 0;
    while (pos < n) {
        size_t k = pos;
        char kind = 0;
        while (k + 1 < n) {
            if (s[k] == '{' && (s[k + 1] == '{' || s[k + 1] == '%' || s[k + 1] == '#')) { kind = s[k + 1]; break; }
            k++;
        }
        if (!kind) { emit_data(p, pos, s + pos, n - pos); break; }
        size_t tl = k - pos;
        char sign = (k + 2 < n && (s[k + 2] == '-' || s[k + 2] == '+')) ? s[k + 2] : 0;
        bool line_starting = pos == 0 || s[pos - 1] == '\n';
        if (sign == '-') tl = rstrip_len(s + pos, tl);
        else if (sign != '+' && kind != '{') {
            size_t lpos = 0;
            for (size_t j = tl; j > 0; j--)
                if (s[pos + j - 1] == '\n') { lpos = j; break; }
            if ((lpos > 0 || line_starting) && all_space(s + pos + lpos, tl - lpos)) tl = lpos;
        }
        emit_data(p, pos, s + pos, tl);
        if (kind == '#') {
            size_t j = k + 2;
            while (j + 1 < n && !(s[j] == '#' && s[j + 1] == '}')) j++;
            if (j + 1 >= n) {
                int l, c;
                pos_of(p, k, &l, &c);
                pfail_at(p, l, c, "missing end of comment tag");
            }
            if (j > k + 2 && s[j - 1] == '-') pos = skip_ws(s, n, j + 2);
            else if (j > k + 2 && s[j - 1] == '+') pos = j + 2;
            else {
                pos = j + 2;
                if (pos < n && s[pos] == '\n') pos++;
            }
            continue;
        }
        if (kind == '%') {
            char sg, es;
            size_t e = match_word_tag(s, n, k, "raw", &sg, &es);
            if (e) {
                size_t j = es == '-' ? skip_ws(s, n, e) : e;
                size_t q = j;
                for (;;) {
                    while (q + 1 < n && !(s[q] == '{' && s[q + 1] == '%')) q++;
                    if (q + 1 >= n) {
                        int l, c;
                        pos_of(p, k, &l, &c);
                        pfail_at(p, l, c, "missing end of raw directive");
                    }
                    char sg2, es2;
                    size_t e2 = match_word_tag(s, n, q, "endraw", &sg2, &es2);
                    if (e2) {
                        size_t rl = q - j;
                        if (sg2 == '-') rl = rstrip_len(s + j, rl);
                        else if (sg2 != '+') { /* lstrip_blocks applies to endraw too */
                            size_t lpos = 0;
                            for (size_t z = rl; z > 0; z--)
                                if (s[j + z - 1] == '\n') { lpos = z; break; }
                            if ((lpos > 0 || j == 0 || s[j - 1] == '\n') && all_space(s + j + lpos, rl - lpos)) rl = lpos;
                        }
                        emit_data(p, j, s + j, rl);
                        if (es2 == '-') pos = skip_ws(s, n, e2);
                        else if (es2 == '+') pos = e2;
                        else {
                            pos = e2;
                            if (pos < n && s[pos] == '\n') pos++;
                        }
                        break;
                    }
                    q++;
                }
                continue;
            }
        }
        push_tok(p, kind == '{' ? TK_VAR_BEGIN : TK_BLOCK_BEGIN, k);
        pos = lex_tag(p, k + 2 + (sign ? 1 : 0), kind == '%', k);
    }
    push_tok(p, TK_EOF, n);
}

/* ================================================================ parser */
static tok *cur(P *p) { return &p->t[p->i]; }
static tok *peek(P *p, int k) { size_t j = p->i + (size_t)k; return &p->t[j < p->nt ? j : p->nt - 1]; }
static void adv(P *p) { if (p->i + 1 < p->nt) p->i++; }
static bool is_op(tok *t, int op) { return t->type == TK_OP && t->op == op; }
static bool is_name(tok *t, const char *w) { return t->type == TK_NAME && t->n == strlen(w) && memcmp(t->p, w, t->n) == 0; }

static const char *tok_desc(tok *t, char *buf, size_t bn) {
    switch (t->type) {
    case TK_DATA: return "template data";
    case TK_VAR_BEGIN: return "'{{'";
    case TK_VAR_END: return "end of print statement";
    case TK_BLOCK_BEGIN: return "'{%'";
    case TK_BLOCK_END: return "end of statement block";
    case TK_NAME: snprintf(buf, bn, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p); return buf;
    case TK_STRING: return "string";
    case TK_INT: return "integer";
    case TK_FLOAT: return "float";
    case TK_EOF: return "end of template";
    default:
        if (t->op < 256) snprintf(buf, bn, "'%c'", t->op);
        else snprintf(buf, bn, "operator");
        return buf;
    }
}

static void unexpected(P *p, const char *want) {
    char b[64];
    tok *t = cur(p);
    pfail_at(p, t->line, t->col, "unexpected %s, expected %s", tok_desc(t, b, sizeof b), want);
}

static void expect_op(P *p, int op) {
    if (!is_op(cur(p), op)) {
        char w[8] = {'\'', (char)op, '\'', 0};
        unexpected(p, w);
    }
    adv(p);
}

static node *mk(P *p, int kind, tok *at) {
    node *n = jj_alloc(p->a, sizeof(node));
    n->kind = kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}

typedef struct nodevec { node **v; const char **kw; int n, cap; } nodevec;
static void nv_push(P *p, nodevec *v, node *x, const char *kw) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        node **nv = jj_alloc(p->a, (size_t)cap * sizeof(node *));
        const char **nk = jj_alloc(p->a, (size_t)cap * sizeof(char *));
        if (v->n) {
            memcpy(nv, v->v, (size_t)v->n * sizeof(node *));
            memcpy(nk, v->kw, (size_t)v->n * sizeof(char *));
        }
        v->v = nv;
        v->kw = nk;
        v->cap = cap;
    }
    v->kw[v->n] = kw;
    v->v[v->n++] = x;
}

static const char *tokname(P *p, tok *t) { return jj_strndup(p->a, t->p, t->n); }

static node *parse_expr(P *p);
static node *parse_or(P *p);
static node *parse_unary(P *p, bool with_filter);
static node *parse_primary(P *p);
static node *parse_postfix(P *p, node *n);

static void enter(P *p) {
    if (++p->depth > MAX_PARSE_DEPTH) {
        tok *t = cur(p);
        pfail_at(p, t->line, t->col, "expression nested too deeply");
    }
}

static const char *const FILTERS[] = {
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first",
    "float", "format", "indent", "int", "items", "join", "last", "length", "list", "lower",
    "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe",
    "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
    "upper", "wordcount", NULL};
static const char *const TESTS[] = {
    "defined", "undefined", "none", "string", "mapping", "iterable", "number", "integer",
    "float", "sequence", "boolean", "true", "false", "equalto", "eq", "==", "ne", "!=", "lt",
    "<", "le", "<=", "gt", ">", "ge", ">=", "odd", "even", "divisibleby", "in", "callable",
    "lower", "upper", "sameas", "filter", "test", NULL};

static bool in_list(const char *const *l, const char *s) {
    for (; *l; l++)
        if (strcmp(*l, s) == 0) return true;
    return false;
}

static void parse_call_args(P *p, node *n) {
    nodevec v = {0};
    expect_op(p, '(');
    while (!is_op(cur(p), ')')) {
        if (v.n) {
            expect_op(p, ',');
            if (is_op(cur(p), ')')) break;
        }
        if (is_op(cur(p), '*') || is_op(cur(p), OP_POW)) unexpected(p, "an argument (*args/**kwargs are not supported)");
        const char *kw = NULL;
        if (cur(p)->type == TK_NAME && is_op(peek(p, 1), '=')) {
            kw = tokname(p, cur(p));
            adv(p);
            adv(p);
        }
        nv_push(p, &v, parse_expr(p), kw);
    }
    adv(p);
    n->kids = v.v;
    n->kwn = v.kw;
    n->nkids = v.n;
}

static node *parse_filter_test(P *p, node *n) {
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, '|')) {
            adv(p);
            tok *nt = cur(p);
            if (nt->type != TK_NAME) unexpected(p, "a filter name");
            node *f = mk(p, E_FILTER, nt);
            f->name = tokname(p, nt);
            adv(p);
            if (!in_list(FILTERS, f->name)) pfail_at(p, nt->line, nt->col, "no filter named '%s'", f->name);
            f->a = n;
            if (is_op(cur(p), '(')) parse_call_args(p, f);
            n = f;
        } else if (is_name(t, "is")) {
            adv(p);
            node *f = mk(p, E_TEST, t);
            if (is_name(cur(p), "not")) { f->negate = 1; adv(p); }
            tok *nt = cur(p);
            if (nt->type == TK_NAME) f->name = tokname(p, nt);
            else if (nt->type == TK_OP && (nt->op == OP_EQ || nt->op == OP_NE || nt->op == '<' || nt->op == '>' || nt->op == OP_LE || nt->op == OP_GE))
                f->name = nt->op == OP_EQ ? "==" : nt->op == OP_NE ? "!=" : nt->op == '<' ? "<" : nt->op == '>' ? ">" : nt->op == OP_LE ? "<=" : ">=";
            else unexpected(p, "a test name");
            adv(p);
            if (!in_list(TESTS, f->name)) pfail_at(p, nt->line, nt->col, "no test named '%s'", f->name);
            f->a = n;
            tok *q = cur(p);
            if (is_op(q, '(')) parse_call_args(p, f);
            else if ((q->type == TK_NAME || q->type == TK_STRING || q->type == TK_INT || q->type == TK_FLOAT ||
                      is_op(q, '[') || is_op(q, '{')) &&
                     !is_name(q, "else") && !is_name(q, "or") && !is_name(q, "and")) {
                if (is_name(q, "is")) pfail_at(p, q->line, q->col, "you cannot chain multiple tests with is");
                node *arg = parse_postfix(p, parse_primary(p));
                f->kids = jj_alloc(p->a, sizeof(node *));
                f->kwn = jj_alloc(p->a, sizeof(char *));
                f->kids[0] = arg;
                f->nkids = 1;
            }
            n = f;
        } else if (is_op(t, '(')) {
            node *c = mk(p, E_CALL, t);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else return n;
    }
}

static node *parse_postfix(P *p, node *n) {
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, '.')) {
            adv(p);
            tok *nt = cur(p);
            if (nt->type == TK_NAME) {
                node *g = mk(p, E_GETATTR, t);
                g->name = tokname(p, nt);
                g->name_n = nt->n;
                g->a = n;
                adv(p);
                n = g;
            } else if (nt->type == TK_INT) {
                node *g = mk(p, E_GETITEM, t);
                g->a = n;
                g->b = mk(p, E_CONST, nt);
                g->b->cval = jv_int(nt->i);
                adv(p);
                n = g;
            } else unexpected(p, "an attribute name");
        } else if (is_op(t, '[')) {
            adv(p);
            node *parts[3] = {0};
            int k = 0;
            bool slice = false;
            for (;;) {
                if (is_op(cur(p), ':')) {
                    slice = true;
                    if (++k > 2) unexpected(p, "']'");
                    adv(p);
                    continue;
                }
                if (is_op(cur(p), ']')) break;
                if (parts[k]) unexpected(p, "':' or ']'");
                parts[k] = parse_expr(p);
            }
            adv(p);
            node *g;
            if (slice) {
                g = mk(p, E_SLICE, t);
                g->b = parts[0];
                g->c = parts[1];
                if (parts[2]) {
                    g->kids = jj_alloc(p->a, sizeof(node *));
                    g->kids[0] = parts[2];
                    g->nkids = 1;
                }
            } else {
                if (!parts[0]) unexpected(p, "a subscript");
                g = mk(p, E_GETITEM, t);
                g->b = parts[0];
            }
            g->a = n;
            n = g;
        } else if (is_op(t, '(')) {
            node *c = mk(p, E_CALL, t);
            c->a = n;
            parse_call_args(p, c);
            n = c;
        } else return n;
    }
}

static node *parse_primary(P *p) {
    tok *t = cur(p);
    node *n;
    enter(p);
    if (t->type == TK_NAME) {
        n = mk(p, E_CONST, t);
        if (is_name(t, "true") || is_name(t, "True")) n->cval = jv_bool(true);
        else if (is_name(t, "false") || is_name(t, "False")) n->cval = jv_bool(false);
        else if (is_name(t, "none") || is_name(t, "None")) n->cval = jv_none();
        else {
            n->kind = E_NAME;
            n->name = tokname(p, t);
            n->name_n = t->n;
        }
        adv(p);
    } else if (t->type == TK_STRING) {
        n = mk(p, E_CONST, t);
        size_t total = 0;
        size_t j = p->i;
        while (p->t[j].type == TK_STRING) total += p->t[j++].n;
        char *buf = jj_alloc(p->a, total + 1);
        size_t k = 0;
        while (cur(p)->type == TK_STRING) {
            memcpy(buf + k, cur(p)->p, cur(p)->n);
            k += cur(p)->n;
            adv(p);
        }
        n->cval = jv_strref(buf, total);
    } else if (t->type == TK_INT) {
        n = mk(p, E_CONST, t);
        n->cval = jv_int(t->i);
        adv(p);
    } else if (t->type == TK_FLOAT) {
        n = mk(p, E_CONST, t);
        n->cval = jv_float(t->f);
        adv(p);
    } else if (is_op(t, '(')) {
        adv(p);
        if (is_op(cur(p), ')')) {
            adv(p);
            n = mk(p, E_TUPLE, t);
        } else {
            node *first = parse_expr(p);
            if (is_op(cur(p), ',')) {
                nodevec v = {0};
                nv_push(p, &v, first, NULL);
                while (is_op(cur(p), ',')) {
                    adv(p);
                    if (is_op(cur(p), ')')) break;
                    nv_push(p, &v, parse_expr(p), NULL);
                }
                n = mk(p, E_TUPLE, t);
                n->kids = v.v;
                n->nkids = v.n;
            } else n = first;
            expect_op(p, ')');
        }
    } else if (is_op(t, '[')) {
        adv(p);
        nodevec v = {0};
        while (!is_op(cur(p), ']')) {
            if (v.n) {
                expect_op(p, ',');
                if (is_op(cur(p), ']')) break;
            }
            nv_push(p, &v, parse_expr(p), NULL);
        }
        adv(p);
        n = mk(p, E_LIST, t);
        n->kids = v.v;
        n->nkids = v.n;
    } else if (is_op(t, '{')) {
        adv(p);
        nodevec v = {0};
        while (!is_op(cur(p), '}')) {
            if (v.n) {
                expect_op(p, ',');
                if (is_op(cur(p), '}')) break;
            }
            nv_push(p, &v, parse_expr(p), NULL);
            expect_op(p, ':');
            nv_push(p, &v, parse_expr(p), NULL);
        }
        adv(p);
        n = mk(p, E_DICT, t);
        n->kids = v.v;
        n->nkids = v.n;
    } else {
        unexpected(p, "an expression");
        return NULL;
    }
    p->depth--;
    return n;
}

static node *parse_unary(P *p, bool with_filter) {
    tok *t = cur(p);
    node *n;
    enter(p);
    if (is_op(t, '-') || is_op(t, '+')) {
        adv(p);
        n = mk(p, is_op(t, '-') ? E_NEG : E_POS, t);
        n->a = parse_unary(p, false);
    } else n = parse_primary(p);
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_test(p, n);
    p->depth--;
    return n;
}

static node *bin(P *p, int op, tok *t, node *a, node *b) {
    node *n = mk(p, E_BIN, t);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(P *p) {
    node *n = parse_unary(p, true);
    while (is_op(cur(p), OP_POW)) {
        tok *t = cur(p);
        adv(p);
        n = bin(p, OP_POW, t, n, parse_unary(p, true));
    }
    return n;
}

static node *parse_math2(P *p) {
    node *n = parse_pow(p);
    for (;;) {
        tok *t = cur(p);
        if (t->type == TK_OP && (t->op == '*' || t->op == '/' || t->op == OP_FLOORDIV || t->op == '%')) {
            adv(p);
            n = bin(p, t->op, t, n, parse_pow(p));
        } else return n;
    }
}

static node *parse_concat(P *p) {
    node *first = parse_math2(p);
    if (!is_op(cur(p), '~')) return first;
    nodevec v = {0};
    nv_push(p, &v, first, NULL);
    tok *t = cur(p);
    while (is_op(cur(p), '~')) {
        adv(p);
        nv_push(p, &v, parse_math2(p), NULL);
    }
    node *n = mk(p, E_CONCAT, t);
    n->kids = v.v;
    n->nkids = v.n;
    return n;
}

static node *parse_math1(P *p) {
    node *n = parse_concat(p);
    for (;;) {
        tok *t = cur(p);
        if (is_op(t, '+') || is_op(t, '-')) {
            adv(p);
            n = bin(p, t->op, t, n, parse_concat(p));
        } else return n;
    }
}

static node *parse_compare(P *p) {
    node *first = parse_math1(p);
    nodevec v = {0};
    int ops[64];
    int nops = 0;
    tok *t0 = cur(p);
    for (;;) {
        tok *t = cur(p);
        int op = 0;
        if (t->type == TK_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == '<' || t->op == '>' || t->op == OP_LE || t->op == OP_GE)) {
            op = t->op;
            adv(p);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            adv(p);
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            op = OP_NOTIN;
            adv(p);
            adv(p);
        } else break;
        if (nops == 64) pfail_at(p, t->line, t->col, "too many chained comparisons");
        ops[nops++] = op;
        nv_push(p, &v, parse_math1(p), NULL);
    }
    if (!nops) return first;
    node *n = mk(p, E_COMPARE, t0);
    n->a = first;
    n->kids = v.v;
    n->nkids = v.n;
    n->ops = jj_alloc(p->a, sizeof(int) * (size_t)nops);
    memcpy(n->ops, ops, sizeof(int) * (size_t)nops);
    return n;
}

static node *parse_not(P *p) {
    tok *t = cur(p);
    if (is_name(t, "not")) {
        adv(p);
        enter(p);
        node *n = mk(p, E_NOT, t);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

static node *parse_and(P *p) {
    node *n = parse_not(p);
    while (is_name(cur(p), "and")) {
        tok *t = cur(p);
        adv(p);
        node *x = mk(p, E_AND, t);
        x->a = n;
        x->b = parse_not(p);
        n = x;
    }
    return n;
}

static node *parse_or(P *p) {
    node *n = parse_and(p);
    while (is_name(cur(p), "or")) {
        tok *t = cur(p);
        adv(p);
        node *x = mk(p, E_OR, t);
        x->a = n;
        x->b = parse_and(p);
        n = x;
    }
    return n;
}

/* Conditional expression: or-expr ['if' or-expr ['else' expr]]. */
static node *parse_expr(P *p) {
    enter(p);
    node *n = parse_or(p);
    while (is_name(cur(p), "if")) {
        tok *t = cur(p);
        adv(p);
        node *c = mk(p, E_COND, t);
        c->a = parse_or(p);
        c->b = n;
        if (is_name(cur(p), "else")) {
            adv(p);
            c->c = parse_expr(p);
        }
        n = c;
    }
    p->depth--;
    return n;
}

/* expr [, expr]* (a bare tuple); with_cond=false for a for-loop's iterable. */
static node *parse_tuple(P *p, bool with_cond) {
    tok *t = cur(p);
    node *first = with_cond ? parse_expr(p) : parse_or(p);
    if (!is_op(cur(p), ',')) return first;
    nodevec v = {0};
    nv_push(p, &v, first, NULL);
    while (is_op(cur(p), ',')) {
        adv(p);
        tok *q = cur(p);
        if (q->type == TK_VAR_END || q->type == TK_BLOCK_END || is_name(q, "if")) break;
        nv_push(p, &v, with_cond ? parse_expr(p) : parse_or(p), NULL);
    }
    node *n = mk(p, E_TUPLE, t);
    n->kids = v.v;
    n->nkids = v.n;
    return n;
}

static void expect_block_end(P *p) {
    if (cur(p)->type != TK_BLOCK_END) unexpected(p, "end of statement block");
    adv(p);
}

static node **parse_body(P *p, const char *const *ends, int *nout, const char *opener, tok *open_tok);

/* Parses "name [, name]*" (optionally in parentheses) as an assignment target. */
static void parse_targets(P *p, node *n) {
    const char *names[16];
    int k = 0;
    bool paren = is_op(cur(p), '(');
    if (paren) adv(p);
    for (;;) {
        tok *t = cur(p);
        if (t->type != TK_NAME) unexpected(p, "a variable name");
        if (k == 16) pfail_at(p, t->line, t->col, "too many loop variables");
        names[k++] = tokname(p, t);
        adv(p);
        if (!is_op(cur(p), ',')) break;
        adv(p);
        if (paren && is_op(cur(p), ')')) break;
    }
    if (paren) expect_op(p, ')');
    n->names = jj_alloc(p->a, sizeof(char *) * (size_t)k);
    memcpy(n->names, names, sizeof(char *) * (size_t)k);
    n->nnames = k;
}

static void parse_params(P *p, node *n) {
    nodevec names = {0}, defs = {0};
    expect_op(p, '(');
    while (!is_op(cur(p), ')')) {
        if (names.n) expect_op(p, ',');
        if (is_op(cur(p), ')')) break;
        tok *t = cur(p);
        if (t->type != TK_NAME) unexpected(p, "a parameter name");
        const char *nm = tokname(p, t);
        adv(p);
        node *d = NULL;
        if (is_op(cur(p), '=')) {
            adv(p);
            d = parse_expr(p);
        } else if (defs.n && defs.v[defs.n - 1]) pfail_at(p, t->line, t->col, "non-default argument follows default argument");
        nv_push(p, &names, NULL, nm);
        nv_push(p, &defs, d, NULL);
    }
    adv(p);
    n->names = names.kw;
    n->nnames = names.n;
    n->defs = defs.v;
}

static node *parse_stmt(P *p) {
    tok *bt = cur(p); /* the '{%' */
    adv(p);
    tok *t = cur(p);
    if (t->type != TK_NAME) unexpected(p, "a statement name");
    node *n;
    if (is_name(t, "if")) {
        n = mk(p, N_IF, t);
        adv(p);
        n->a = parse_tuple(p, true);
        expect_block_end(p);
        node *tail = n;
        for (;;) {
            static const char *const ends[] = {"elif", "else", "endif", NULL};
            tail->body = parse_body(p, ends, &tail->nbody, "if", t);
            tok *e = cur(p);
            adv(p);
            if (is_name(e, "elif")) {
                node *x = mk(p, N_IF, e);
                x->a = parse_tuple(p, true);
                expect_block_end(p);
                tail->els = jj_alloc(p->a, sizeof(node *));
                tail->els[0] = x;
                tail->nels = 1;
                tail = x;
                continue;
            }
            if (is_name(e, "else")) {
                expect_block_end(p);
                static const char *const ends2[] = {"endif", NULL};
                tail->els = parse_body(p, ends2, &tail->nels, "if", t);
                adv(p);
            }
            expect_block_end(p);
            break;
        }
        return n;
    }
    if (is_name(t, "for")) {
        n = mk(p, N_FOR, t);
        adv(p);
        parse_targets(p, n);
        if (!is_name(cur(p), "in")) unexpected(p, "'in'");
        adv(p);
        n->a = parse_tuple(p, false);
        if (is_name(cur(p), "if")) {
            adv(p);
            n->b = parse_expr(p);
        }
        if (is_name(cur(p), "recursive")) pfail_at(p, cur(p)->line, cur(p)->col, "recursive loops are not supported");
        expect_block_end(p);
        static const char *const ends[] = {"endfor", "else", NULL};
        n->body = parse_body(p, ends, &n->nbody, "for", t);
        if (is_name(cur(p), "else")) {
            adv(p);
            expect_block_end(p);
            static const char *const ends2[] = {"endfor", NULL};
            n->els = parse_body(p, ends2, &n->nels, "for", t);
        }
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "set")) {
        adv(p);
        tok *nt = cur(p);
        if (nt->type != TK_NAME) unexpected(p, "a variable name");
        if (is_op(peek(p, 1), '.')) {
            n = mk(p, N_SETATTR, t);
            n->name = tokname(p, nt);
            adv(p);
            adv(p);
            if (cur(p)->type != TK_NAME) unexpected(p, "an attribute name");
            n->names = jj_alloc(p->a, sizeof(char *));
            n->names[0] = tokname(p, cur(p));
            n->nnames = 1;
            adv(p);
            expect_op(p, '=');
            n->a = parse_tuple(p, true);
            expect_block_end(p);
            return n;
        }
        n = mk(p, N_SET, t);
        parse_targets(p, n);
        if (is_op(cur(p), '=')) {
            adv(p);
            n->a = parse_tuple(p, true);
            expect_block_end(p);
            return n;
        }
        if (n->nnames != 1) unexpected(p, "'='");
        n->kind = N_SETBLOCK;
        expect_block_end(p);
        static const char *const ends[] = {"endset", NULL};
        n->body = parse_body(p, ends, &n->nbody, "set", t);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "macro")) {
        n = mk(p, N_MACRO, t);
        adv(p);
        if (cur(p)->type != TK_NAME) unexpected(p, "a macro name");
        n->name = tokname(p, cur(p));
        adv(p);
        parse_params(p, n);
        expect_block_end(p);
        static const char *const ends[] = {"endmacro", NULL};
        n->body = parse_body(p, ends, &n->nbody, "macro", t);
        adv(p);
        if (cur(p)->type == TK_NAME) adv(p); /* {% endmacro name %} */
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "call")) {
        n = mk(p, N_CALLBLOCK, t);
        adv(p);
        if (is_op(cur(p), '(')) parse_params(p, n);
        n->a = parse_expr(p);
        if (n->a->kind != E_CALL) pfail_at(p, t->line, t->col, "expected a call after 'call'");
        expect_block_end(p);
        static const char *const ends[] = {"endcall", NULL};
        n->body = parse_body(p, ends, &n->nbody, "call", t);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "filter")) {
        n = mk(p, N_FILTERBLOCK, t);
        adv(p);
        /* the filter chain is applied to a placeholder the renderer fills in */
        node *ph = mk(p, E_NAME, t);
        ph->name = " filter body"; /* not a valid identifier, so templates cannot clash */
        ph->name_n = strlen(ph->name);
        tok *ft = cur(p);
        if (ft->type != TK_NAME) unexpected(p, "a filter name");
        node *f = mk(p, E_FILTER, ft);
        f->name = tokname(p, ft);
        if (!in_list(FILTERS, f->name)) pfail_at(p, ft->line, ft->col, "no filter named '%s'", f->name);
        adv(p);
        f->a = ph;
        if (is_op(cur(p), '(')) parse_call_args(p, f);
        n->a = parse_filter_test(p, f);
        n->b = ph;
        expect_block_end(p);
        static const char *const ends[] = {"endfilter", NULL};
        n->body = parse_body(p, ends, &n->nbody, "filter", t);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "break") || is_name(t, "continue")) {
        n = mk(p, is_name(t, "break") ? N_BREAK : N_CONTINUE, t);
        adv(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(t, "generation")) {
        n = mk(p, N_GENERATION, t);
        adv(p);
        expect_block_end(p);
        static const char *const ends[] = {"endgeneration", NULL};
        n->body = parse_body(p, ends, &n->nbody, "generation", t);
        adv(p);
        expect_block_end(p);
        return n;
    }
    (void)bt;
    pfail_at(p, t->line, t->col, "encountered unknown tag '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->p);
    return NULL;
}

/* Parses nodes until a block whose first name is in ends (left at that name), or the end
 * of the template when ends is NULL. */
static node **parse_body(P *p, const char *const *ends, int *nout, const char *opener, tok *open_tok) {
    nodevec v = {0};
    enter(p);
    for (;;) {
        tok *t = cur(p);
        if (t->type == TK_EOF) {
            if (ends) {
                char want[160] = "";
                for (int i = 0; ends[i]; i++) {
                    size_t l = strlen(want);
                    snprintf(want + l, sizeof want - l, "%s'%s'", i ? " or " : "", ends[i]);
                }
                pfail_at(p, t->line, t->col,
                         "unexpected end of template: the '%s' block opened at line %d, column %d is never closed (looking for %s)",
                         opener, open_tok->line, open_tok->col, want);
            }
            break;
        }
        if (t->type == TK_DATA) {
            node *n = mk(p, N_TEXT, t);
            n->name = t->p;
            n->name_n = t->n;
            nv_push(p, &v, n, NULL);
            adv(p);
        } else if (t->type == TK_VAR_BEGIN) {
            adv(p);
            node *n = mk(p, N_OUTPUT, t);
            n->a = parse_tuple(p, true);
            if (cur(p)->type != TK_VAR_END) unexpected(p, "end of print statement");
            adv(p);
            nv_push(p, &v, n, NULL);
        } else if (t->type == TK_BLOCK_BEGIN) {
            tok *nm = peek(p, 1);
            if (ends && nm->type == TK_NAME) {
                bool hit = false;
                for (int i = 0; ends[i]; i++)
                    if (is_name(nm, ends[i])) hit = true;
                if (hit) {
                    adv(p);
                    break;
                }
            }
            nv_push(p, &v, parse_stmt(p), NULL);
        } else unexpected(p, "template data or a tag");
    }
    p->depth--;
    *nout = v.n;
    return v.v;
}

/* Newline normalisation as jinja2 does (str.splitlines + "\n".join): every line break
 * becomes "\n" and one trailing line break is dropped (keep_trailing_newline=False). */
static char *normalize(jj_arena *a, const char *src, size_t n, size_t *out_n) {
    char *o = jj_alloc(a, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)src[i];
        if (c == '\r') {
            o[k++] = '\n';
            i += (i + 1 < n && src[i + 1] == '\n') ? 2 : 1;
        } else if (c == '\v' || c == '\f' || c == 0x1c || c == 0x1d || c == 0x1e) {
            o[k++] = '\n';
            i++;
        } else if (c == 0xC2 && i + 1 < n && (unsigned char)src[i + 1] == 0x85) {
            o[k++] = '\n';
            i += 2;
        } else if (c == 0xE2 && i + 2 < n && (unsigned char)src[i + 1] == 0x80 &&
                   ((unsigned char)src[i + 2] == 0xA8 || (unsigned char)src[i + 2] == 0xA9)) {
            o[k++] = '\n';
            i += 3;
        } else o[k++] = src[i++];
    }
    if (k > 0 && o[k - 1] == '\n') k--;
    o[k] = 0;
    *out_n = k;
    return o;
}

fm_status fm__tmpl_compile(const char *src, fm__tmpl **out) {
    *out = NULL;
    if (!src) return fm__err(FM_ERR_ARG, "template: no source");
    fm__tmpl *t = calloc(1, sizeof *t);
    if (!t) return fm__err(FM_ERR_NOMEM, "template: out of memory");
    P *p = calloc(1, sizeof *p);
    if (!p) { free(t); return fm__err(FM_ERR_NOMEM, "template: out of memory"); }
    t->arena.limit = COMPILE_ARENA_LIMIT;
    t->arena.oom = &p->jb;
    p->a = &t->arena;
    int rc = setjmp(p->jb);
    if (rc) {
        fm_status st = rc == 1 ? fm__err(FM_ERR_TEMPLATE, "template: %s", p->err)
                               : fm__err(FM_ERR_NOMEM, "template: compile memory limit reached");
        jj_arena_free(&t->arena);
        free(t);
        free(p);
        return st;
    }
    p->s = normalize(p->a, src, strlen(src), &p->n);
    p->pos_line = p->pos_col = 1;
    lex(p);
    p->i = 0;
    t->body = parse_body(p, NULL, &t->nbody, NULL, NULL);
    t->arena.oom = NULL;
    free(p);
    *out = t;
    return FM_OK;
}

void fm__tmpl_free(fm__tmpl *t) {
    if (!t) return;
    jj_arena_free(&t->arena);
    free(t);
}

/* ================================================================ renderer */
typedef struct scope scope;
struct scope {
    scope *parent;
    size_t n, cap;
    const char **k;
    jv *v;
};

typedef struct loopst {
    jv items; /* a plain list */
    size_t idx;
} loopst;

typedef struct method {
    jv self;
    const char *name;
} method;

typedef struct caller {
    const node *blk;
    scope *sc;
} caller;

enum { B_RANGE = 1, B_NAMESPACE, B_DICT, B_RAISE, B_STRFTIME };

typedef struct R {
    jj_arena a;
    jmp_buf jb;
    char err[1024];
    jj_buf *out;
    scope *root;
    int depth;
    int ctl; /* 1 break, 2 continue */
    int loops;
    unsigned long long steps;
} R;

static void rfail(R *r, const node *n, const char *fmt, ...) FM_PRINTF(3, 4);
static void rfail(R *r, const node *n, const char *fmt, ...) {
    int k = snprintf(r->err, sizeof r->err, "line %d, column %d: ", n ? n->line : 0, n ? n->col : 0);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + k, sizeof r->err - (size_t)k, fmt, ap);
    va_end(ap);
    longjmp(r->jb, 1);
}

static void step(R *r, const node *n) {
    if (++r->steps > MAX_STEPS) rfail(r, n, "template exceeded the evaluation step limit");
}

static scope *scope_new(R *r, scope *parent) {
    scope *s = jj_alloc(&r->a, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(R *r, scope *s, const char *k, jv v) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->k[i], k) == 0) { s->v[i] = v; return; }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        const char **nk = jj_alloc(&r->a, cap * sizeof(char *));
        jv *nv = jj_alloc(&r->a, cap * sizeof(jv));
        if (s->n) {
            memcpy(nk, s->k, s->n * sizeof(char *));
            memcpy(nv, s->v, s->n * sizeof(jv));
        }
        s->k = nk;
        s->v = nv;
        s->cap = cap;
    }
    s->k[s->n] = k;
    s->v[s->n++] = v;
}

static jv *scope_get(scope *s, const char *k) {
    for (; s; s = s->parent)
        for (size_t i = s->n; i-- > 0;)
            if (strcmp(s->k[i], k) == 0) return &s->v[i];
    return NULL;
}

static jv undef_msg(R *r, const char *fmt, ...) FM_PRINTF(2, 3);
static jv undef_msg(R *r, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return jv_undef(jj_strndup(&r->a, tmp, strlen(tmp)));
}

static void fail_undef(R *r, const node *n, jv u) {
    rfail(r, n, "%s", u.u.s.p ? u.u.s.p : "value is undefined");
}

static jv eval(R *r, const node *n, scope *sc);
static void render_body(R *r, node *const *body, int nb, scope *sc);

static jv to_str(R *r, jv v) {
    if (v.t == JV_STR) return v;
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    jv_print(&b, v, false);
    return jv_strref(b.p ? b.p : "", b.n);
}

static jv mk_str(R *r, const char *s, size_t n) { return jv_str(&r->a, s, n); }

static jv mk_tuple2(R *r, jv a, jv b) {
    jv t = jv_list_new(&r->a, 2);
    t.flags = JL_TUPLE;
    jv_list_push(&r->a, &t, a);
    jv_list_push(&r->a, &t, b);
    return t;
}

/* A NUL-terminated copy of a string value (values may be slices of longer strings). */
static const char *zstr(R *r, jv v) {
    if (v.u.s.p[v.u.s.n] == 0) return v.u.s.p;
    return jj_strndup(&r->a, v.u.s.p, v.u.s.n);
}

/* Re-raises the error a lazy generator hit when it is finally consumed. */
static void raise_poison(R *r, jv g) {
    jv m = g.u.l->v[0];
    snprintf(r->err, sizeof r->err, "%.*s", (int)m.u.s.n, m.u.s.p);
    longjmp(r->jb, 1);
}

/* Materializes an iterable as a plain list (strings -> characters, dicts -> keys). */
static jv iter_list(R *r, const node *n, jv v) {
    switch (v.t) {
    case JV_UNDEF: return jv_list_new(&r->a, 0);
    case JV_LIST:
        if (v.flags & JL_POISON) raise_poison(r, v);
        { jv x = v; x.flags &= (uint8_t)JL_TUPLE; return x; }
    case JV_DICT: case JV_NS: {
        jv l = jv_list_new(&r->a, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) jv_list_push(&r->a, &l, v.u.d->k[i]);
        return l;
    }
    case JV_STR: {
        jv l = jv_list_new(&r->a, v.u.s.n);
        for (size_t i = 0; i < v.u.s.n;) {
            int32_t cp;
            size_t k = jj_utf8_dec(v.u.s.p + i, v.u.s.n - i, &cp);
            jv_list_push(&r->a, &l, jv_strref(v.u.s.p + i, k));
            i += k;
        }
        return l;
    }
    default:
        rfail(r, n, "'%s' object is not iterable", jv_type_name(v));
        return v;
    }
}

static double num_f(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)v.u.i; }
static bool is_num(jv v) { return v.t == JV_BOOL || v.t == JV_INT || v.t == JV_FLOAT; }
static bool is_intlike(jv v) { return v.t == JV_BOOL || v.t == JV_INT; }

static int cmp_vals(R *r, const node *n, jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (is_intlike(a) && is_intlike(b)) return a.u.i < b.u.i ? -1 : a.u.i > b.u.i;
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t m = a.u.s.n < b.u.s.n ? a.u.s.n : b.u.s.n;
        int c = memcmp(a.u.s.p, b.u.s.p, m);
        if (c) return c < 0 ? -1 : 1;
        return a.u.s.n < b.u.s.n ? -1 : a.u.s.n > b.u.s.n;
    }
    if (a.t == JV_LIST && b.t == JV_LIST && !((a.flags | b.flags) & JL_GEN)) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            if (jv_equal(a.u.l->v[i], b.u.l->v[i])) continue;
            return cmp_vals(r, n, a.u.l->v[i], b.u.l->v[i]);
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    if (a.t == JV_UNDEF) fail_undef(r, n, a);
    if (b.t == JV_UNDEF) fail_undef(r, n, b);
    rfail(r, n, "'<' not supported between instances of '%s' and '%s'", jv_type_name(a), jv_type_name(b));
    return 0;
}

static bool contains(R *r, const node *n, jv item, jv seq) {
    switch (seq.t) {
    case JV_UNDEF: return false;
    case JV_STR:
        if (item.t == JV_UNDEF) fail_undef(r, n, item);
        if (item.t != JV_STR) rfail(r, n, "'in <string>' requires string as left operand, not %s", jv_type_name(item));
        if (item.u.s.n == 0) return true;
        if (item.u.s.n > seq.u.s.n) return false;
        return memmem(seq.u.s.p, seq.u.s.n, item.u.s.p, item.u.s.n) != NULL;
    case JV_LIST:
        if (seq.flags & JL_POISON) raise_poison(r, seq);
        for (size_t i = 0; i < seq.u.l->n; i++) {
            step(r, n);
            if (jv_equal(seq.u.l->v[i], item)) return true;
        }
        return false;
    case JV_DICT:
        if ((item.t == JV_LIST && !(item.flags & JL_TUPLE)) || item.t == JV_DICT)
            rfail(r, n, "unhashable type: '%s'", jv_type_name(item));
        return jv_dict_getv(seq.u.d, item) != NULL;
    default: rfail(r, n, "argument of type '%s' is not iterable", jv_type_name(seq)); return false;
    }
}

/* ---- attribute and item access ---- */
static const char *const STR_METHODS[] = {
    "startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip", "replace", "upper",
    "lower", "title", "capitalize", "count", "find", "rfind", "index", "join", "splitlines",
    "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "format", NULL};
static const char *const DICT_METHODS[] = {"items", "keys", "values", "get", NULL};

static jv bound(R *r, jv self, const char *name) {
    method *m = jj_alloc(&r->a, sizeof *m);
    m->self = self;
    m->name = name;
    jv v = {JV_METHOD, 0, {0}};
    v.u.ptr = m;
    return v;
}

static jv loop_attr(R *r, jv lv, const char *name) {
    loopst *L = lv.u.ptr;
    size_t len = L->items.u.l->n, i = L->idx;
    if (!strcmp(name, "index")) return jv_int((int64_t)i + 1);
    if (!strcmp(name, "index0")) return jv_int((int64_t)i);
    if (!strcmp(name, "revindex")) return jv_int((int64_t)(len - i));
    if (!strcmp(name, "revindex0")) return jv_int((int64_t)(len - i - 1));
    if (!strcmp(name, "first")) return jv_bool(i == 0);
    if (!strcmp(name, "last")) return jv_bool(i + 1 == len);
    if (!strcmp(name, "length")) return jv_int((int64_t)len);
    if (!strcmp(name, "depth")) return jv_int(1);
    if (!strcmp(name, "depth0")) return jv_int(0);
    if (!strcmp(name, "previtem"))
        return i > 0 ? L->items.u.l->v[i - 1] : undef_msg(r, "there is no previous item");
    if (!strcmp(name, "nextitem"))
        return i + 1 < len ? L->items.u.l->v[i + 1] : undef_msg(r, "there is no next item");
    if (!strcmp(name, "cycle")) return bound(r, lv, "cycle");
    return undef_msg(r, "'LoopContext' object has no attribute '%s'", name);
}

static jv getattr_v(R *r, const node *n, jv obj, const char *name, size_t nl) {
    switch (obj.t) {
    case JV_UNDEF: fail_undef(r, n, obj); break;
    case JV_DICT:
        if (in_list(DICT_METHODS, name)) return bound(r, obj, name);
        {
            jv *v = jv_dict_get(obj.u.d, name, nl);
            if (v) return *v;
        }
        return undef_msg(r, "'dict object' has no attribute '%s'", name);
    case JV_NS: {
        jv *v = jv_dict_get(obj.u.d, name, nl);
        if (v) return *v;
        return undef_msg(r, "'Namespace' object has no attribute '%s'", name);
    }
    case JV_LOOP: return loop_attr(r, obj, name);
    case JV_STR:
        if (in_list(STR_METHODS, name)) return bound(r, obj, name);
        break;
    default: break;
    }
    return undef_msg(r, "'%s object' has no attribute '%s'", jv_type_name(obj), name);
}

static bool norm_index(int64_t i, size_t len, size_t *out) {
    if (i < 0) i += (int64_t)len;
    if (i < 0 || (uint64_t)i >= len) return false;
    *out = (size_t)i;
    return true;
}

static jv getitem_v(R *r, const node *n, jv obj, jv key) {
    switch (obj.t) {
    case JV_UNDEF: fail_undef(r, n, obj); break;
    case JV_DICT: {
        jv *v = jv_dict_getv(obj.u.d, key);
        if (v) return *v;
        if (key.t == JV_STR && in_list(DICT_METHODS, zstr(r, key))) return bound(r, obj, zstr(r, key));
        break;
    }
    case JV_LIST:
        if (is_intlike(key) && !(obj.flags & JL_GEN)) {
            size_t i;
            if (norm_index(key.u.i, obj.u.l->n, &i)) return obj.u.l->v[i];
        }
        break;
    case JV_STR:
        if (is_intlike(key)) {
            size_t len = jj_utf8_len(obj.u.s.p, obj.u.s.n), i;
            if (norm_index(key.u.i, len, &i)) {
                size_t off = 0;
                int32_t cp;
                for (size_t c = 0; c < i; c++) off += jj_utf8_dec(obj.u.s.p + off, obj.u.s.n - off, &cp);
                size_t k = jj_utf8_dec(obj.u.s.p + off, obj.u.s.n - off, &cp);
                return jv_strref(obj.u.s.p + off, k);
            }
        } else if (key.t == JV_STR && in_list(STR_METHODS, zstr(r, key))) return bound(r, obj, zstr(r, key));
        break;
    case JV_NS: case JV_LOOP:
        if (key.t == JV_STR) return getattr_v(r, n, obj, zstr(r, key), key.u.s.n);
        break;
    default: break;
    }
    if (key.t == JV_STR) return undef_msg(r, "'%s object' has no attribute '%.*s'", jv_type_name(obj), (int)(key.u.s.n > 60 ? 60 : key.u.s.n), key.u.s.p);
    return undef_msg(r, "'%s object' has no item", jv_type_name(obj));
}

/* Python slice index normalisation. */
static void slice_ix(int64_t len, bool has_a, int64_t a, bool has_b, int64_t b, int64_t st, int64_t *o_a, int64_t *o_b) {
    int64_t lo = st < 0 ? -1 : 0, hi = st < 0 ? len - 1 : len;
    if (!has_a) a = st < 0 ? hi : lo;
    else {
        if (a < 0) { a += len; if (a < lo) a = lo; }
        else if (a > hi) a = hi;
    }
    if (!has_b) b = st < 0 ? lo : hi;
    else {
        if (b < 0) { b += len; if (b < lo) b = lo; }
        else if (b > hi) b = hi;
    }
    *o_a = a;
    *o_b = b;
}

static jv slice_v(R *r, const node *n, jv obj, jv va, jv vb, jv vs) {
    int64_t st = 1;
    if (vs.t != JV_NONE && vs.t != JV_UNDEF) {
        if (!is_intlike(vs)) rfail(r, n, "slice indices must be integers or None");
        st = vs.u.i;
        if (st == 0) rfail(r, n, "slice step cannot be zero");
    }
    bool ha = va.t != JV_NONE && va.t != JV_UNDEF, hb = vb.t != JV_NONE && vb.t != JV_UNDEF;
    if ((ha && !is_intlike(va)) || (hb && !is_intlike(vb))) rfail(r, n, "slice indices must be integers or None");
    if (obj.t == JV_UNDEF) fail_undef(r, n, obj);
    if (obj.t == JV_DICT) rfail(r, n, "unhashable type: 'slice'");
    if (obj.t == JV_LIST && !(obj.flags & JL_GEN)) {
        int64_t a, b;
        slice_ix((int64_t)obj.u.l->n, ha, ha ? va.u.i : 0, hb, hb ? vb.u.i : 0, st, &a, &b);
        jv out = jv_list_new(&r->a, 0);
        out.flags = obj.flags & JL_TUPLE;
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) jv_list_push(&r->a, &out, obj.u.l->v[i]);
        return out;
    }
    if (obj.t == JV_STR) {
        jv chars = iter_list(r, n, obj);
        int64_t a, b;
        slice_ix((int64_t)chars.u.l->n, ha, ha ? va.u.i : 0, hb, hb ? vb.u.i : 0, st, &a, &b);
        jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st)
            jj_buf_put(&buf, chars.u.l->v[i].u.s.p, chars.u.l->v[i].u.s.n);
        return jv_strref(buf.p ? buf.p : "", buf.n);
    }
    return undef_msg(r, "'%s object' is not subscriptable", jv_type_name(obj));
}

static jv html_escape(R *r, jv s) {
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    for (size_t i = 0; i < s.u.s.n; i++) {
        char c = s.u.s.p[i];
        if (c == '&') jj_buf_puts(&b, "&amp;");
        else if (c == '<') jj_buf_puts(&b, "&lt;");
        else if (c == '>') jj_buf_puts(&b, "&gt;");
        else if (c == '"') jj_buf_puts(&b, "&#34;");
        else if (c == '\'') jj_buf_puts(&b, "&#39;");
        else jj_buf_putc(&b, c);
    }
    return jv_strref(b.p ? b.p : "", b.n);
}

/* Python's printf-style `fmt % arg`: a tuple gives positional arguments, a dict gives %(name)s
 * lookups; %s %r %d %i %% are supported. */
static jv py_percent(R *r, const node *n, jv fmt, jv argv) {
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    bool is_tuple = argv.t == JV_LIST && (argv.flags & JL_TUPLE);
    bool is_map = argv.t == JV_DICT;
    size_t nargs = is_tuple ? argv.u.l->n : 1, used = 0;
    const char *s = fmt.u.s.p;
    for (size_t i = 0; i < fmt.u.s.n; i++) {
        if (s[i] != '%') { jj_buf_putc(&b, s[i]); continue; }
        if (++i >= fmt.u.s.n) rfail(r, n, "incomplete format");
        jv x;
        if (s[i] == '%') { jj_buf_putc(&b, '%'); continue; }
        if (s[i] == '(') {
            size_t j = i + 1;
            while (j < fmt.u.s.n && s[j] != ')') j++;
            if (j >= fmt.u.s.n) rfail(r, n, "incomplete format key");
            if (!is_map) rfail(r, n, "format requires a mapping");
            jv *v = jv_dict_get(argv.u.d, s + i + 1, j - i - 1);
            if (!v) rfail(r, n, "format: missing key '%.*s'", (int)(j - i - 1 > 40 ? 40 : j - i - 1), s + i + 1);
            x = *v;
            i = j + 1;
            if (i >= fmt.u.s.n) rfail(r, n, "incomplete format");
        } else {
            if (used >= nargs) rfail(r, n, "not enough arguments for format string");
            x = is_tuple ? argv.u.l->v[used] : argv;
            used++;
        }
        char c = s[i];
        if (c == 's') jv_print(&b, x, false);
        else if (c == 'r') jv_print(&b, x, true);
        else if (c == 'd' || c == 'i') {
            if (!is_num(x)) rfail(r, n, "%%%c format: a number is required, not %s", c, jv_type_name(x));
            jj_buf_printf(&b, "%lld", (long long)(x.t == JV_FLOAT ? (int64_t)x.u.f : x.u.i));
        } else rfail(r, n, "unsupported format character '%c'", c);
    }
    /* as CPython: unused arguments are an error unless the argument is a mapping or a
     * non-tuple sequence (PyMapping_Check) */
    bool mappingish = is_map || (argv.t == JV_LIST && !is_tuple && !(argv.flags & JL_GEN));
    if (!mappingish && used < nargs) rfail(r, n, "not all arguments converted during string formatting");
    return jv_strref(b.p ? b.p : "", b.n);
}

/* ---- arithmetic ---- */
static jv arith(R *r, const node *n, int op, jv a, jv b) {
    if (a.t == JV_UNDEF) fail_undef(r, n, a);
    if (b.t == JV_UNDEF) fail_undef(r, n, b);
    if (is_intlike(a) && is_intlike(b)) {
        int64_t x = a.u.i, y = b.u.i, z;
        switch (op) {
        case '+': if (__builtin_add_overflow(x, y, &z)) goto ovf; return jv_int(z);
        case '-': if (__builtin_sub_overflow(x, y, &z)) goto ovf; return jv_int(z);
        case '*': if (__builtin_mul_overflow(x, y, &z)) goto ovf; return jv_int(z);
        case '/': if (y == 0) goto zero; return jv_float((double)x / (double)y);
        case OP_FLOORDIV: case '%': {
            if (y == 0) goto zero;
            if (x == INT64_MIN && y == -1) goto ovf;
            int64_t q = x / y, m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) { q--; m += y; }
            return jv_int(op == '%' ? m : q);
        }
        case OP_POW: {
            if (y < 0) {
                if (x == 0) rfail(r, n, "0.0 cannot be raised to a negative power");
                return jv_float(pow((double)x, (double)y));
            }
            int64_t res = 1, base = x;
            while (y) {
                if (y & 1) { if (__builtin_mul_overflow(res, base, &res)) goto ovf; }
                y >>= 1;
                if (y && __builtin_mul_overflow(base, base, &base)) goto ovf;
            }
            return jv_int(res);
        }
        }
    }
    if (is_num(a) && is_num(b)) {
        double x = num_f(a), y = num_f(b);
        switch (op) {
        case '+': return jv_float(x + y);
        case '-': return jv_float(x - y);
        case '*': return jv_float(x * y);
        case '/': if (y == 0) goto zero; return jv_float(x / y);
        case OP_FLOORDIV: if (y == 0) goto zero; return jv_float(floor(x / y));
        case '%': {
            if (y == 0) goto zero;
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_float(m);
        }
        case OP_POW:
            if (x == 0 && y < 0) rfail(r, n, "0.0 cannot be raised to a negative power");
            if (x < 0 && y != floor(y)) rfail(r, n, "complex results are not supported");
            return jv_float(pow(x, y));
        }
    }
    if (op == '+' && a.t == JV_STR && b.t == JV_STR && ((a.flags ^ b.flags) & JS_MARKUP)) {
        /* markupsafe: str + Markup escapes the plain side and gives Markup */
        jv x = (a.flags & JS_MARKUP) ? a : html_escape(r, a), y = (b.flags & JS_MARKUP) ? b : html_escape(r, b);
        x.flags = y.flags = 0;
        jv res = arith(r, n, '+', x, y);
        res.flags |= JS_MARKUP;
        return res;
    }
    if (op == '+' && a.t == JV_STR && b.t == JV_STR) {
        char *p = jj_alloc(&r->a, a.u.s.n + b.u.s.n + 1);
        memcpy(p, a.u.s.p, a.u.s.n);
        memcpy(p + a.u.s.n, b.u.s.p, b.u.s.n);
        return jv_strref(p, a.u.s.n + b.u.s.n);
    }
    if (op == '+' && a.t == JV_LIST && b.t == JV_LIST && !((a.flags | b.flags) & JL_GEN) &&
        (a.flags & JL_TUPLE) == (b.flags & JL_TUPLE)) {
        jv l = jv_list_new(&r->a, a.u.l->n + b.u.l->n);
        l.flags = a.flags;
        for (size_t i = 0; i < a.u.l->n; i++) jv_list_push(&r->a, &l, a.u.l->v[i]);
        for (size_t i = 0; i < b.u.l->n; i++) jv_list_push(&r->a, &l, b.u.l->v[i]);
        return l;
    }
    if (op == '*' && ((a.t == JV_STR || a.t == JV_LIST) && is_intlike(b))) {
        jv t = a; a = b; b = t;
    }
    if (op == '*' && is_intlike(a) && (b.t == JV_STR || (b.t == JV_LIST && !(b.flags & JL_GEN)))) {
        int64_t k = a.u.i < 0 ? 0 : a.u.i;
        size_t unit = b.t == JV_STR ? b.u.s.n : b.u.l->n;
        if (unit && (uint64_t)k > OUTPUT_LIMIT / unit) rfail(r, n, "repetition result too large");
        if (b.t == JV_STR) {
            jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
            for (int64_t i = 0; i < k; i++) jj_buf_put(&buf, b.u.s.p, b.u.s.n);
            return jv_strref(buf.p ? buf.p : "", buf.n);
        }
        jv l = jv_list_new(&r->a, 0);
        l.flags = b.flags;
        for (int64_t i = 0; i < k; i++)
            for (size_t j = 0; j < b.u.l->n; j++) jv_list_push(&r->a, &l, b.u.l->v[j]);
        return l;
    }
    if (op == '%' && a.t == JV_STR) return py_percent(r, n, a, b);
    rfail(r, n, "unsupported operand type(s) for the operator: '%s' and '%s'", jv_type_name(a), jv_type_name(b));
ovf:
    rfail(r, n, "integer overflow");
zero:
    rfail(r, n, "division by zero");
    return a;
}

/* ---- calls ---- */
typedef struct args {
    jv *pos;
    int npos;
    const char **kn;
    jv *kv;
    int nkw;
} args;

static void eval_args(R *r, const node *n, scope *sc, args *A, jv *prefix) {
    int np = 0, nk = 0;
    for (int i = 0; i < n->nkids; i++) (n->kwn && n->kwn[i]) ? nk++ : np++;
    int extra = prefix ? 1 : 0;
    A->pos = jj_alloc(&r->a, sizeof(jv) * (size_t)(np + extra + 1));
    A->kn = jj_alloc(&r->a, sizeof(char *) * (size_t)(nk + 1));
    A->kv = jj_alloc(&r->a, sizeof(jv) * (size_t)(nk + 1));
    A->npos = 0;
    A->nkw = 0;
    if (prefix) A->pos[A->npos++] = *prefix;
    for (int i = 0; i < n->nkids; i++) {
        jv v = eval(r, n->kids[i], sc);
        if (n->kwn && n->kwn[i]) {
            A->kn[A->nkw] = n->kwn[i];
            A->kv[A->nkw++] = v;
        } else A->pos[A->npos++] = v;
    }
}

/* The argument at position i (after any prefix) or named kw; NULL when absent. */
static jv *arg(args *A, int i, const char *kw) {
    if (i >= 0 && i < A->npos) return &A->pos[i];
    if (kw)
        for (int k = 0; k < A->nkw; k++)
            if (!strcmp(A->kn[k], kw)) return &A->kv[k];
    return NULL;
}

static jv str_arg(R *r, const node *n, jv *v, const char *what) {
    if (!v) rfail(r, n, "%s: missing argument", what);
    if (v->t == JV_UNDEF) fail_undef(r, n, *v);
    if (v->t != JV_STR) rfail(r, n, "%s: expected a string, got '%s'", what, jv_type_name(*v));
    return *v;
}

static int64_t int_arg(R *r, const node *n, jv *v, int64_t dflt, const char *what) {
    if (!v || v->t == JV_NONE) return dflt;
    if (!is_intlike(*v)) rfail(r, n, "%s: expected an integer, got '%s'", what, jv_type_name(*v));
    return v->u.i;
}

static jv call_value(R *r, const node *n, jv fn, args *A);

static jv call_macro(R *r, const node *n, const node *m, args *A, jv caller_v) {
    if (++r->depth > MAX_RENDER_DEPTH) rfail(r, n, "maximum recursion depth exceeded");
    scope *sc = scope_new(r, r->root);
    if (A->npos > m->nnames) rfail(r, n, "macro '%s' takes not more than %d argument(s)", m->name, m->nnames);
    for (int i = 0; i < m->nnames; i++) {
        jv *v = i < A->npos ? &A->pos[i] : NULL;
        if (!v)
            for (int k = 0; k < A->nkw; k++)
                if (!strcmp(A->kn[k], m->names[i])) v = &A->kv[k];
        if (v) scope_set(r, sc, m->names[i], *v);
        else if (m->defs[i]) scope_set(r, sc, m->names[i], eval(r, m->defs[i], sc));
        else scope_set(r, sc, m->names[i], undef_msg(r, "parameter '%s' was not provided", m->names[i]));
    }
    for (int k = 0; k < A->nkw; k++) {
        bool ok = false;
        for (int i = 0; i < m->nnames; i++) ok |= !strcmp(A->kn[k], m->names[i]);
        if (!ok) rfail(r, n, "macro '%s' takes no keyword argument '%s'", m->name, A->kn[k]);
    }
    if (caller_v.t != JV_UNDEF) scope_set(r, sc, "caller", caller_v);
    jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
    jj_buf *saved = r->out;
    int saved_loops = r->loops;
    r->out = &buf;
    r->loops = 0;
    render_body(r, m->body, m->nbody, sc);
    r->out = saved;
    r->loops = saved_loops;
    r->ctl = 0;
    r->depth--;
    return jv_strref(buf.p ? buf.p : "", buf.n);
}

static jv do_filter(R *r, const node *n, const char *name, jv v, args *A);
static bool do_test(R *r, const node *n, const char *name, jv v, args *A);

/* Python str methods. */
static bool is_in_chars(int32_t cp, jv *chars) {
    if (!chars || chars->t == JV_NONE) return jj_py_isspace(cp);
    for (size_t i = 0; i < chars->u.s.n;) {
        int32_t c;
        i += jj_utf8_dec(chars->u.s.p + i, chars->u.s.n - i, &c);
        if (c == cp) return true;
    }
    return false;
}

static jv py_strip(R *r, const node *n, jv s, jv *chars, bool left, bool right) {
    if (chars && chars->t != JV_NONE) str_arg(r, n, chars, "strip");
    size_t a = 0, b = s.u.s.n;
    if (left)
        while (a < b) {
            int32_t cp;
            size_t k = jj_utf8_dec(s.u.s.p + a, b - a, &cp);
            if (!is_in_chars(cp, chars)) break;
            a += k;
        }
    if (right)
        while (b > a) {
            size_t k = 1;
            while (k < b - a && k < 4 && ((unsigned char)s.u.s.p[b - k] & 0xC0) == 0x80) k++;
            int32_t cp;
            if (jj_utf8_dec(s.u.s.p + b - k, k, &cp) != k) { k = 1; cp = 0xDC00 + (unsigned char)s.u.s.p[b - 1]; }
            if (!is_in_chars(cp, chars)) break;
            b -= k;
        }
    return jv_strref(s.u.s.p + a, b - a);
}

static jv py_split(R *r, const node *n, jv s, jv *sep, int64_t maxsplit, bool from_right) {
    jv out = jv_list_new(&r->a, 4);
    const char *p = s.u.s.p;
    size_t len = s.u.s.n;
    if (!sep || sep->t == JV_NONE) {
        /* whitespace split */
        size_t i = 0;
        jv parts = jv_list_new(&r->a, 4);
        while (i < len) {
            int32_t cp;
            size_t k;
            while (i < len && (k = jj_utf8_dec(p + i, len - i, &cp), jj_py_isspace(cp))) i += k;
            if (i >= len) break;
            size_t st = i;
            while (i < len && (k = jj_utf8_dec(p + i, len - i, &cp), !jj_py_isspace(cp))) i += k;
            jv_list_push(&r->a, &parts, jv_strref(p + st, i - st));
        }
        if (maxsplit < 0 || (size_t)maxsplit + 1 >= parts.u.l->n) return parts;
        /* rejoin the remainder: keep original text from the start of piece maxsplit */
        size_t keep = (size_t)maxsplit;
        if (!from_right) {
            for (size_t j = 0; j < keep; j++) jv_list_push(&r->a, &out, parts.u.l->v[j]);
            jv st = parts.u.l->v[keep];
            jv last = py_strip(r, n, jv_strref(st.u.s.p, (size_t)(p + len - st.u.s.p)), NULL, false, true);
            jv_list_push(&r->a, &out, last);
        } else {
            size_t first = parts.u.l->n - keep;
            jv en = parts.u.l->v[first - 1];
            jv head = py_strip(r, n, jv_strref(p, (size_t)(en.u.s.p + en.u.s.n - p)), NULL, true, false);
            jv_list_push(&r->a, &out, head);
            for (size_t j = first; j < parts.u.l->n; j++) jv_list_push(&r->a, &out, parts.u.l->v[j]);
        }
        return out;
    }
    jv sp = str_arg(r, n, sep, "split");
    if (sp.u.s.n == 0) rfail(r, n, "empty separator");
    if (!from_right || maxsplit < 0) {
        size_t i = 0;
        int64_t cnt = 0;
        for (;;) {
            const char *hit = (maxsplit >= 0 && cnt >= maxsplit) ? NULL
                              : (len - i >= sp.u.s.n ? memmem(p + i, len - i, sp.u.s.p, sp.u.s.n) : NULL);
            if (!hit) { jv_list_push(&r->a, &out, jv_strref(p + i, len - i)); break; }
            jv_list_push(&r->a, &out, jv_strref(p + i, (size_t)(hit - (p + i))));
            i = (size_t)(hit - p) + sp.u.s.n;
            cnt++;
        }
        return out;
    }
    /* rsplit with maxsplit */
    size_t end = len;
    int64_t cnt = 0;
    jv rev = jv_list_new(&r->a, 4);
    while (cnt < maxsplit) {
        const char *hit = NULL;
        for (size_t j = end; j >= sp.u.s.n; j--)
            if (memcmp(p + j - sp.u.s.n, sp.u.s.p, sp.u.s.n) == 0) { hit = p + j - sp.u.s.n; break; }
        if (!hit) break;
        jv_list_push(&r->a, &rev, jv_strref(hit + sp.u.s.n, (size_t)(p + end - hit - sp.u.s.n)));
        end = (size_t)(hit - p);
        cnt++;
    }
    jv_list_push(&r->a, &out, jv_strref(p, end));
    for (size_t j = rev.u.l->n; j-- > 0;) jv_list_push(&r->a, &out, rev.u.l->v[j]);
    return out;
}

static jv case_map(R *r, jv s, int mode) { /* 0 lower, 1 upper, 2 capitalize, 3 str.title */
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    bool first = true, prev_cased = false;
    for (size_t i = 0; i < s.u.s.n;) {
        int32_t cp;
        size_t k = jj_utf8_dec(s.u.s.p + i, s.u.s.n - i, &cp);
        int32_t o = cp;
        /* Python's full case mappings that expand to several characters */
        const char *special = NULL;
        if ((mode == 1 || (mode == 3 && !prev_cased) || (mode == 2 && first)) && cp == 0xDF) special = mode == 1 ? "SS" : "Ss";
        else if (mode == 1 && cp >= 0xFB00 && cp <= 0xFB06) {
            static const char *const lig[] = {"FF", "FI", "FL", "FFI", "FFL", "ST", "ST"};
            special = lig[cp - 0xFB00];
        } else if ((mode == 0 || (mode == 3 && prev_cased) || (mode == 2 && !first)) && cp == 0x130) special = "i\xcc\x87";
        if (special) {
            jj_buf_puts(&b, special);
            prev_cased = true;
            first = false;
            i += k;
            continue;
        }
        if (cp < 0xDC80 || cp > 0xDCFF) {
            if (mode == 0) o = utf8proc_tolower(cp);
            else if (mode == 1) o = utf8proc_toupper(cp);
            else if (mode == 2) o = first ? utf8proc_totitle(cp) : utf8proc_tolower(cp);
            else {
                bool cased = utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp;
                o = cased ? (prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp)) : cp;
                prev_cased = cased;
            }
        }
        char e[4];
        size_t m = jj_utf8_enc(o, e);
        jj_buf_put(&b, e, m);
        first = false;
        i += k;
    }
    return jv_strref(b.p ? b.p : "", b.n);
}

static jv py_replace(R *r, jv s, jv old, jv nw, int64_t count) {
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    if (old.u.s.n == 0) {
        int64_t done = 0;
        for (size_t i = 0;; ) {
            if (count < 0 || done < count) { jj_buf_put(&b, nw.u.s.p, nw.u.s.n); done++; }
            if (i >= s.u.s.n) break;
            int32_t cp;
            size_t k = jj_utf8_dec(s.u.s.p + i, s.u.s.n - i, &cp);
            jj_buf_put(&b, s.u.s.p + i, k);
            i += k;
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i <= s.u.s.n) {
        const char *hit = (count >= 0 && done >= count) || s.u.s.n - i < old.u.s.n ? NULL
                          : memmem(s.u.s.p + i, s.u.s.n - i, old.u.s.p, old.u.s.n);
        if (!hit) { jj_buf_put(&b, s.u.s.p + i, s.u.s.n - i); break; }
        jj_buf_put(&b, s.u.s.p + i, (size_t)(hit - s.u.s.p - i));
        jj_buf_put(&b, nw.u.s.p, nw.u.s.n);
        i = (size_t)(hit - s.u.s.p) + old.u.s.n;
        done++;
    }
    return jv_strref(b.p ? b.p : "", b.n);
}

static bool str_prefix_test(R *r, const node *n, jv s, jv *a, bool end, const char *what) {
    if (!a) rfail(r, n, "%s: missing argument", what);
    if (a->t == JV_LIST && (a->flags & JL_TUPLE)) {
        for (size_t i = 0; i < a->u.l->n; i++)
            if (str_prefix_test(r, n, s, &a->u.l->v[i], end, what)) return true;
        return false;
    }
    jv p = str_arg(r, n, a, what);
    if (p.u.s.n > s.u.s.n) return false;
    return memcmp(end ? s.u.s.p + s.u.s.n - p.u.s.n : s.u.s.p, p.u.s.p, p.u.s.n) == 0;
}

static int64_t cp_index(jv s, size_t byte_off) { return (int64_t)jj_utf8_len(s.u.s.p, byte_off); }

static jv py_format(R *r, const node *n, jv fmt, args *A) {
    /* str.format: {} / {0} / {name} with str() of the argument */
    jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
    int autoi = 0;
    const char *s = fmt.u.s.p;
    size_t len = fmt.u.s.n;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '{' && i + 1 < len && s[i + 1] == '{') { jj_buf_putc(&b, '{'); i++; continue; }
        if (s[i] == '}' && i + 1 < len && s[i + 1] == '}') { jj_buf_putc(&b, '}'); i++; continue; }
        if (s[i] != '{') { jj_buf_putc(&b, s[i]); continue; }
        size_t j = i + 1;
        while (j < len && s[j] != '}') j++;
        if (j >= len) rfail(r, n, "single '{' encountered in format string");
        const char *f = s + i + 1;
        size_t fl = j - i - 1;
        jv *v = NULL;
        if (fl == 0) v = arg(A, autoi++, NULL);
        else if (f[0] >= '0' && f[0] <= '9') v = arg(A, atoi(f), NULL);
        else {
            char nm[64];
            snprintf(nm, sizeof nm, "%.*s", (int)(fl < 63 ? fl : 63), f);
            for (int k = 0; k < A->nkw; k++)
                if (!strcmp(A->kn[k], nm)) v = &A->kv[k];
        }
        if (!v) rfail(r, n, "format: missing argument for '{%.*s}'", (int)(fl > 40 ? 40 : fl), f);
        jv_print(&b, *v, false);
        i = j;
    }
    return jv_strref(b.p ? b.p : "", b.n);
}

static jv call_method(R *r, const node *n, method *m, args *A) {
    jv s = m->self;
    const char *nm = m->name;
    if (s.t == JV_DICT) {
        jv_dict *d = s.u.d;
        if (!strcmp(nm, "items") || !strcmp(nm, "keys") || !strcmp(nm, "values")) {
            jv l = jv_list_new(&r->a, d->n);
            for (size_t i = 0; i < d->n; i++)
                jv_list_push(&r->a, &l, nm[0] == 'i' ? mk_tuple2(r, d->k[i], d->v[i]) : nm[0] == 'k' ? d->k[i] : d->v[i]);
            l.flags = nm[0] == 'i' ? JL_ITEMS : nm[0] == 'k' ? JL_KEYS : JL_VALUES;
            return l;
        }
        /* get */
        jv *k = arg(A, 0, NULL);
        if (!k) rfail(r, n, "get expected at least 1 argument, got 0");
        jv *v = jv_dict_getv(d, *k);
        if (v) return *v;
        jv *dflt = arg(A, 1, NULL);
        return dflt ? *dflt : jv_none();
    }
    if (s.t == JV_LOOP) { /* cycle */
        if (A->npos == 0) rfail(r, n, "no items for cycling given");
        loopst *L = s.u.ptr;
        return A->pos[L->idx % (size_t)A->npos];
    }
    /* str methods */
    if (!strcmp(nm, "startswith")) return jv_bool(str_prefix_test(r, n, s, arg(A, 0, NULL), false, nm));
    if (!strcmp(nm, "endswith")) return jv_bool(str_prefix_test(r, n, s, arg(A, 0, NULL), true, nm));
    if (!strcmp(nm, "strip")) return py_strip(r, n, s, arg(A, 0, "chars"), true, true);
    if (!strcmp(nm, "lstrip")) return py_strip(r, n, s, arg(A, 0, "chars"), true, false);
    if (!strcmp(nm, "rstrip")) return py_strip(r, n, s, arg(A, 0, "chars"), false, true);
    if (!strcmp(nm, "split") || !strcmp(nm, "rsplit"))
        return py_split(r, n, s, arg(A, 0, "sep"), int_arg(r, n, arg(A, 1, "maxsplit"), -1, nm), nm[0] == 'r');
    if (!strcmp(nm, "splitlines")) {
        jv out = jv_list_new(&r->a, 4);
        size_t st = 0, i = 0;
        while (i < s.u.s.n) {
            char c = s.u.s.p[i];
            if (c == '\n' || c == '\r') {
                jv_list_push(&r->a, &out, jv_strref(s.u.s.p + st, i - st));
                i += (c == '\r' && i + 1 < s.u.s.n && s.u.s.p[i + 1] == '\n') ? 2 : 1;
                st = i;
            } else i++;
        }
        if (st < s.u.s.n) jv_list_push(&r->a, &out, jv_strref(s.u.s.p + st, s.u.s.n - st));
        return out;
    }
    if (!strcmp(nm, "replace")) {
        jv o = str_arg(r, n, arg(A, 0, NULL), nm), w = str_arg(r, n, arg(A, 1, NULL), nm);
        return py_replace(r, s, o, w, int_arg(r, n, arg(A, 2, "count"), -1, nm));
    }
    if (!strcmp(nm, "upper")) return case_map(r, s, 1);
    if (!strcmp(nm, "lower")) return case_map(r, s, 0);
    if (!strcmp(nm, "capitalize")) return case_map(r, s, 2);
    if (!strcmp(nm, "title")) return case_map(r, s, 3);
    if (!strcmp(nm, "count") || !strcmp(nm, "find") || !strcmp(nm, "rfind") || !strcmp(nm, "index")) {
        jv sub = str_arg(r, n, arg(A, 0, NULL), nm);
        if (!strcmp(nm, "count")) {
            if (sub.u.s.n == 0) return jv_int((int64_t)jj_utf8_len(s.u.s.p, s.u.s.n) + 1);
            int64_t c = 0;
            for (size_t i = 0; i + sub.u.s.n <= s.u.s.n;) {
                const char *h = memmem(s.u.s.p + i, s.u.s.n - i, sub.u.s.p, sub.u.s.n);
                if (!h) break;
                c++;
                i = (size_t)(h - s.u.s.p) + sub.u.s.n;
            }
            return jv_int(c);
        }
        const char *h = NULL;
        if (nm[0] == 'r') {
            for (size_t j = s.u.s.n + 1; j-- > 0;)
                if (j + sub.u.s.n <= s.u.s.n && memcmp(s.u.s.p + j, sub.u.s.p, sub.u.s.n) == 0) { h = s.u.s.p + j; break; }
        } else h = sub.u.s.n == 0 ? s.u.s.p : (s.u.s.n >= sub.u.s.n ? memmem(s.u.s.p, s.u.s.n, sub.u.s.p, sub.u.s.n) : NULL);
        if (!h) {
            if (nm[0] == 'i') rfail(r, n, "substring not found");
            return jv_int(-1);
        }
        return jv_int(cp_index(s, (size_t)(h - s.u.s.p)));
    }
    if (!strcmp(nm, "join")) {
        jv *it = arg(A, 0, NULL);
        if (!it) rfail(r, n, "join: missing argument");
        jv l = iter_list(r, n, *it);
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (l.u.l->v[i].t != JV_STR) rfail(r, n, "sequence item %zu: expected str instance, %s found", i, jv_type_name(l.u.l->v[i]));
            if (i) jj_buf_put(&b, s.u.s.p, s.u.s.n);
            jj_buf_put(&b, l.u.l->v[i].u.s.p, l.u.l->v[i].u.s.n);
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    if (!strcmp(nm, "format")) return py_format(r, n, s, A);
    if (!strncmp(nm, "is", 2)) {
        if (s.u.s.n == 0) return jv_bool(false);
        bool any_cased = false, ok = true;
        for (size_t i = 0; i < s.u.s.n && ok;) {
            int32_t cp;
            i += jj_utf8_dec(s.u.s.p + i, s.u.s.n - i, &cp);
            utf8proc_category_t c = utf8proc_category(cp);
            bool alpha = c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
            bool digit = c == UTF8PROC_CATEGORY_ND;
            if (!strcmp(nm, "isdigit")) ok = digit;
            else if (!strcmp(nm, "isalpha")) ok = alpha;
            else if (!strcmp(nm, "isalnum")) ok = alpha || digit || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
            else if (!strcmp(nm, "isspace")) ok = jj_py_isspace(cp);
            else if (!strcmp(nm, "islower")) { if (utf8proc_toupper(cp) != cp) any_cased = true; if (utf8proc_tolower(cp) != cp) ok = false; }
            else if (!strcmp(nm, "isupper")) { if (utf8proc_tolower(cp) != cp) any_cased = true; if (utf8proc_toupper(cp) != cp) ok = false; }
        }
        if (!strcmp(nm, "islower") || !strcmp(nm, "isupper")) ok = ok && any_cased;
        return jv_bool(ok);
    }
    rfail(r, n, "unsupported method '%s'", nm);
    return s;
}

static jv call_builtin(R *r, const node *n, int id, args *A) {
    switch (id) {
    case B_RANGE: {
        int64_t a = 0, b, st = 1;
        if (A->npos == 1) b = int_arg(r, n, &A->pos[0], 0, "range");
        else if (A->npos >= 2) {
            a = int_arg(r, n, &A->pos[0], 0, "range");
            b = int_arg(r, n, &A->pos[1], 0, "range");
            if (A->npos >= 3) st = int_arg(r, n, &A->pos[2], 1, "range");
        } else rfail(r, n, "range expected at least 1 argument");
        if (st == 0) rfail(r, n, "range() arg 3 must not be zero");
        jv l = jv_list_new(&r->a, 0);
        int64_t cnt = 0;
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
            if (++cnt > RANGE_LIMIT) rfail(r, n, "range too big");
            jv_list_push(&r->a, &l, jv_int(i));
        }
        return l;
    }
    case B_NAMESPACE: case B_DICT: {
        jv d = jv_dict_new(&r->a, 4);
        for (int i = 0; i < A->npos; i++) {
            jv x = A->pos[i];
            if (x.t == JV_DICT || x.t == JV_NS)
                for (size_t j = 0; j < x.u.d->n; j++) jv_dict_set(&r->a, &d, x.u.d->k[j], x.u.d->v[j]);
            else rfail(r, n, "%s() positional argument must be a mapping", id == B_DICT ? "dict" : "namespace");
        }
        for (int i = 0; i < A->nkw; i++)
            jv_dict_set(&r->a, &d, jv_strref(A->kn[i], strlen(A->kn[i])), A->kv[i]);
        if (id == B_NAMESPACE) d.t = JV_NS;
        return d;
    }
    case B_RAISE: {
        jv *m = arg(A, 0, "message");
        jv s = m ? to_str(r, *m) : jv_strref("", 0);
        rfail(r, n, "%.*s", (int)(s.u.s.n > 800 ? 800 : s.u.s.n), s.u.s.p);
        break;
    }
    case B_STRFTIME: {
        jv f = str_arg(r, n, arg(A, 0, "format"), "strftime_now");
        char fmt[256], out[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)(f.u.s.n > 255 ? 255 : f.u.s.n), f.u.s.p);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        size_t k = strftime(out, sizeof out, fmt, &tm);
        return mk_str(r, out, k);
    }
    }
    rfail(r, n, "unknown builtin");
    return jv_none();
}

static jv call_value(R *r, const node *n, jv fn, args *A) {
    switch (fn.t) {
    case JV_MACRO: return call_macro(r, n, fn.u.ptr, A, jv_undef(NULL));
    case JV_METHOD: return call_method(r, n, fn.u.ptr, A);
    case JV_BUILTIN: return call_builtin(r, n, (int)fn.u.i, A);
    case JV_CALLER: {
        caller *c = fn.u.ptr;
        const node *blk = c->blk;
        if (++r->depth > MAX_RENDER_DEPTH) rfail(r, n, "maximum recursion depth exceeded");
        scope *sc = scope_new(r, c->sc);
        for (int i = 0; i < blk->nnames; i++) {
            jv *v = arg(A, i, blk->names[i]);
            if (v) scope_set(r, sc, blk->names[i], *v);
            else if (blk->defs[i]) scope_set(r, sc, blk->names[i], eval(r, blk->defs[i], sc));
            else scope_set(r, sc, blk->names[i], jv_undef(NULL));
        }
        jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
        jj_buf *saved = r->out;
        int saved_loops = r->loops;
        r->out = &buf;
        r->loops = 0;
        render_body(r, blk->body, blk->nbody, sc);
        r->out = saved;
        r->loops = saved_loops;
        r->ctl = 0;
        r->depth--;
        return jv_strref(buf.p ? buf.p : "", buf.n);
    }
    case JV_UNDEF: fail_undef(r, n, fn); break;
    default: break;
    }
    rfail(r, n, "'%s' object is not callable", jv_type_name(fn));
    return fn;
}

/* ---- filters ---- */
/* Attribute path lookup as jinja2's make_attrgetter: "a.b.0". */
static jv attr_path(R *r, const node *n, jv item, jv path) {
    if (is_intlike(path)) return getitem_v(r, n, item, path);
    jv p = str_arg(r, n, &path, "attribute");
    size_t st = 0;
    for (size_t i = 0; i <= p.u.s.n; i++) {
        if (i < p.u.s.n && p.u.s.p[i] != '.') continue;
        const char *seg = p.u.s.p + st;
        size_t sl = i - st;
        bool digits = sl > 0;
        for (size_t j = 0; j < sl; j++) digits &= seg[j] >= '0' && seg[j] <= '9';
        jv key = digits ? jv_int(strtoll(jj_strndup(&r->a, seg, sl), NULL, 10)) : jv_strref(jj_strndup(&r->a, seg, sl), sl);
        item = getitem_v(r, n, item, key);
        st = i + 1;
    }
    return item;
}

static jv gen(jv l) { l.flags = JL_GEN; return l; }

static jv select_like(R *r, const node *n, jv v, args *A, bool attr_mode, bool want) {
    if (!jv_truthy(v)) return gen(jv_list_new(&r->a, 0)); /* jinja2: `if value:` before iterating */
    jv l = iter_list(r, n, v);
    jv out = jv_list_new(&r->a, l.u.l->n);
    int base = 0;
    jv *attr = NULL;
    if (attr_mode) {
        attr = arg(A, 0, NULL);
        if (!attr) rfail(r, n, "missing attribute argument");
        base = 1;
    }
    jv *tname = arg(A, base, NULL);
    const char *test = NULL;
    if (tname) test = zstr(r, str_arg(r, n, tname, "test name"));
    if (test && !in_list(TESTS, test)) rfail(r, n, "no test named '%s'", test);
    args TA = {A->pos + base + 1, A->npos > base + 1 ? A->npos - base - 1 : 0, A->kn, A->kv, 0};
    for (size_t i = 0; i < l.u.l->n; i++) {
        jv x = l.u.l->v[i];
        jv y = attr ? attr_path(r, n, x, *attr) : x;
        bool ok = test ? do_test(r, n, test, y, &TA) : jv_truthy(y);
        if (ok == want) jv_list_push(&r->a, &out, x);
    }
    return gen(out);
}

static jv sort_list(R *r, const node *n, jv l, bool reverse, bool case_sens, jv *attr);

static jv lower_if_str(R *r, jv v) { return v.t == JV_STR ? case_map(r, v, 0) : v; }

static jv do_filter(R *r, const node *n, const char *f, jv v, args *A) {
    step(r, n);
    if (!strcmp(f, "default") || !strcmp(f, "d")) {
        jv *dv = arg(A, 0, "default_value");
        jv *boolean = arg(A, 1, "boolean");
        bool use = v.t == JV_UNDEF || (boolean && jv_truthy(*boolean) && !jv_truthy(v));
        return use ? (dv ? *dv : jv_strref("", 0)) : v;
    }
    if (!strcmp(f, "length") || !strcmp(f, "count")) {
        switch (v.t) {
        case JV_UNDEF: return jv_int(0);
        case JV_STR: return jv_int((int64_t)jj_utf8_len(v.u.s.p, v.u.s.n));
        case JV_LIST: if (!(v.flags & JL_GEN)) return jv_int((int64_t)v.u.l->n); break;
        case JV_DICT: case JV_NS: return jv_int((int64_t)v.u.d->n);
        default: break;
        }
        rfail(r, n, "object of type '%s' has no len()", jv_type_name(v));
    }
    if (!strcmp(f, "tojson")) {
        jj_json_opts o = {.ensure_ascii = false, .sort_keys = false, .indent = NULL, .item_sep = ", ", .key_sep = ": "};
        jv *ea = arg(A, 0, "ensure_ascii"), *ind = arg(A, 1, "indent"), *sep = arg(A, 2, "separators"), *sk = arg(A, 3, "sort_keys");
        if (ea) o.ensure_ascii = jv_truthy(*ea);
        if (sk) o.sort_keys = jv_truthy(*sk);
        if (ind && ind->t != JV_NONE) {
            if (ind->t == JV_STR) o.indent = jj_strndup(&r->a, ind->u.s.p, ind->u.s.n);
            else if (is_intlike(*ind)) {
                int64_t k = ind->u.i < 0 ? 0 : ind->u.i > 64 ? 64 : ind->u.i;
                char *sp = jj_alloc(&r->a, (size_t)k + 1);
                memset(sp, ' ', (size_t)k);
                o.indent = sp;
            } else rfail(r, n, "tojson: indent must be an integer or a string");
            o.item_sep = ",";
        }
        if (sep && sep->t != JV_NONE) {
            if (sep->t != JV_LIST || sep->u.l->n != 2 || sep->u.l->v[0].t != JV_STR || sep->u.l->v[1].t != JV_STR)
                rfail(r, n, "tojson: separators must be a pair of strings");
            o.item_sep = jj_strndup(&r->a, sep->u.l->v[0].u.s.p, sep->u.l->v[0].u.s.n);
            o.key_sep = jj_strndup(&r->a, sep->u.l->v[1].u.s.p, sep->u.l->v[1].u.s.n);
        }
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        jv bad;
        if (!jv_to_json(&b, v, &o, 0, &bad)) {
            if (bad.t == JV_UNDEF) fail_undef(r, n, bad);
            rfail(r, n, "Object of type %s is not JSON serializable", jv_type_name(bad));
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    if (!strcmp(f, "string")) return to_str(r, v);
    if (!strcmp(f, "safe")) { jv s = to_str(r, v); s.flags |= JS_MARKUP; return s; }
    if (!strcmp(f, "e") || !strcmp(f, "escape")) {
        if (v.t == JV_STR && (v.flags & JS_MARKUP)) return v;
        jv s = html_escape(r, to_str(r, v));
        s.flags |= JS_MARKUP;
        return s;
    }
    if (!strcmp(f, "trim")) return py_strip(r, n, to_str(r, v), arg(A, 0, "chars"), true, true);
    if (!strcmp(f, "upper")) return case_map(r, to_str(r, v), 1);
    if (!strcmp(f, "lower")) return case_map(r, to_str(r, v), 0);
    if (!strcmp(f, "capitalize")) return case_map(r, to_str(r, v), 2);
    if (!strcmp(f, "title")) {
        jv s = to_str(r, v);
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        bool start = true;
        for (size_t i = 0; i < s.u.s.n;) {
            int32_t cp;
            size_t k = jj_utf8_dec(s.u.s.p + i, s.u.s.n - i, &cp);
            bool sep = jj_py_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
            int32_t o = sep ? cp : start ? utf8proc_toupper(cp) : utf8proc_tolower(cp);
            char e[4];
            jj_buf_put(&b, e, jj_utf8_enc(o, e));
            start = sep;
            i += k;
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    if (!strcmp(f, "replace")) {
        jv s = to_str(r, v);
        jv o = to_str(r, *(arg(A, 0, "old") ? arg(A, 0, "old") : &(jv){JV_STR, 0, {.s = {"", 0}}}));
        jv w = to_str(r, *(arg(A, 1, "new") ? arg(A, 1, "new") : &(jv){JV_STR, 0, {.s = {"", 0}}}));
        jv *c = arg(A, 2, "count");
        return py_replace(r, s, o, w, c && c->t != JV_NONE ? int_arg(r, n, c, -1, "replace") : -1);
    }
    if (!strcmp(f, "items")) {
        if (v.t == JV_UNDEF) return gen(jv_list_new(&r->a, 0));
        if (v.t != JV_DICT) rfail(r, n, "can only get item pairs from a mapping");
        jv l = jv_list_new(&r->a, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) jv_list_push(&r->a, &l, mk_tuple2(r, v.u.d->k[i], v.u.d->v[i]));
        return gen(l);
    }
    if (!strcmp(f, "list")) { jv l = iter_list(r, n, v); jv c = jv_list_new(&r->a, l.u.l->n); for (size_t i = 0; i < l.u.l->n; i++) jv_list_push(&r->a, &c, l.u.l->v[i]); return c; }
    if (!strcmp(f, "join")) {
        jv *d = arg(A, 0, "d"), *attr = arg(A, 1, "attribute");
        jv sep = d ? to_str(r, *d) : jv_strref("", 0);
        jv l = iter_list(r, n, v);
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i) jj_buf_put(&b, sep.u.s.p, sep.u.s.n);
            jv x = attr ? attr_path(r, n, l.u.l->v[i], *attr) : l.u.l->v[i];
            jv_print(&b, x, false);
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    if (!strcmp(f, "first")) {
        if (v.t == JV_DICT && v.u.d->n) return v.u.d->k[0];
        jv l = iter_list(r, n, v);
        return l.u.l->n ? l.u.l->v[0] : undef_msg(r, "No first item, sequence was empty.");
    }
    if (!strcmp(f, "last")) {
        if (v.t == JV_LIST && (v.flags & JL_GEN)) rfail(r, n, "'generator' object is not reversible");
        jv l = iter_list(r, n, v);
        return l.u.l->n ? l.u.l->v[l.u.l->n - 1] : undef_msg(r, "No last item, sequence was empty.");
    }
    if (!strcmp(f, "reverse")) {
        if (v.t == JV_STR) {
            jv l = iter_list(r, n, v);
            jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
            for (size_t i = l.u.l->n; i-- > 0;) jj_buf_put(&b, l.u.l->v[i].u.s.p, l.u.l->v[i].u.s.n);
            return jv_strref(b.p ? b.p : "", b.n);
        }
        jv l = iter_list(r, n, v); /* dicts reverse their keys */
        jv o = jv_list_new(&r->a, l.u.l->n);
        for (size_t i = l.u.l->n; i-- > 0;) jv_list_push(&r->a, &o, l.u.l->v[i]);
        return gen(o);
    }
    if (!strcmp(f, "map")) {
        jv l = jv_truthy(v) ? iter_list(r, n, v) : jv_list_new(&r->a, 0);
        jv out = jv_list_new(&r->a, l.u.l->n);
        jv *attr = arg(A, -1, "attribute");
        if (attr) {
            jv *dflt = arg(A, -1, "default");
            for (size_t i = 0; i < l.u.l->n; i++) {
                jv x = attr_path(r, n, l.u.l->v[i], *attr);
                if (x.t == JV_UNDEF && dflt) x = *dflt;
                jv_list_push(&r->a, &out, x);
            }
            return gen(out);
        }
        jv fname = str_arg(r, n, arg(A, 0, NULL), "map");
        const char *fz = zstr(r, fname);
        if (!in_list(FILTERS, fz)) rfail(r, n, "no filter named '%s'", fz);
        args FA = {A->pos + 1, A->npos > 1 ? A->npos - 1 : 0, A->kn, A->kv, A->nkw};
        for (size_t i = 0; i < l.u.l->n; i++) jv_list_push(&r->a, &out, do_filter(r, n, fz, l.u.l->v[i], &FA));
        return gen(out);
    }
    if (!strcmp(f, "selectattr")) return select_like(r, n, v, A, true, true);
    if (!strcmp(f, "rejectattr")) return select_like(r, n, v, A, true, false);
    if (!strcmp(f, "select")) return select_like(r, n, v, A, false, true);
    if (!strcmp(f, "reject")) return select_like(r, n, v, A, false, false);
    if (!strcmp(f, "unique")) {
        jv l = iter_list(r, n, v);
        jv *cs = arg(A, 0, "case_sensitive"), *attr = arg(A, 1, "attribute");
        bool case_sens = cs && jv_truthy(*cs);
        jv out = jv_list_new(&r->a, l.u.l->n), seen = jv_list_new(&r->a, l.u.l->n);
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv key = attr ? attr_path(r, n, l.u.l->v[i], *attr) : l.u.l->v[i];
            if (!case_sens) key = lower_if_str(r, key);
            if (contains(r, n, key, seen)) continue;
            jv_list_push(&r->a, &seen, key);
            jv_list_push(&r->a, &out, l.u.l->v[i]);
        }
        return gen(out);
    }
    if (!strcmp(f, "dictsort")) {
        if (v.t != JV_DICT) rfail(r, n, "dictsort: expected a mapping");
        jv *cs = arg(A, 0, "case_sensitive"), *by = arg(A, 1, "by"), *rev = arg(A, 2, "reverse");
        jv l = jv_list_new(&r->a, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++) jv_list_push(&r->a, &l, mk_tuple2(r, v.u.d->k[i], v.u.d->v[i]));
        jv idx = jv_int(by && by->t == JV_STR && by->u.s.n == 5 && !memcmp(by->u.s.p, "value", 5) ? 1 : 0);
        return sort_list(r, n, l, rev && jv_truthy(*rev), cs && jv_truthy(*cs), &idx);
    }
    if (!strcmp(f, "sort")) {
        jv *rev = arg(A, 0, "reverse"), *cs = arg(A, 1, "case_sensitive"), *attr = arg(A, 2, "attribute");
        return sort_list(r, n, iter_list(r, n, v), rev && jv_truthy(*rev), cs && jv_truthy(*cs), attr);
    }
    if ((!strcmp(f, "int") || !strcmp(f, "float")) && v.t == JV_UNDEF) fail_undef(r, n, v);
    if (!strcmp(f, "int")) {
        jv *d = arg(A, 0, "default");
        jv dflt = d ? *d : jv_int(0);
        if (is_intlike(v)) return jv_int(v.u.i);
        if (v.t == JV_FLOAT) return isfinite(v.u.f) && fabs(v.u.f) < 9.2e18 ? jv_int((int64_t)v.u.f) : dflt;
        if (v.t == JV_STR) {
            char *s = jj_strndup(&r->a, v.u.s.p, v.u.s.n), *e;
            while (*s == ' ' || *s == '\t' || *s == '\n') s++;
            errno = 0;
            long long x = strtoll(s, &e, 10);
            while (*e == ' ' || *e == '\t' || *e == '\n') e++;
            if (e != s && !*e && !errno) return jv_int(x);
            double fl = strtod(s, &e);
            while (*e == ' ' || *e == '\t' || *e == '\n') e++;
            if (e != s && !*e && isfinite(fl) && fabs(fl) < 9.2e18) return jv_int((int64_t)fl);
        }
        return dflt;
    }
    if (!strcmp(f, "float")) {
        jv *d = arg(A, 0, "default");
        jv dflt = d ? *d : jv_float(0);
        if (is_num(v)) return jv_float(num_f(v));
        if (v.t == JV_STR) {
            char *s = jj_strndup(&r->a, v.u.s.p, v.u.s.n), *e;
            double fl = strtod(s, &e);
            while (*e == ' ' || *e == '\t' || *e == '\n') e++;
            if (e != s && !*e) return jv_float(fl);
        }
        return dflt;
    }
    if (!strcmp(f, "abs")) {
        if (is_intlike(v)) { if (v.u.i == INT64_MIN) rfail(r, n, "integer overflow"); return jv_int(v.u.i < 0 ? -v.u.i : v.u.i); }
        if (v.t == JV_FLOAT) return jv_float(fabs(v.u.f));
        rfail(r, n, "bad operand type for abs(): '%s'", jv_type_name(v));
    }
    if (!strcmp(f, "round")) {
        int64_t prec = int_arg(r, n, arg(A, 0, "precision"), 0, "round");
        jv *m = arg(A, 1, "method");
        const char *meth = m && m->t == JV_STR ? zstr(r, *m) : "common";
        if (!is_num(v)) rfail(r, n, "round: expected a number");
        if (is_intlike(v) && !strcmp(meth, "common")) return jv_int(v.u.i); /* round(int, n) is an int */
        double x = num_f(v), sc = pow(10.0, (double)prec), y;
        if (!strcmp(meth, "ceil")) y = ceil(x * sc) / sc;
        else if (!strcmp(meth, "floor")) y = floor(x * sc) / sc;
        else y = nearbyint(x * sc) / sc;
        return jv_float(y);
    }
    if (!strcmp(f, "sum")) {
        jv l = iter_list(r, n, v);
        jv *attr = arg(A, -1, "attribute"), *start = arg(A, 1, "start");
        jv acc = start ? *start : jv_int(0);
        for (size_t i = 0; i < l.u.l->n; i++) acc = arith(r, n, '+', acc, attr ? attr_path(r, n, l.u.l->v[i], *attr) : l.u.l->v[i]);
        return acc;
    }
    if (!strcmp(f, "min") || !strcmp(f, "max")) {
        jv l = iter_list(r, n, v);
        if (!l.u.l->n) return undef_msg(r, "No aggregated item, sequence was empty.");
        jv best = l.u.l->v[0];
        for (size_t i = 1; i < l.u.l->n; i++) {
            int c = cmp_vals(r, n, lower_if_str(r, l.u.l->v[i]), lower_if_str(r, best));
            if (f[1] == 'i' ? c < 0 : c > 0) best = l.u.l->v[i];
        }
        return best;
    }
    if (!strcmp(f, "format")) {
        if (A->npos && A->nkw) rfail(r, n, "can't handle positional and keyword arguments at the same time");
        jv a;
        if (A->nkw) {
            a = jv_dict_new(&r->a, (size_t)A->nkw);
            for (int k = 0; k < A->nkw; k++) jv_dict_set(&r->a, &a, jv_strref(A->kn[k], strlen(A->kn[k])), A->kv[k]);
        } else {
            a = jv_list_new(&r->a, (size_t)A->npos);
            a.flags = JL_TUPLE;
            for (int k = 0; k < A->npos; k++) jv_list_push(&r->a, &a, A->pos[k]);
        }
        return py_percent(r, n, to_str(r, v), a);
    }
    if (!strcmp(f, "indent")) {
        jv s = to_str(r, v);
        jv *w = arg(A, 0, "width"), *first = arg(A, 1, "first"), *blank = arg(A, 2, "blank");
        jj_buf pad = {.a = &r->a, .limit = 4096};
        if (w && w->t == JV_STR) jj_buf_put(&pad, w->u.s.p, w->u.s.n);
        else for (int64_t i = 0, k = int_arg(r, n, w, 4, "indent"); i < k && i < 1000; i++) jj_buf_putc(&pad, ' ');
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        bool at_start = true, is_first = true;
        for (size_t i = 0; i <= s.u.s.n; i++) {
            if (at_start && i < s.u.s.n) {
                bool empty = s.u.s.p[i] == '\n';
                if ((!is_first || (first && jv_truthy(*first))) && (!empty || (blank && jv_truthy(*blank))))
                    jj_buf_put(&b, pad.p ? pad.p : "", pad.n);
                at_start = false;
            }
            if (i == s.u.s.n) break;
            jj_buf_putc(&b, s.u.s.p[i]);
            if (s.u.s.p[i] == '\n') { at_start = true; is_first = false; }
        }
        return jv_strref(b.p ? b.p : "", b.n);
    }
    if (!strcmp(f, "wordcount")) {
        jv s = to_str(r, v);
        return jv_int((int64_t)py_split(r, n, s, NULL, -1, false).u.l->n);
    }
    if (!strcmp(f, "attr")) {
        jv a = str_arg(r, n, arg(A, 0, "name"), "attr");
        return getattr_v(r, n, v, zstr(r, a), a.u.s.n);
    }
    rfail(r, n, "no filter named '%s'", f);
    return v;
}

/* jinja2's select/reject/map/unique/items filters return generators, so an error in them
 * only surfaces when the result is consumed: run the filter now, and on a template error
 * return a generator that raises it when iterated (truthiness and printing do not). */
static jv filter_lazily(R *r, const node *n, const char *f, jv v, args *A) {
    jmp_buf saved;
    memcpy(&saved, &r->jb, sizeof saved);
    int depth = r->depth;
    int rc = setjmp(r->jb);
    if (rc == 0) {
        jv res = do_filter(r, n, f, v, A);
        memcpy(&r->jb, &saved, sizeof saved);
        return res;
    }
    memcpy(&r->jb, &saved, sizeof saved);
    if (rc != 1) longjmp(r->jb, rc); /* memory and output limits are not deferred */
    r->depth = depth;
    jv g = jv_list_new(&r->a, 1);
    jv_list_push(&r->a, &g, mk_str(r, r->err, strlen(r->err)));
    g.flags = JL_GEN | JL_POISON;
    return g;
}

static bool is_lazy_filter(const char *f) {
    static const char *const lazy[] = {"select", "reject", "selectattr", "rejectattr", "map", "unique", "items", NULL};
    return in_list(lazy, f);
}

typedef struct sortctx { R *r; const node *n; bool cs; jv *attr; } sortctx;

static int sort_cmp(const sortctx *c, const jv *x, const jv *y) {
    jv a = *x, b = *y;
    if (c->attr) { a = attr_path(c->r, c->n, a, *c->attr); b = attr_path(c->r, c->n, b, *c->attr); }
    if (!c->cs) { a = lower_if_str(c->r, a); b = lower_if_str(c->r, b); }
    return cmp_vals(c->r, c->n, a, b);
}

/* Stable merge sort of a[0..k) using tmp (Python's sort is stable, also with reverse). */
static void merge_sort(const sortctx *sc, jv *a, jv *tmp, size_t k, bool reverse) {
    if (k < 2) return;
    size_t h = k / 2;
    merge_sort(sc, a, tmp, h, reverse);
    merge_sort(sc, a + h, tmp, k - h, reverse);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < k) {
        step(sc->r, sc->n);
        int c = sort_cmp(sc, &a[j], &a[i]);
        bool take_right = reverse ? c > 0 : c < 0;
        tmp[o++] = take_right ? a[j++] : a[i++];
    }
    while (i < h) tmp[o++] = a[i++];
    while (j < k) tmp[o++] = a[j++];
    memcpy(a, tmp, k * sizeof(jv));
}

static jv sort_list(R *r, const node *n, jv l, bool reverse, bool case_sens, jv *attr) {
    jv c = jv_list_new(&r->a, l.u.l->n);
    for (size_t i = 0; i < l.u.l->n; i++) jv_list_push(&r->a, &c, l.u.l->v[i]);
    sortctx sc = {r, n, case_sens, attr};
    if (c.u.l->n > 1) merge_sort(&sc, c.u.l->v, jj_alloc(&r->a, c.u.l->n * sizeof(jv)), c.u.l->n, reverse);
    return c;
}

/* ---- tests ---- */
static bool do_test(R *r, const node *n, const char *t, jv v, args *A) {
    jv *a0 = arg(A, 0, NULL);
    if (!strcmp(t, "defined")) return v.t != JV_UNDEF;
    if (!strcmp(t, "undefined")) return v.t == JV_UNDEF;
    if (!strcmp(t, "none")) return v.t == JV_NONE;
    if (!strcmp(t, "string")) return v.t == JV_STR;
    if (!strcmp(t, "mapping")) return v.t == JV_DICT;
    if (!strcmp(t, "iterable")) return v.t == JV_STR || v.t == JV_LIST || v.t == JV_DICT || v.t == JV_UNDEF;
    if (!strcmp(t, "sequence")) return v.t == JV_STR || (v.t == JV_LIST && !(v.flags & JL_GEN)) || v.t == JV_DICT || v.t == JV_UNDEF;
    if (!strcmp(t, "number")) return is_num(v);
    if (!strcmp(t, "integer")) return v.t == JV_INT;
    if (!strcmp(t, "float")) return v.t == JV_FLOAT;
    if (!strcmp(t, "boolean")) return v.t == JV_BOOL;
    if (!strcmp(t, "true")) return v.t == JV_BOOL && v.u.i;
    if (!strcmp(t, "false")) return v.t == JV_BOOL && !v.u.i;
    if (!strcmp(t, "callable")) return v.t == JV_MACRO || v.t == JV_BUILTIN || v.t == JV_METHOD || v.t == JV_CALLER;
    if (!strcmp(t, "lower") || !strcmp(t, "upper")) {
        jv s = to_str(r, v);
        bool cased = false;
        for (size_t i = 0; i < s.u.s.n;) {
            int32_t cp;
            i += jj_utf8_dec(s.u.s.p + i, s.u.s.n - i, &cp);
            int32_t lo = utf8proc_tolower(cp), up = utf8proc_toupper(cp);
            if (lo != cp || up != cp) cased = true;
            if (t[0] == 'l' ? lo != cp : up != cp) return false;
        }
        return cased;
    }
    if (!strcmp(t, "odd") || !strcmp(t, "even")) { /* value % 2 == 1 / == 0, Python semantics */
        jv m = arith(r, n, '%', v, jv_int(2));
        return jv_equal(m, jv_int(t[0] == 'o' ? 1 : 0));
    }
    if (!a0 && strcmp(t, "filter") && strcmp(t, "test")) rfail(r, n, "test '%s' needs an argument", t);
    if (!strcmp(t, "divisibleby")) {
        jv m = arith(r, n, '%', v, *a0);
        return !jv_truthy(m);
    }
    if (!strcmp(t, "equalto") || !strcmp(t, "eq") || !strcmp(t, "==")) return jv_equal(v, *a0);
    if (!strcmp(t, "ne") || !strcmp(t, "!=")) return !jv_equal(v, *a0);
    if (!strcmp(t, "sameas")) return v.t == a0->t && jv_equal(v, *a0);
    if (!strcmp(t, "in")) return contains(r, n, v, *a0);
    if (!strcmp(t, "filter")) return v.t == JV_STR && in_list(FILTERS, zstr(r, v));
    if (!strcmp(t, "test")) return v.t == JV_STR && in_list(TESTS, zstr(r, v));
    int c = cmp_vals(r, n, v, *a0);
    if (!strcmp(t, "lt") || !strcmp(t, "<")) return c < 0;
    if (!strcmp(t, "le") || !strcmp(t, "<=")) return c <= 0;
    if (!strcmp(t, "gt") || !strcmp(t, ">")) return c > 0;
    if (!strcmp(t, "ge") || !strcmp(t, ">=")) return c >= 0;
    rfail(r, n, "no test named '%s'", t);
    return false;
}

/* ---- expression evaluation ---- */
static jv eval(R *r, const node *n, scope *sc) {
    step(r, n);
    if (++r->depth > MAX_RENDER_DEPTH + MAX_PARSE_DEPTH) rfail(r, n, "maximum recursion depth exceeded");
    jv res;
    switch (n->kind) {
    case E_CONST: res = n->cval; break;
    case E_NAME: {
        jv *v = scope_get(sc, n->name);
        res = v ? *v : undef_msg(r, "'%s' is undefined", n->name);
        break;
    }
    case E_GETATTR: res = getattr_v(r, n, eval(r, n->a, sc), n->name, n->name_n); break;
    case E_GETITEM: {
        jv o = eval(r, n->a, sc);
        res = getitem_v(r, n, o, eval(r, n->b, sc));
        break;
    }
    case E_SLICE: {
        jv o = eval(r, n->a, sc);
        jv a = n->b ? eval(r, n->b, sc) : jv_none();
        jv b = n->c ? eval(r, n->c, sc) : jv_none();
        jv s = n->nkids ? eval(r, n->kids[0], sc) : jv_none();
        res = slice_v(r, n, o, a, b, s);
        break;
    }
    case E_CALL: {
        jv fn = eval(r, n->a, sc);
        args A;
        eval_args(r, n, sc, &A, NULL);
        res = call_value(r, n, fn, &A);
        break;
    }
    case E_FILTER: {
        jv v = eval(r, n->a, sc);
        args A;
        eval_args(r, n, sc, &A, NULL);
        res = is_lazy_filter(n->name) ? filter_lazily(r, n, n->name, v, &A) : do_filter(r, n, n->name, v, &A);
        break;
    }
    case E_TEST: {
        jv v = eval(r, n->a, sc);
        args A;
        eval_args(r, n, sc, &A, NULL);
        bool b = do_test(r, n, n->name, v, &A);
        res = jv_bool(n->negate ? !b : b);
        break;
    }
    case E_BIN: {
        jv a = eval(r, n->a, sc);
        res = arith(r, n, n->op, a, eval(r, n->b, sc));
        break;
    }
    case E_NEG: case E_POS: {
        jv a = eval(r, n->a, sc);
        if (a.t == JV_UNDEF) fail_undef(r, n, a);
        if (is_intlike(a)) {
            if (n->kind == E_NEG && a.u.i == INT64_MIN) rfail(r, n, "integer overflow");
            res = jv_int(n->kind == E_NEG ? -a.u.i : a.u.i);
        } else if (a.t == JV_FLOAT) res = jv_float(n->kind == E_NEG ? -a.u.f : a.u.f);
        else rfail(r, n, "bad operand type for unary operator: '%s'", jv_type_name(a));
        break;
    }
    case E_NOT: res = jv_bool(!jv_truthy(eval(r, n->a, sc))); break;
    case E_AND: {
        jv a = eval(r, n->a, sc);
        res = jv_truthy(a) ? eval(r, n->b, sc) : a;
        break;
    }
    case E_OR: {
        jv a = eval(r, n->a, sc);
        res = jv_truthy(a) ? a : eval(r, n->b, sc);
        break;
    }
    case E_COMPARE: {
        jv left = eval(r, n->a, sc);
        res = jv_bool(true);
        for (int i = 0; i < n->nkids; i++) {
            jv right = eval(r, n->kids[i], sc);
            bool ok;
            switch (n->ops[i]) {
            case OP_EQ: ok = jv_equal(left, right); break;
            case OP_NE: ok = !jv_equal(left, right); break;
            case OP_IN: ok = contains(r, n, left, right); break;
            case OP_NOTIN: ok = !contains(r, n, left, right); break;
            case '<': ok = cmp_vals(r, n, left, right) < 0; break;
            case '>': ok = cmp_vals(r, n, left, right) > 0; break;
            case OP_LE: ok = cmp_vals(r, n, left, right) <= 0; break;
            default: ok = cmp_vals(r, n, left, right) >= 0; break;
            }
            if (!ok) { res = jv_bool(false); break; }
            left = right;
        }
        break;
    }
    case E_COND:
        if (jv_truthy(eval(r, n->a, sc))) res = eval(r, n->b, sc);
        else res = n->c ? eval(r, n->c, sc) : undef_msg(r, "the inline if-expression evaluated to false and no else section was defined");
        break;
    case E_LIST: case E_TUPLE: {
        res = jv_list_new(&r->a, (size_t)n->nkids);
        if (n->kind == E_TUPLE) res.flags = JL_TUPLE;
        for (int i = 0; i < n->nkids; i++) jv_list_push(&r->a, &res, eval(r, n->kids[i], sc));
        break;
    }
    case E_DICT: {
        res = jv_dict_new(&r->a, (size_t)n->nkids / 2);
        for (int i = 0; i + 1 < n->nkids; i += 2) {
            jv k = eval(r, n->kids[i], sc);
            if (k.t == JV_LIST && !(k.flags & JL_TUPLE)) rfail(r, n, "unhashable type: 'list'");
            if (k.t == JV_DICT || k.t == JV_UNDEF) rfail(r, n, "unhashable type: '%s'", jv_type_name(k));
            jv_dict_set(&r->a, &res, k, eval(r, n->kids[i + 1], sc));
        }
        break;
    }
    case E_CONCAT: {
        jj_buf b = {.a = &r->a, .limit = OUTPUT_LIMIT};
        for (int i = 0; i < n->nkids; i++) jv_print(&b, eval(r, n->kids[i], sc), false);
        res = jv_strref(b.p ? b.p : "", b.n);
        break;
    }
    default: rfail(r, n, "internal: bad expression node"); res = jv_none();
    }
    r->depth--;
    return res;
}

/* ---- statements ---- */
static void bind_targets(R *r, const node *n, scope *sc, jv item) {
    if (n->nnames == 1) { scope_set(r, sc, n->names[0], item); return; }
    jv l = item.t == JV_STR || item.t == JV_DICT ? iter_list(r, n, item) : item;
    if (l.t != JV_LIST) rfail(r, n, "cannot unpack non-iterable %s object", jv_type_name(item));
    if (l.u.l->n != (size_t)n->nnames)
        rfail(r, n, "cannot unpack %zu values into %d variables", l.u.l->n, n->nnames);
    for (int i = 0; i < n->nnames; i++) scope_set(r, sc, n->names[i], l.u.l->v[i]);
}

static void render_for(R *r, const node *n, scope *sc) {
    jv src = eval(r, n->a, sc);
    jv items = iter_list(r, n->a, src);
    if (n->b) {
        jv kept = jv_list_new(&r->a, items.u.l->n);
        for (size_t i = 0; i < items.u.l->n; i++) {
            scope *fs = scope_new(r, sc);
            bind_targets(r, n, fs, items.u.l->v[i]);
            if (jv_truthy(eval(r, n->b, fs))) jv_list_push(&r->a, &kept, items.u.l->v[i]);
        }
        items = kept;
    }
    if (items.u.l->n == 0) {
        render_body(r, n->els, n->nels, sc);
        return;
    }
    loopst *L = jj_alloc(&r->a, sizeof *L);
    L->items = items;
    jv lv = {JV_LOOP, 0, {0}};
    lv.u.ptr = L;
    r->loops++;
    for (size_t i = 0; i < items.u.l->n; i++) {
        L->idx = i;
        scope *is = scope_new(r, sc);
        scope_set(r, is, "loop", lv);
        bind_targets(r, n, is, items.u.l->v[i]);
        render_body(r, n->body, n->nbody, is);
        if (r->ctl == 1) { r->ctl = 0; break; }
        r->ctl = 0;
    }
    r->loops--;
}

static void render_node(R *r, const node *n, scope *sc) {
    step(r, n);
    switch (n->kind) {
    case N_TEXT: jj_buf_put(r->out, n->name, n->name_n); break;
    case N_OUTPUT: {
        jv v = eval(r, n->a, sc);
        jv_print(r->out, v, false);
        break;
    }
    case N_IF: {
        jv c = eval(r, n->a, sc);
        if (jv_truthy(c)) render_body(r, n->body, n->nbody, sc);
        else render_body(r, n->els, n->nels, sc);
        break;
    }
    case N_FOR: render_for(r, n, sc); break;
    case N_SET: {
        jv v = eval(r, n->a, sc);
        bind_targets(r, n, sc, v);
        break;
    }
    case N_SETATTR: {
        jv *ns = scope_get(sc, n->name);
        if (!ns || ns->t != JV_NS) rfail(r, n, "cannot assign attribute on non-namespace object");
        jv v = eval(r, n->a, sc);
        jv_dict_set(&r->a, ns, jv_strref(n->names[0], strlen(n->names[0])), v);
        break;
    }
    case N_SETBLOCK: {
        jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
        jj_buf *saved = r->out;
        r->out = &buf;
        render_body(r, n->body, n->nbody, sc);
        r->out = saved;
        scope_set(r, sc, n->names[0], jv_strref(buf.p ? buf.p : "", buf.n));
        break;
    }
    case N_MACRO: {
        jv m = {JV_MACRO, 0, {0}};
        m.u.ptr = (void *)n;
        scope_set(r, sc, n->name, m);
        break;
    }
    case N_CALLBLOCK: {
        const node *call = n->a;
        jv fn = eval(r, call->a, sc);
        args A;
        eval_args(r, call, sc, &A, NULL);
        caller *c = jj_alloc(&r->a, sizeof *c);
        c->blk = n;
        c->sc = sc;
        jv cv = {JV_CALLER, 0, {0}};
        cv.u.ptr = c;
        if (fn.t != JV_MACRO) rfail(r, n, "the call block needs a macro");
        jv out = call_macro(r, n, fn.u.ptr, &A, cv);
        jj_buf_put(r->out, out.u.s.p, out.u.s.n);
        break;
    }
    case N_BREAK: case N_CONTINUE:
        if (!r->loops) rfail(r, n, "'%s' outside of a loop", n->kind == N_BREAK ? "break" : "continue");
        r->ctl = n->kind == N_BREAK ? 1 : 2;
        break;
    case N_GENERATION: render_body(r, n->body, n->nbody, sc); break;
    case N_FILTERBLOCK: {
        jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
        jj_buf *saved = r->out;
        r->out = &buf;
        render_body(r, n->body, n->nbody, sc);
        r->out = saved;
        scope *fs = scope_new(r, sc);
        scope_set(r, fs, n->b->name, jv_strref(buf.p ? buf.p : "", buf.n));
        jv v = eval(r, n->a, fs);
        jv_print(r->out, v, false);
        break;
    }
    default: rfail(r, n, "internal: bad statement node");
    }
}

static void render_body(R *r, node *const *body, int nb, scope *sc) {
    if (++r->depth > MAX_RENDER_DEPTH + MAX_PARSE_DEPTH) rfail(r, nb ? body[0] : NULL, "maximum recursion depth exceeded");
    for (int i = 0; i < nb && !r->ctl; i++) render_node(r, body[i], sc);
    r->depth--;
}

/* cJSON -> value (integral numbers become ints, as Python's json.loads would for "3"). */
static jv from_json(R *r, const cJSON *j, int depth) {
    if (depth > 200) rfail(r, NULL, "context nested too deeply");
    if (cJSON_IsNull(j) || !j) return jv_none();
    if (cJSON_IsTrue(j)) return jv_bool(true);
    if (cJSON_IsFalse(j)) return jv_bool(false);
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0) return jv_int((int64_t)d);
        return jv_float(d);
    }
    if (cJSON_IsString(j)) return mk_str(r, j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        jv l = jv_list_new(&r->a, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c; c = c->next) jv_list_push(&r->a, &l, from_json(r, c, depth + 1));
        return l;
    }
    if (cJSON_IsObject(j)) {
        jv d = jv_dict_new(&r->a, (size_t)cJSON_GetArraySize(j));
        for (const cJSON *c = j->child; c; c = c->next)
            jv_dict_set(&r->a, &d, mk_str(r, c->string ? c->string : "", c->string ? strlen(c->string) : 0),
                        from_json(r, c, depth + 1));
        return d;
    }
    return jv_none();
}

fm_status fm__tmpl_render(const fm__tmpl *t, const cJSON *ctx, char **out, size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    if (!t) return fm__err(FM_ERR_ARG, "template: not compiled");
    if (ctx && !cJSON_IsObject(ctx)) return fm__err(FM_ERR_ARG, "template: the context must be a JSON object");
    R *r = calloc(1, sizeof *r);
    if (!r) return fm__err(FM_ERR_NOMEM, "template: out of memory");
    r->a.limit = RENDER_ARENA_LIMIT;
    r->a.oom = &r->jb;
    int rc = setjmp(r->jb);
    if (rc) {
        fm_status st = rc == 1 ? fm__err(FM_ERR_TEMPLATE, "template: %s", r->err)
                       : rc == 2 ? fm__err(FM_ERR_NOMEM, "template: render memory limit reached")
                                 : fm__err(FM_ERR_TEMPLATE, "template: output larger than %zu bytes", OUTPUT_LIMIT);
        jj_arena_free(&r->a);
        free(r);
        return st;
    }
    scope *g = scope_new(r, NULL);
    static const struct { const char *name; int id; } builtins[] = {
        {"range", B_RANGE}, {"namespace", B_NAMESPACE}, {"dict", B_DICT},
        {"raise_exception", B_RAISE}, {"strftime_now", B_STRFTIME}};
    for (size_t i = 0; i < FM_ARRAY_LEN(builtins); i++) {
        jv b = {JV_BUILTIN, 0, {0}};
        b.u.i = builtins[i].id;
        scope_set(r, g, builtins[i].name, b);
    }
    scope *top = scope_new(r, g);
    if (ctx)
        for (const cJSON *c = ctx->child; c; c = c->next)
            if (c->string) scope_set(r, top, jj_strndup(&r->a, c->string, strlen(c->string)), from_json(r, c, 0));
    r->root = top;
    jj_buf buf = {.a = &r->a, .limit = OUTPUT_LIMIT};
    r->out = &buf;
    render_body(r, t->body, t->nbody, top);
    char *res = malloc(buf.n + 1);
    if (!res) {
        jj_arena_free(&r->a);
        free(r);
        return fm__err(FM_ERR_NOMEM, "template: out of memory");
    }
    if (buf.n) memcpy(res, buf.p, buf.n);
    res[buf.n] = 0;
    *out = res;
    if (len) *len = buf.n;
    jj_arena_free(&r->a);
    free(r);
    return FM_OK;
}
