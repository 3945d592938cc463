/* tap.h: the minimal test harness every C test uses. Each CHECK prints "ok - name" or
 * "not ok - name"; tests/run.sh counts those lines. Exit status is non-zero on failure. */
#ifndef FM_TAP_H
#define FM_TAP_H
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_failed_ = 0, tap_count_ = 0;

#define CHECK(cond, ...) do {                                              \
        tap_count_++;                                                      \
        if (cond) { printf("ok - "); printf(__VA_ARGS__); printf("\n"); }  \
        else { tap_failed_++; printf("not ok - "); printf(__VA_ARGS__);    \
               printf("  [%s:%d: %s]\n", __FILE__, __LINE__, #cond); }     \
        fflush(stdout);                                                    \
    } while (0)

/* Ends main(): exit status 1 if any check failed or none ran. */
#define TAP_DONE() (tap_count_ == 0 ? (printf("not ok - no checks ran\n"), 1) \
                                    : (tap_failed_ ? 1 : 0))

/* Repository root for fixtures: $FM_ROOT or ".". */
static inline const char *tap_root(void) {
    const char *r = getenv("FM_ROOT");
    return r && *r ? r : ".";
}
/* ||a - ref|| / ||ref|| over n floats (the conformance tolerance measure). */
static inline double tap_rel_err(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}
#endif
