/* pool.c: the kernels' thread pool. Persistent workers take task indices from one shared
 * atomic ticket, so a thread that the OS does not schedule (the machine may be shared or
 * oversubscribed) simply takes fewer tasks instead of stalling the others. Idle workers
 * spin for a few tens of microseconds (kernel calls come back to back during decode) and
 * then sleep on a condition variable; the caller runs tasks too and sleeps the same way
 * while the last tasks finish. All shared state is C11 atomics or mutex-protected, so the
 * pool is clean under ThreadSanitizer.
 *
 * Ticket layout (64 bits): generation (16) | task count (24) | next index (24). A worker
 * claims index i by a compare-and-swap on the whole ticket, so a claim can only succeed
 * on the job that is current; the job's fn/ctx are read after the claim, and the caller
 * does not publish another job until every claimed task has finished. */
#include "backend/backend.h"
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define TASK_BITS 24
#define TASK_MASK ((1ull << TASK_BITS) - 1)
#define SPIN_SECONDS 50e-6

struct fm__pool {
    int n;                    /* threads including the caller */
    int n_workers;
    pthread_t *th;
    _Atomic uint64_t ticket;
    _Atomic uint32_t seq;     /* bumped per job and on shutdown; sleeping workers wait on it */
    _Atomic uint32_t done;    /* tasks of the current job finished */
    _Atomic int sleepers;
    _Atomic int caller_waiting;
    _Atomic int stop;
    uint64_t gen;
    /* current job: written by the caller before the ticket is published */
    void (*fn)(int64_t, void *);
    void *ctx;
    int64_t base;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    /* FM_PHASES=1: jobs run, jobs published to a sleeping worker, caller seconds waiting
     * for the other threads after its own last task (logged at fm__pool_free) */
    int stats;
    int64_t n_jobs, n_woken;
    double wait_s;
};

static _Thread_local int tl_in_pool; /* set in worker threads and while a caller runs a job */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Claims and runs tasks of the current job until none is left. */
static void take_tasks(fm__pool *p) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
        uint64_t idx = t & TASK_MASK, n = (t >> TASK_BITS) & TASK_MASK;
        if (idx >= n) return;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        p->fn(p->base + (int64_t)idx, p->ctx);
        uint32_t d = atomic_fetch_add_explicit(&p->done, 1, memory_order_seq_cst) + 1;
        if (d == n && atomic_load_explicit(&p->caller_waiting, memory_order_seq_cst)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *worker_main(void *arg) {
    fm__pool *p = arg;
    tl_in_pool = 1;
    uint32_t seen = 0;
    for (;;) {
        take_tasks(p);
        uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
        if (s == seen) {
            double t0 = fm__now();
            for (int i = 1; (s = atomic_load_explicit(&p->seq, memory_order_acquire)) == seen; i++) {
                cpu_relax();
                if ((i & 255) == 0 && fm__now() - t0 > SPIN_SECONDS) break;
            }
        }
        if (s == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add_explicit(&p->sleepers, 1, memory_order_seq_cst);
            while ((s = atomic_load_explicit(&p->seq, memory_order_seq_cst)) == seen)
                pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub_explicit(&p->sleepers, 1, memory_order_seq_cst);
            pthread_mutex_unlock(&p->mu);
        }
        seen = s;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
    }
    return NULL;
}

static int online_cores(void) {
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

fm__pool *fm__pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = online_cores();
    if (n_threads > 1024) n_threads = 1024;
    fm__pool *p = fm__calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    const char *ph = getenv("FM_PHASES");
    p->stats = ph && *ph && ph[0] != '0';
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->th = fm__calloc((size_t)n_threads - 1, sizeof *p->th);
        if (!p->th) { fm__pool_free(p); return NULL; }
        /* Kernels keep per-call buffers on the stack (~100 KB): do not depend on the
         * platform's default thread stack size. */
        pthread_attr_t attr;
        int have_attr = pthread_attr_init(&attr) == 0;
        if (have_attr) pthread_attr_setstacksize(&attr, 2u << 20);
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->th[i], have_attr ? &attr : NULL, worker_main, p) != 0) break;
            p->n_workers++;
        }
        if (have_attr) pthread_attr_destroy(&attr);
        p->n = p->n_workers + 1;
    }
    return p;
}

void fm__pool_free(fm__pool *p) {
    if (!p) return;
    if (p->stats && p->n_jobs > 0)
        FM_LOGW("thread pool of %d: %lld parallel jobs, %lld woke a sleeping worker, the caller waited "
                "%.3f ms for the others after its own tasks (%.2f us per job)", p->n, (long long)p->n_jobs,
                (long long)p->n_woken, 1e3 * p->wait_s, 1e6 * p->wait_s / (double)p->n_jobs);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->seq, 1, memory_order_seq_cst);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
    free(p->th);
    free(p);
}

int fm__pool_size(const fm__pool *p) { return p ? p->n : 1; }

void fm__pool_run(fm__pool *p, int64_t n, void (*fn)(int64_t, void *), void *ctx) {
    if (n <= 0) return;
    /* Serial: no pool, one thread, one task, or a nested call from inside a task. */
    if (!p || p->n_workers == 0 || n == 1 || tl_in_pool) {
        for (int64_t i = 0; i < n; i++) fn(i, ctx);
        return;
    }
    tl_in_pool = 1;
    for (int64_t base = 0; base < n; base += (int64_t)TASK_MASK) {
        uint64_t cnt = (uint64_t)FM_MIN(n - base, (int64_t)TASK_MASK);
        p->fn = fn;
        p->ctx = ctx;
        p->base = base;
        atomic_store_explicit(&p->done, 0, memory_order_relaxed);
        p->gen = (p->gen + 1) & 0xFFFF;
        atomic_store_explicit(&p->ticket, (p->gen << 48) | (cnt << TASK_BITS), memory_order_release);
        atomic_fetch_add_explicit(&p->seq, 1, memory_order_seq_cst);
        p->n_jobs++;
        if (atomic_load_explicit(&p->sleepers, memory_order_seq_cst) > 0) {
            p->n_woken++;
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->cv_work);
            pthread_mutex_unlock(&p->mu);
        }
        take_tasks(p);
        double tw = p->stats ? fm__now() : 0;
        if (atomic_load_explicit(&p->done, memory_order_acquire) != cnt) {
            double t0 = fm__now();
            for (int i = 1; atomic_load_explicit(&p->done, memory_order_acquire) != cnt; i++) {
                cpu_relax();
                if ((i & 255) == 0 && fm__now() - t0 > SPIN_SECONDS) break;
            }
        }
        if (atomic_load_explicit(&p->done, memory_order_acquire) != cnt) {
            pthread_mutex_lock(&p->mu);
            atomic_store_explicit(&p->caller_waiting, 1, memory_order_seq_cst);
            while (atomic_load_explicit(&p->done, memory_order_seq_cst) != cnt)
                pthread_cond_wait(&p->cv_done, &p->mu);
            atomic_store_explicit(&p->caller_waiting, 0, memory_order_seq_cst);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stats) p->wait_s += fm__now() - tw;
    }
    tl_in_pool = 0;
}
