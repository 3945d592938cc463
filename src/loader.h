/* loader.h: turns checkpoint tensors into what the forward pass computes with: fm__mat
 * views of resident matrices (F32/BF16/F16 or MLX affine-quantized, kept in the mmap),
 * small float vectors (norms, biases), and the byte ranges of every routed expert
 * (fm__expert_map) in any of the supported layouts:
 *   per-expert  P.experts.{e}.{gate,up,down}_proj.weight  (Mixtral: w1/w3/w2)
 *   stacked     P.switch_mlp.{gate,up,down}_proj.weight [E,out,in]  (MLX)
 *   GraniteMoE  P.input_linear.weight [E,2I,H] (gate rows, then up), P.output_linear [E,H,I]
 *   fused       P.experts.gate_up_proj [E,2I,H] (gate rows, then up), P.experts.down_proj
 *               [E,H,I]  (transformers 5)
 * Every shape and dtype is checked; errors name the file and tensor. */
#ifndef FM_LOADER_H
#define FM_LOADER_H

#include "common.h"
#include "config.h"
#include "expert_cache.h"
#include "safetensors.h"
#include "tensor.h"

typedef struct fm__loader {
    const fm__st_set *st;
    const fm__config *cfg;
    uint64_t resident_bytes;   /* bytes of everything bound so far (matrices + vectors) */
    int32_t n_owned, cap_owned;
    void **owned;              /* heap copies made at load (vectors, realigned matrices) */
} fm__loader;

/* Binds the matrix module.weight ([rows][cols] logical shape; quantized if module.scales
 * exists). required = false: returns FM_OK with out->data == NULL when absent. */
fm_status fm__load_mat(fm__loader *L, const char *module, int64_t rows, int64_t cols,
                       bool required, fm__mat *out);
/* Reads tensor `name` ([n] values) into a new float array owned by the loader. required =
 * false: *out = NULL when absent. */
fm_status fm__load_vec(fm__loader *L, const char *name, int64_t n, bool required, float **out);
/* Reads tensor `name` of shape dims[0..nd) into a new float array owned by the loader. */
fm_status fm__load_array(fm__loader *L, const char *name, int nd, const int64_t *dims, float **out);
/* Fills src[0..n_experts) for the MoE module at prefix (e.g. "model.layers.3.mlp"); inter:
 * expert intermediate size. Returns FM_ERR_FORMAT naming the prefix if no layout fits. */
fm_status fm__load_experts(fm__loader *L, const char *prefix, int32_t n_experts, int64_t inter,
                           int64_t hidden, fm__expert_src *src);
/* True if any expert tensor exists under prefix. */
bool fm__has_experts(const fm__loader *L, const char *prefix);
/* Releases the loader's heap copies. */
void fm__loader_free(fm__loader *L);

#endif
