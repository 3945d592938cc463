/* expert_store.c: the packed expert store (warm start). One file per model under the cache
 * directory, named by a hash of the model's content key:
 *
 *   [0, 4096)            header: magic, version, content key (+ hash), layout of a blob,
 *                        offsets of the sections, file size, checksum of the blob table,
 *                        checksum of the header itself
 *   [table_off, ...)     u64 checksum of every blob, layer-major
 *   [state_off, ...)     warm-start state: checksum, per layer tick, per expert frequency,
 *                        last use and resident flag (rewritten when a cache closes)
 *   [blob_off, ...)      every expert as one 4 KiB-aligned blob laid out exactly like a
 *                        cache slot (ec_layout), so a miss is one aligned O_DIRECT read
 *   [src_off, ...)       source record (text): the model directory and every file the
 *                        content key covers with its size and mtime, so a clean-up can
 *                        tell a store whose model was deleted or changed
 *
 * A store is written to a temporary file and renamed into place, so a crash never leaves
 * a store that validates. Anything that does not validate (missing, other model or version,
 * truncated, bad checksum) is reported and never read; a blob whose checksum fails at read
 * time is not used, and the store is marked invalid so the next open rebuilds it.
 *
 * Every open holds a shared flock on the store and a pack an exclusive one on its
 * temporary file, so the clean-up (second half of this file, expert_store.h) never removes
 * a store in use. Creating a store first removes the stale stores of the directory. */
#include "ec_internal.h"
#include "expert_store.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STORE_MAGIC "FMOESTOR"
#define STORE_DEAD "FMOEDEAD" /* magic of a store invalidated after a failed checksum */
#define STORE_VERSION 2u      /* 2: source record */
#define SRC_MAGIC "FMOESRC1\n"
#define SRC_MAX (16u << 20)
#define STORE_KEY_MAX 2048
#define STATE_MAGIC 0x5354415445464d31ull /* "1MFETATS" */

typedef struct store_hdr {
    char magic[8];
    uint32_t version, hdr_bytes;
    uint64_t key_hash;
    uint32_t n_layers, n_experts;
    uint64_t slot_bytes;
    uint64_t off[EC_NARR], len[EC_NARR];
    uint64_t table_off, state_off, state_bytes, blob_off, file_bytes;
    uint64_t table_sum;
    uint64_t src_off, src_bytes, src_sum; /* source record; src_bytes 0 = none */
    char key[STORE_KEY_MAX];
    uint64_t hdr_sum; /* fnv64 of everything above */
} store_hdr;

struct fm__store {
    char *path;
    int fd, fd_direct, writable;
    store_hdr h;
    uint64_t *sums;
    _Atomic unsigned char *verified; /* [blobs] checksum already verified by this process */
    int verify;
    int corrupt; /* a blob failed its checksum: invalidate on close */
    pthread_mutex_t mu;
    /* warm-start state, if valid */
    uint8_t *state;
    bool have_state;
};

static uint64_t hdr_checksum(const store_hdr *h) {
    return fm__fnv64(h, offsetof(store_hdr, hdr_sum), 0);
}

char *fm__store_path(const fm__expert_map *map, const char *dir) {
    const char *key = map->content_key ? map->content_key : "";
    uint64_t h = fm__fnv64(key, strlen(key), 0);
    char name[64];
    snprintf(name, sizeof name, "%016llx.fmstore", (unsigned long long)h);
    return fm__path_join(dir, name);
}

static uint64_t n_blobs(const fm__expert_map *map) {
    return (uint64_t)map->n_moe_layers * (uint64_t)map->n_experts;
}

