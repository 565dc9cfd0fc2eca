// Convolution forward / input-grad / weight-grad through oneDNN 2.x (Debian's libdnnl) or 3.x
// (onednn_api.h bridges the two), behind a small C interface for byol-core's `kernels::onednn`.
//
// The library is opened by onednn_api.cpp (dlopen, never linked: where oneDNN is absent the Rust
// kernels take over).
//
// Weights stay plain OIHW on the Rust side. Activations are plain NCHW, or already in oneDNN's
// channel-blocked layout (nChw8c / nChw16c: what its direct kernels pick for f32) where the
// caller keeps them so between layers; each call reorders what differs from the layout the
// kernel picked (as PyTorch does for NCHW tensors) and back. Primitives are cached per thread
// and shape; the staged copies live in per-thread buffers reused by every call.
#include "onednn_api.h"

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

using namespace byol_onednn;

namespace {

// One argument of a primitive: its plain (user) layout, the layout the primitive wants, and the
// reorder between them when they differ; the memory objects are reused, only handles change.
struct Port {
  int arg = 0;
  Md plain;
  Md wanted;
  bool direct = true;
  dnnl_primitive_t reorder = nullptr;
  dnnl_memory_t user = nullptr;
  dnnl_memory_t staged = nullptr;

  Port() = default;
  Port(const Port &) = delete;
  Port &operator=(const Port &) = delete;
  ~Port() {
    if (reorder) api->dnnl_primitive_destroy(reorder);
    if (user) api->dnnl_memory_destroy(user);
    if (staged) api->dnnl_memory_destroy(staged);
  }
};

// Handles are released when a thread's cache goes (thread exit), so short-lived threads that
// ran convolutions leave nothing behind.
struct Entry {
  dnnl_primitive_t primitive = nullptr;
  std::array<Port, 3> ports; // two inputs, then the output

