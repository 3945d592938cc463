/* fuzz_template.c: libFuzzer target for the chat-template interpreter. The input is a
 * template source, optionally followed by "\n#CTX#\n" and a JSON context; it is compiled and,
 * when it compiles, rendered with that context and with a fixed chat context (messages with
 * tool calls, tools, special tokens). Any crash, sanitizer report or leak is a bug; template
 * errors are expected. Built and run by scripts/fuzz_template.sh (not part of make test). */
#include "template.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *FIXED_CTX =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hi \\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>r</think>ok\",\"reasoning_content\":\"why\","
    "\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1,\"b\":[true,null,2.5]}}}]},"
    "{\"role\":\"tool\",\"content\":\"res\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"t\"}]}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\",\"parameters\":{\"type\":\"object\","
    "\"properties\":{\"a\":{\"type\":\"integer\"}}}}}],\"add_generation_prompt\":true,\"bos_token\":\"<s>\","
    "\"eos_token\":\"</s>\",\"enable_thinking\":false,\"n\":3,\"s\":\"abc\"}";

static cJSON *g_fixed;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    if (!g_fixed) g_fixed = cJSON_Parse(FIXED_CTX);
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    cJSON *ctx = NULL;
    char *sep = strstr(buf, "\n#CTX#\n");
    if (sep) {
        *sep = 0;
        ctx = cJSON_Parse(sep + 7);
    }
    fm__tmpl *t = NULL;
    if (fm__tmpl_compile(buf, &t) == FM_OK) {
        char *out = NULL;
        size_t len = 0;
        if (fm__tmpl_render(t, g_fixed, &out, &len) == FM_OK && strlen(out) > len) abort();
        free(out);
        out = NULL;
        if (ctx && cJSON_IsObject(ctx)) {
            fm__tmpl_render(t, ctx, &out, &len);
            free(out);
        }
        fm__tmpl_free(t);
    }
    cJSON_Delete(ctx);
    free(buf);
    return 0;
}
