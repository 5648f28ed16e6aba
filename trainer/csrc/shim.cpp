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
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <dlfcn.h>

#include <cstring>
#include <vector>

#include "common.h"

thread_local std::string last_error;

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

// torch.use_deterministic_algorithms(on) as torchtitan's --training.deterministic sets it, with cuDNN's
// deterministic algorithms and no cuDNN benchmarking (cuBLAS needs CUBLAS_WORKSPACE_CONFIG before it
// starts: the caller's).
int flame_set_deterministic(int on) {
  FLAME_TRY(at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
            at::globalContext().setDeterministicCuDNN(on != 0);
            at::globalContext().setBenchmarkCuDNN(false))
}

// 1 when libtorch runs deterministic algorithms only, else 0.
int flame_deterministic() { return at::globalContext().deterministicAlgorithms() ? 1 : 0; }

// libtorch's (Kineto) profiler, as torch.profiler runs it: CPU operators with their input shapes, and
// CUDA kernels when `cuda`; stopped, its events go to `path` as a Chrome trace.
int flame_profiler_start(int cuda) {
  FLAME_TRY(using namespace torch::profiler::impl;
            std::set<ActivityType> activities{ActivityType::CPU};
            if (cuda) activities.insert(ActivityType::CUDA);
            ProfilerConfig config(ProfilerState::KINETO, /*report_input_shapes=*/true);
            torch::autograd::profiler::prepareProfiler(config, activities);
            torch::autograd::profiler::enableProfiler(config, activities))
}

