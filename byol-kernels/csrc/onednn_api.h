// The oneDNN entry points the shims call, resolved with dlsym from libdnnl.so.2 or .so.3 (opened
// on first use, never linked: a binary built with the shims runs where oneDNN is absent), the
// error handling they share, and the one place that bridges oneDNN 2.x's C API and 3.x's (`Md`
// and the primitive-descriptor helpers below). Only dnnl.h's types and constants are used at
// build time; which API is compiled follows the headers' DNNL_VERSION_MAJOR.
#pragma once

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_version.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <utility>

#if DNNL_VERSION_MAJOR >= 4
#error "the oneDNN shim knows the C APIs of oneDNN 2.x and 3.x only"
#endif
#define BYOL_DNNL_V3 (DNNL_VERSION_MAJOR >= 3)

// The library the headers belong to (its soname changed with the API).
#if BYOL_DNNL_V3
#define BYOL_DNNL_LIBRARY_NAME "libdnnl.so.3"
#else
#define BYOL_DNNL_LIBRARY_NAME "libdnnl.so.2"
#endif

namespace byol_onednn {

// Every oneDNN function a shim calls, for the declarations and the dlsym lookups: those both
// APIs have, then those of one API (3.x made memory descriptors opaque handles and creates
// primitive descriptors in one call instead of a `*_desc_init` and `dnnl_primitive_desc_create`).
#define BYOL_DNNL_COMMON_FUNCTIONS(X) \
  X(dnnl_version) \
  X(dnnl_engine_create) \
  X(dnnl_stream_create) \
  X(dnnl_stream_wait) \
  X(dnnl_memory_desc_equal) \
  X(dnnl_memory_desc_get_size) \
  X(dnnl_memory_create) \
  X(dnnl_memory_set_data_handle) \
  X(dnnl_primitive_attr_create) \
  X(dnnl_primitive_attr_destroy) \
  X(dnnl_primitive_attr_set_post_ops) \
  X(dnnl_post_ops_create) \
  X(dnnl_post_ops_destroy) \
  X(dnnl_post_ops_append_sum) \
  X(dnnl_post_ops_append_eltwise) \
  X(dnnl_primitive_desc_query_md) \
  X(dnnl_primitive_desc_destroy) \
  X(dnnl_reorder_primitive_desc_create) \
  X(dnnl_primitive_create) \
  X(dnnl_primitive_execute) \
  X(dnnl_primitive_destroy) \
  X(dnnl_memory_destroy) \
  X(dnnl_stream_destroy)
#if BYOL_DNNL_V3
#define BYOL_DNNL_VERSION_FUNCTIONS(X) \
  X(dnnl_memory_desc_create_with_tag) \
  X(dnnl_memory_desc_clone) \
  X(dnnl_memory_desc_destroy) \
  X(dnnl_memory_desc_query) \
  X(dnnl_convolution_forward_primitive_desc_create) \
  X(dnnl_convolution_backward_data_primitive_desc_create) \
  X(dnnl_convolution_backward_weights_primitive_desc_create) \
  X(dnnl_pooling_forward_primitive_desc_create)
#else
#define BYOL_DNNL_VERSION_FUNCTIONS(X) \
  X(dnnl_memory_desc_init_by_tag) \
  X(dnnl_convolution_forward_desc_init) \
  X(dnnl_convolution_backward_data_desc_init) \
  X(dnnl_convolution_backward_weights_desc_init) \
  X(dnnl_pooling_forward_desc_init) \
  X(dnnl_primitive_desc_create)
#endif
#define BYOL_DNNL_FUNCTIONS(X) BYOL_DNNL_COMMON_FUNCTIONS(X) BYOL_DNNL_VERSION_FUNCTIONS(X)

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

// A memory descriptor as the C functions take it.
#if BYOL_DNNL_V3
using md_ref = const_dnnl_memory_desc_t;
#else
using md_ref = const dnnl_memory_desc_t *;
#endif

// An owned memory descriptor. 2.x's is a plain struct, copied by value; 3.x's is an opaque handle
// the library allocates, so copies clone it and the destructor frees it. Empty until assigned.
class Md {
public:
  Md() = default;

  // A descriptor of `dims` in a format tag (`dnnl_format_tag_any`: the primitive's choice).
  static Md tag(int ndims, const dnnl_dims_t dims, dnnl_data_type_t dt, dnnl_format_tag_t tag) {
    Md m;
#if BYOL_DNNL_V3
    check(api->dnnl_memory_desc_create_with_tag(&m.d_, ndims, dims, dt, tag),
          "memory_desc_create_with_tag");
#else
    check(api->dnnl_memory_desc_init_by_tag(&m.d_, ndims, dims, dt, tag),
          "memory_desc_init_by_tag");
#endif
    return m;
  }
  static Md tag4(int64_t a, int64_t b, int64_t c, int64_t d, dnnl_data_type_t dt,
                 dnnl_format_tag_t t) {
    dnnl_dims_t dims = {a, b, c, d};
    return tag(4, dims, dt, t);
  }

