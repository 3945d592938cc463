/* template.h: the Jinja subset that chat templates use, rendered exactly as Hugging Face
 * transformers renders them (trim_blocks and lstrip_blocks on, Python-style tojson). */
#ifndef FM_TEMPLATE_H
#define FM_TEMPLATE_H

#include "common.h"
#include <cjson/cJSON.h>

typedef struct fm__tmpl fm__tmpl;

/* Parses src. On error returns FM_ERR_TEMPLATE with "line L, column C: what". */
fm_status fm__tmpl_compile(const char *src, fm__tmpl **out);
void fm__tmpl_free(fm__tmpl *t);

/* Renders with the variables of the JSON object ctx (messages, tools,
 * add_generation_prompt, bos_token, eos_token, and any extra variables). *out malloc'd,
 * NUL-terminated; *len excludes the NUL. Render errors (raise_exception included) return
 * FM_ERR_TEMPLATE with the line and column. */
fm_status fm__tmpl_render(const fm__tmpl *t, const cJSON *ctx, char **out, size_t *len);

#endif
