/* template.c: placeholder until the Jinja interpreter lands. */
#include "template.h"

fm_status fm__tmpl_compile(const char *src, fm__tmpl **out) {
    (void)src;
    *out = NULL;
    return fm__err(FM_ERR_UNSUPPORTED, "chat templates not built yet");
}
void fm__tmpl_free(fm__tmpl *t) { (void)t; }
fm_status fm__tmpl_render(const fm__tmpl *t, const cJSON *ctx, char **out, size_t *len) {
    (void)t; (void)ctx;
    *out = NULL; if (len) *len = 0;
    return fm__err(FM_ERR_UNSUPPORTED, "chat templates not built yet");
}