int flame_profiler_stop(const char *path) {
  FLAME_TRY(torch::autograd::profiler::disableProfiler()->save(path))
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

// A page-locked copy of a CPU tensor (Tensor.pin_memory() without the deprecated device argument that
// tch passes).
tensor flame_pin_memory(tensor t) {
  try {
    return new at::Tensor(t->pin_memory());
  } catch (const std::exception &e) {
    last_error = e.what();
    return nullptr;
  }
}

// Backpropagates each `grads[i]` from the non-scalar `outs[i]`, in one pass over their graphs
// (torch::autograd::backward): how a chunked loss and the blocks hand their gradients on.
int flame_backward(tensor *outs, tensor *grads, size_t n) {
  FLAME_TRY(std::vector<at::Tensor> o; std::vector<at::Tensor> g; for (size_t i = 0; i < n; i++) {
    o.push_back(*outs[i]);
    g.push_back(*grads[i]);
  } torch::autograd::backward(o, g))
}

// Device memory in use and in all on `device` (cudaMemGetInfo, what nvidia-smi shows), from the CUDA
// runtime that libtorch has loaded; -1 when none is (a CPU run). Found with dlsym, so that the shim needs
// no CUDA headers and links no CUDA library.
int flame_cuda_memory(int device, size_t *used, size_t *total) {
  void *runtime = dlopen("libcudart.so.13", RTLD_LAZY | RTLD_NOLOAD);
  if (runtime == nullptr) {
    last_error = "the CUDA runtime is not loaded";
    return -1;
  }
  auto get_device = reinterpret_cast<int (*)(int *)>(dlsym(runtime, "cudaGetDevice"));
  auto set_device = reinterpret_cast<int (*)(int)>(dlsym(runtime, "cudaSetDevice"));
  auto mem_info = reinterpret_cast<int (*)(size_t *, size_t *)>(dlsym(runtime, "cudaMemGetInfo"));
  dlclose(runtime);
  if (get_device == nullptr || set_device == nullptr || mem_info == nullptr) {
    last_error = "the CUDA runtime lacks cudaMemGetInfo";
    return -1;
  }
  int previous = 0;
  if (get_device(&previous) != 0 || (previous != device && set_device(device) != 0)) {
    last_error = "cudaSetDevice failed";
    return -1;
  }
  size_t free_bytes = 0;
  int rc = mem_info(&free_bytes, total);
  if (previous != device) set_device(previous);
  if (rc != 0) {
    last_error = "cudaMemGetInfo failed";
    return -1;
  }
  *used = *total - free_bytes;
  return 0;
}

// The name of CUDA device `device` (cuDeviceGetName of the driver libtorch has loaded) into `name`.
int flame_cuda_device_name(int device, char *name, int len) {
  void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  if (driver == nullptr) {
    last_error = "the CUDA driver is not loaded";
    return -1;
  }
  auto get = reinterpret_cast<int (*)(int *, int)>(dlsym(driver, "cuDeviceGet"));
  auto get_name = reinterpret_cast<int (*)(char *, int, int)>(dlsym(driver, "cuDeviceGetName"));
  dlclose(driver);
  int handle = 0;
  if (get == nullptr || get_name == nullptr || get(&handle, device) != 0 ||
      get_name(name, len, handle) != 0) {
    last_error = "cuDeviceGetName failed";
    return -1;
  }
  return 0;
}

// ---- NCCL and CUDA streams, for data parallelism (train.rs, dist.rs) ----
// Resolved with dlsym in the copies libtorch_cuda has loaded (libnccl.so.2 is its NEEDED dependency), so
// the collectives run in exactly torch's NCCL and nothing CUDA is needed to build or to start on a CPU.

struct nccl_unique_id {
  char internal[128];
};

void *loaded_symbol(const char *library, const char *name) {
  void *handle = dlopen(library, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) {
    last_error = std::string(library) + " is not loaded (libtorch without CUDA?)";
    return nullptr;
  }
  void *found = dlsym(handle, name);
  dlclose(handle);
  if (found == nullptr) last_error = std::string(library) + " lacks " + name;
  return found;
}

static int nccl_check(int rc, const char *what) {
  if (rc == 0) return 0;
  auto describe = reinterpret_cast<const char *(*)(int)>(loaded_symbol("libnccl.so.2", "ncclGetErrorString"));
  last_error = std::string(what) + ": " + (describe ? describe(rc) : "NCCL error " + std::to_string(rc));
  return -1;
}

static int cuda_check(int rc, const char *what) {
  if (rc == 0) return 0;
  auto describe = reinterpret_cast<const char *(*)(int)>(loaded_symbol("libcudart.so.13", "cudaGetErrorString"));
  last_error = std::string(what) + ": " + (describe ? describe(rc) : "CUDA error " + std::to_string(rc));
  return -1;
}

// Makes `device` the calling thread's current CUDA device (torch.cuda.set_device).
int flame_cuda_set_device(int device) {
  FLAME_SYM(set_device, "libcudart.so.13", "cudaSetDevice", int (*)(int));
  return cuda_check(set_device(device), "cudaSetDevice");
}

// 1 when the legacy default stream (torch's) still has queued work, 0 when it has run it all.
int flame_cuda_default_stream_busy(int *busy) {
  FLAME_SYM(query, "libcudart.so.13", "cudaStreamQuery", int (*)(void *));
  int rc = query(nullptr);
  *busy = rc == 600; // cudaErrorNotReady
  return rc == 600 ? 0 : cuda_check(rc, "cudaStreamQuery");
}

// A new NCCL unique id (rank 0 makes it; the rendezvous hands it to the others): 128 bytes into `out`.
int flame_nccl_unique_id(char *out) {
  FLAME_SYM(get_id, "libnccl.so.2", "ncclGetUniqueId", int (*)(nccl_unique_id *));
  nccl_unique_id id;
  if (nccl_check(get_id(&id), "ncclGetUniqueId") != 0) return -1;
  std::memcpy(out, id.internal, sizeof id.internal);
  return 0;
}

// Joins the communicator of `world` ranks named by `id` as `rank`, on the current device.
int flame_nccl_init(const char *id_bytes, int world, int rank, void **comm) {
  FLAME_SYM(init, "libnccl.so.2", "ncclCommInitRank", int (*)(void **, int, nccl_unique_id, int));
  nccl_unique_id id;
  std::memcpy(id.internal, id_bytes, sizeof id.internal);
  return nccl_check(init(comm, world, id, rank), "ncclCommInitRank");
}

int flame_nccl_destroy(void *comm) {
  FLAME_SYM(destroy, "libnccl.so.2", "ncclCommDestroy", int (*)(void *));
  return nccl_check(destroy(comm), "ncclCommDestroy");
}

// In-place all-reduce of a contiguous float32 or bfloat16 CUDA tensor, averaged over the ranks
// (ncclAvg), enqueued on `stream` (null: the default stream, ordered with torch's work).
int flame_nccl_all_reduce_avg(void *comm, tensor t, void *stream) {
  FLAME_SYM(all_reduce, "libnccl.so.2", "ncclAllReduce",
            int (*)(const void *, void *, size_t, int, int, void *, void *));
  int dtype;
  switch (t->scalar_type()) {
  case at::kFloat: dtype = 7; break;     // ncclFloat32
  case at::kBFloat16: dtype = 9; break;  // ncclBfloat16
  default: last_error = "all-reduce: only float32 and bfloat16 tensors"; return -1;
  }
  if (!t->is_contiguous()) {
    last_error = "all-reduce: the tensor is not contiguous";
    return -1;
  }
  return nccl_check(all_reduce(t->data_ptr(), t->data_ptr(), t->numel(), dtype, /*ncclAvg*/ 4, comm, stream),
                    "ncclAllReduce");
}

// A stream that does not synchronise with the default stream (cudaStreamNonBlocking), at the highest
// priority, so that the collectives' blocks are scheduled ahead of the backward pass's queued ones.
int flame_cuda_stream_create(void **stream) {
  FLAME_SYM(range, "libcudart.so.13", "cudaDeviceGetStreamPriorityRange", int (*)(int *, int *));
  FLAME_SYM(create, "libcudart.so.13", "cudaStreamCreateWithPriority", int (*)(void **, unsigned, int));
  int least = 0, greatest = 0;
  if (cuda_check(range(&least, &greatest), "cudaDeviceGetStreamPriorityRange") != 0) return -1;
  return cuda_check(create(stream, 1, greatest), "cudaStreamCreateWithPriority");
}

// Makes `grad` the gradient of `param` (param.grad = grad): backward then accumulates into it in place.
int flame_set_grad(tensor param, tensor grad) { FLAME_TRY(param->mutable_grad() = *grad) }

// An event without timing (cudaEventDisableTiming).
int flame_cuda_event_create(void **event) {
  FLAME_SYM(create, "libcudart.so.13", "cudaEventCreateWithFlags", int (*)(void **, unsigned));
  return cuda_check(create(event, 2), "cudaEventCreateWithFlags");
}

// Makes `waiter` wait for everything enqueued on `stream` so far (an event recorded there).
int flame_cuda_stream_wait(void *waiter, void *stream, void *event) {
  FLAME_SYM(record, "libcudart.so.13", "cudaEventRecord", int (*)(void *, void *));
  FLAME_SYM(wait, "libcudart.so.13", "cudaStreamWaitEvent", int (*)(void *, void *, unsigned));
  if (cuda_check(record(event, stream), "cudaEventRecord") != 0) return -1;
  return cuda_check(wait(waiter, event, 0), "cudaStreamWaitEvent");
}

} // extern "C"