  // A copy of a descriptor the library owns (a primitive descriptor's query answer).
  static Md copy(md_ref from) {
    if (!from) throw Failure{"primitive_desc_query_md", dnnl_invalid_arguments};
    Md m;
#if BYOL_DNNL_V3
    check(api->dnnl_memory_desc_clone(&m.d_, from), "memory_desc_clone");
#else
    m.d_ = *from;
#endif
    return m;
  }

#if BYOL_DNNL_V3
  Md(const Md &o) {
    if (o.d_) check(api->dnnl_memory_desc_clone(&d_, o.d_), "memory_desc_clone");
  }
  Md(Md &&o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Md &operator=(Md o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  ~Md() {
    if (d_) api->dnnl_memory_desc_destroy(d_);
  }
  md_ref get() const { return d_; }
#else
  md_ref get() const { return &d_; }
#endif

  bool operator==(const Md &o) const { return api->dnnl_memory_desc_equal(get(), o.get()) != 0; }
  bool operator!=(const Md &o) const { return !(*this == o); }
  size_t size() const { return api->dnnl_memory_desc_get_size(get()); }

  int64_t dim(int i) const {
#if BYOL_DNNL_V3
    dnnl_dims_t *dims = nullptr;
    check(api->dnnl_memory_desc_query(d_, dnnl_query_dims, &dims), "memory_desc_query dims");
    return (*dims)[i];
#else
    return d_.dims[i];
#endif
  }

  dnnl_data_type_t data_type() const {
#if BYOL_DNNL_V3
    dnnl_data_type_t dt = dnnl_data_type_undef;
    check(api->dnnl_memory_desc_query(d_, dnnl_query_data_type, &dt), "memory_desc_query type");
    return dt;
#else
    return d_.data_type;
#endif
  }

  // The same 4-d tensor in data type `dt`. 2.x: the same layout, whatever it is. 3.x has no call
  // that changes a descriptor's type, so the layout is found among the tags oneDNN's activations
  // take (plain, channels-last, 16/8/4-channel blocks), else plain NCHW (still correct: callers
  // reorder into whatever this returns).
  Md with_data_type(dnnl_data_type_t dt) const {
#if BYOL_DNNL_V3
    const int64_t n = dim(0), c = dim(1), h = dim(2), w = dim(3);
    for (dnnl_format_tag_t t : {dnnl_nChw16c, dnnl_nhwc, dnnl_nchw, dnnl_nChw8c, dnnl_nChw4c})
      if (tag4(n, c, h, w, data_type(), t) == *this) return tag4(n, c, h, w, dt, t);
    return tag4(n, c, h, w, dt, dnnl_nchw);
#else
    Md m = *this;
    m.d_.data_type = dt;
    return m;
#endif
  }

private:
  dnnl_memory_desc_t d_{};
};

// Primitive descriptors, created in one call as 3.x does (2.x: the operation descriptor, then
// the primitive descriptor). Return the library's status. No dilation; `attr` and `hint` (the
// forward primitive descriptor a backward one follows) may be null.
inline dnnl_status_t convolution_forward_pd(dnnl_primitive_desc_t *pd, dnnl_prop_kind_t prop,
                                            dnnl_alg_kind_t alg, const Md &src, const Md &weights,
                                            const Md *bias, const Md &dst, const dnnl_dims_t strides,
                                            const dnnl_dims_t pad_l, const dnnl_dims_t pad_r,
                                            const_dnnl_primitive_attr_t attr) {
#if BYOL_DNNL_V3
  const dnnl_dims_t no_dilation = {0, 0};
  return api->dnnl_convolution_forward_primitive_desc_create(
      pd, api->engine, prop, alg, src.get(), weights.get(), bias ? bias->get() : nullptr,
      dst.get(), strides, no_dilation, pad_l, pad_r, attr);
#else
  dnnl_convolution_desc_t desc;
  dnnl_status_t s = api->dnnl_convolution_forward_desc_init(
      &desc, prop, alg, src.get(), weights.get(), bias ? bias->get() : nullptr, dst.get(), strides,
      pad_l, pad_r);
  return s != dnnl_success ? s : api->dnnl_primitive_desc_create(pd, &desc, attr, api->engine, nullptr);
#endif
}

inline dnnl_status_t convolution_backward_data_pd(dnnl_primitive_desc_t *pd, dnnl_alg_kind_t alg,
                                                  const Md &diff_src, const Md &weights,
                                                  const Md &diff_dst, const dnnl_dims_t strides,
                                                  const dnnl_dims_t pad_l, const dnnl_dims_t pad_r,
                                                  const_dnnl_primitive_desc_t hint) {
#if BYOL_DNNL_V3
  const dnnl_dims_t no_dilation = {0, 0};
  return api->dnnl_convolution_backward_data_primitive_desc_create(
      pd, api->engine, alg, diff_src.get(), weights.get(), diff_dst.get(), strides, no_dilation,
      pad_l, pad_r, hint, nullptr);
#else
  dnnl_convolution_desc_t desc;
  dnnl_status_t s = api->dnnl_convolution_backward_data_desc_init(
      &desc, alg, diff_src.get(), weights.get(), diff_dst.get(), strides, pad_l, pad_r);
  return s != dnnl_success ? s : api->dnnl_primitive_desc_create(pd, &desc, nullptr, api->engine, hint);
#endif
}

inline dnnl_status_t convolution_backward_weights_pd(dnnl_primitive_desc_t *pd,
                                                     dnnl_alg_kind_t alg, const Md &src,
                                                     const Md &diff_weights, const Md &diff_dst,
                                                     const dnnl_dims_t strides,
                                                     const dnnl_dims_t pad_l,
                                                     const dnnl_dims_t pad_r,
                                                     const_dnnl_primitive_desc_t hint) {
#if BYOL_DNNL_V3
  const dnnl_dims_t no_dilation = {0, 0};
  return api->dnnl_convolution_backward_weights_primitive_desc_create(
      pd, api->engine, alg, src.get(), diff_weights.get(), nullptr, diff_dst.get(), strides,
      no_dilation, pad_l, pad_r, hint, nullptr);
#else
  dnnl_convolution_desc_t desc;
  dnnl_status_t s = api->dnnl_convolution_backward_weights_desc_init(
      &desc, alg, src.get(), diff_weights.get(), nullptr, diff_dst.get(), strides, pad_l, pad_r);
  return s != dnnl_success ? s : api->dnnl_primitive_desc_create(pd, &desc, nullptr, api->engine, hint);
#endif
}

inline dnnl_status_t pooling_forward_pd(dnnl_primitive_desc_t *pd, dnnl_prop_kind_t prop,
                                        dnnl_alg_kind_t alg, const Md &src, const Md &dst,
                                        const dnnl_dims_t strides, const dnnl_dims_t kernel,
                                        const dnnl_dims_t pad_l, const dnnl_dims_t pad_r) {
#if BYOL_DNNL_V3
  const dnnl_dims_t no_dilation = {0, 0};
  return api->dnnl_pooling_forward_primitive_desc_create(pd, api->engine, prop, alg, src.get(),
                                                         dst.get(), strides, kernel, no_dilation,
                                                         pad_l, pad_r, nullptr);
#else
  dnnl_pooling_desc_t desc;
  dnnl_status_t s = api->dnnl_pooling_forward_desc_init(&desc, prop, alg, src.get(), dst.get(),
                                                        strides, kernel, pad_l, pad_r);
  return s != dnnl_success ? s : api->dnnl_primitive_desc_create(pd, &desc, nullptr, api->engine, nullptr);
#endif
}

// Post-ops: a sum into the destination's own data type, an element-wise op unscaled (3.x dropped
// the scale argument of the element-wise post-op and added the sum's zero point and type).
inline dnnl_status_t append_sum(dnnl_post_ops_t po, float scale) {
#if BYOL_DNNL_V3
  return api->dnnl_post_ops_append_sum(po, scale, 0, dnnl_data_type_undef);
#else
  return api->dnnl_post_ops_append_sum(po, scale);
#endif
}

inline dnnl_status_t append_eltwise(dnnl_post_ops_t po, dnnl_alg_kind_t alg, float alpha,
                                    float beta) {
#if BYOL_DNNL_V3
  return api->dnnl_post_ops_append_eltwise(po, alg, alpha, beta);
#else
  return api->dnnl_post_ops_append_eltwise(po, 1.0f, alg, alpha, beta);
#endif
}

// A primitive descriptor's memory descriptor, copied (the answer lives as long as `pd`).
inline Md query_md(const_dnnl_primitive_desc_t pd, dnnl_query_t what, int index = 0) {
  return Md::copy(api->dnnl_primitive_desc_query_md(pd, what, index));
}

// A reorder primitive between two layouts of the same tensor.
inline dnnl_primitive_t make_reorder(const Md &from, const Md &to) {
  dnnl_primitive_desc_t pd = nullptr;
  check(api->dnnl_reorder_primitive_desc_create(&pd, from.get(), api->engine, to.get(),
                                                api->engine, nullptr),
        "reorder_primitive_desc_create");
  dnnl_primitive_t p = nullptr;
  dnnl_status_t s = api->dnnl_primitive_create(&p, pd);
  api->dnnl_primitive_desc_destroy(pd);
  check(s, "reorder primitive_create");
  return p;
}

} // namespace byol_onednn
