/* io_pool.c: reading expert bytes from checkpoint files without keeping them in the page
 * cache. Each file is opened lazily twice: with O_DIRECT (aligned superset reads through
 * a bounce buffer) where the filesystem allows it, and buffered (pread followed by
 * posix_fadvise(DONTNEED)) as the fallback. Also the checksum the packed store uses. */
#include "ec_internal.h"

#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

fm_status fm__ec_files_init(ec_files *f, const fm__expert_map *map) {
    memset(f, 0, sizeof *f);
    f->map = map;
    int n = map->n_files > 0 ? map->n_files : 1;
    f->fd = fm__malloc_array((size_t)n, sizeof(int));
    f->fd_direct = fm__malloc_array((size_t)n, sizeof(int));
    f->err_no = fm__calloc((size_t)n, sizeof(int));
    f->opened = fm__calloc((size_t)n, 1);
    if (!f->fd || !f->fd_direct || !f->err_no || !f->opened) {
        free(f->fd); free(f->fd_direct); free(f->err_no); free(f->opened);
        memset(f, 0, sizeof *f);
        return fm__err(FM_ERR_NOMEM, "expert cache: out of memory for %d file handles", n);
    }
    for (int i = 0; i < n; i++) f->fd[i] = f->fd_direct[i] = -1;
    const char *nd = getenv("FM_NO_DIRECT");
    f->use_direct = !(nd && *nd && strcmp(nd, "0") != 0);
    pthread_mutex_init(&f->mu, NULL);
    return FM_OK;
}

void fm__ec_files_close(ec_files *f) {
    if (!f->fd) return;
    for (int i = 0; i < (f->map->n_files > 0 ? f->map->n_files : 1); i++) {
        if (f->fd[i] >= 0) close(f->fd[i]);
        if (f->fd_direct[i] >= 0) close(f->fd_direct[i]);
    }
    free(f->fd); free(f->fd_direct); free(f->err_no); free(f->opened);
    pthread_mutex_destroy(&f->mu);
    memset(f, 0, sizeof *f);
}

/* Opens file i if not yet tried. Returns its buffered fd (or -1, errno in *eno) and the
 * O_DIRECT fd in *fdd (-1 if unsupported). */
static int files_get(ec_files *f, int32_t i, int *fdd, int *eno) {
    pthread_mutex_lock(&f->mu);
    if (f->opened[i] == 0) {
        int fd = open(f->map->paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            f->opened[i] = 2;
            f->err_no[i] = errno;
        } else {
            f->fd[i] = fd;
            f->opened[i] = 1;
            if (f->use_direct) f->fd_direct[i] = open(f->map->paths[i], O_RDONLY | O_CLOEXEC | O_DIRECT);
        }
    }
    int fd = f->fd[i];
    *fdd = f->fd_direct[i];
    *eno = f->err_no[i];
    pthread_mutex_unlock(&f->mu);
    return fd;
}

/* The filesystem refused an O_DIRECT read: use the buffered path for file i from now on. */
static void files_drop_direct(ec_files *f, int32_t i) {
    pthread_mutex_lock(&f->mu);
    if (f->fd_direct[i] >= 0) {
        close(f->fd_direct[i]);
        f->fd_direct[i] = -1;
    }
    pthread_mutex_unlock(&f->mu);
}

uint64_t fm__ec_bounce_bytes(const ec_layout *lay) {
    return (lay->max_len + EC_ALIGN - 1) / EC_ALIGN * EC_ALIGN + 2 * EC_ALIGN;
}

/* pread until n bytes or EOF. Returns bytes read, or -1 (errno set). */
static int64_t pread_full(int fd, void *buf, uint64_t n, uint64_t off) {
    uint64_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, (size_t)(n - got), (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (uint64_t)r;
    }
    return (int64_t)got;
}

