// A frozen network (inference only: BatchNorm already folded into each convolution's weights and
// bias by the caller) run as one chain of oneDNN primitives whose activations stay in the blocked
// layouts oneDNN's kernels pick, from the first convolution to the pooled features. The residual
// add and the ReLUs are post-ops of the convolutions (a block's last convolution accumulates
// into the buffer that holds its shortcut), so one forward is: a reorder of the input, the
// convolutions and pools, a reorder of the features — instead of two reorders per convolution
// and separate BatchNorm, ReLU and add passes.
//
// The network is a list of ops over numbered registers (activation buffers); a plan (primitives,
// reorders, buffers, weights in the layouts the primitives want) is built for each input shape on
// first use and kept. Activations and weights are f32 or bf16 (bias, pooled features and the
// caller's input f32).
#include "onednn_api.h"

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

using namespace byol_onednn;

namespace {

enum OpKind : int64_t { kConv = 0, kMaxPool3x3s2 = 1, kGlobalAvgPool = 2 };

// The fields of one op record (int64 each), as byol-kernels' `frozen.rs` writes them.
enum Field {
  fKind, fSrc, fDst, fCin, fCout, fKernel, fStride, fPad, fTfSame, fRelu, fSum, kRecordLen
};

struct Op {
  int64_t rec[kRecordLen];
  std::vector<float> weight; // OIHW, f32 (convolutions)
  std::vector<float> bias;   // cout, f32 (convolutions)
};

// A register's current content: its layout, and its buffer (by index; -1 input, -2 output).
struct Reg {
  Md md;
  bool written = false;
};

// One primitive execution: (argument, buffer slot) pairs, turned into memories once buffers exist.
struct Arg {
  int arg;
  int slot; // a register's buffer (>= 0), the caller's input (-1) or output (-2)
  Md md;
};
struct Step {
  dnnl_primitive_t primitive;
  std::vector<Arg> args;
  std::vector<std::pair<int, dnnl_memory_t>> constants; // weights and bias
};

struct AlignedFree {
  void operator()(void *p) const { std::free(p); }
};
using Buffer = std::unique_ptr<void, AlignedFree>;

Buffer aligned_buffer(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void *p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) throw std::runtime_error("out of memory for an activation buffer");
  return Buffer(p);
}

// Everything one input shape needs, owned.
struct Plan {
  std::vector<dnnl_primitive_t> primitives;
  std::vector<dnnl_memory_t> memories;
  std::vector<Buffer> buffers;
  std::vector<Step> steps;
  // Per step, the memories of its args in order (slot -1/-2 memories get their handles per call).
  std::vector<std::vector<dnnl_exec_arg_t>> exec;
  std::vector<dnnl_memory_t> input_memories, output_memories;
  int64_t out_channels = 0;

  Plan() = default;
  Plan(const Plan &) = delete;
  Plan &operator=(const Plan &) = delete;
  ~Plan() {
    for (auto p : primitives) api->dnnl_primitive_destroy(p);
    for (auto m : memories) api->dnnl_memory_destroy(m);
  }
};

// TensorFlow SAME padding (before, after) of one spatial dimension, as byol-core's
// `nn::layers::tf_same_padding`.
std::pair<int64_t, int64_t> tf_same(int64_t size, int64_t kernel, int64_t stride) {
  int64_t out = (size + stride - 1) / stride;
  int64_t total = (out > 1 ? out - 1 : 0) * stride + kernel - size;
  if (total < 0) total = 0;
  return {total / 2, total - total / 2};
}

class Builder {
public:
  Builder(Plan &plan, dnnl_stream_t stream, dnnl_data_type_t dt) : plan_(plan), stream_(stream), dt_(dt) {}

