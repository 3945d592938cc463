/* model.c: placeholder until the loader and forward pass land. */
#include "model.h"

fm_status fm_model_open(const char *dir, const fm_model_params *p, fm_model **out) {
    (void)p;
    *out = NULL;
    return fm__err(FM_ERR_UNSUPPORTED, "%s: model loading is not built yet", dir);
}
