/* safetensors.h: read-only access to Hugging Face safetensors checkpoints, single-file
 * (model.safetensors) or sharded (model.safetensors.index.json). Files are mmapped
 * read-only and treated as untrusted: every header is validated (header length against
 * the file size, each tensor's byte range inside the data section, no overlaps, dtype x
 * shape == byte count, 64-bit overflow checks) before any tensor is exposed. */
#ifndef FM_SAFETENSORS_H
#define FM_SAFETENSORS_H

#include "common.h"
#include "tensor.h"

#define FM_ST_MAX_DIMS 8

typedef struct fm__st_tensor {
    char *name;
    fm__dtype dtype;
    int32_t ndim;
    int64_t shape[FM_ST_MAX_DIMS];
    int32_t file;        /* index into the set's files */
    uint64_t off;        /* absolute byte offset in the file */
    uint64_t nbytes;
    const void *data;    /* mapped bytes (read-only) */
} fm__st_tensor;

typedef struct fm__st_file {
    char *path;
    int fd;
    const uint8_t *map;
    uint64_t size;
    uint64_t data_start; /* 8 + header length */
} fm__st_file;

typedef struct fm__st_set {
    int32_t n_files;
    fm__st_file *files;
    int32_t n_tensors;
    fm__st_tensor *tensors; /* sorted by name */
} fm__st_set;

/* Opens the checkpoint in dir: model.safetensors.index.json if present (all shards it
 * names must exist), else model.safetensors, else every *.safetensors file in dir.
 * On success *out owns the mappings. Errors name the file and the tensor or field. */
fm_status fm__st_open_dir(const char *dir, fm__st_set **out);
/* Opens one safetensors file as a set of one file. */
fm_status fm__st_open_file(const char *path, fm__st_set **out);
void fm__st_free(fm__st_set *s);

/* Finds a tensor by exact name (NULL if absent). */
const fm__st_tensor *fm__st_find(const fm__st_set *s, const char *name);
/* printf-style name lookup: returns NULL if absent. */
const fm__st_tensor *fm__st_findf(const fm__st_set *s, const char *fmt, ...) FM_PRINTF(2, 3);

/* Parses a safetensors dtype string ("F32", "BF16", ...); returns -1 if unknown. */
int fm__st_parse_dtype(const char *s);

#endif
