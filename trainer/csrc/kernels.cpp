// What flame's ahead-of-time compiled kernels need from C++ (src/kernels/cubin.rs, src/kernels/bridge.rs):
// the CUDA driver calls that load a cubin and launch its kernel, and an autograd node whose forward and
// backward are Rust functions. Same conventions as shim.cpp: 0 on success, -1 with flame_shim_error().
#include <torch/csrc/autograd/custom_function.h>

#include <stdexcept>
#include <vector>

#include "common.h"

namespace {

typedef int (*cu_ctx_get_current)(void **);
typedef int (*cu_primary_ctx_retain)(void **, int);
typedef int (*cu_ctx_set_current)(void *);
typedef int (*cu_module_load_data)(void **, const void *);
typedef int (*cu_module_get_function)(void **, void *, const char *);
typedef int (*cu_func_set_attribute)(void *, int, int);
typedef int (*cu_device_get_attribute)(int *, int, int);
typedef int (*cu_launch_kernel)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                unsigned, void *, void **, void **);

const char *const libcuda = "libcuda.so.1";

int cu_check(int rc, const char *what) {
  if (rc == 0) return 0;
  auto describe = reinterpret_cast<int (*)(int, const char **)>(loaded_symbol(libcuda, "cuGetErrorString"));
  const char *text = nullptr;
  if (describe != nullptr) describe(rc, &text);
  last_error = std::string(what) + ": " + (text ? text : "CUDA driver error " + std::to_string(rc));
  return -1;
}

// Makes `device`'s primary context (the one torch uses) current on the calling thread if the thread
// has none: the autograd engine runs CUDA backward passes on threads of its own.
int ensure_context(int device) {
  FLAME_SYM(get_current, libcuda, "cuCtxGetCurrent", cu_ctx_get_current);
  void *context = nullptr;
  if (cu_check(get_current(&context), "cuCtxGetCurrent") != 0) return -1;
  if (context != nullptr) return 0;
  FLAME_SYM(retain, libcuda, "cuDevicePrimaryCtxRetain", cu_primary_ctx_retain);
  FLAME_SYM(set_current, libcuda, "cuCtxSetCurrent", cu_ctx_set_current);
  if (cu_check(retain(&context, device), "cuDevicePrimaryCtxRetain") != 0) return -1;
  return cu_check(set_current(context), "cuCtxSetCurrent");
}

// A Rust function called by the autograd node: forward (`backward` 0) gets the node's inputs in `a`
// and pushes its outputs to `outputs` and the tensors backward needs to `saved`; backward gets the
// saved tensors in `a` and the outputs' gradients in `b` and pushes one gradient per input (undefined
// for none) to `outputs`. `op` is the Rust side's description of the operation, passed through.
typedef int (*rust_fn)(const void *op, int backward, const double *scalars, size_t n_scalars, tensor *a,
                       size_t n_a, tensor *b, size_t n_b, void *outputs, void *saved);

void call(int64_t fn, int64_t op, int backward, const std::vector<double> &scalars,
          std::vector<at::Tensor> &a, std::vector<at::Tensor> &b, std::vector<at::Tensor> *outputs,
          std::vector<at::Tensor> *saved) {
  std::vector<tensor> pa, pb;
  for (auto &t : a) pa.push_back(&t);
  for (auto &t : b) pb.push_back(&t);
  int rc = reinterpret_cast<rust_fn>(fn)(reinterpret_cast<const void *>(op), backward, scalars.data(),
                                         scalars.size(), pa.data(), pa.size(), pb.data(), pb.size(),
                                         outputs, saved);
  if (rc != 0) throw std::runtime_error(last_error);
}

struct RustFunction : public torch::autograd::Function<RustFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                at::TensorList tensors, int64_t fn, int64_t op,
                                                std::vector<double> scalars) {
    std::vector<at::Tensor> inputs(tensors.begin(), tensors.end()), outputs, saved, none;
    call(fn, op, 0, scalars, inputs, none, &outputs, &saved);
    ctx->save_for_backward(saved);
    ctx->saved_data["fn"] = fn;
    ctx->saved_data["op"] = op;
    ctx->saved_data["scalars"] = c10::List<double>(scalars);
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> outputs;
    call(ctx->saved_data["fn"].toInt(), ctx->saved_data["op"].toInt(), 1,
         ctx->saved_data["scalars"].toDoubleVector(), saved, grads, &outputs, nullptr);
    // fn, op and scalars are inputs of forward too, without gradients.
    outputs.resize(outputs.size() + 3);
    return outputs;
  }
};

} // namespace

