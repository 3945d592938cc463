/* safetensors.c: mmap-based safetensors reader with strict validation of untrusted
 * headers (see safetensors.h). The JSON header is parsed with cJSON. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER (100u * 1024u * 1024u)

static const struct { const char *name; fm__dtype dt; } k_dtypes[] = {
    {"F32", FM_DT_F32}, {"F16", FM_DT_F16}, {"BF16", FM_DT_BF16}, {"U32", FM_DT_U32},
    {"I32", FM_DT_I32}, {"U8", FM_DT_U8}, {"I8", FM_DT_I8}, {"I64", FM_DT_I64},
    {"F64", FM_DT_F64}, {"BOOL", FM_DT_BOOL}, {"U16", FM_DT_U16}, {"I16", FM_DT_I16},
    {"U64", FM_DT_U64},
};

int fm__st_parse_dtype(const char *s) {
    for (size_t i = 0; i < FM_ARRAY_LEN(k_dtypes); i++)
        if (strcmp(s, k_dtypes[i].name) == 0) return (int)k_dtypes[i].dt;
    return -1;
}

void fm__st_free(fm__st_set *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_files; i++) {
        fm__st_file *f = &s->files[i];
        if (f->map && f->size) munmap((void *)f->map, f->size);
        if (f->fd >= 0) close(f->fd);
        free(f->path);
    }
    for (int32_t i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const fm__st_tensor *)a)->name, ((const fm__st_tensor *)b)->name);
}

const fm__st_tensor *fm__st_find(const fm__st_set *s, const char *name) {
    if (!s || !name) return NULL;
    size_t lo = 0, hi = (size_t)s->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->tensors[mid].name, name);
        if (c == 0) return &s->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const fm__st_tensor *fm__st_findf(const fm__st_set *s, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) return NULL;
    return fm__st_find(s, buf);
}

/* Reads a JSON number that must be a non-negative integer below 2^53. */
static bool json_u64(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return false;
    *out = (uint64_t)d;
    return true;
}

typedef struct { uint64_t b, e; int32_t idx; } span;
static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    return x->e < y->e ? -1 : x->e > y->e;
}