  void build(const std::vector<Op> &ops, int64_t n, int64_t c, int64_t h, int64_t w) {
    input_md_ = Md::tag4(n, c, h, w, dnnl_f32, dnnl_nchw);
    regs_[0] = Reg{input_md_, true};
    slot_of_[0] = -1;
    for (const Op &op : ops) {
      switch (op.rec[fKind]) {
      case kConv: conv(op); break;
      case kMaxPool3x3s2: max_pool(op); break;
      case kGlobalAvgPool: global_avg_pool(op, n); break;
      default: throw std::runtime_error("unknown op kind");
      }
    }
    if (!plan_.out_channels) throw std::runtime_error("the network ends without a global pool");
    allocate();
  }

private:
  Plan &plan_;
  dnnl_stream_t stream_;
  dnnl_data_type_t dt_;
  Md input_md_;
  std::map<int64_t, Reg> regs_;
  std::map<int64_t, int> slot_of_;        // register → buffer slot
  std::vector<size_t> slot_bytes_;        // largest content of each slot
  int64_t next_temp_ = 1 << 20;           // registers for reorders, beyond the caller's

  Reg &reg(int64_t r) {
    auto it = regs_.find(r);
    if (it == regs_.end() || !it->second.written)
      throw std::runtime_error("an op reads a register nothing wrote");
    return it->second;
  }

  int slot(int64_t r) {
    auto it = slot_of_.find(r);
    if (it != slot_of_.end()) return it->second;
    slot_bytes_.push_back(0);
    int s = static_cast<int>(slot_bytes_.size()) - 1;
    slot_of_[r] = s;
    return s;
  }

  // Records that register r now holds a tensor of layout md; returns its slot.
  int write(int64_t r, const Md &md) {
    if (r == 0) throw std::runtime_error("an op writes the input register");
    int s = slot(r);
    size_t bytes = md.size();
    if (bytes > slot_bytes_[s]) slot_bytes_[s] = bytes;
    regs_[r] = Reg{md, true};
    return s;
  }

  // The primitive of `pd` (destroyed here), owned by the plan.
  dnnl_primitive_t primitive(dnnl_primitive_desc_t pd, const char *what) {
    dnnl_primitive_t p = nullptr;
    dnnl_status_t st = api->dnnl_primitive_create(&p, pd);
    api->dnnl_primitive_desc_destroy(pd);
    check(st, what);
    plan_.primitives.push_back(p);
    return p;
  }

  // The buffer slot a primitive reads register r from (-1: the caller's input, register 0).
  int read_slot(int64_t r) { return slot_of_.at(r); }

  // The register holding r's content in layout `want` (r itself, or a reorder into a temporary).
  int64_t in_layout(int64_t r, const Md &want) {
    Reg &src = reg(r);
    if (src.md == want) return r;
    dnnl_primitive_t p = make_reorder(src.md, want);
    plan_.primitives.push_back(p);
    int64_t t = next_temp_++;
    int from = read_slot(r);
    int to = write(t, want);
    plan_.steps.push_back(Step{p, {{DNNL_ARG_FROM, from, src.md}, {DNNL_ARG_TO, to, want}}, {}});
    return t;
  }

