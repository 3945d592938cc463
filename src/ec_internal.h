/* ec_internal.h: pieces shared by the expert cache's files (expert_cache.c, expert_store.c,
 * ec_io.c, profile.c, meminfo.c): the slot layout of an expert, checkpoint readers with
 * O_DIRECT or page-cache-dropping reads, the packed store handle and a fast checksum.
 * Not for use outside the cache. */
#ifndef FM_EC_INTERNAL_H
#define FM_EC_INTERNAL_H

#include "expert_cache.h"

#include <pthread.h>

#define EC_ALIGN 4096u   /* O_DIRECT alignment of buffers, offsets and lengths */
#define EC_NARR 9        /* gate.data, gate.scales, gate.biases, up.*, down.* */

/* Where each of the 9 arrays of an expert sits inside a slot (and a store blob). */
typedef struct ec_layout {
    uint64_t off[EC_NARR], len[EC_NARR];
    uint64_t slot_bytes;   /* multiple of EC_ALIGN */
    uint64_t max_len;      /* largest array */
} ec_layout;

/* The 9 ranges of an expert, in layout order. */
void fm__ec_ranges(const fm__expert_src *e, const fm__range *r[EC_NARR]);
/* Computes the layout of map; FM_ERR_FORMAT (naming layer/expert/array) if experts differ
 * or ranges are inconsistent with the matrix shapes. */
fm_status fm__ec_layout(const fm__expert_map *map, ec_layout *out);

/* Checkpoint files opened lazily, each once buffered and (where supported) once O_DIRECT.
 * Thread-safe. */
typedef struct ec_files {
    const fm__expert_map *map;
    pthread_mutex_t mu;
    int *fd, *fd_direct;      /* -1 = not opened / unsupported */
    unsigned char *opened;    /* 0 = not tried, 1 = ok, 2 = failed (errno in err_no) */
    int *err_no;
    int use_direct;           /* 0 if FM_NO_DIRECT is set */
} ec_files;

fm_status fm__ec_files_init(ec_files *f, const fm__expert_map *map);
void fm__ec_files_close(ec_files *f);

/* Bytes of the bounce buffer one reader thread needs for O_DIRECT checkpoint reads. */
uint64_t fm__ec_bounce_bytes(const ec_layout *lay);

/* Reads expert (layer, e) from the checkpoint files into dst laid out by lay (arrays not
 * covered are left as they are). bounce: aligned, fm__ec_bounce_bytes long. Returns 0, or
 * -1 with a message naming the file and offset in err. *used_direct tells the path,
 * *nread the bytes transferred from disk. */
int fm__ec_read_ckpt(ec_files *f, const ec_layout *lay, int32_t layer, int32_t e, uint8_t *dst,
                     uint8_t *bounce, int *used_direct, uint64_t *nread, char *err,
                     size_t errlen);

/* Reads array a (0..EC_NARR) of expert (layer, e) only; adds to *nread, sets *used_direct
 * if O_DIRECT served it. Same contract otherwise. Thread-safe. */
int fm__ec_read_ckpt_array(ec_files *f, const ec_layout *lay, int32_t layer, int32_t e, int a,
                           uint8_t *dst, uint8_t *bounce, int *used_direct, uint64_t *nread,
                           char *err, size_t errlen);

/* Fast 64-bit checksum of n bytes (n multiple of 8 preferred; any n works). */
uint64_t fm__ec_checksum(const void *p, uint64_t n);
uint64_t fm__fnv64(const void *p, size_t n, uint64_t h);

/* ---- packed store ---------------------------------------------------------------- */

typedef struct fm__store fm__store;

/* Opens and validates the store of map under dir. FM_OK with *out set if valid; otherwise
 * *out is NULL and the message says why (missing, stale, corrupt...). */
fm_status fm__store_open(const fm__expert_map *map, const ec_layout *lay, const char *dir,
                         fm__store **out);
void fm__store_close(fm__store *s);
/* Reads blob (layer, e) into dst (aligned, lay->slot_bytes) and verifies its checksum.
 * Returns 0; -1 on a read error; -2 on a checksum mismatch (message in err). Thread-safe. */
int fm__store_read(fm__store *s, int32_t layer, int32_t e, uint8_t *dst, char *err,
                   size_t errlen);
/* Reads bytes [off, off+len) of blob (layer, e) into dst (aligned; off, len multiples of
 * 4 KiB or the blob's end) without verifying. 0 or -1 (message in err). Thread-safe. */
int fm__store_read_part(fm__store *s, int32_t layer, int32_t e, uint8_t *dst, uint64_t off,
                        uint64_t len, char *err, size_t errlen);
/* Verifies a whole blob read in parts (once per blob and process). 0, or -2 (message). */
int fm__store_verify(fm__store *s, int32_t layer, int32_t e, const uint8_t *blob, char *err,
                     size_t errlen);
/* Saved warm-start state (NULL if the store has none or it failed its checksum):
 * per (layer, expert) frequency, last use tick, resident flag; per layer tick. */
bool fm__store_state(fm__store *s, const uint32_t **freq, const uint64_t **last,
                     const uint8_t **resident, const uint64_t **tick);
/* Records the warm-start state (arrays as above) into the store file. */
fm_status fm__store_save_state(fm__store *s, const uint32_t *freq, const uint64_t *last,
                               const uint8_t *resident, const uint64_t *tick);
const char *fm__store_file(const fm__store *s);
/* Disables blob checksum verification of this handle (FM_STORE_VERIFY=0). */
void fm__store_set_verify(fm__store *s, int verify);

#endif