extern "C" {

// Loads `image` (a cubin) into `device`'s primary context and finds its kernel `entry`, allowing it
// `shared` bytes of dynamic shared memory (more than 48 KiB must be asked for).
int flame_cu_load(int device, const void *image, const char *entry, unsigned shared, void **function) {
  if (ensure_context(device) != 0) return -1;
  FLAME_SYM(load, libcuda, "cuModuleLoadData", cu_module_load_data);
  FLAME_SYM(get_function, libcuda, "cuModuleGetFunction", cu_module_get_function);
  FLAME_SYM(set_attribute, libcuda, "cuFuncSetAttribute", cu_func_set_attribute);
  void *module = nullptr;
  if (cu_check(load(&module, image), "cuModuleLoadData") != 0) return -1;
  if (cu_check(get_function(function, module, entry), "cuModuleGetFunction") != 0) return -1;
  const int max_dynamic_shared = 8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
  if (shared > 48 * 1024)
    return cu_check(set_attribute(*function, max_dynamic_shared, static_cast<int>(shared)),
                    "cuFuncSetAttribute(max dynamic shared memory)");
  return 0;
}

// Launches `function` on `grid` blocks of `threads` threads with `shared` bytes of dynamic shared
// memory, on the legacy default stream: the stream torch computes on, so the kernel runs in order
// with the tensors' producers and consumers. `params` points at each parameter's value.
int flame_cu_launch(int device, void *function, const unsigned *grid, unsigned threads, unsigned shared,
                    void **params) {
  if (ensure_context(device) != 0) return -1;
  static auto launch = reinterpret_cast<cu_launch_kernel>(loaded_symbol(libcuda, "cuLaunchKernel"));
  if (launch == nullptr) return -1;
  return cu_check(launch(function, grid[0], grid[1], grid[2], threads, 1, 1, shared, nullptr, params, nullptr),
                  "cuLaunchKernel");
}

// The number of multiprocessors of CUDA device `device` (fla's `get_multiprocessor_count`).
int flame_cu_multiprocessors(int device, int *count) {
  FLAME_SYM(get_attribute, libcuda, "cuDeviceGetAttribute", cu_device_get_attribute);
  const int multiprocessor_count = 16; // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
  return cu_check(get_attribute(count, multiprocessor_count, device), "cuDeviceGetAttribute(multiprocessors)");
}

// Applies the autograd node whose forward and backward are `fn` (see rust_fn) with `op` to `inputs`;
// its outputs go to `outputs` (a list from flame_list_new).
int flame_rust_function(int64_t fn, int64_t op, const double *scalars, size_t n_scalars, tensor *inputs,
                        size_t n_inputs, void *outputs) {
  FLAME_TRY(std::vector<at::Tensor> in; for (size_t i = 0; i < n_inputs; i++) in.push_back(*inputs[i]);
            *static_cast<std::vector<at::Tensor> *>(outputs) =
                // A TensorList, not a vector: autograd counts its elements as the node's inputs.
                RustFunction::apply(at::TensorList(in), fn, op,
                                    std::vector<double>(scalars, scalars + n_scalars)))
}

// Lists of tensors handed between Rust and C++.
void *flame_list_new() { return new std::vector<at::Tensor>(); }
void flame_list_free(void *list) { delete static_cast<std::vector<at::Tensor> *>(list); }
size_t flame_list_len(void *list) { return static_cast<std::vector<at::Tensor> *>(list)->size(); }
// A new handle to element `i` (null for an undefined tensor).
tensor flame_list_get(void *list, size_t i) {
  auto &t = (*static_cast<std::vector<at::Tensor> *>(list))[i];
  return t.defined() ? new at::Tensor(t) : nullptr;
}
// Appends `t`, or an undefined tensor for null.
int flame_list_push(void *list, tensor t) {
  FLAME_TRY(static_cast<std::vector<at::Tensor> *>(list)->push_back(t ? *t : at::Tensor()))
}
// Sets this thread's last error (a Rust callback failing).
void flame_set_error(const char *message) { last_error = message; }

} // extern "C"
