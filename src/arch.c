/* arch.c: the one table of supported architectures. Adding an architecture = one
 * src/arch_<name>.c defining its fm__arch, plus one line here. */
#include "arch.h"

#include <string.h>

extern const fm__arch fm__arch_qwen3_moe, fm__arch_qwen2_moe, fm__arch_mixtral,
    fm__arch_olmoe, fm__arch_qwen3_next;

static const fm__arch *const k_archs[] = {
    &fm__arch_qwen3_moe,
    &fm__arch_qwen2_moe,
    &fm__arch_mixtral,
    &fm__arch_olmoe,
    &fm__arch_qwen3_next,
};

const fm__arch *fm__arch_find(const char *model_type) {
    if (!model_type) return NULL;
    for (size_t i = 0; i < FM_ARRAY_LEN(k_archs); i++)
        if (strcmp(k_archs[i]->name, model_type) == 0) return k_archs[i];
    return NULL;
}

const char *fm__arch_names(void) { return "qwen3_moe, qwen2_moe, mixtral, olmoe, qwen3_next"; }