/* Maps file path and appends its tensors to the growing arrays of s. */
static fm_status add_file(fm__st_set *s, const char *path, int32_t *cap_tensors) {
    fm__st_file *files = realloc(s->files, (size_t)(s->n_files + 1) * sizeof *files);
    if (!files) return fm__err(FM_ERR_NOMEM, "%s: out of memory", path);
    s->files = files;
    int32_t fi = s->n_files++;
    fm__st_file *f = &s->files[fi];
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = fm__strdup(path);
    if (!f->path) return fm__err(FM_ERR_NOMEM, "%s: out of memory", path);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return fm__err(FM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(f->fd, &st) != 0) return fm__err(FM_ERR_IO, "%s: stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return fm__err(FM_ERR_FORMAT, "%s: not a regular file", path);
    if (st.st_size < 8)
        return fm__err(FM_ERR_FORMAT, "%s: truncated: %lld bytes, a safetensors file has at least 8",
                       path, (long long)st.st_size);
    f->size = (uint64_t)st.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, f->fd, 0);
    if (map == MAP_FAILED) {
        f->size = 0;
        return fm__err(FM_ERR_IO, "%s: mmap: %s", path, strerror(errno));
    }
    f->map = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen > f->size - 8)
        return fm__err(FM_ERR_FORMAT,
                       "%s: header length %llu exceeds the file (%llu bytes): truncated or corrupt",
                       path, (unsigned long long)hlen, (unsigned long long)f->size);
    if (hlen > ST_MAX_HEADER)
        return fm__err(FM_ERR_FORMAT, "%s: header length %llu is over the 100 MB limit", path,
                       (unsigned long long)hlen);
    f->data_start = 8 + hlen;
    uint64_t data_len = f->size - f->data_start;

    cJSON *root = cJSON_ParseWithLength((const char *)f->map + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fm__err(FM_ERR_FORMAT, "%s: header is not a JSON object", path);
    }
    fm_status rc = FM_OK;
    int32_t first = s->n_tensors;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const char *name = it->string ? it->string : "";
        if (strcmp(name, "__metadata__") == 0) continue;
        if (!cJSON_IsObject(it)) {
            rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: entry is not an object", path, name);
            break;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) ||
            cJSON_GetArraySize(jo) != 2) {
            rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: needs dtype, shape and data_offsets[2]",
                         path, name);
            break;
        }
        int dt = fm__st_parse_dtype(jd->valuestring);
        if (dt < 0) {
            rc = fm__err(FM_ERR_UNSUPPORTED, "%s: tensor %s: unknown dtype %s", path, name,
                         jd->valuestring);
            break;
        }
        int nd = cJSON_GetArraySize(js);
        if (nd > FM_ST_MAX_DIMS) {
            rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: %d dimensions (max %d)", path, name, nd,
                         FM_ST_MAX_DIMS);
            break;
        }
        fm__st_tensor t;
        memset(&t, 0, sizeof t);
        t.dtype = (fm__dtype)dt;
        t.ndim = nd;
        t.file = fi;
        uint64_t count = 1;
        bool ok = true;
        for (int d = 0; d < nd && ok; d++) {
            uint64_t v;
            if (!json_u64(cJSON_GetArrayItem(js, d), &v) || v > (uint64_t)INT64_MAX) ok = false;
            else {
                t.shape[d] = (int64_t)v;
                if (!fm__mul_u64(count, v, &count)) ok = false;
            }
        }
        uint64_t nbytes = 0;
        if (!ok || !fm__mul_u64(count, (uint64_t)fm__dtype_size(t.dtype), &nbytes)) {
            rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: invalid or overflowing shape", path, name);
            break;
        }
        uint64_t b, e;
        if (!json_u64(cJSON_GetArrayItem(jo, 0), &b) || !json_u64(cJSON_GetArrayItem(jo, 1), &e) ||
            b > e) {
            rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: invalid data_offsets", path, name);
            break;
        }
        if (e > data_len) {
            rc = fm__err(FM_ERR_FORMAT,
                         "%s: tensor %s: data_offsets [%llu, %llu) out of range: the data section "
                         "has %llu bytes (truncated file?)",
                         path, name, (unsigned long long)b, (unsigned long long)e,
                         (unsigned long long)data_len);
            break;
        }
        if (e - b != nbytes) {
            char shp[160];
            int p = 0;
            shp[0] = 0;
            for (int d = 0; d < nd && p < (int)sizeof shp - 24; d++)
                p += snprintf(shp + p, sizeof shp - (size_t)p, "%s%lld", d ? "," : "",
                              (long long)t.shape[d]);
            rc = fm__err(FM_ERR_FORMAT,
                         "%s: tensor %s: dtype %s x shape [%s] is %llu bytes but data_offsets "
                         "span %llu",
                         path, name, jd->valuestring, shp, (unsigned long long)nbytes,
                         (unsigned long long)(e - b));
            break;
        }
        t.off = f->data_start + b;
        t.nbytes = nbytes;
        t.data = f->map + t.off;
        t.name = fm__strdup(name);
        if (!t.name) { rc = fm__err(FM_ERR_NOMEM, "%s: out of memory", path); break; }
        if (s->n_tensors == *cap_tensors) {
            int32_t nc = *cap_tensors ? *cap_tensors * 2 : 256;
            fm__st_tensor *nt = realloc(s->tensors, (size_t)nc * sizeof *nt);
            if (!nt) { free(t.name); rc = fm__err(FM_ERR_NOMEM, "%s: out of memory", path); break; }
            s->tensors = nt;
            *cap_tensors = nc;
        }
        s->tensors[s->n_tensors++] = t;
    }
    cJSON_Delete(root);
    if (rc != FM_OK) return rc;

    /* No two tensors of this file may share bytes. */
    int32_t n = s->n_tensors - first;
    if (n > 1) {
        span *sp = fm__malloc_array((size_t)n, sizeof *sp);
        if (!sp) return fm__err(FM_ERR_NOMEM, "%s: out of memory", path);
        for (int32_t i = 0; i < n; i++) {
            sp[i].b = s->tensors[first + i].off;
            sp[i].e = sp[i].b + s->tensors[first + i].nbytes;
            sp[i].idx = first + i;
        }
        qsort(sp, (size_t)n, sizeof *sp, cmp_span);
        uint64_t end = 0;
        int32_t end_idx = -1;
        for (int32_t i = 0; i < n; i++) {
            if (sp[i].b == sp[i].e) continue;
            if (end_idx >= 0 && sp[i].b < end) {
                rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: data_offsets overlap tensor %s", path,
                             s->tensors[sp[i].idx].name, s->tensors[end_idx].name);
                break;
            }
            end = sp[i].e;
            end_idx = sp[i].idx;
        }
        free(sp);
    }
    return rc;
}

/* Sorts tensors by name and rejects duplicates (across shards). */
static fm_status finish(fm__st_set *s) {
    if (s->n_tensors > 1)
        qsort(s->tensors, (size_t)s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    for (int32_t i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, s->tensors[i - 1].name) == 0)
            return fm__err(FM_ERR_FORMAT, "%s: tensor %s: also defined in %s",
                           s->files[s->tensors[i].file].path, s->tensors[i].name,
                           s->files[s->tensors[i - 1].file].path);
    return FM_OK;
}

static fm__st_set *new_set(void) {
    fm__st_set *s = calloc(1, sizeof *s);
    return s;
}