static uint64_t state_bytes(const fm__expert_map *map) {
    uint64_t n = n_blobs(map);
    uint64_t b = 16 + 8 * (uint64_t)map->n_moe_layers + n * (4 + 8 + 1);
    return (b + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN;
}

/* The header a store of map with a source record of src_bytes must have (src_sum,
 * table_sum and hdr_sum left 0). */
static void expected_hdr(const fm__expert_map *map, const ec_layout *lay, uint64_t src_bytes,
                         store_hdr *h) {
    memset(h, 0, sizeof *h);
    memcpy(h->magic, STORE_MAGIC, 8);
    h->version = STORE_VERSION;
    h->hdr_bytes = EC_ALIGN;
    const char *key = map->content_key ? map->content_key : "";
    h->key_hash = fm__fnv64(key, strlen(key), 0);
    snprintf(h->key, sizeof h->key, "%s", key);
    h->n_layers = (uint32_t)map->n_moe_layers;
    h->n_experts = (uint32_t)map->n_experts;
    h->slot_bytes = lay->slot_bytes;
    memcpy(h->off, lay->off, sizeof h->off);
    memcpy(h->len, lay->len, sizeof h->len);
    uint64_t n = n_blobs(map);
    h->table_off = EC_ALIGN;
    h->state_off = (h->table_off + 8 * n + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN;
    h->state_bytes = state_bytes(map);
    h->blob_off = h->state_off + h->state_bytes;
    h->src_off = src_bytes ? h->blob_off + n * lay->slot_bytes : 0;
    h->src_bytes = src_bytes;
    h->file_bytes = h->blob_off + n * lay->slot_bytes + (src_bytes + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN;
}

static int mkdir_p(const char *dir) {
    char *d = fm__strdup(dir);
    if (!d) return -1;
    for (char *p = d + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(d, 0755) != 0 && errno != EEXIST) {
            free(d);
            return -1;
        }
        *p = '/';
    }
    int r = mkdir(d, 0755) != 0 && errno != EEXIST ? -1 : 0;
    free(d);
    return r;
}

static int pwrite_full(int fd, const void *buf, uint64_t n, uint64_t off) {
    uint64_t done = 0;
    while (done < n) {
        ssize_t r = pwrite(fd, (const char *)buf + done, (size_t)(n - done), (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        done += (uint64_t)r;
    }
    return 0;
}

static int pread_exact(int fd, void *buf, uint64_t n, uint64_t off) {
    uint64_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, (size_t)(n - done), (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = 0;
            return -1;
        }
        done += (uint64_t)r;
    }
    return 0;
}

/* ---- source record ------------------------------------------------------------------ */

/* Directory part of path ("." if none); caller frees. */
static char *dir_of(const char *path) {
    const char *sl = strrchr(path, '/');
    if (!sl) return fm__strdup(".");
    if (sl == path) return fm__strdup("/");
    return fm__strndup(path, (size_t)(sl - path));
}

/* Appends to *rec a line "<tag> <size> <mtime> <canonical path>" for path (the figures
 * the content key covers). A file that cannot be resolved is left out. Returns -1 if no
 * record can be written (out of memory, a newline in the path). */
static int src_line(char **rec, const char *tag, const char *path) {
    char *canon = realpath(path, NULL);
    struct stat st;
    if (!canon || stat(canon, &st) != 0) {
        free(canon);
        return 0;
    }
    char *line = strchr(canon, '\n') ? NULL
                 : fm__asprintf("%s%s %llu %lld %s\n", *rec, tag, (unsigned long long)st.st_size,
                                (long long)st.st_mtime, canon);
    free(canon);
    if (!line) return -1;
    free(*rec);
    *rec = line;
    return 0;
}

/* The source record of map: SRC_MAGIC, "model <dir>", a "file" line per checkpoint file
 * and a "config" line for the model's config.json. NULL (no record) if it cannot be
 * written; *len excludes nothing (text, no NUL). */
static char *source_record(const fm__expert_map *map, uint64_t *len) {
    *len = 0;
    if (map->n_files < 1 || !map->paths || !map->paths[0]) return NULL;
    char *dir = dir_of(map->paths[0]);
    char *canon = dir ? realpath(dir, NULL) : NULL;
    char *rec = canon && !strchr(canon, '\n') ? fm__asprintf("%smodel %s\n", SRC_MAGIC, canon) : NULL;
    char *cfg = dir ? fm__path_join(dir, "config.json") : NULL;
    int bad = !rec || !cfg;
    for (int32_t i = 0; i < map->n_files && !bad; i++)
        bad = src_line(&rec, "file", map->paths[i]) != 0;
    if (!bad) bad = src_line(&rec, "config", cfg) != 0;
    free(dir);
    free(canon);
    free(cfg);
    if (bad || strlen(rec) > SRC_MAX) {
        free(rec);
        return NULL;
    }
    *len = strlen(rec);
    return rec;
}

#define PACK_THREADS 4

typedef struct pack_ctx {
    const fm__expert_map *map;
    const ec_layout *lay;
    ec_files *files;
    const store_hdr *h;
    uint64_t *sums, n;
    int fd, fdd;
    const char *tmp;
    fm__progress_fn progress;
    void *user;
    pthread_mutex_t mu;
    uint64_t next, done, since_sync;
    int failed;
    fm_status failed_st;
    char err[640];
} pack_ctx;

static void pack_fail(pack_ctx *p, fm_status st, const char *msg) {
    pthread_mutex_lock(&p->mu);
    if (!p->failed) {
        p->failed = 1;
        p->failed_st = st;
        snprintf(p->err, sizeof p->err, "expert store: %s", msg);
    }
    pthread_mutex_unlock(&p->mu);
}

/* Packs experts taken from a shared counter: read from the checkpoint, checksum, write
 * the blob at its offset (O_DIRECT where the filesystem allows it). */
static void *pack_worker(void *arg) {
    pack_ctx *p = arg;
    uint64_t sb = p->lay->slot_bytes;
    uint8_t *blob = fm__aligned_alloc(EC_ALIGN, (size_t)sb);
    uint8_t *bounce = fm__aligned_alloc(EC_ALIGN, (size_t)fm__ec_bounce_bytes(p->lay));
    if (!blob || !bounce) {
        pack_fail(p, FM_ERR_NOMEM, "out of memory");
        free(blob);
        free(bounce);
        return NULL;
    }
    char err[512];
    for (;;) {
        pthread_mutex_lock(&p->mu);
        uint64_t i = p->next++;
        int stop = p->failed || i >= p->n;
        int fdd = p->fdd;
        pthread_mutex_unlock(&p->mu);
        if (stop) break;
        int32_t layer = (int32_t)(i / (uint64_t)p->map->n_experts);
        int32_t e = (int32_t)(i % (uint64_t)p->map->n_experts);
        memset(blob, 0, (size_t)sb);
        int direct;
        uint64_t nread;
        if (fm__ec_read_ckpt(p->files, p->lay, layer, e, blob, bounce, &direct, &nread, err,
                             sizeof err) != 0) {
            pack_fail(p, FM_ERR_IO, err);
            break;
        }
        p->sums[i] = fm__ec_checksum(blob, sb);
        uint64_t off = p->h->blob_off + i * sb;
        int wr = -1, buffered = 1;
        if (fdd >= 0) {
            wr = pwrite_full(fdd, blob, sb, off);
            buffered = wr != 0 && errno == EINVAL;
            if (buffered) {
                pthread_mutex_lock(&p->mu);
                p->fdd = -1; /* the filesystem refuses O_DIRECT writes: buffered from now on */
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (buffered) wr = pwrite_full(p->fd, blob, sb, off);
        if (wr != 0) {
            snprintf(err, sizeof err, "writing %s at offset %llu: %s", p->tmp,
                     (unsigned long long)off, strerror(errno));
            pack_fail(p, FM_ERR_IO, err);
            break;
        }
        pthread_mutex_lock(&p->mu);
        p->done++;
        if (buffered && (p->since_sync += sb) >= (64u << 20)) { /* bound dirty pages */
            fdatasync(p->fd);
            posix_fadvise(p->fd, 0, 0, POSIX_FADV_DONTNEED);
            p->since_sync = 0;
        }
        if (p->progress) p->progress(p->user, (int64_t)p->done, (int64_t)p->n);
        pthread_mutex_unlock(&p->mu);
    }
    free(blob);
    free(bounce);
    return NULL;
}

fm_status fm__store_pack(const fm__expert_map *map, const char *dir, uint64_t max_bytes,
                         fm__progress_fn progress, void *user) {
    ec_layout lay;
    fm_status st = fm__ec_layout(map, &lay);
    if (st != FM_OK) return st;
    if (!dir || !*dir) return fm__err(FM_ERR_ARG, "expert store: no directory");
    if (mkdir_p(dir) != 0)
        return fm__err(FM_ERR_IO, "expert store: cannot create directory %s: %s", dir,
                       strerror(errno));
    char *path = fm__store_path(map, dir);
    char *tmp = path ? fm__asprintf("%s.tmp.%ld", path, (long)getpid()) : NULL;
    store_hdr *h = fm__aligned_alloc(EC_ALIGN, (sizeof(store_hdr) + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN);
    uint64_t n = n_blobs(map);
    uint64_t *sums = fm__malloc_array((size_t)n, sizeof(uint64_t));
    uint64_t src_len = 0;
    char *src = source_record(map, &src_len);
    int fd = -1, fdd = -1;
    ec_files files;
    bool files_ok = false;
    if (!path || !tmp || !h || !sums) {
        st = fm__err(FM_ERR_NOMEM, "expert store: out of memory");
        goto done;
    }
    expected_hdr(map, &lay, src_len, h);
    if (sizeof(store_hdr) > EC_ALIGN) {
        st = fm__err(FM_ERR_INTERNAL, "expert store: header larger than a page");
        goto done;
    }
    if (src) h->src_sum = fm__fnv64(src, (size_t)src_len, 0);
    /* Make room first: stale stores of this directory go, and the size cap (if any)
     * counts the store about to be written. A failed clean-up never stops the pack. */
    fm__store_gc_opts go = {max_bytes ? max_bytes : fm__store_cache_max(), h->file_bytes, path, 0, 0};
    if (fm__store_gc(dir, &go, NULL, NULL, NULL, NULL) != FM_OK)
        FM_LOGD("expert store: clean-up of %s: %s", dir, fm_last_error());
    st = fm__ec_files_init(&files, map);
    if (st != FM_OK) goto done;
    files_ok = true;
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = fm__err(FM_ERR_IO, "expert store: cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    flock(fd, LOCK_EX | LOCK_NB); /* a clean-up elsewhere leaves this file alone */
    if (files.use_direct) fdd = open(tmp, O_WRONLY | O_CLOEXEC | O_DIRECT);
    int fr = posix_fallocate(fd, 0, (off_t)h->file_bytes);
    if (fr == ENOSPC) {
        st = fm__err(FM_ERR_IO, "expert store: %s: not enough disk space for %.1f MiB", tmp,
                     (double)h->file_bytes / 1048576.0);
        goto done;
    }
    if (fr != 0 && ftruncate(fd, (off_t)h->file_bytes) != 0) {
        st = fm__err(FM_ERR_IO, "expert store: %s: %s", tmp, strerror(errno));
        goto done;
    }
    pack_ctx pc;
    memset(&pc, 0, sizeof pc);
    pc.map = map;
    pc.lay = &lay;
    pc.files = &files;
    pc.h = h;
    pc.sums = sums;
    pc.n = n;
    pc.fd = fd;
    pc.fdd = fdd;
    pc.tmp = tmp;
    pc.progress = progress;
    pc.user = user;
    pthread_mutex_init(&pc.mu, NULL);
    pthread_t th[PACK_THREADS];
    int nth = 0;
    for (; nth < PACK_THREADS; nth++)
        if (pthread_create(&th[nth], NULL, pack_worker, &pc) != 0) break;
    if (nth == 0) pack_worker(&pc);
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&pc.mu);
    if (pc.failed) {
        st = fm__err(pc.failed_st, "%s", pc.err);
        goto done;
    }
    h->table_sum = fm__ec_checksum(sums, 8 * n);
    h->hdr_sum = hdr_checksum(h);
    uint8_t *zero = calloc(1, (size_t)h->state_bytes);
    int ok = zero != NULL;
    if (ok) ok = pwrite_full(fd, zero, h->state_bytes, h->state_off) == 0;
    free(zero);
    if (ok && src) ok = pwrite_full(fd, src, src_len, h->src_off) == 0;
    if (!ok || pwrite_full(fd, sums, 8 * n, h->table_off) != 0 ||
        pwrite_full(fd, h, sizeof *h, 0) != 0 || fsync(fd) != 0) {
        st = fm__err(FM_ERR_IO, "expert store: writing %s: %s", tmp, strerror(errno));
        goto done;
    }
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    if (rename(tmp, path) != 0) {
        st = fm__err(FM_ERR_IO, "expert store: renaming %s to %s: %s", tmp, path, strerror(errno));
        goto done;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    st = FM_OK;
done:
    if (fdd >= 0) close(fdd);
    if (fd >= 0) close(fd);
    if (st != FM_OK && tmp) unlink(tmp);
    if (files_ok) fm__ec_files_close(&files);
    free(path); free(tmp); free(h); free(sums); free(src);
    return st;
}

static fm_status validate(const fm__expert_map *map, const ec_layout *lay, const char *path,
                          int fd, store_hdr *h, uint64_t **sums_out) {
    *sums_out = NULL;
    store_hdr want;
    struct stat sb;
    if (fstat(fd, &sb) != 0) return fm__err(FM_ERR_IO, "%s: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size < sizeof *h || pread_exact(fd, h, sizeof *h, 0) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: truncated header (%lld bytes)", path,
                       (long long)sb.st_size);
    if (memcmp(h->magic, STORE_DEAD, 8) == 0)
        return fm__err(FM_ERR_FORMAT, "%s: invalidated after a failed checksum", path);
    if (memcmp(h->magic, STORE_MAGIC, 8) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: not an expert store (bad magic)", path);
    if (h->version != STORE_VERSION)
        return fm__err(FM_ERR_FORMAT, "%s: store version %u, this build writes version %u", path,
                       h->version, STORE_VERSION);
    if (h->hdr_sum != hdr_checksum(h))
        return fm__err(FM_ERR_FORMAT, "%s: header checksum mismatch (corrupt)", path);
    expected_hdr(map, lay, h->src_bytes, &want);
    if (h->key_hash != want.key_hash || strcmp(h->key, want.key) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: written for another model or an older version of the "
                       "checkpoint (content key differs)", path);
    if (h->n_layers != want.n_layers || h->n_experts != want.n_experts ||
        h->slot_bytes != want.slot_bytes || memcmp(h->off, want.off, sizeof h->off) != 0 ||
        memcmp(h->len, want.len, sizeof h->len) != 0 || h->table_off != want.table_off ||
        h->state_off != want.state_off || h->blob_off != want.blob_off ||
        h->state_bytes != want.state_bytes || h->file_bytes != want.file_bytes ||
        h->src_off != want.src_off || h->src_bytes > SRC_MAX)
        return fm__err(FM_ERR_FORMAT, "%s: layout differs from the model's experts", path);
    if ((uint64_t)sb.st_size != h->file_bytes)
        return fm__err(FM_ERR_FORMAT, "%s: truncated or padded: %lld bytes, expected %llu", path,
                       (long long)sb.st_size, (unsigned long long)h->file_bytes);
    uint64_t n = n_blobs(map);
    uint64_t *sums = fm__malloc_array((size_t)n, sizeof(uint64_t));
    if (!sums) return fm__err(FM_ERR_NOMEM, "%s: out of memory", path);
    if (pread_exact(fd, sums, 8 * n, h->table_off) != 0) {
        free(sums);
        return fm__err(FM_ERR_IO, "%s: cannot read the blob table", path);
    }
    if (fm__ec_checksum(sums, 8 * n) != h->table_sum) {
        free(sums);
        return fm__err(FM_ERR_FORMAT, "%s: blob table checksum mismatch (corrupt)", path);
    }
    *sums_out = sums;
    return FM_OK;
}

fm_status fm__store_open(const fm__expert_map *map, const ec_layout *lay, const char *dir,
                         fm__store **out) {
    *out = NULL;
    char *path = fm__store_path(map, dir);
    if (!path) return fm__err(FM_ERR_NOMEM, "expert store: out of memory");
    int writable = 1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && (errno == EACCES || errno == EROFS)) {
        writable = 0;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd >= 0) {
        /* Held while open, so a clean-up elsewhere never removes it; then make sure the
         * path still names the file locked (a clean-up may have removed it meanwhile). */
        struct stat a, b;
        for (int i = 0; i < 500 && flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK; i++)
            usleep(10000); /* a clean-up holds it for a moment; after 5 s go on unlocked */
        if (fstat(fd, &a) != 0 || stat(path, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
            close(fd);
            fd = -1;
            errno = ENOENT;
        }
    }
    if (fd < 0) {
        fm_status st = fm__err(FM_ERR_IO, "%s: %s", path, strerror(errno));
        free(path);
        return st;
    }
    if (writable) futimens(fd, NULL); /* last use, for the clean-up's LRU order */
    fm__store *s = fm__calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        free(path);
        return fm__err(FM_ERR_NOMEM, "expert store: out of memory");
    }
    s->path = path;
    s->fd = fd;
    s->fd_direct = -1;
    s->writable = writable;
    s->verify = 1;
    const char *v = getenv("FM_STORE_VERIFY");
    if (v && strcmp(v, "0") == 0) s->verify = 0;
    pthread_mutex_init(&s->mu, NULL);
    fm_status st = validate(map, lay, path, fd, &s->h, &s->sums);
    if (st != FM_OK) {
        fm__store_close(s);
        return st;
    }
    s->verified = fm__calloc((size_t)n_blobs(map), sizeof *s->verified);
    if (!s->verified) {
        fm__store_close(s);
        return fm__err(FM_ERR_NOMEM, "expert store: out of memory");
    }
    const char *nd = getenv("FM_NO_DIRECT");
    if (!(nd && *nd && strcmp(nd, "0") != 0)) s->fd_direct = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    /* warm-start state */
    s->state = fm__malloc((size_t)s->h.state_bytes);
    if (s->state && pread_exact(fd, s->state, s->h.state_bytes, s->h.state_off) == 0) {
        uint64_t magic, sum;
        memcpy(&magic, s->state, 8);
        memcpy(&sum, s->state + 8, 8);
        s->have_state = magic == STATE_MAGIC &&
                        sum == fm__ec_checksum(s->state + 16, s->h.state_bytes - 16);
    }
    posix_fadvise(fd, 0, (off_t)s->h.blob_off, POSIX_FADV_DONTNEED);
    *out = s;
    return FM_OK;
}

fm_status fm__store_check(const fm__expert_map *map, const char *dir, int verify_blobs) {
    ec_layout lay;
    fm_status st = fm__ec_layout(map, &lay);
    if (st != FM_OK) return st;
    fm__store *s;
    st = fm__store_open(map, &lay, dir, &s);
    if (st != FM_OK || !verify_blobs) {
        fm__store_close(s);
        return st;
    }
    uint8_t *buf = fm__aligned_alloc(EC_ALIGN, (size_t)lay.slot_bytes);
    if (!buf) {
        fm__store_close(s);
        return fm__err(FM_ERR_NOMEM, "expert store: out of memory");
    }
    char err[512];
    for (int32_t l = 0; l < map->n_moe_layers && st == FM_OK; l++)
        for (int32_t e = 0; e < map->n_experts && st == FM_OK; e++) {
            int r = fm__store_read(s, l, e, buf, err, sizeof err);
            if (r != 0) st = fm__err(r == -2 ? FM_ERR_FORMAT : FM_ERR_IO, "%s", err);
        }
    free(buf);
    s->corrupt = 0; /* checking does not invalidate; the caller decides */
    fm__store_close(s);
    return st;
}

int fm__store_read_part(fm__store *s, int32_t layer, int32_t e, uint8_t *dst, uint64_t off,
                        uint64_t len, char *err, size_t errlen) {
    uint64_t i = (uint64_t)layer * s->h.n_experts + (uint64_t)e;
    uint64_t at = s->h.blob_off + i * s->h.slot_bytes + off;
    int fd = s->fd_direct >= 0 ? s->fd_direct : s->fd;
    int r = pread_exact(fd, dst, len, at);
    if (r != 0 && fd == s->fd_direct && errno == EINVAL) {
        fd = s->fd;
        r = pread_exact(fd, dst, len, at);
    }
    if (fd == s->fd) posix_fadvise(fd, (off_t)at, (off_t)len, POSIX_FADV_DONTNEED);
    if (r != 0) {
        snprintf(err, errlen, "expert store %s: read of %llu bytes at offset %llu failed: %s",
                 s->path, (unsigned long long)len, (unsigned long long)at,
                 errno ? strerror(errno) : "unexpected end of file");
        return -1;
    }
    return 0;
}

int fm__store_verify(fm__store *s, int32_t layer, int32_t e, const uint8_t *blob, char *err,
                     size_t errlen) {
    uint64_t i = (uint64_t)layer * s->h.n_experts + (uint64_t)e;
    /* Each blob is verified the first time this process reads it (re-reads after an
     * eviction are not: the bytes on disk were proven once). */
    if (!s->verify || atomic_load_explicit(&s->verified[i], memory_order_relaxed)) return 0;
    if (fm__ec_checksum(blob, s->h.slot_bytes) == s->sums[i]) {
        atomic_store_explicit(&s->verified[i], 1, memory_order_relaxed);
        return 0;
    }
    pthread_mutex_lock(&s->mu);
    s->corrupt = 1;
    pthread_mutex_unlock(&s->mu);
    snprintf(err, errlen, "expert store %s: blob of expert %d of MoE layer %d (offset %llu) "
             "fails its checksum", s->path, e, layer,
             (unsigned long long)(s->h.blob_off + i * s->h.slot_bytes));
    return -2;
}

int fm__store_read(fm__store *s, int32_t layer, int32_t e, uint8_t *dst, char *err,
                   size_t errlen) {
    if (fm__store_read_part(s, layer, e, dst, 0, s->h.slot_bytes, err, errlen) != 0) return -1;
    return fm__store_verify(s, layer, e, dst, err, errlen);
}

bool fm__store_state(fm__store *s, const uint32_t **freq, const uint64_t **last,
                     const uint8_t **resident, const uint64_t **tick) {
    if (!s || !s->have_state) return false;
    uint64_t n = (uint64_t)s->h.n_layers * s->h.n_experts;
    uint8_t *p = s->state + 16;
    *tick = (const uint64_t *)p;
    p += 8 * (uint64_t)s->h.n_layers;
    *last = (const uint64_t *)p;
    p += 8 * n;
    *freq = (const uint32_t *)p;
    p += 4 * n;
    *resident = p;
    return true;
}

fm_status fm__store_save_state(fm__store *s, const uint32_t *freq, const uint64_t *last,
                               const uint8_t *resident, const uint64_t *tick) {
    if (!s || !s->writable) return FM_OK;
    if (!s->state) return fm__err(FM_ERR_NOMEM, "expert store: out of memory");
    uint64_t n = (uint64_t)s->h.n_layers * s->h.n_experts;
    memset(s->state, 0, (size_t)s->h.state_bytes);
    uint8_t *p = s->state + 16;
    memcpy(p, tick, 8 * (size_t)s->h.n_layers);
    p += 8 * (uint64_t)s->h.n_layers;
    memcpy(p, last, 8 * (size_t)n);
    p += 8 * n;
    memcpy(p, freq, 4 * (size_t)n);
    p += 4 * n;
    memcpy(p, resident, (size_t)n);
    uint64_t magic = STATE_MAGIC, sum = fm__ec_checksum(s->state + 16, s->h.state_bytes - 16);
    memcpy(s->state, &magic, 8);
    memcpy(s->state + 8, &sum, 8);
    if (pwrite_full(s->fd, s->state, s->h.state_bytes, s->h.state_off) != 0 || fdatasync(s->fd) != 0)
        return fm__err(FM_ERR_IO, "%s: writing the cache state: %s", s->path, strerror(errno));
    return FM_OK;
}

const char *fm__store_file(const fm__store *s) { return s ? s->path : NULL; }

void fm__store_set_verify(fm__store *s, int verify) {
    if (s) s->verify = verify != 0;
}

void fm__store_close(fm__store *s) {
    if (!s) return;
    if (s->corrupt && s->writable) {
        /* Never trusted again: break the magic so the next open rebuilds. */
        if (pwrite_full(s->fd, STORE_DEAD, 8, 0) == 0) fdatasync(s->fd);
        FM_LOGW("expert store %s failed a checksum; it will be rebuilt", s->path);
    }
    if (s->fd_direct >= 0) close(s->fd_direct);
    if (s->fd >= 0) close(s->fd);
    pthread_mutex_destroy(&s->mu);
    free(s->sums);
    free((void *)s->verified);
    free(s->state);
    free(s->path);
    free(s);
}

/* ---- clean-up of a cache directory ------------------------------------------------- */

#define TEMP_GRACE_S 60 /* a temporary pack file untouched this long is an unfinished write */

/* 1 if name is "<16 hex>.fmstore", 2 if "<16 hex>.fmstore.tmp.<digits>", else 0. */
static int store_name(const char *name) {
    for (int i = 0; i < 16; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return 0;
    if (strncmp(name + 16, ".fmstore", 8) != 0) return 0;
    const char *r = name + 24;
    if (!*r) return 1;
    if (strncmp(r, ".tmp.", 5) != 0 || !r[5]) return 0;
    for (r += 5; *r; r++)
        if (*r < '0' || *r > '9') return 0;
    return 2;
}

/* Judges the source record rec[0..len) against the files as they are now. */
static void judge_source(fm__store_entry *e, char *rec, uint64_t len) {
    rec[len] = 0;
    if (strncmp(rec, SRC_MAGIC, strlen(SRC_MAGIC)) != 0) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "unreadable source record");
        return;
    }
    for (char *line = rec + strlen(SRC_MAGIC), *next; *line; line = next) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        *nl = 0;
        next = nl + 1;
        if (strncmp(line, "model ", 6) == 0) {
            free(e->model);
            e->model = fm__strdup(line + 6);
            continue;
        }
        unsigned long long size;
        long long mtime;
        int at = 0;
        if ((strncmp(line, "file ", 5) != 0 && strncmp(line, "config ", 7) != 0) ||
            sscanf(strchr(line, ' ') + 1, "%llu %lld %n", &size, &mtime, &at) != 2 || !at)
            continue;
        const char *file = strchr(line, ' ') + 1 + at;
        struct stat st;
        if (stat(file, &st) != 0) {
            if (errno == ENOENT || errno == ENOTDIR) {
                e->state = FM__STORE_STALE;
                snprintf(e->why, sizeof e->why, "model file missing: %s", file);
                return;
            }
            continue; /* unreachable for now (permissions): not judged */
        }
        if ((unsigned long long)st.st_size != size || (long long)st.st_mtime != mtime) {
            e->state = FM__STORE_STALE;
            snprintf(e->why, sizeof e->why, "model file changed since the store was written: %s",
                     file);
            return;
        }
    }
}

/* Reads and judges the store or temporary file open on fd (its name kind in kind). */
static void judge(fm__store_entry *e, int fd, int kind, const struct stat *sb, const char *name) {
    time_t now = time(NULL);
    if (kind == 2) {
        e->temp = 1;
        if (!e->in_use && now - sb->st_mtime > TEMP_GRACE_S) {
            e->state = FM__STORE_STALE;
            snprintf(e->why, sizeof e->why, "unfinished write (no process is packing it)");
        } else {
            e->state = FM__STORE_OTHER;
            snprintf(e->why, sizeof e->why, "being written");
        }
        return;
    }
    store_hdr *h = fm__calloc(1, sizeof *h);
    if (!h) {
        e->state = FM__STORE_OTHER;
        snprintf(e->why, sizeof e->why, "out of memory");
        return;
    }
    (void)pread_exact(fd, h, FM_MIN(sizeof *h, (uint64_t)sb->st_size), 0);
    if (memcmp(h->magic, STORE_DEAD, 8) == 0) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "invalidated after a failed checksum");
    } else if (h->version < STORE_VERSION) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "older store format %u (this build writes %u)", h->version,
                 STORE_VERSION);
    } else if (h->version > STORE_VERSION) {
        e->state = FM__STORE_OTHER;
        snprintf(e->why, sizeof e->why, "newer store format %u (this build writes %u)", h->version,
                 STORE_VERSION);
    } else if ((uint64_t)sb->st_size < sizeof *h || h->hdr_sum != hdr_checksum(h)) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "corrupt or truncated header");
    } else if (strtoull(name, NULL, 16) != h->key_hash) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "file name does not match its content key");
    } else if ((uint64_t)sb->st_size != h->file_bytes) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "truncated: %lld bytes, expected %llu",
                 (long long)sb->st_size, (unsigned long long)h->file_bytes);
    } else if (!h->src_bytes) {
        e->state = FM__STORE_OTHER;
        snprintf(e->why, sizeof e->why, "no source record");
    } else if (h->src_bytes > SRC_MAX) {
        e->state = FM__STORE_STALE;
        snprintf(e->why, sizeof e->why, "corrupt source record");
    } else {
        char *rec = fm__malloc((size_t)h->src_bytes + 1);
        if (!rec || pread_exact(fd, rec, h->src_bytes, h->src_off) != 0 ||
            fm__fnv64(rec, (size_t)h->src_bytes, 0) != h->src_sum) {
            e->state = FM__STORE_STALE;
            snprintf(e->why, sizeof e->why, rec ? "corrupt source record" : "out of memory");
            if (!rec) e->state = FM__STORE_OTHER;
        } else {
            e->state = FM__STORE_LIVE;
            judge_source(e, rec, h->src_bytes);
        }
        free(rec);
    }
    free(h);
}

