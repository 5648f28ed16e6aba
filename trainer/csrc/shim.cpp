// What tch 0.24 does not bind (../shared/notes/libtorch.md §5), as C functions over libtorch's C++ API.
// Every function returns 0 on success and -1 on an exception, whose message flame_shim_error() gives.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>

#include <exception>
#include <string>
#include <vector>

// tch passes tensors as `torch::Tensor *` (its C API's `tensor`).
typedef at::Tensor *tensor;

static thread_local std::string last_error;

#define FLAME_TRY(...)                                                                             \
  try {                                                                                            \
    __VA_ARGS__;                                                                                   \
    return 0;                                                                                      \
  } catch (const std::exception &e) {                                                              \
    last_error = e.what();                                                                         \
    return -1;                                                                                     \
  }

extern "C" {

const char *flame_shim_error() { return last_error.c_str(); }

// tch::autocast toggles CUDA autocast on and off but leaves its dtype at float16: make it bfloat16.
int flame_autocast_cuda_bf16() {
  FLAME_TRY(at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16))
}

// TF32 for the float32 matmuls and convolutions that autocast leaves in float32.
int flame_allow_tf32(int on) {
  FLAME_TRY(at::globalContext().setAllowTF32CuBLAS(on != 0); at::globalContext().setAllowTF32CuDNN(on != 0))
}

// CUDA autocast on (nested) and off, with the current API (tch's calls the deprecated one, which warns).
int flame_autocast_enter() {
  FLAME_TRY(at::autocast::set_autocast_enabled(at::kCUDA, true); at::autocast::increment_nesting())
}

int flame_autocast_exit() {
  FLAME_TRY(if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
            at::autocast::set_autocast_enabled(at::kCUDA, false))
}

// One AdamW step over all parameters at once (torch.optim.AdamW(fused=True)): `steps` are float32
// scalars on the parameters' device, incremented first, as PyTorch does.
int flame_fused_adamw(tensor *params, tensor *grads, tensor *exp_avgs, tensor *exp_avg_sqs,
                      tensor *steps, size_t n, double lr, double beta1, double beta2,
                      double weight_decay, double eps) {
  FLAME_TRY(at::NoGradGuard no_grad; std::vector<at::Tensor> p, g, m, v, s;
            for (size_t i = 0; i < n; ++i) {
              p.push_back(*params[i]);
              g.push_back(*grads[i]);
              m.push_back(*exp_avgs[i]);
              v.push_back(*exp_avg_sqs[i]);
              steps[i]->add_(1);
              s.push_back(*steps[i]);
            } at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, s, lr, beta1, beta2,
                                weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false))
}

// Causal flash attention over packed sequences (varlen): q [total, heads, d], k and v [total, kv_heads, d]
// in bf16 or fp16, cu_seqlens int32 [sequences + 1] on the device. Autograd-aware. A new tensor
// [total, heads, d], or null on error.
tensor flame_flash_varlen(tensor q, tensor k, tensor v, tensor cu_seqlens, int64_t max_seqlen) {
  try {
    auto out = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_seqlen, max_seqlen,
                                            /*dropout_p=*/0.0, /*is_causal=*/true,
                                            /*return_debug_mask=*/false, /*scale=*/std::nullopt);
    return new at::Tensor(std::get<0>(out));
  } catch (const std::exception &e) {
    last_error = e.what();
    return nullptr;
  }
}

static std::vector<at::Tensor> grads_of(tensor *params, size_t n) {
  std::vector<at::Tensor> grads;
  for (size_t i = 0; i < n; ++i) {
    if (params[i]->grad().defined()) grads.push_back(params[i]->grad());
  }
  return grads;
}

// The global L2 norm of the parameters' gradients, on their device (multi-tensor kernels, no host
// synchronisation), as a new tensor; null on error.
tensor flame_grad_norm(tensor *params, size_t n) {
  try {
    at::NoGradGuard no_grad;
    auto norms = at::_foreach_norm(grads_of(params, n), 2);
    return new at::Tensor(at::stack(norms).norm());
  } catch (const std::exception &e) {
    last_error = e.what();
    return nullptr;
  }
}

// Scales the gradients by min(1, max_norm / (norm + 1e-6)) in place (clip_grad_norm_).
int flame_clip_grads(tensor *params, size_t n, tensor norm, double max_norm) {
  FLAME_TRY(at::NoGradGuard no_grad; auto coef = (max_norm / (*norm + 1e-6)).clamp_max(1.0);
            auto grads = grads_of(params, n); at::_foreach_mul_(grads, coef))
}

// Drops the gradients (zero_grad(set_to_none=True)): backward allocates fresh ones.
int flame_zero_grads(tensor *params, size_t n) {
  FLAME_TRY(for (size_t i = 0; i < n; ++i) params[i]->mutable_grad().reset())
}

} // extern "C"
