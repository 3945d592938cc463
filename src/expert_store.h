/* expert_store.h: housekeeping of the packed expert stores in a cache directory: which
 * files are stores (our magic and name), which model each was written from, whether it
 * is stale (its model's files are gone or changed, its format is older, it was
 * invalidated, or it is an unfinished write), and removal of stale stores plus an optional
 * total-size cap that evicts the least recently used first.
 *
 * Stores are only ever touched when they are ours: a name "<16 hex>.fmstore" (or its
 * temporary "<16 hex>.fmstore.tmp.<pid>") and, for a store, our magic in the header.
 * Every process that opens a store holds a shared flock on it, and a pack holds an
 * exclusive one on its temporary file; a file whose lock cannot be taken is in use and
 * never removed. Reading and writing stores: ec_internal.h and expert_cache.h. */
#ifndef FM_EXPERT_STORE_H
#define FM_EXPERT_STORE_H

#include "common.h"

enum {
    FM__STORE_LIVE = 0,  /* valid for its model's current files */
    FM__STORE_STALE,     /* can never be used again: see why */
    FM__STORE_OTHER      /* ours but not judged: a newer format, or no source record, or a
                            write in progress */
};

typedef struct fm__store_entry {
    char *file;        /* path of the store file */
    char *model;       /* model directory it was written from, or NULL if not recorded */
    uint64_t bytes;    /* file size */
    int64_t last_use;  /* seconds since the epoch: the later of its atime and mtime (a
                          store's mtime is set each time a process opens it) */
    int state;         /* FM__STORE_* */
    int in_use;        /* another open file description holds a lock on it */
    int temp;          /* a temporary file of a pack */
    char why[600];     /* for STALE and OTHER: the reason, naming the file at fault */
} fm__store_entry;

/* Lists the stores (and temporary pack files) in dir, sorted by file name. A missing
 * directory is an empty list. *out is released with fm__store_entries_free. */
fm_status fm__store_list(const char *dir, fm__store_entry **out, size_t *n);
void fm__store_entries_free(fm__store_entry *v, size_t n);

typedef struct fm__store_gc_opts {
    uint64_t max_bytes; /* total size cap of the stores in dir; 0 = none */
    uint64_t reserve;   /* bytes about to be written (counted against max_bytes) */
    const char *keep;   /* a store path never removed (the one being created), or NULL */
    int all;            /* remove every store not in use, stale or not */
    int dry_run;        /* report what would be removed, remove nothing */
} fm__store_gc_opts;

/* Called for each file removed (or that would be, with dry_run). */
typedef void (*fm__store_gc_fn)(void *user, const fm__store_entry *e, const char *reason);

/* Removes from dir the stale stores and unfinished pack files that no process holds,
 * then, while the stores' total plus o->reserve exceeds o->max_bytes, the least recently
 * used stores not in use and not o->keep. Files that are not ours are never touched.
 * freed/removed (may be NULL) receive the bytes and files removed. */
fm_status fm__store_gc(const char *dir, const fm__store_gc_opts *o, fm__store_gc_fn fn,
                       void *user, uint64_t *freed, int *removed);

/* The size cap of the automatic clean-up when a store is created: FM_CACHE_MAX (a size
 * like 100G) if set and valid, else 0 (no cap). */
uint64_t fm__store_cache_max(void);

#endif