  Entry() = default;
  Entry(const Entry &) = delete;
  Entry &operator=(const Entry &) = delete;
  ~Entry() {
    if (primitive) api->dnnl_primitive_destroy(primitive);
  }
};

// A thread's stream, destroyed with the thread.
struct Stream {
  dnnl_stream_t handle = nullptr;
  ~Stream() {
    if (handle) api->dnnl_stream_destroy(handle);
  }
};

void make_port(Port &p, int arg, const Md &plain, Md wanted, bool is_output) {
  p.arg = arg;
  p.plain = plain;
  p.wanted = std::move(wanted);
  p.direct = p.plain == p.wanted;
  check(api->dnnl_memory_create(&p.user, p.plain.get(), api->engine, DNNL_MEMORY_NONE),
        "memory_create");
  if (p.direct) return;
  check(api->dnnl_memory_create(&p.staged, p.wanted.get(), api->engine, DNNL_MEMORY_NONE),
        "memory_create");
  p.reorder = is_output ? make_reorder(p.wanted, p.plain) : make_reorder(p.plain, p.wanted);
}

enum Kind { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };
using Key = std::array<int64_t, 13>;

// The caller's layout of an activation: plain NCHW (block 0) or nChw8c / nChw16c.
dnnl_format_tag_t activation_tag(int64_t block) {
  switch (block) {
  case 0: return dnnl_nchw;
  case 8: return dnnl_nChw8c;
  case 16: return dnnl_nChw16c;
  default: throw Failure{"activation block (0, 8 or 16)", dnnl_invalid_arguments};
  }
}

// Winograd F(4x4, 3x3) where it measured faster here than the direct kernels (2x on 64-512
// channel maps of 4x4 and more; slower on 2x2 maps and on the 3-channel stem). Its fp32 results
// differ from direct by ~1e-6 relative (scripts/PERF.md).
bool winograd_suits(const int64_t *g, int64_t ho, int64_t wo) {
  return g[5] == 3 && g[6] == 3 && g[7] == 1 && g[1] >= 16 && g[4] >= 16 && ho >= 4 && wo >= 4;
}

// bf16: the pass's two inputs are rounded to bf16 (by the reorders from the caller's f32), its
// output stays f32 (oneDNN accumulates in f32): mixed precision as PyTorch's CPU autocast.
std::unique_ptr<Entry> build(int kind, const int64_t *g, bool winograd, bool bf16, int64_t block) {
  const int64_t n = g[0], cin = g[1], h = g[2], w = g[3], cout = g[4], kh = g[5], kw = g[6],
                stride = g[7], pad = g[8];
  const int64_t ho = (h + 2 * pad - kh) / stride + 1, wo = (w + 2 * pad - kw) / stride + 1;
  dnnl_dims_t xd = {n, cin, h, w}, wd = {cout, cin, kh, kw}, yd = {n, cout, ho, wo};
  dnnl_dims_t strides = {stride, stride}, padding = {pad, pad};
  const Md x_plain = Md::tag(4, xd, dnnl_f32, activation_tag(block)),
           w_plain = Md::tag(4, wd, dnnl_f32, dnnl_oihw),
           y_plain = Md::tag(4, yd, dnnl_f32, activation_tag(block));
  // Inputs in `in`, outputs in f32; the forward descriptor (also the backward passes' hint)
  // outputs y in f32 only when it is the pass.
  const dnnl_data_type_t in = bf16 ? dnnl_bf16 : dnnl_f32;
  const Md x_any = Md::tag(4, xd, in, dnnl_format_tag_any),
           w_any = Md::tag(4, wd, in, dnnl_format_tag_any),
           y_any = Md::tag(4, yd, in, dnnl_format_tag_any),
           x_out = Md::tag(4, xd, dnnl_f32, dnnl_format_tag_any),
           w_out = Md::tag(4, wd, dnnl_f32, dnnl_format_tag_any),
           y_out = Md::tag(4, yd, dnnl_f32, dnnl_format_tag_any);
  const Md &y_fwd = kind == kForward ? y_out : y_any;

  // The forward descriptor (also the hint the backward ones need); Winograd first where it suits,
  // direct when that is refused.
  dnnl_alg_kind_t algo = dnnl_convolution_direct;
  dnnl_primitive_desc_t fwd_pd = nullptr;
  if (winograd && !bf16 && winograd_suits(g, ho, wo)) {
    if (convolution_forward_pd(&fwd_pd, dnnl_forward_training, dnnl_convolution_winograd, x_any,
                               w_any, nullptr, y_fwd, strides, padding, padding,
                               nullptr) == dnnl_success)
      algo = dnnl_convolution_winograd;
    else
      fwd_pd = nullptr;
  }
  if (!fwd_pd)
    check(convolution_forward_pd(&fwd_pd, dnnl_forward_training, algo, x_any, w_any, nullptr,
                                 y_fwd, strides, padding, padding, nullptr),
          "convolution forward primitive_desc_create");

  auto entry = std::make_unique<Entry>();
  dnnl_primitive_desc_t pd = fwd_pd;
  auto md = [&](dnnl_query_t q) { return query_md(pd, q); };
  try {
    switch (kind) {
    case kForward:
      make_port(entry->ports[0], DNNL_ARG_SRC, x_plain, md(dnnl_query_src_md), false);
      make_port(entry->ports[1], DNNL_ARG_WEIGHTS, w_plain, md(dnnl_query_weights_md), false);
      make_port(entry->ports[2], DNNL_ARG_DST, y_plain, md(dnnl_query_dst_md), true);
      break;
    case kInputGrad:
      check(convolution_backward_data_pd(&pd, algo, x_out, w_any, y_any, strides, padding,
                                         padding, fwd_pd),
            "convolution backward data primitive_desc_create");
      make_port(entry->ports[0], DNNL_ARG_DIFF_DST, y_plain, md(dnnl_query_diff_dst_md), false);
      make_port(entry->ports[1], DNNL_ARG_WEIGHTS, w_plain, md(dnnl_query_weights_md), false);
      make_port(entry->ports[2], DNNL_ARG_DIFF_SRC, x_plain, md(dnnl_query_diff_src_md), true);
      break;
    default:
      check(convolution_backward_weights_pd(&pd, algo, x_any, w_out, y_any, strides, padding,
                                            padding, fwd_pd),
            "convolution backward weights primitive_desc_create");
      make_port(entry->ports[0], DNNL_ARG_SRC, x_plain, md(dnnl_query_src_md), false);
      make_port(entry->ports[1], DNNL_ARG_DIFF_DST, y_plain, md(dnnl_query_diff_dst_md), false);
      make_port(entry->ports[2], DNNL_ARG_DIFF_WEIGHTS, w_plain, md(dnnl_query_diff_weights_md),
                true);
      break;
    }
    check(api->dnnl_primitive_create(&entry->primitive, pd), "convolution primitive_create");
  } catch (...) {
    if (pd != fwd_pd) api->dnnl_primitive_desc_destroy(pd);
    api->dnnl_primitive_desc_destroy(fwd_pd);
    throw;
  }
  if (pd != fwd_pd) api->dnnl_primitive_desc_destroy(pd);
  api->dnnl_primitive_desc_destroy(fwd_pd);
  return entry;
}

// Per-thread blocked buffers, grown to the largest size seen; slot i serves port i of a call.
struct Scratch {
  std::array<std::vector<float>, 3> slots;
  void *get(size_t slot, size_t bytes) {
    auto &v = slots[slot];
    size_t floats = (bytes + sizeof(float) - 1) / sizeof(float) + 16;
    if (v.size() < floats) v.assign(floats, 0.0f);
    // 64-byte alignment for the vector kernels.
    auto p = reinterpret_cast<uintptr_t>(v.data());
    return reinterpret_cast<void *>((p + 63) & ~uintptr_t(63));
  }
};

} // namespace

