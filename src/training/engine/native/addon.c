/*
 * The engine's native kernels as one Node-API addon (compiled on first use by ../native.ts with the system
 * C compiler, -O3 -march=native; optional: without a compiler the engine runs on tfjs-wasm alone).
 * One translation unit, so the files share common.h's static helpers:
 *   gemm.c       SGEMM, every transpose form and batched (the wasm backend's BatchMatMul)
 *   optim.c      fused AdamW
 *   softmax.c    row softmax + log-sum-exp (the LM head's log-probs)
 *   attention.c  fused causal attention with RoPE, forward and backward
 *   elementwise.c fused RMSNorm and SwiGLU, forward and backward
 *   tensor.c     broadcasting binary ops, unary ops, reductions, transpose, scatter-add (the native backend)
 *   memory.c     kernel output buffers outside V8's external-memory count, freed by the buffer pool itself
 */
#include "common.h"
#include "gemm.c"
#include "optim.c"
#include "softmax.c"
#include "attention.c"
#include "elementwise.c"
#include "tensor.c"
#include "memory.c"

static napi_value init(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback fn;
  } fns[] = {
      {"configure", configure},
      {"sgemm", sgemm},
      {"sgemmLowp", sgemm_lowp},
      {"adamw", adamw},
      {"softmaxLse", softmax_lse},
      {"attentionFwd", attention_fwd},
      {"attentionBwd", attention_bwd},
      {"rmsNormFwd", rmsnorm_fwd},
      {"rmsNormBwd", rmsnorm_bwd},
      {"swigluFwd", swiglu_fwd},
      {"swigluBwd", swiglu_bwd},
      {"binary", tensor_binary},
      {"unary", tensor_unary},
      {"reduce", tensor_reduce},
      {"transpose", tensor_transpose},
      {"scatterAdd", tensor_scatter_add},
      {"bufferAlloc", buffer_alloc},
      {"bufferFree", buffer_free},
      {"bufferEscape", buffer_escape},
  };
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    napi_value fn;
    napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, fns[i].name, fn);
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