int fm__ec_read_ckpt_array(ec_files *f, const ec_layout *lay, int32_t layer, int32_t e, int a,
                           uint8_t *dst, uint8_t *bounce, int *used_direct, uint64_t *nread,
                           char *err, size_t errlen) {
    const fm__expert_map *map = f->map;
    const fm__range *r[EC_NARR];
    fm__ec_ranges(&map->src[(size_t)layer * (size_t)map->n_experts + (size_t)e], r);
    uint64_t off = r[a]->off, len = r[a]->len;
    if (len == 0) return 0;
    int32_t fi = r[a]->file;
    const char *path = map->paths[fi];
    int fdd, eno;
    int fd = files_get(f, fi, &fdd, &eno);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open (expert %d of MoE layer %d, offset %llu): %s",
                 path, e, layer, (unsigned long long)off, strerror(eno));
        return -1;
    }
    if (fdd >= 0) {
        uint64_t a0 = off & ~(uint64_t)(EC_ALIGN - 1);
        uint64_t a1 = (off + len + EC_ALIGN - 1) & ~(uint64_t)(EC_ALIGN - 1);
        int64_t got = pread_full(fdd, bounce, a1 - a0, a0);
        if (got < 0 && errno == EINVAL) {
            files_drop_direct(f, fi);
        } else if (got < 0) {
            snprintf(err, errlen, "%s: read of %llu bytes at offset %llu failed (expert %d of "
                     "MoE layer %d): %s", path, (unsigned long long)len,
                     (unsigned long long)off, e, layer, strerror(errno));
            return -1;
        } else if ((uint64_t)got < off + len - a0) {
            snprintf(err, errlen, "%s: file ends before offset %llu + %llu bytes (expert %d of "
                     "MoE layer %d)", path, (unsigned long long)off, (unsigned long long)len,
                     e, layer);
            return -1;
        } else {
            memcpy(dst + lay->off[a], bounce + (off - a0), (size_t)len);
            *used_direct = 1;
            *nread += a1 - a0;
            return 0;
        }
    }
    int64_t got = pread_full(fd, dst + lay->off[a], len, off);
    if (got < 0) {
        snprintf(err, errlen, "%s: read of %llu bytes at offset %llu failed (expert %d of "
                 "MoE layer %d): %s", path, (unsigned long long)len, (unsigned long long)off,
                 e, layer, strerror(errno));
        return -1;
    }
    /* The page cache must not become a second copy of the model. */
    posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
    *nread += (uint64_t)got;
    if ((uint64_t)got < len) {
        snprintf(err, errlen, "%s: file ends before offset %llu + %llu bytes (expert %d of "
                 "MoE layer %d)", path, (unsigned long long)off, (unsigned long long)len,
                 e, layer);
        return -1;
    }
    return 0;
}

int fm__ec_read_ckpt(ec_files *f, const ec_layout *lay, int32_t layer, int32_t e, uint8_t *dst,
                     uint8_t *bounce, int *used_direct, uint64_t *nread, char *err,
                     size_t errlen) {
    *used_direct = 0;
    *nread = 0;
    for (int a = 0; a < EC_NARR; a++)
        if (fm__ec_read_ckpt_array(f, lay, layer, e, a, dst, bounce, used_direct, nread, err,
                                   errlen) != 0)
            return -1;
    return 0;
}

uint64_t fm__fnv64(const void *p, size_t n, uint64_t h) {
    const unsigned char *s = p;
    if (!h) h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t fm__ec_checksum(const void *p, uint64_t n) {
    const uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full;
    const unsigned char *s = p;
    uint64_t h[4] = {P1 + P2, P2, 0, (uint64_t)0 - P1};
    uint64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, s + i + 8 * k, 8);
            h[k] = rotl64(h[k] + w * P2, 31) * P1;
        }
    }
    uint64_t r = rotl64(h[0], 1) + rotl64(h[1], 7) + rotl64(h[2], 12) + rotl64(h[3], 18);
    r = fm__fnv64(s + i, (size_t)(n - i), r ^ n);
    r ^= r >> 33;
    r *= P2;
    r ^= r >> 29;
    return r;
}