extern "C" {

// kind: 0 forward (a = x, b = w, out = y), 1 input grad (a = dy, b = w, out = dx),
// 2 weight grad (a = x, b = dy, out = dw). g: n, cin, h, w, cout, kh, kw, stride, pad.
// winograd != 0 allows Winograd where it suits (never in bf16). bf16 != 0 rounds a and b to
// bf16 (out stays f32). block: the layout of the activations (x, y and their gradients), 0 for
// NCHW, 8 or 16 for nChw8c / nChw16c (channels a multiple of the block). threads > 0 sets
// oneDNN's OpenMP thread count. Returns 0, or 1 with a message in err.
int byol_onednn_conv(int kind, const int64_t *g, int winograd, int bf16, int block,
                     const float *a, const float *b, float *out, int threads, char *err,
                     size_t err_len) {
  thread_local std::map<Key, std::unique_ptr<Entry>> cache;
  thread_local Scratch scratch;
  thread_local Stream thread_stream;
  thread_local int threads_set = 0;
  return guarded(err, err_len, [&] {
    if (threads > 0 && threads != threads_set) {
      api->omp_set_num_threads(threads);
      threads_set = threads;
    }
    if (!thread_stream.handle)
      check(api->dnnl_stream_create(&thread_stream.handle, api->engine, dnnl_stream_default_flags),
            "stream_create");
    dnnl_stream_t stream = thread_stream.handle;
    Key key{kind, winograd != 0, bf16 != 0, block, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8]};
    auto found = cache.find(key);
    if (found == cache.end())
      found = cache.emplace(key, build(kind, g, winograd != 0, bf16 != 0, block)).first;
    Entry &e = *found->second;
    void *data[3] = {const_cast<float *>(a), const_cast<float *>(b), out};
    dnnl_exec_arg_t args[3];
    for (size_t i = 0; i < 3; ++i) {
      Port &p = e.ports[i];
      check(api->dnnl_memory_set_data_handle(p.user, data[i]), "memory_set_data_handle");
      if (!p.direct) {
        check(api->dnnl_memory_set_data_handle(
                  p.staged, scratch.get(i, p.wanted.size())),
              "memory_set_data_handle");
        if (i < 2) {
          dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, p.user}, {DNNL_ARG_TO, p.staged}};
          check(api->dnnl_primitive_execute(p.reorder, stream, 2, r), "reorder");
        }
      }
      args[i] = {p.arg, p.direct ? p.user : p.staged};
    }
    check(api->dnnl_primitive_execute(e.primitive, stream, 3, args), "convolution");
    Port &o = e.ports[2];
    if (!o.direct) {
      dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, o.staged}, {DNNL_ARG_TO, o.user}};
      check(api->dnnl_primitive_execute(o.reorder, stream, 2, r), "reorder");
    }
    check(api->dnnl_stream_wait(stream), "stream_wait");
  });
}

// The channel block of the activation layout oneDNN's f32 direct forward kernel picks on this
// CPU for a typical inner layer (64 channels, 3x3, 8x8 maps): 16 (AVX-512), 8 (AVX2), or 0 when
// it picks another layout (then activations are best kept plain). Returns 0 and writes *block,
// or 1 with a message in err.
int byol_onednn_activation_block(int *block, char *err, size_t err_len) {
  return guarded(err, err_len, [&] {
    dnnl_dims_t xd = {32, 64, 8, 8}, wd = {64, 64, 3, 3}, strides = {1, 1}, padding = {1, 1};
    const Md x = Md::tag(4, xd, dnnl_f32, dnnl_format_tag_any),
             w = Md::tag(4, wd, dnnl_f32, dnnl_format_tag_any);
    dnnl_primitive_desc_t pd = nullptr;
    check(convolution_forward_pd(&pd, dnnl_forward_training, dnnl_convolution_direct, x, w,
                                 nullptr, x, strides, padding, padding, nullptr),
          "convolution forward primitive_desc_create");
    Md src;
    try {
      src = query_md(pd, dnnl_query_src_md);
    } catch (...) {
      api->dnnl_primitive_desc_destroy(pd);
      throw;
    }
    api->dnnl_primitive_desc_destroy(pd);
    *block = 0;
    for (int b : {16, 8})
      if (src == Md::tag(4, xd, dnnl_f32, activation_tag(b))) *block = b;
  });
}

} // extern "C"