/* Opens and judges dir/name. Returns 1 with *e filled (and, if fd_out, the file left open
 * with an exclusive lock when it is not in use, else -1), 0 if the file is not ours or is
 * gone. */
static int probe(const char *dir, const char *name, fm__store_entry *e, int *fd_out) {
    if (fd_out) *fd_out = -1;
    int kind = store_name(name);
    if (!kind) return 0;
    memset(e, 0, sizeof *e);
    e->file = fm__path_join(dir, name);
    if (!e->file) return 0;
    int fd = open(e->file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) goto not_ours;
    if (kind == 1) {
        char magic[8];
        if (sb.st_size < 16 || pread_exact(fd, magic, 8, 0) != 0 ||
            (memcmp(magic, STORE_MAGIC, 8) != 0 && memcmp(magic, STORE_DEAD, 8) != 0))
            goto not_ours;
    }
    e->in_use = flock(fd, LOCK_EX | LOCK_NB) != 0;
    e->bytes = (uint64_t)sb.st_size;
    e->last_use = (int64_t)(sb.st_atime > sb.st_mtime ? sb.st_atime : sb.st_mtime);
    judge(e, fd, kind, &sb, name);
    if (fd_out && !e->in_use) *fd_out = fd;
    else close(fd);
    return 1;
not_ours:
    if (fd >= 0) close(fd);
    free(e->file);
    e->file = NULL;
    return 0;
}