  // A constant (weights, bias) in layout `want`, reordered once from the plain f32 `data`.
  dnnl_memory_t constant(const float *data, const Md &plain, const Md &want) {
    dnnl_memory_t user = nullptr, m = nullptr;
    check(api->dnnl_memory_create(&user, plain.get(), api->engine, const_cast<float *>(data)),
          "memory_create");
    plan_.memories.push_back(user);
    if (plain == want) return user;
    plan_.buffers.push_back(aligned_buffer(want.size()));
    check(api->dnnl_memory_create(&m, want.get(), api->engine, plan_.buffers.back().get()),
          "memory_create");
    plan_.memories.push_back(m);
    dnnl_primitive_t r = make_reorder(plain, want);
    plan_.primitives.push_back(r);
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, m}};
    check(api->dnnl_primitive_execute(r, stream_, 2, args), "weights reorder");
    check(api->dnnl_stream_wait(stream_), "stream_wait");
    return m;
  }

  void conv(const Op &op) {
    const int64_t *g = op.rec;
    const Reg &src = reg(g[fSrc]);
    const int64_t n = src.md.dim(0), cin = src.md.dim(1), h = src.md.dim(2), w = src.md.dim(3);
    if (cin != g[fCin]) throw std::runtime_error("a convolution's input channels do not match");
    const int64_t k = g[fKernel], s = g[fStride], cout = g[fCout];
    int64_t pt = g[fPad], pb = g[fPad], pl = g[fPad], pr = g[fPad];
    if (g[fTfSame]) {
      std::tie(pt, pb) = tf_same(h, k, s);
      std::tie(pl, pr) = tf_same(w, k, s);
    }
    const int64_t oh = (h + pt + pb - k) / s + 1, ow = (w + pl + pr - k) / s + 1;
    const Md x_any = Md::tag4(n, cin, h, w, dt_, dnnl_format_tag_any);
    const Md w_any = Md::tag4(cout, cin, k, k, dt_, dnnl_format_tag_any);
    const Md w_plain = Md::tag4(cout, cin, k, k, dnnl_f32, dnnl_oihw);
    dnnl_dims_t bdims = {cout};
    const Md b_md = Md::tag(1, bdims, dnnl_f32, dnnl_a);
    Md y_md = Md::tag4(n, cout, oh, ow, dt_, dnnl_format_tag_any);
    if (g[fSum]) {
      // Accumulates into the shortcut already in the destination register, in its layout.
      const Reg &shortcut = reg(g[fDst]);
      y_md = shortcut.md;
      if (y_md.dim(0) != n || y_md.dim(1) != cout || y_md.dim(2) != oh || y_md.dim(3) != ow)
        throw std::runtime_error("a residual sum's shapes do not match");
    }
    dnnl_dims_t strides = {s, s}, pad_l = {pt, pl}, pad_r = {pb, pr};

    dnnl_post_ops_t po = nullptr;
    dnnl_primitive_attr_t attr = nullptr;
    check(api->dnnl_post_ops_create(&po), "post_ops_create");
    check(api->dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    dnnl_primitive_desc_t pd = nullptr;
    try {
      if (g[fSum]) check(append_sum(po, 1.0f), "post_ops_append_sum");
      if (g[fRelu])
        check(append_eltwise(po, dnnl_eltwise_relu, 0.0f, 0.0f), "post_ops_append_eltwise");
      check(api->dnnl_primitive_attr_set_post_ops(attr, po), "primitive_attr_set_post_ops");
      // Winograd F(4x4, 3x3) where the training shim measured it faster (fp32, 3x3 stride 1,
      // >= 16 channels, maps >= 4x4); direct otherwise or when refused.
      bool wino = dt_ == dnnl_f32 && k == 3 && s == 1 && cin >= 16 && cout >= 16 && oh >= 4 &&
                  ow >= 4;
      for (dnnl_alg_kind_t algo : {dnnl_convolution_winograd, dnnl_convolution_direct}) {
        if (algo == dnnl_convolution_winograd && !wino) continue;
        if (convolution_forward_pd(&pd, dnnl_forward_inference, algo, x_any, w_any, &b_md, y_md,
                                   strides, pad_l, pad_r, attr) == dnnl_success)
          break;
        pd = nullptr;
      }
      if (!pd) throw Failure{"convolution primitive_desc_create", dnnl_unimplemented};
    } catch (...) {
      api->dnnl_post_ops_destroy(po);
      api->dnnl_primitive_attr_destroy(attr);
      throw;
    }
    api->dnnl_post_ops_destroy(po);
    api->dnnl_primitive_attr_destroy(attr);

    const Md x_want = query_md(pd, dnnl_query_src_md), w_want = query_md(pd, dnnl_query_weights_md),
             b_want = query_md(pd, dnnl_query_weights_md, 1), y_want = query_md(pd, dnnl_query_dst_md);
    dnnl_primitive_t p = primitive(pd, "convolution primitive_create");

    int x_slot = read_slot(in_layout(g[fSrc], x_want));
    dnnl_memory_t wm = constant(op.weight.data(), w_plain, w_want);
    dnnl_memory_t bm = constant(op.bias.data(), b_md, b_want);
    int y_slot = write(g[fDst], y_want);
    plan_.steps.push_back(Step{p,
                               {{DNNL_ARG_SRC, x_slot, x_want}, {DNNL_ARG_DST, y_slot, y_want}},
                               {{DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_BIAS, bm}}});
  }

  void max_pool(const Op &op) {
    const int64_t *g = op.rec;
    const Reg &src = reg(g[fSrc]);
    const int64_t n = src.md.dim(0), c = src.md.dim(1), h = src.md.dim(2), w = src.md.dim(3);
    // 3x3, stride 2, ceil(n / 2) outputs: PyTorch's padding 1, or TensorFlow SAME.
    int64_t pt = 1, pb = 1, pl = 1, pr = 1;
    if (g[fTfSame]) {
      std::tie(pt, pb) = tf_same(h, 3, 2);
      std::tie(pl, pr) = tf_same(w, 3, 2);
    }
    const int64_t oh = (h + pt + pb - 3) / 2 + 1, ow = (w + pl + pr - 3) / 2 + 1;
    const Md y_any = Md::tag4(n, c, oh, ow, src.md.data_type(), dnnl_format_tag_any);
    dnnl_dims_t strides = {2, 2}, kernel = {3, 3}, pad_l = {pt, pl}, pad_r = {pb, pr};
    dnnl_primitive_desc_t pd = nullptr;
    check(pooling_forward_pd(&pd, dnnl_forward_inference, dnnl_pooling_max, src.md, y_any, strides,
                             kernel, pad_l, pad_r),
          "pooling primitive_desc_create");
    add_pool(pd, g[fSrc], g[fDst]);
  }

  void global_avg_pool(const Op &op, int64_t n) {
    int64_t r = op.rec[fSrc];
    Reg src = reg(r);
    if (src.md.data_type() != dnnl_f32) {
      // Averages of bf16 activations rounded to bf16 would lose the features' low bits: widen
      // first (the same blocked layout in f32).
      r = in_layout(r, src.md.with_data_type(dnnl_f32));
      src = reg(r);
    }
    const int64_t c = src.md.dim(1), h = src.md.dim(2), w = src.md.dim(3);
    const Md y_any = Md::tag4(n, c, 1, 1, dnnl_f32, dnnl_format_tag_any);
    dnnl_dims_t strides = {1, 1}, kernel = {h, w}, zero = {0, 0};
    dnnl_primitive_desc_t pd = nullptr;
    check(pooling_forward_pd(&pd, dnnl_forward_inference, dnnl_pooling_avg_exclude_padding, src.md,
                             y_any, strides, kernel, zero, zero),
          "pooling primitive_desc_create");
    int64_t pooled = next_temp_++;
    add_pool(pd, r, pooled);
    // Into the caller's [n, c] rows.
    const Md out_md = Md::tag4(n, c, 1, 1, dnnl_f32, dnnl_nchw);
    const Reg &p = reg(pooled);
    if (p.md == out_md) {
      // Write straight into the output: retarget the pool's destination.
      plan_.steps.back().args.back().slot = -2;
    } else {
      dnnl_primitive_t ro = make_reorder(p.md, out_md);
      plan_.primitives.push_back(ro);
      plan_.steps.push_back(
          Step{ro, {{DNNL_ARG_FROM, read_slot(pooled), p.md}, {DNNL_ARG_TO, -2, out_md}}, {}});
    }
    plan_.out_channels = c;
  }

  // A pooling of `pd` (owned from here) from register src_reg into dst_reg.
  void add_pool(dnnl_primitive_desc_t pd, int64_t src_reg, int64_t dst_reg) {
    const Md x_md = query_md(pd, dnnl_query_src_md), y_md = query_md(pd, dnnl_query_dst_md);
    dnnl_primitive_t p = primitive(pd, "pooling primitive_create");
    int x_slot = read_slot(in_layout(src_reg, x_md));
    int y_slot = write(dst_reg, y_md);
    plan_.steps.push_back(Step{p, {{DNNL_ARG_SRC, x_slot, x_md}, {DNNL_ARG_DST, y_slot, y_md}}, {}});
  }

  // Buffers for every slot, then the memories of every step's arguments.
  void allocate() {
    std::vector<void *> base;
    for (size_t bytes : slot_bytes_) {
      plan_.buffers.push_back(aligned_buffer(bytes));
      base.push_back(plan_.buffers.back().get());
    }
    for (const Step &step : plan_.steps) {
      std::vector<dnnl_exec_arg_t> exec;
      for (const Arg &a : step.args) {
        dnnl_memory_t m = nullptr;
        void *handle = a.slot >= 0 ? base[a.slot] : DNNL_MEMORY_NONE;
        check(api->dnnl_memory_create(&m, a.md.get(), api->engine, handle), "memory_create");
        plan_.memories.push_back(m);
        if (a.slot == -1) plan_.input_memories.push_back(m);
        if (a.slot == -2) plan_.output_memories.push_back(m);
        exec.push_back({a.arg, m});
      }
      for (const auto &c : step.constants) exec.push_back({c.first, c.second});
      plan_.exec.push_back(std::move(exec));
    }
  }
};

