/* test_safetensors.c: the safetensors reader and config.json parser on hand-made files:
 * valid single and sharded checkpoints, and each kind of malformed input (which must be
 * an error naming the file and the tensor or key, never a crash). */
#include "config.h"
#include "quant_config.h"
#include "safetensors.h"
#include "tap.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static char *path(const char *name) {
    static char buf[4][512];
    static int i = 0;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof buf[i], "%s/%s", g_dir, name);
    return buf[i];
}

/* Writes a safetensors file: 8-byte header length (hlen_override if nonzero), header,
 * then ndata bytes of data. */
static void write_st(const char *name, const char *header, size_t ndata, uint64_t hlen_override) {
    FILE *f = fopen(path(name), "wb");
    uint64_t hl = hlen_override ? hlen_override : strlen(header);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < ndata; i++) fputc((int)(i * 7 + 1) & 0xff, f);
    fclose(f);
}

static void write_text(const char *name, const char *text) {
    FILE *f = fopen(path(name), "wb");
    fputs(text, f);
    fclose(f);
}

static bool err_has(const char *a, const char *b) {
    const char *e = fm_last_error();
    return strstr(e, a) && (!b || strstr(e, b));
}

static fm_status open1(const char *name, fm__st_set **s) { return fm__st_open_file(path(name), s); }

static void test_valid(void) {
    write_st("ok.safetensors",
             "{\"__metadata__\":{\"format\":\"pt\"},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
             "\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
             "\"z\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[32,32]}}",
             32, 0);
    fm__st_set *s = NULL;
    fm_status rc = open1("ok.safetensors", &s);
    CHECK(rc == FM_OK && s && s->n_tensors == 3, "valid file opens with 3 tensors");
    if (!s) return;
    const fm__st_tensor *a = fm__st_find(s, "a"), *b = fm__st_findf(s, "%s", "b");
    CHECK(a && a->dtype == FM_DT_BF16 && a->ndim == 1 && a->shape[0] == 4 && a->nbytes == 8,
          "BF16 tensor a: shape [4], 8 bytes");
    CHECK(b && b->dtype == FM_DT_F32 && b->ndim == 2 && b->shape[1] == 3 && b->nbytes == 24,
          "F32 tensor b: shape [2,3], 24 bytes");
    CHECK(b && ((const unsigned char *)b->data)[1] == 8 && ((const unsigned char *)a->data)[0] == (24 * 7 + 1) % 256,
          "tensor data points at the right bytes");
    CHECK(fm__st_find(s, "missing") == NULL, "absent tensor is NULL");
    fm__st_free(s);
    fm__st_free(NULL);
}

static void expect_bad(const char *name, const char *header, size_t ndata, uint64_t hl,
                       const char *must1, const char *must2, const char *what) {
    write_st(name, header, ndata, hl);
    fm__st_set *s = (fm__st_set *)1;
    fm_status rc = open1(name, &s);
    CHECK(rc != FM_OK && s == NULL && err_has(name, must1) && (!must2 || err_has(must2, NULL)),
          "%s: error names file and %s (%s)", what, must1, fm_last_error());
}

