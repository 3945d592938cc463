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
 *
 * A store is written to a temporary file and renamed into place, so a crash never leaves
 * a store that validates. Anything that does not validate (missing, other model or version,
 * truncated, bad checksum) is reported and never read; a blob whose checksum fails at read
 * time is not used, and the store is marked invalid so the next open rebuilds it. */
#include "ec_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE_MAGIC "FMOESTOR"
#define STORE_VERSION 1u
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

/* The header a store of map must have (table_sum and hdr_sum left 0). */
static void expected_hdr(const fm__expert_map *map, const ec_layout *lay, store_hdr *h) {
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
    h->file_bytes = h->blob_off + n * lay->slot_bytes;
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

fm_status fm__store_pack(const fm__expert_map *map, const char *dir, fm__progress_fn progress,
                         void *user) {
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
    int fd = -1, fdd = -1;
    ec_files files;
    bool files_ok = false;
    if (!path || !tmp || !h || !sums) {
        st = fm__err(FM_ERR_NOMEM, "expert store: out of memory");
        goto done;
    }
    expected_hdr(map, &lay, h);
    if (sizeof(store_hdr) > EC_ALIGN) {
        st = fm__err(FM_ERR_INTERNAL, "expert store: header larger than a page");
        goto done;
    }
    st = fm__ec_files_init(&files, map);
    if (st != FM_OK) goto done;
    files_ok = true;
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = fm__err(FM_ERR_IO, "expert store: cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
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
    free(path); free(tmp); free(h); free(sums);
    return st;
}

static fm_status validate(const fm__expert_map *map, const ec_layout *lay, const char *path,
                          int fd, store_hdr *h, uint64_t **sums_out) {
    *sums_out = NULL;
    store_hdr want;
    expected_hdr(map, lay, &want);
    struct stat sb;
    if (fstat(fd, &sb) != 0) return fm__err(FM_ERR_IO, "%s: %s", path, strerror(errno));
    if ((uint64_t)sb.st_size < sizeof *h || pread_exact(fd, h, sizeof *h, 0) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: truncated header (%lld bytes)", path,
                       (long long)sb.st_size);
    if (memcmp(h->magic, STORE_MAGIC, 8) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: not an expert store (bad magic)", path);
    if (h->version != STORE_VERSION)
        return fm__err(FM_ERR_FORMAT, "%s: store version %u, this build writes version %u", path,
                       h->version, STORE_VERSION);
    if (h->hdr_sum != hdr_checksum(h))
        return fm__err(FM_ERR_FORMAT, "%s: header checksum mismatch (corrupt)", path);
    if (h->key_hash != want.key_hash || strcmp(h->key, want.key) != 0)
        return fm__err(FM_ERR_FORMAT, "%s: written for another model or an older version of the "
                       "checkpoint (content key differs)", path);
    if (h->n_layers != want.n_layers || h->n_experts != want.n_experts ||
        h->slot_bytes != want.slot_bytes || memcmp(h->off, want.off, sizeof h->off) != 0 ||
        memcmp(h->len, want.len, sizeof h->len) != 0 || h->table_off != want.table_off ||
        h->state_off != want.state_off || h->blob_off != want.blob_off ||
        h->state_bytes != want.state_bytes || h->file_bytes != want.file_bytes)
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
    if (fd < 0) {
        fm_status st = fm__err(FM_ERR_IO, "%s: %s", path, strerror(errno));
        free(path);
        return st;
    }
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
        char bad[8] = {0};
        if (pwrite_full(s->fd, bad, 8, 0) == 0) fdatasync(s->fd);
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
