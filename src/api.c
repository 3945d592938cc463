/* api.c: public entry points of flash-moe (parameter defaults; model and session calls
 * are filled in as the engine lands). */
#include "common.h"
#include "model.h"

#include <string.h>

void fm_model_params_default(fm_model_params *p) { memset(p, 0, sizeof *p); }

void fm_gen_params_default(fm_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
}