static void entry_clear(fm__store_entry *e) {
    free(e->file);
    free(e->model);
    e->file = e->model = NULL;
}

void fm__store_entries_free(fm__store_entry *v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) entry_clear(&v[i]);
    free(v);
}

static int by_file(const void *a, const void *b) {
    return strcmp(((const fm__store_entry *)a)->file, ((const fm__store_entry *)b)->file);
}

static int by_last_use(const void *a, const void *b) {
    const fm__store_entry *x = a, *y = b;
    if (x->last_use != y->last_use) return x->last_use < y->last_use ? -1 : 1;
    return strcmp(x->file, y->file);
}

/* The names in dir that look like ours (caller frees each and the array). */
static fm_status list_names(const char *dir, char ***names, size_t *n) {
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return FM_OK;
        return fm__err(FM_ERR_IO, "%s: %s", dir, strerror(errno));
    }
    size_t cap = 0;
    struct dirent *de;
    fm_status st = FM_OK;
    while ((de = readdir(d)) != NULL) {
        if (!store_name(de->d_name)) continue;
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nn = realloc(*names, nc * sizeof *nn);
            if (!nn) { st = fm__err(FM_ERR_NOMEM, "out of memory"); break; }
            *names = nn;
            cap = nc;
        }
        if (!((*names)[*n] = fm__strdup(de->d_name))) { st = fm__err(FM_ERR_NOMEM, "out of memory"); break; }
        (*n)++;
    }
    closedir(d);
    return st;
}