static void test_bad(void) {
    const char *one = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    expect_bad("hl.safetensors", one, 16, 1u << 20, "header length", NULL, "header length past the file");
    expect_bad("hl2.safetensors", one, 16, UINT64_MAX, "header length", NULL, "header length 2^64-1");
    expect_bad("trunc.safetensors", one, 10, 0, "tensor w", "out of range", "truncated data section");
    expect_bad("dt.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", 24, 0,
               "tensor w", "F32", "dtype x shape != byte count");
    expect_bad("ov.safetensors",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
               "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
               16, 0, "overlap", NULL, "overlapping tensors");
    expect_bad("rev.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16, 0,
               "tensor w", NULL, "begin > end");
    expect_bad("huge.safetensors",
               "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,16]}}", 16, 0,
               "tensor w", "overflow", "shape product overflows 64 bits");
    expect_bad("neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,16]}}", 16, 0,
               "tensor w", NULL, "negative dimension");
    expect_bad("udt.safetensors", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, 0,
               "tensor w", "Q4", "unknown dtype");
    expect_bad("json.safetensors", "{\"w\":", 16, 0, "JSON", NULL, "header not JSON");
    expect_bad("noobj.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", 16, 0, "tensor w", "data_offsets",
               "missing data_offsets");
    write_text("tiny.safetensors", "abc");
    fm__st_set *s = NULL;
    CHECK(open1("tiny.safetensors", &s) == FM_ERR_FORMAT && err_has("tiny.safetensors", "truncated"),
          "3-byte file: truncated (%s)", fm_last_error());
    CHECK(fm__st_open_file(path("nonexistent.safetensors"), &s) == FM_ERR_IO && err_has("nonexistent", NULL),
          "missing file: I/O error naming it");
}

