// The oneDNN entry points the shims call, resolved with dlsym from libdnnl.so.2 (opened on first
// use, never linked: a binary built with the shims runs where oneDNN is absent), and the error
// handling they share. Only dnnl.h's types and constants are used at build time.
#pragma once

#include <oneapi/dnnl/dnnl.h>

#include <cstddef>
#include <cstdio>
#include <exception>

namespace byol_onednn {

// Every oneDNN function a shim calls, for the declarations and the dlsym lookups.
#define BYOL_DNNL_FUNCTIONS(X) \
  X(dnnl_engine_create) \
  X(dnnl_stream_create) \
  X(dnnl_stream_wait) \
  X(dnnl_memory_desc_init_by_tag) \
  X(dnnl_memory_desc_equal) \
  X(dnnl_memory_desc_get_size) \
  X(dnnl_memory_create) \
  X(dnnl_memory_set_data_handle) \
  X(dnnl_convolution_forward_desc_init) \
  X(dnnl_convolution_backward_data_desc_init) \
  X(dnnl_convolution_backward_weights_desc_init) \
  X(dnnl_pooling_forward_desc_init) \
  X(dnnl_primitive_attr_create) \
  X(dnnl_primitive_attr_destroy) \
  X(dnnl_primitive_attr_set_post_ops) \
  X(dnnl_post_ops_create) \
  X(dnnl_post_ops_destroy) \
  X(dnnl_post_ops_append_sum) \
  X(dnnl_post_ops_append_eltwise) \
  X(dnnl_primitive_desc_create) \
  X(dnnl_primitive_desc_query) \
  X(dnnl_primitive_desc_query_md) \
  X(dnnl_primitive_desc_destroy) \
  X(dnnl_reorder_primitive_desc_create) \
  X(dnnl_primitive_create) \
  X(dnnl_primitive_execute) \
  X(dnnl_primitive_destroy) \
  X(dnnl_memory_destroy) \
  X(dnnl_stream_destroy)

// The oneDNN (and OpenMP) entry points, resolved from the loaded library.
struct Api {
#define BYOL_DNNL_DECLARE(name) decltype(&::name) name = nullptr;
  BYOL_DNNL_FUNCTIONS(BYOL_DNNL_DECLARE)
#undef BYOL_DNNL_DECLARE
  void (*omp_set_num_threads)(int) = nullptr;
  dnnl_engine_t engine = nullptr;
};

// Set once by byol_onednn_load; null before.
extern Api *api;

// A failed oneDNN call: which, and its status.
struct Failure {
  const char *what;
  dnnl_status_t status;
};

inline void check(dnnl_status_t status, const char *what) {
  if (status != dnnl_success) throw Failure{what, status};
}

inline const char *status_name(dnnl_status_t s) {
  switch (s) {
  case dnnl_out_of_memory: return "out of memory";
  case dnnl_invalid_arguments: return "invalid arguments";
  case dnnl_unimplemented: return "unimplemented";
  case dnnl_runtime_error: return "runtime error";
  default: return "error";
  }
}

inline void copy_message(char *err, size_t err_len, const char *fmt, const char *a, const char *b) {
  if (err && err_len > 0) std::snprintf(err, err_len, fmt, a, b);
}

// Runs `body`, turning what it throws into a message in err; returns 0, or 1 on failure.
template <typename F> int guarded(char *err, size_t err_len, F &&body) {
  if (!api) {
    copy_message(err, err_len, "%s%s", "oneDNN is not loaded", "");
    return 1;
  }
  try {
    body();
    return 0;
  } catch (const Failure &f) {
    copy_message(err, err_len, "%s: %s", f.what, status_name(f.status));
  } catch (const std::exception &ex) {
    copy_message(err, err_len, "%s%s", ex.what(), "");
  } catch (...) {
    copy_message(err, err_len, "%s%s", "unknown failure", "");
  }
  return 1;
}

// A reorder primitive between two layouts of the same tensor.
inline dnnl_primitive_t make_reorder(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to) {
  dnnl_primitive_desc_t pd = nullptr;
  check(api->dnnl_reorder_primitive_desc_create(&pd, from, api->engine, to, api->engine, nullptr),
        "reorder_primitive_desc_create");
  dnnl_primitive_t p = nullptr;
  dnnl_status_t s = api->dnnl_primitive_create(&p, pd);
  api->dnnl_primitive_desc_destroy(pd);
  check(s, "reorder primitive_create");
  return p;
}

} // namespace byol_onednn