static void free_names(char **names, size_t n) {
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

fm_status fm__store_list(const char *dir, fm__store_entry **out, size_t *n) {
    *out = NULL;
    *n = 0;
    if (!dir || !*dir) return fm__err(FM_ERR_ARG, "expert store: no directory");
    char **names;
    size_t nn;
    fm_status st = list_names(dir, &names, &nn);
    if (st != FM_OK) return st;
    fm__store_entry *v = nn ? fm__calloc(nn, sizeof *v) : NULL;
    if (nn && !v) {
        free_names(names, nn);
        return fm__err(FM_ERR_NOMEM, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < nn; i++)
        if (probe(dir, names[i], &v[k], NULL)) k++;
    free_names(names, nn);
    if (k) qsort(v, k, sizeof *v, by_file);
    *out = v;
    *n = k;
    return FM_OK;
}

/* Removes e->file, whose exclusive lock fd holds, if the path still names that file. */
static int remove_locked(const fm__store_entry *e, int fd, int dry_run) {
    struct stat a, b;
    if (fstat(fd, &a) != 0 || lstat(e->file, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
        return 0;
    if (dry_run) return 1;
    if (unlink(e->file) != 0) {
        FM_LOGW("expert store: cannot remove %s: %s", e->file, strerror(errno));
        return 0;
    }
    return 1;
}

uint64_t fm__store_cache_max(void) {
    const char *v = getenv("FM_CACHE_MAX");
    int64_t b = 0;
    if (!v || !*v) return 0;
    if (!fm__parse_size(v, &b) || b < 0) {
        FM_LOGW("FM_CACHE_MAX=%s is not a size like 100G; no cap", v);
        return 0;
    }
    return (uint64_t)b;
}

fm_status fm__store_gc(const char *dir, const fm__store_gc_opts *o, fm__store_gc_fn fn,
                       void *user, uint64_t *freed, int *removed) {
    if (freed) *freed = 0;
    if (removed) *removed = 0;
    if (!dir || !*dir || !o) return fm__err(FM_ERR_ARG, "expert store: no directory");
    char **names;
    size_t nn;
    fm_status st = list_names(dir, &names, &nn);
    if (st != FM_OK) return st;
    fm__store_entry *left = nn ? fm__calloc(nn, sizeof *left) : NULL;
    if (nn && !left) {
        free_names(names, nn);
        return fm__err(FM_ERR_NOMEM, "out of memory");
    }
    size_t nl = 0;
    uint64_t total = 0, gone = 0;
    int count = 0;
    /* 1: what can never be used again, and everything with `all` */
    for (size_t i = 0; i < nn; i++) {
        fm__store_entry e;
        int fd;
        if (!probe(dir, names[i], &e, &fd)) continue;
        int keep = o->keep && strcmp(e.file, o->keep) == 0;
        int go = fd >= 0 && !keep && (e.state == FM__STORE_STALE || (o->all && !e.temp));
        if (go && remove_locked(&e, fd, o->dry_run)) {
            const char *why = e.state == FM__STORE_STALE ? e.why : "removing every store";
            if (fn) fn(user, &e, why);
            fm__log(fn ? FM_LOG_INFO : FM_LOG_WARN, "expert store: %s %s (%.1f MiB): %s", o->dry_run ? "would remove" : "removed",
                    e.file, (double)e.bytes / 1048576.0, why);
            gone += e.bytes;
            count++;
            entry_clear(&e);
        } else {
            total += e.bytes;
            left[nl++] = e;
        }
        if (fd >= 0) close(fd);
    }
    free_names(names, nn);
    /* 2: the size cap, least recently used first */
    if (o->max_bytes && total + o->reserve > o->max_bytes) {
        qsort(left, nl, sizeof *left, by_last_use);
        for (size_t i = 0; i < nl && total + o->reserve > o->max_bytes; i++) {
            fm__store_entry *e = &left[i];
            if (e->in_use || e->temp || (o->keep && strcmp(e->file, o->keep) == 0)) continue;
            const char *slash = strrchr(e->file, '/');
            fm__store_entry again;
            int fd;
            if (!probe(dir, slash ? slash + 1 : e->file, &again, &fd)) continue;
            if (fd >= 0 && remove_locked(&again, fd, o->dry_run)) {
                char why[96];
                snprintf(why, sizeof why, "least recently used, over the %.1f MiB cap",
                         (double)o->max_bytes / 1048576.0);
                if (fn) fn(user, &again, why);
                fm__log(fn ? FM_LOG_INFO : FM_LOG_WARN, "expert store: %s %s (%.1f MiB): %s", o->dry_run ? "would remove" : "removed",
                        again.file, (double)again.bytes / 1048576.0, why);
                total -= e->bytes < total ? e->bytes : total;
                gone += again.bytes;
                count++;
            }
            if (fd >= 0) close(fd);
            entry_clear(&again);
        }
    }
    fm__store_entries_free(left, nl);
    if (freed) *freed = gone;
    if (removed) *removed = count;
    return FM_OK;
}
