// What the shim's C++ files share: tch's tensor handle, the thread's last error, the error-catching
// wrapper of every exported function, and symbol lookup in libraries libtorch has already loaded.
#pragma once
#include <ATen/ATen.h>

#include <exception>
#include <string>

// tch passes tensors as `torch::Tensor *` (its C API's `tensor`).
typedef at::Tensor *tensor;

// The message of the last failure on this thread (flame_shim_error returns it).
extern thread_local std::string last_error;

#define FLAME_TRY(...)                                                                             \
  try {                                                                                            \
    __VA_ARGS__;                                                                                   \
    return 0;                                                                                      \
  } catch (const std::exception &e) {                                                              \
    last_error = e.what();                                                                         \
    return -1;                                                                                     \
  }

// `name` in `library`, which must already be loaded (RTLD_NOLOAD), or null with last_error set.
extern "C" void *loaded_symbol(const char *library, const char *name);

#define FLAME_SYM(var, library, name, type)                                                        \
  auto var = reinterpret_cast<type>(loaded_symbol(library, name));                                        \
  if (var == nullptr) return -1;
