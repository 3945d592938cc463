/* genconfig.h: the model's generation defaults (generation_config.json) merged with the
 * caller's explicit choices, and a one-line account of where each value came from. The
 * reader itself is public: fm_gen_defaults_load() in flashmoe.h. */
#ifndef FM_GENCONFIG_H
#define FM_GENCONFIG_H

#include "flashmoe.h"
#include <stddef.h>
#include <stdint.h>

/* For every field in d->from_file whose FM_GENCFG_* bit is not in given, copies the file's
 * value into *p; fields in given (set explicitly by a flag or a request) and fields the
 * file lacks keep *p's value. */
void fm__gen_apply(fm_gen_params *p, const fm_gen_defaults *d, uint32_t given);

/* Writes "temperature 0.7 (generation_config.json), top_p 0.95 (flag), ..." into buf
 * (always NUL-terminated): each sampling field of p with its source: "flag" if its bit is
 * in given, "generation_config.json" if in d->from_file, else "default". Includes the
 * file's EOS ids when it has some. d may be NULL (no file). */
void fm__gen_describe(const fm_gen_params *p, const fm_gen_defaults *d, uint32_t given,
                      char *buf, size_t cap);

#endif
