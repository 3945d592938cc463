/* cmd_template.c: flash-moe template MODEL --messages-file M.json [--tools-file T.json]
 * [--no-generation-prompt] [--set name=value]...: renders the model's chat template exactly
 * as transformers' apply_chat_template does and prints the prompt with nothing added.
 * MODEL is any directory holding tokenizer_config.json (chat_template as a string or a list
 * of named templates, "default" used) and/or chat_template.jinja (which wins, as in
 * transformers). The variables are those apply_chat_template passes: messages, tools (null
 * without --tools-file), documents (null), add_generation_prompt, and the special tokens
 * (bos/eos/unk/pad_token, additional_special_tokens) from tokenizer_config.json. */
#include "cli.h"
#include "common.h"
#include "template.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cJSON *read_json(const char *path, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    if (fm__read_file(path, &buf, &len) != FM_OK) {
        cli_fail(what);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!j) fprintf(stderr, "flash-moe: %s: %s is not valid JSON\n", what, path);
    return j;
}

/* A special token from tokenizer_config.json: a string or {"content": ...}. */
static const char *special_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

int cmd_template(int argc, char **argv) {
    const char *messages_file = NULL, *tools_file = NULL;
    int no_gen = 0;
    cli_list sets = {0};
    cli_opt opts[] = {
        {"--messages-file", "-m", CLI_STR, &messages_file, "JSON array of chat messages"},
        {"--tools-file", NULL, CLI_STR, &tools_file, "JSON array of tool definitions"},
        {"--no-generation-prompt", NULL, CLI_FLAG, &no_gen, "render with add_generation_prompt=false"},
        {"--set", NULL, CLI_LIST, &sets, "template variable name=value (value read as JSON when it parses, else a string)"},
    };
    const char *usage = "flash-moe template MODEL --messages-file M.json [--tools-file T.json] "
                        "[--no-generation-prompt] [--set name=value]...";
    const char *pos[1];
    int npos;
    int rc = cli_parse(argc, argv, 2, opts, (int)FM_ARRAY_LEN(opts), usage, pos, 1, &npos);
    if (rc) {
        free(sets.items);
        return rc == 1 ? 0 : 2;
    }
    if (npos != 1 || !messages_file) {
        fprintf(stderr, "flash-moe: template needs MODEL and --messages-file\n");
        free(sets.items);
        return 2;
    }
    int ret = 1;
    cJSON *cfg = NULL, *ctx = cJSON_CreateObject();
    char *src = NULL, *out = NULL;
    fm__tmpl *t = NULL;
    char *cfg_path = fm__path_join(pos[0], "tokenizer_config.json");
    char *jinja_path = fm__path_join(pos[0], "chat_template.jinja");
    if (!ctx || !cfg_path || !jinja_path) { fprintf(stderr, "flash-moe: out of memory\n"); goto done; }
    if (fm__file_exists(cfg_path) && !(cfg = read_json(cfg_path, "tokenizer_config.json"))) goto done;
    if (fm__file_exists(jinja_path)) {
        size_t len;
        if (fm__read_file(jinja_path, &src, &len) != FM_OK) { cli_fail("chat_template.jinja"); goto done; }
    } else if (cfg) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsString(ct)) src = fm__strdup(ct->valuestring);
        else if (cJSON_IsArray(ct)) {
            const cJSON *e;
            cJSON_ArrayForEach(e, ct) {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                const cJSON *tp = cJSON_GetObjectItemCaseSensitive(e, "template");
                if (cJSON_IsString(nm) && cJSON_IsString(tp) && !strcmp(nm->valuestring, "default"))
                    src = fm__strdup(tp->valuestring);
            }
        }
    }
    if (!src) {
        fprintf(stderr, "flash-moe: %s has no chat template (tokenizer_config.json chat_template or chat_template.jinja)\n", pos[0]);
        goto done;
    }
    cJSON *msgs = read_json(messages_file, "--messages-file");
    if (!msgs) goto done;
    if (!cJSON_IsArray(msgs)) {
        fprintf(stderr, "flash-moe: %s: messages must be a JSON array\n", messages_file);
        cJSON_Delete(msgs);
        goto done;
    }
    cJSON_AddItemToObject(ctx, "messages", msgs);
    if (tools_file) {
        cJSON *tools = read_json(tools_file, "--tools-file");
        if (!tools) goto done;
        cJSON_AddItemToObject(ctx, "tools", tools);
    } else cJSON_AddNullToObject(ctx, "tools"); /* transformers passes tools=None */
    cJSON_AddNullToObject(ctx, "documents");
    cJSON_AddBoolToObject(ctx, "add_generation_prompt", !no_gen);
    const char *keys[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (size_t i = 0; cfg && i < FM_ARRAY_LEN(keys); i++) {
        const char *v = special_token(cfg, keys[i]);
        if (v) cJSON_AddStringToObject(ctx, keys[i], v);
    }
    const cJSON *extra = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens") : NULL;
    if (cJSON_IsArray(extra)) { /* part of transformers' special_tokens_map */
        cJSON *l = cJSON_AddArrayToObject(ctx, "additional_special_tokens");
        const cJSON *e;
        cJSON_ArrayForEach(e, extra) {
            const char *s = cJSON_IsString(e) ? e->valuestring : NULL;
            const cJSON *c = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "content") : NULL;
            if (cJSON_IsString(c)) s = c->valuestring;
            if (s && l) cJSON_AddItemToArray(l, cJSON_CreateString(s));
        }
    }
    for (int i = 0; i < sets.n; i++) {
        const char *s = sets.items[i], *eq = strchr(s, '=');
        if (!eq || eq == s) {
            fprintf(stderr, "flash-moe: --set expects name=value, got '%s'\n", s);
            goto done;
        }
        char *name = fm__strndup(s, (size_t)(eq - s));
        if (!name) goto done;
        cJSON *v = cJSON_Parse(eq + 1);
        if (!v) v = cJSON_CreateString(eq + 1);
        cJSON_DeleteItemFromObjectCaseSensitive(ctx, name);
        cJSON_AddItemToObject(ctx, name, v);
        free(name);
    }
    if (fm__tmpl_compile(src, &t) != FM_OK) { cli_fail("chat template"); goto done; }
    size_t len = 0;
    if (fm__tmpl_render(t, ctx, &out, &len) != FM_OK) { cli_fail("chat template"); goto done; }
    fwrite(out, 1, len, stdout);
    fflush(stdout);
    ret = 0;
done:
    free(out);
    fm__tmpl_free(t);
    free(src);
    cJSON_Delete(cfg);
    cJSON_Delete(ctx);
    free(cfg_path);
    free(jinja_path);
    free(sets.items);
    return ret;
}