struct Stream {
  dnnl_stream_t handle = nullptr;
  ~Stream() {
    if (handle) api->dnnl_stream_destroy(handle);
  }
};

struct Net {
  std::vector<Op> ops;
  dnnl_data_type_t dt = dnnl_f32;
  std::mutex lock; // one forward at a time: plans and buffers are shared
  Stream stream;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> plans;
};

} // namespace

extern "C" {

// Builds a frozen network from `n_ops` records of `kRecordLen` int64 (see Field) and, per
// convolution in order, its OIHW weights and bias (copied). bf16 != 0: activations and weights in
// bf16. Returns 0 and the network in *out, or 1 with a message in err.
int byol_onednn_frozen_create(const int64_t *records, size_t n_ops, const float *const *weights,
                              const float *const *biases, int bf16, void **out, char *err,
                              size_t err_len) {
  return guarded(err, err_len, [&] {
    auto net = std::make_unique<Net>();
    net->dt = bf16 ? dnnl_bf16 : dnnl_f32;
    size_t conv = 0;
    for (size_t i = 0; i < n_ops; ++i) {
      Op op;
      for (int f = 0; f < kRecordLen; ++f) op.rec[f] = records[i * kRecordLen + f];
      if (op.rec[fKind] == kConv) {
        size_t wlen = op.rec[fCout] * op.rec[fCin] * op.rec[fKernel] * op.rec[fKernel];
        op.weight.assign(weights[conv], weights[conv] + wlen);
        op.bias.assign(biases[conv], biases[conv] + op.rec[fCout]);
        ++conv;
      }
      net->ops.push_back(std::move(op));
    }
    check(api->dnnl_stream_create(&net->stream.handle, api->engine, dnnl_stream_default_flags),
          "stream_create");
    *out = net.release();
  });
}

// Runs the network on `x` ([n, c, h, w] f32, plain) into `out` ([n, features] f32; out_len
// floats). threads > 0 sets oneDNN's OpenMP thread count. Returns 0, or 1 with a message in err.
int byol_onednn_frozen_forward(void *handle, const float *x, int64_t n, int64_t c, int64_t h,
                               int64_t w, float *out, size_t out_len, int threads, char *err,
                               size_t err_len) {
  return guarded(err, err_len, [&] {
    Net &net = *static_cast<Net *>(handle);
    std::lock_guard<std::mutex> guard(net.lock);
    if (threads > 0) api->omp_set_num_threads(threads);
    auto key = std::make_tuple(n, c, h, w);
    auto found = net.plans.find(key);
    if (found == net.plans.end()) {
      auto plan = std::make_unique<Plan>();
      Builder(*plan, net.stream.handle, net.dt).build(net.ops, n, c, h, w);
      found = net.plans.emplace(key, std::move(plan)).first;
    }
    Plan &plan = *found->second;
    if (out_len != static_cast<size_t>(n * plan.out_channels))
      throw std::runtime_error("the output buffer does not fit [n, features]");
    for (auto m : plan.input_memories)
      check(api->dnnl_memory_set_data_handle(m, const_cast<float *>(x)), "set_data_handle");
    for (auto m : plan.output_memories)
      check(api->dnnl_memory_set_data_handle(m, out), "set_data_handle");
    for (size_t i = 0; i < plan.steps.size(); ++i) {
      auto &args = plan.exec[i];
      check(api->dnnl_primitive_execute(plan.steps[i].primitive, net.stream.handle,
                                        static_cast<int>(args.size()), args.data()),
            "frozen network step");
    }
    check(api->dnnl_stream_wait(net.stream.handle), "stream_wait");
  });
}

void byol_onednn_frozen_destroy(void *handle) { delete static_cast<Net *>(handle); }

} // extern "C"