static void test_sharded(void) {
    char sd[300];
    snprintf(sd, sizeof sd, "%s/shard", g_dir);
    mkdir(sd, 0755);
    write_st("shard/a.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0);
    write_st("shard/b.safetensors", "{\"y\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, 0);
    write_text("shard/model.safetensors.index.json",
               "{\"metadata\":{},\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"b.safetensors\"}}");
    fm__st_set *s = NULL;
    fm_status rc = fm__st_open_dir(sd, &s);
    CHECK(rc == FM_OK && s && s->n_files == 2 && fm__st_find(s, "x") && fm__st_find(s, "y") &&
              fm__st_find(s, "y")->file != fm__st_find(s, "x")->file,
          "sharded checkpoint: 2 files, tensors from both");
    fm__st_free(s);
    write_text("shard/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"c.safetensors\"}}");
    rc = fm__st_open_dir(sd, &s);
    CHECK(rc != FM_OK && err_has("c.safetensors", "missing shard") && err_has("tensor y", NULL),
          "missing shard: names the shard and a tensor (%s)", fm_last_error());
    write_text("shard/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"a.safetensors\",\"y\":\"a.safetensors\"}}");
    rc = fm__st_open_dir(sd, &s);
    CHECK(rc != FM_OK && err_has("tensor y", "a.safetensors"), "tensor not in its shard (%s)", fm_last_error());
    write_text("shard/model.safetensors.index.json", "{\"weight_map\":{\"x\":\"../a.safetensors\"}}");
    rc = fm__st_open_dir(sd, &s);
    CHECK(rc == FM_ERR_FORMAT && err_has("weight_map", NULL), "shard path with '/' rejected (%s)", fm_last_error());
    write_st("shard/b.safetensors", "{\"x\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, 0);
    write_text("shard/model.safetensors.index.json",
               "{\"weight_map\":{\"x\":\"a.safetensors\",\"z\":\"b.safetensors\"}}");
    rc = fm__st_open_dir(sd, &s);
    CHECK(rc == FM_ERR_FORMAT && err_has("tensor x", "also defined"), "duplicate tensor across shards (%s)",
          fm_last_error());
}

static const char *k_base =
    "\"vocab_size\":300,\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"moe_intermediate_size\":32,\"num_experts_per_tok\":2";

static fm_status cfg(const char *extra, fm__config **c) {
    char text[2048];
    snprintf(text, sizeof text, "{%s%s%s}", k_base, *extra ? "," : "", extra);
    write_text("config.json", text);
    return fm__config_load(g_dir, c);
}

static void test_config(void) {
    fm__config *c = NULL;
    fm_status rc = cfg("\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"rope_theta\":1000000.0,"
                       "\"torch_dtype\":\"bfloat16\",\"mlp_only_layers\":[1],\"norm_topk_prob\":true", &c);
    CHECK(rc == FM_OK && c && c->rope_theta == 1e6 && c->n_experts == 8 && strcmp(c->dtype, "bfloat16") == 0 &&
              c->norm_topk_prob && c->head_dim == 16 && fm__config_layer_is_moe(c, 0) && !fm__config_layer_is_moe(c, 1),
          "published spelling: rope_theta, num_experts, torch_dtype, mlp_only_layers");
    fm__config_free(c);
    rc = cfg("\"model_type\":\"qwen3_moe\",\"num_local_experts\":8,\"rope_parameters\":{\"rope_type\":\"default\","
             "\"rope_theta\":5000.0},\"dtype\":\"float32\",\"decoder_sparse_step\":2", &c);
    CHECK(rc == FM_OK && c && c->rope_theta == 5000.0 && c->n_experts == 8 && strcmp(c->dtype, "float32") == 0 &&
              !fm__config_layer_is_moe(c, 0) && fm__config_layer_is_moe(c, 1) && !c->norm_topk_prob,
          "transformers 5 spelling: rope_parameters, num_local_experts, dtype, decoder_sparse_step");
    fm__config_free(c);
    rc = cfg("\"model_type\":\"mixtral\",\"num_local_experts\":8,\"intermediate_size\":32,\"norm_topk_prob\":false", &c);
    CHECK(rc == FM_OK && c && c->norm_topk_prob == 1 && c->rope_theta == 1e6, "mixtral always renormalizes top-k; default theta 1e6");
    fm__config_free(c);
    rc = cfg("\"model_type\":\"deepseek_v9\",\"num_experts\":8", &c);
    CHECK(rc == FM_ERR_UNSUPPORTED && c == NULL && err_has("deepseek_v9", "config.json"),
          "unknown model_type: unsupported, named (%s)", fm_last_error());
    rc = cfg("\"model_type\":\"qwen3_moe\"", &c);
    CHECK(rc == FM_ERR_FORMAT && err_has("num_experts or num_local_experts", "config.json"),
          "missing key named with both spellings (%s)", fm_last_error());
    write_text("config.json", "{\"model_type\":\"olmoe\",\"vocab_size\":10}");
    rc = fm__config_load(g_dir, &c);
    CHECK(rc == FM_ERR_FORMAT && err_has("hidden_size", "config.json"), "missing hidden_size named (%s)", fm_last_error());
    rc = cfg("\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}", &c);
    CHECK(rc == FM_ERR_UNSUPPORTED && err_has("yarn", NULL), "rope type yarn unsupported (%s)", fm_last_error());
    rc = cfg("\"model_type\":\"qwen3_moe\",\"num_experts\":\"8\"", &c);
    CHECK(rc == FM_ERR_FORMAT && err_has("num_experts", "not a number"), "wrong type named (%s)", fm_last_error());
    rc = cfg("\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"quantization\":{\"group_size\":64,\"bits\":4,"
             "\"model.layers.0.mlp.gate\":{\"group_size\":64,\"bits\":8},\"lm_head\":false}", &c);
    int32_t bits = 0, group = 0;
    CHECK(rc == FM_OK && c && fm__quant_for(&c->quant, "model.layers.0.mlp.gate", &bits, &group) && bits == 8 &&
              fm__quant_for(&c->quant, "x", &bits, &group) && bits == 4 && group == 64 &&
              !fm__quant_for(&c->quant, "lm_head", &bits, &group),
          "MLX quantization defaults and per-module overrides");
    fm__config_free(c);
    rc = cfg("\"model_type\":\"qwen3_moe\",\"num_experts\":8,\"quantization\":{\"group_size\":32,\"bits\":4,\"mode\":\"mxfp4\"}", &c);
    CHECK(rc == FM_ERR_UNSUPPORTED && err_has("mxfp4", NULL), "quantization mode mxfp4 unsupported (%s)", fm_last_error());
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/fm_test_st_%d", (int)getpid());
    mkdir(g_dir, 0755);
    test_valid();
    test_bad();
    test_sharded();
    test_config();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", g_dir);
    return TAP_DONE();
}