fm_status fm__st_open_file(const char *path, fm__st_set **out) {
    *out = NULL;
    fm__st_set *s = new_set();
    if (!s) return fm__err(FM_ERR_NOMEM, "out of memory");
    int32_t cap = 0;
    fm_status rc = add_file(s, path, &cap);
    if (rc == FM_OK) rc = finish(s);
    if (rc != FM_OK) { fm__st_free(s); return rc; }
    *out = s;
    return FM_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sharded checkpoint: the index names a shard per tensor. */
static fm_status open_index(fm__st_set *s, const char *dir, const char *ipath) {
    char *text = NULL;
    size_t len = 0;
    fm_status rc = fm__read_file(ipath, &text, &len);
    if (rc != FM_OK) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return fm__err(FM_ERR_FORMAT, "%s: missing or invalid field weight_map", ipath);
    }
    int n = cJSON_GetArraySize(wm);
    const char **names = fm__calloc((size_t)(n ? n : 1), sizeof *names);
    if (!names) { cJSON_Delete(root); return fm__err(FM_ERR_NOMEM, "out of memory"); }
    int nn = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, wm) {
        if (!cJSON_IsString(it) || !it->valuestring[0] || strchr(it->valuestring, '/') ||
            strcmp(it->valuestring, "..") == 0 || strcmp(it->valuestring, ".") == 0) {
            rc = fm__err(FM_ERR_FORMAT, "%s: weight_map[%s]: invalid shard file name", ipath,
                         it->string ? it->string : "");
            break;
        }
        names[nn++] = it->valuestring;
    }
    if (rc == FM_OK) {
        qsort(names, (size_t)nn, sizeof *names, cmp_str);
        int32_t cap = 0;
        for (int i = 0; i < nn && rc == FM_OK; i++) {
            if (i && strcmp(names[i], names[i - 1]) == 0) continue;
            char *p = fm__path_join(dir, names[i]);
            if (!p) { rc = fm__err(FM_ERR_NOMEM, "out of memory"); break; }
            if (!fm__file_exists(p)) {
                const char *tn = "";
                cJSON_ArrayForEach(it, wm) if (strcmp(it->valuestring, names[i]) == 0) { tn = it->string; break; }
                rc = fm__err(FM_ERR_IO, "%s: missing shard %s (named by %s for tensor %s)", p,
                             names[i], ipath, tn);
            } else {
                rc = add_file(s, p, &cap);
            }
            free(p);
        }
    }
    if (rc == FM_OK) rc = finish(s);
    /* Every tensor the index names must be in the shard it names. */
    if (rc == FM_OK) {
        cJSON_ArrayForEach(it, wm) {
            const fm__st_tensor *t = fm__st_find(s, it->string);
            const char *base = t ? strrchr(s->files[t->file].path, '/') : NULL;
            base = base ? base + 1 : (t ? s->files[t->file].path : NULL);
            if (!t || strcmp(base, it->valuestring) != 0) {
                rc = fm__err(FM_ERR_FORMAT, "%s: tensor %s: not found in shard %s", ipath,
                             it->string, it->valuestring);
                break;
            }
        }
    }
    free(names);
    cJSON_Delete(root);
    return rc;
}

fm_status fm__st_open_dir(const char *dir, fm__st_set **out) {
    *out = NULL;
    fm__st_set *s = new_set();
    if (!s) return fm__err(FM_ERR_NOMEM, "out of memory");
    fm_status rc = FM_OK;
    char *ipath = fm__path_join(dir, "model.safetensors.index.json");
    char *spath = fm__path_join(dir, "model.safetensors");
    if (!ipath || !spath) rc = fm__err(FM_ERR_NOMEM, "out of memory");
    else if (fm__file_exists(ipath)) rc = open_index(s, dir, ipath);
    else if (fm__file_exists(spath)) {
        int32_t cap = 0;
        rc = add_file(s, spath, &cap);
        if (rc == FM_OK) rc = finish(s);
    } else {
        /* Any *.safetensors files (MLX conversions name them model-0000x-of-0000y). */
        DIR *d = opendir(dir);
        if (!d) rc = fm__err(FM_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
        else {
            char **list = NULL;
            int nl = 0;
            struct dirent *de;
            while (rc == FM_OK && (de = readdir(d))) {
                size_t l = strlen(de->d_name);
                if (l > 12 && strcmp(de->d_name + l - 12, ".safetensors") == 0) {
                    char **nlst = realloc(list, (size_t)(nl + 1) * sizeof *nlst);
                    if (!nlst) { rc = fm__err(FM_ERR_NOMEM, "out of memory"); break; }
                    list = nlst;
                    list[nl] = fm__path_join(dir, de->d_name);
                    if (!list[nl]) { rc = fm__err(FM_ERR_NOMEM, "out of memory"); break; }
                    nl++;
                }
            }
            closedir(d);
            if (rc == FM_OK && nl == 0)
                rc = fm__err(FM_ERR_IO, "%s: no model.safetensors, model.safetensors.index.json or "
                                        "*.safetensors file", dir);
            if (rc == FM_OK) {
                qsort(list, (size_t)nl, sizeof *list, cmp_str);
                int32_t cap = 0;
                for (int i = 0; i < nl && rc == FM_OK; i++) rc = add_file(s, list[i], &cap);
                if (rc == FM_OK) rc = finish(s);
            }
            for (int i = 0; i < nl; i++) free(list[i]);
            free(list);
        }
    }
    free(ipath);
    free(spath);
    if (rc != FM_OK) { fm__st_free(s); return rc; }
    *out = s;
    return FM_OK;
}
