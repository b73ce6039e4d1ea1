// ExecuTorch kernels of the `spinquant` ops (python/spinquant/export/ops.py holds their schemas and the eager
// reference): thin wrappers that check shapes and call the native kernels of kernels/.
//
//   spinquant::hadamard.out(x, hk, *, out)
//   spinquant::int4_linear.out(x, qweight, scales, zeros?, bias?, group, act_bits, act_clip, residual?, norm?,
//       norm_eps, glu, had?, *, out): input prologue (RMSNorm, silu(gate) * up, Hadamard), GEMV/GEMM, residual add
//   spinquant::attention.out(qkv, cos, sin, hk?, k_cache(a!), v_cache(b!), input_pos, n_heads, *, out):
//       RoPE (+ R3 when given hk) on q/k of the packed projection output, float-cache update, attention
//   spinquant::kv_attention.out(qkv, cos, sin, hk?, cache(a!), input_pos, n_heads, n_kv_heads, bits, group, *, out):
//       the same over a quantized KV cache
//   spinquant::rms_norm.out / silu_mul.out: fused element-wise steps
//   spinquant::int8_linear.out(x, codes, scales, rowsum, norm?, norm_eps, pre?, *, out): the 8-bit lm_head
//   spinquant::int8_embedding.out(ids, codes, scales, *, out): the 8-bit embedding gather
//       (both read the int8 storage of spinquant/int8.h where it lies in the program: no prepacking)
//
// Weights arrive in the int4 storage layout (docs/INT4_FORMAT.md); they are prepacked once into the kernels'
// layout and cached by the address of the program's constant data (plus a sampled fingerprint), so a decode
// step only streams packed weights. spinquant_et_clear_cache() drops the cache (the Python runtime calls it
// when it releases a program) and spinquant_et_set_threads(n) sets the kernels' thread count (0 = all cores).
#include "program.h"

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <array>
#include <atomic>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "pages.h"
#include "spinquant/attention.h"
#include "spinquant/elementwise.h"
#include "spinquant/hadamard.h"
#include "spinquant/int4.h"
#include "spinquant/int8.h"
#include "spinquant/parallel.h"

namespace {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

std::atomic<int> g_threads{0};

// Fails the kernel with a message (ExecuTorch logs it and the method returns an error).
bool fail(KernelRuntimeContext& ctx, const std::string& msg) {
  ET_LOG(Error, "spinquant: %s", msg.c_str());
  ctx.fail(Error::InvalidArgument);
  return false;
}

bool check(KernelRuntimeContext& ctx, bool ok, const char* msg) { return ok || fail(ctx, msg); }

// Threads for a step of about `work` multiply-adds: one below what a second thread pays for (decode's small
// transforms and short-context attention), else the configured count.
int op_threads(int64_t work) { return work < (int64_t{1} << 16) ? 1 : g_threads.load(); }

// Threads for attention of about `work` multiply-adds (the kernel splits it into (token, KV head, row chunk)
// units; a long context gives even one KV head several). Its decode step is worth a second thread from far less
// work than op_threads asks: it runs 8-16 us cold (code and metadata misses more than arithmetic) while the
// second core waits for the next linear anyway. 2 threads at 17-48 positions of SmolLM2 (13k-37k multiply-adds),
// time a token before / after: 1.04-1.09 (three A/Bs of 14 paired rounds).
int attention_threads(int64_t work) {
  if (work < (int64_t{1} << 13)) return 1;
  const int t = g_threads.load();
  return t > 0 ? t : spinquant::hardware_threads();  // 0 would let the kernel apply op_threads' bar again
}

bool resize(KernelRuntimeContext& ctx, Tensor& out, const std::vector<SizesType>& sizes) {
  return check(ctx, executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) == Error::Ok,
               "cannot resize the output tensor");
}

std::vector<SizesType> sizes_of(const Tensor& t) { return {t.sizes().begin(), t.sizes().end()}; }

// ---- hadamard ------------------------------------------------------------------------------------------

// Whether hk can be a Hadamard base: an int8 [K, K] matrix (its values are checked when the transform is built).
bool is_hadamard_base(const Tensor& hk) {
  return hk.scalar_type() == ScalarType::Char && hk.dim() == 2 && hk.size(0) == hk.size(1);
}

// The transform over n with base hk (is_hadamard_base), built once per (n, base) and kept.
const spinquant::HadamardTransform& hadamard_for(int64_t n, const Tensor& base) {
  const int8_t* hk = base.const_data_ptr<int8_t>();
  const int64_t K = base.size(0);
  struct Entry {
    int64_t n;
    std::vector<int8_t> hk;
    std::unique_ptr<spinquant::HadamardTransform> t;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;  // a few sizes a model: a linear search without building keys
  std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : cache)
    if (e.n == n && static_cast<int64_t>(e.hk.size()) == K * K && std::equal(e.hk.begin(), e.hk.end(), hk))
      return *e.t;
  cache.push_back(Entry{n, std::vector<int8_t>(hk, hk + K * K),
                        std::make_unique<spinquant::HadamardTransform>(n, K > 1 ? hk : nullptr, K)});
  return *cache.back().t;
}

Tensor& hadamard_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& hk, Tensor& out) {
  if (!check(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
             "hadamard: x and out must be float32") ||
      !check(ctx, is_hadamard_base(hk), "hadamard: hk must be an int8 [K, K] matrix") ||
      !check(ctx, x.dim() >= 1, "hadamard: x needs at least one dimension") || !resize(ctx, out, sizes_of(x)))
    return out;
  const int64_t n = x.size(x.dim() - 1);
  try {
    const auto& t = hadamard_for(n, hk);
    float* y = out.mutable_data_ptr<float>();
    if (y != x.const_data_ptr<float>()) std::memcpy(y, x.const_data_ptr<float>(), x.nbytes());
    t.apply(y, n ? x.numel() / n : 0, op_threads(x.numel()));
  } catch (const std::exception& e) {
    fail(ctx, std::string("hadamard: ") + e.what());
  }
  return out;
}

// ---- int4 linear ---------------------------------------------------------------------------------------

struct PackKey {
  const void *qweight, *scales, *zeros;
  int64_t N, K, group;
  bool operator==(const PackKey& o) const {
    return std::tie(qweight, scales, zeros, N, K, group) == std::tie(o.qweight, o.scales, o.zeros, o.N, o.K, o.group);
  }
};

struct PackKeyHash {
  size_t operator()(const PackKey& k) const {
    return std::hash<const void*>()(k.qweight) ^ (std::hash<const void*>()(k.scales) << 1);
  }
};

constexpr size_t kSampledBytes = 16;  // of a weight and of its scales, read by every call
using Sample = std::array<uint8_t, 2 * kSampledBytes>;

struct PackEntry {
  PackKey key;
  Sample sample;  // bytes sampled from the storage tensors when prepacked
  std::shared_ptr<spinquant::int4::PackedInt4> packed;
};

// The prepacked weights, in the order of their first use, and an index by key. A decode step calls the linears in
// the same order every time, so the lookup first tries the entry after the previous one: a sequential walk the
// hardware prefetches, where a hash lookup would take two trips to memory (the step streams far more than the
// caches hold, so the table is never cached).
std::mutex g_pack_mu;
std::vector<PackEntry> g_pack_order;
std::unordered_map<PackKey, size_t, PackKeyHash> g_pack_index;
size_t g_pack_next = 0;

// The first 16 bytes of the weight and of its scales: catches a different program reusing the same addresses
// (the storage is not otherwise read after prepacking; two cache lines a call, prefetched by the caller).
Sample sample_bytes(const Tensor& qweight, const Tensor& scales) {
  Sample s{};
  size_t j = 0;
  for (const Tensor* t : {&qweight, &scales}) {
    const auto* p = static_cast<const uint8_t*>(t->const_data_ptr());
    const size_t n = t->nbytes();
    for (size_t i = 0; i < kSampledBytes; ++i, ++j) s[j] = i < n ? p[i] : 0;
  }
  return s;
}

// Hands the pages of a prepacked weight's storage back to the system: after prepacking only its first bytes are
// read again (sample_bytes, whose pages are kept), so the program's copy need not stay resident beside the packed
// one (60 MB of the default model). MADV_PAGEOUT never changes contents: the clean pages of the mapped program
// are dropped and fault back in from the file if read; anonymous memory is swapped out or left alone. Linux and
// Android (kernel 5.4 or newer; older ones ignore it); elsewhere a no-op.
void release_storage(const Tensor& t) {
#ifdef MADV_PAGEOUT
  if (t.nbytes() > kSampledBytes)
    spinquant_et::advise_pages_within(static_cast<const uint8_t*>(t.const_data_ptr()) + kSampledBytes,
                                      t.nbytes() - kSampledBytes, MADV_PAGEOUT);
#else
  (void)t;
#endif
}

// A call's prepacked weight and the one the call after it used last time (the next token's first linear after
// the last one), which idle workers prefetch meanwhile.
struct Packed {
  std::shared_ptr<spinquant::int4::PackedInt4> weight, next;
};

Packed packed_for(const Tensor& qweight, const Tensor& scales, const std::optional<Tensor>& zeros, int64_t K,
                  int64_t group) {
  const int64_t N = qweight.size(0);
  const void* zp = zeros ? zeros->const_data_ptr() : nullptr;
  const PackKey key{qweight.const_data_ptr(), scales.const_data_ptr(), zp, N, K, group};
  const Sample sample = sample_bytes(qweight, scales);
  std::lock_guard<std::mutex> lock(g_pack_mu);
  size_t at = g_pack_next;
  if (at >= g_pack_order.size() || !(g_pack_order[at].key == key)) {
    auto it = g_pack_index.find(key);
    at = it == g_pack_index.end() ? g_pack_order.size() : it->second;
  }
  if (at < g_pack_order.size() && g_pack_order[at].sample == sample) {
    g_pack_next = at + 1;
    return {g_pack_order[at].packed, g_pack_order[g_pack_next % g_pack_order.size()].packed};
  }
  auto packed = std::make_shared<spinquant::int4::PackedInt4>(spinquant::int4::prepack(
      qweight.const_data_ptr<uint8_t>(), scales.const_data_ptr<uint16_t>(),
      zeros ? zeros->const_data_ptr<uint8_t>() : nullptr, N, K, group));
  release_storage(qweight);
  release_storage(scales);
  if (at < g_pack_order.size()) {  // same address, different bytes: another program reused the memory
    g_pack_order[at] = PackEntry{key, sample, packed};
  } else {
    g_pack_index[key] = g_pack_order.size();
    g_pack_order.push_back(PackEntry{key, sample, packed});
  }
  g_pack_next = at + 1;
  return {packed, nullptr};
}

// K is the linear's input width: x's last dim, or half of it when glu pairs (gate, up) into silu(gate) * up.
bool check_linear(KernelRuntimeContext& ctx, int64_t K, const Tensor& qweight, const Tensor& scales,
                  const std::optional<Tensor>& zeros, const std::optional<Tensor>& bias, int64_t group) {
  const int64_t G = group > 0 ? (K + group - 1) / group : 0;
  return check(ctx, qweight.scalar_type() == ScalarType::Byte && qweight.dim() == 2 &&
                        qweight.size(1) == (K + 1) / 2,
               "int4_linear: qweight must be uint8 [N, ceil(K / 2)] for the input's K") &&
         check(ctx, group > 0, "int4_linear: group must be positive") &&
         check(ctx, scales.scalar_type() == ScalarType::Half && scales.dim() == 2 &&
                        scales.size(0) == qweight.size(0) && scales.size(1) == G,
               "int4_linear: scales must be float16 [N, ceil(K / group)]") &&
         check(ctx, !zeros || (zeros->scalar_type() == ScalarType::Byte && zeros->numel() == scales.numel()),
               "int4_linear: zeros must be uint8 shaped like scales") &&
         check(ctx, !bias || (bias->scalar_type() == ScalarType::Float && bias->numel() == qweight.size(0)),
               "int4_linear: bias must be float32 [N]");
}

// The linear's input prologue, x [rows, width] -> [rows, K] in per-thread scratch: RMSNorm over width when
// given `norm` (the rms_norm op's kernel: same bits), silu(gate) * up of the halves when `glu` (the silu_mul
// op's kernel), then the Hadamard transform over K when given `had` (R4 before down_proj). x itself when none.
const float* linear_input(const float* x, int64_t rows, int64_t width, const float* norm, float norm_eps, bool glu,
                          const spinquant::HadamardTransform* had, int threads) {
  if (!norm && !glu && !had) return x;
  thread_local std::vector<float> buf[2];
  const int64_t K = glu ? width / 2 : width;
  const float* in = x;
  float* y = nullptr;
  if (norm) {
    buf[0].resize(static_cast<size_t>(rows * width));
    spinquant::rms_norm(in, norm, rows, width, norm_eps, y = buf[0].data(), threads);
    in = y;
  }
  if (glu) {
    buf[1].resize(static_cast<size_t>(rows * K));
    spinquant::silu_mul(in, rows, K, y = buf[1].data(), threads);
  }
  if (had) {
    if (!y) {
      buf[1].resize(static_cast<size_t>(rows * K));
      y = static_cast<float*>(std::memcpy(buf[1].data(), x, static_cast<size_t>(rows * K) * sizeof(float)));
    }
    had->apply(y, rows, op_threads(rows * K));
  }
  return y;
}

Tensor& int4_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight, const Tensor& scales,
                        const std::optional<Tensor>& zeros, const std::optional<Tensor>& bias, int64_t group,
                        int64_t act_bits, double act_clip, const std::optional<Tensor>& residual,
                        const std::optional<Tensor>& norm, double norm_eps, bool glu, const std::optional<Tensor>& had,
                        Tensor& out) {
  // The sampled storage bytes are cold (a decode step streams far more than the caches hold): start both
  // loads now so that they overlap the checks and the cache lookup instead of following them.
  __builtin_prefetch(qweight.const_data_ptr());
  __builtin_prefetch(scales.const_data_ptr());
  if (!check(ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1, "int4_linear: x must be float32"))
    return out;
  const int64_t width = x.size(x.dim() - 1), K = glu ? width / 2 : width, rows = width ? x.numel() / width : 0;
  if (!check(ctx, !glu || width % 2 == 0, "int4_linear: glu needs an even input width (gate, up)") ||
      !check_linear(ctx, K, qweight, scales, zeros, bias, group))
    return out;
  std::vector<SizesType> shape = sizes_of(x);
  shape.back() = static_cast<SizesType>(qweight.size(0));
  if (!resize(ctx, out, shape) ||
      !check(ctx, !residual || (residual->scalar_type() == ScalarType::Float && residual->numel() == out.numel()),
             "int4_linear: residual must be float32 shaped like the output") ||
      !check(ctx, !norm || (norm->scalar_type() == ScalarType::Float && norm->numel() == width),
             "int4_linear: norm must be float32 [x.size(-1)]") ||
      !check(ctx, !had || is_hadamard_base(*had), "int4_linear: had must be an int8 [K, K] matrix"))
    return out;
  try {
    const spinquant::HadamardTransform* transform = had ? &hadamard_for(K, *had) : nullptr;
    const float* input = linear_input(x.const_data_ptr<float>(), rows, width,
                                      norm ? norm->const_data_ptr<float>() : nullptr, static_cast<float>(norm_eps),
                                      glu, transform, g_threads.load());
    const Packed packed = packed_for(qweight, scales, zeros, K, group);
    spinquant::int4::LinearParams params;
    params.act_bits = static_cast<int>(act_bits);
    params.act_clip = static_cast<float>(act_clip);
    params.bias = bias ? bias->const_data_ptr<float>() : nullptr;
    params.threads = g_threads.load();
    params.next = packed.next.get();
    spinquant::int4::linear(*packed.weight, input, rows, out.mutable_data_ptr<float>(), params);
    if (residual)  // the decoder's residual add, while the output is still in cache
      spinquant::add(out.const_data_ptr<float>(), residual->const_data_ptr<float>(), out.numel(),
                     out.mutable_data_ptr<float>(), g_threads.load());
  } catch (const std::exception& e) {
    fail(ctx, std::string("int4_linear: ") + e.what());
  }
  return out;
}

// ---- attention: q/k/v split, RoPE (+ R3), cache update, attention in one op ----------------------------

// A layer's q/k/v projection output qkv [T, (H + 2 Hkv) D] prepared for attention: q [T, H, D] and k [T, Hkv, D]
// with RoPE (and R3 when hk is given) in per-thread scratch, v read in place (`v_stride` floats a token).
struct QKV {
  const float *q, *k, *v;
  int64_t T, H, Hkv, D, v_stride;
};

bool prepare_qkv(KernelRuntimeContext& ctx, const char* op, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                 const std::optional<Tensor>& hk, int64_t H, int64_t Hkv, QKV* r) {
  const int64_t width = qkv.dim() == 2 ? qkv.size(1) : 0, D = H + 2 * Hkv > 0 ? width / (H + 2 * Hkv) : 0;
  if (!check(ctx, qkv.scalar_type() == ScalarType::Float && qkv.dim() == 2 && H > 0 && Hkv > 0 && H % Hkv == 0 &&
                      D > 0 && D % 2 == 0 && D * (H + 2 * Hkv) == width,
             "attention: qkv must be float32 [T, (n_heads + 2 n_kv_heads) head_dim], n_heads a multiple of "
             "n_kv_heads, head_dim even") ||
      !check(ctx, cos.scalar_type() == ScalarType::Float && sin.scalar_type() == ScalarType::Float &&
                      cos.dim() == 2 && sin.dim() == 2 && cos.size(0) == qkv.size(0) && sin.size(0) == qkv.size(0) &&
                      cos.size(1) == D && sin.size(1) == D,
             "attention: cos and sin must be float32 [T, head_dim]") ||
      !check(ctx, !hk || is_hadamard_base(*hk), "attention: hk must be an int8 [K, K] matrix"))
    return false;
  const int64_t T = qkv.size(0);
  thread_local std::vector<float> scratch;  // q then k, rotated
  scratch.resize(static_cast<size_t>(T * (H + Hkv) * D));
  float* q = scratch.data();
  float* k = q + T * H * D;
  const float* x = qkv.const_data_ptr<float>();
  const float *c = cos.const_data_ptr<float>(), *sn = sin.const_data_ptr<float>();
  const int threads = op_threads(T * (H + Hkv) * D);
  for (int64_t t = 0; t < T; ++t) {
    spinquant::rope(x + t * width, c + t * D, sn + t * D, 1, H, D, q + t * H * D, threads);
    spinquant::rope(x + t * width + H * D, c + t * D, sn + t * D, 1, Hkv, D, k + t * Hkv * D, threads);
  }
  if (hk) {  // R3: the Hadamard transform over head_dim of every q and k head
    try {
      hadamard_for(D, *hk).apply(q, T * (H + Hkv), threads);
    } catch (const std::exception& e) {
      return fail(ctx, std::string(op) + ": " + e.what());
    }
  }
  *r = QKV{q, k, x + (H + Hkv) * D, T, H, Hkv, D, width};
  return true;
}

bool check_positions(KernelRuntimeContext& ctx, const Tensor& input_pos, int64_t T) {
  return check(ctx, input_pos.scalar_type() == ScalarType::Long && input_pos.numel() == T,
               "attention: input_pos must be int64 [T]");
}

Tensor& attention_out(KernelRuntimeContext& ctx, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                      const std::optional<Tensor>& hk, Tensor& k_cache, Tensor& v_cache, const Tensor& input_pos,
                      int64_t n_heads, Tensor& out) {
  if (!check(ctx, k_cache.scalar_type() == ScalarType::Float && v_cache.scalar_type() == ScalarType::Float &&
                      k_cache.dim() == 3 && v_cache.dim() == 3 && k_cache.size(0) == v_cache.size(0) &&
                      k_cache.size(1) == v_cache.size(1) && k_cache.size(2) == v_cache.size(2),
             "attention: k_cache and v_cache must be float32 [Hkv, S, D] alike"))
    return out;
  const int64_t hkv = k_cache.size(0), S = k_cache.size(1), D = k_cache.size(2);
  QKV x{};
  if (!prepare_qkv(ctx, "attention", qkv, cos, sin, hk, n_heads, hkv, &x) ||
      !check(ctx, x.D == D, "attention: the caches' head_dim does not match qkv") ||
      !check_positions(ctx, input_pos, x.T) ||
      !resize(ctx, out, {static_cast<SizesType>(x.T), static_cast<SizesType>(x.H * D)}))
    return out;
  const int64_t* pos = input_pos.const_data_ptr<int64_t>();
  int64_t len = 0;
  for (int64_t t = 0; t < x.T; ++t) {
    if (!check(ctx, pos[t] >= 0 && pos[t] < S, "attention: a position exceeds the cache (max_seq_len)")) return out;
    len = std::max(len, pos[t] + 1);
  }
  float* kc = k_cache.mutable_data_ptr<float>();
  float* vc = v_cache.mutable_data_ptr<float>();
  for (int64_t t = 0; t < x.T; ++t)
    for (int64_t h = 0; h < hkv; ++h) {
      std::memcpy(kc + (h * S + pos[t]) * D, x.k + (t * hkv + h) * D, D * sizeof(float));
      std::memcpy(vc + (h * S + pos[t]) * D, x.v + t * x.v_stride + h * D, D * sizeof(float));
    }
  std::vector<spinquant::KVHeadView> heads(static_cast<size_t>(hkv));
  for (int64_t h = 0; h < hkv; ++h) heads[h] = spinquant::float_head_view(kc + h * S * D, vc + h * S * D, D);
  try {
    spinquant::attention(heads.data(), hkv, x.q, x.T, x.H, pos, out.mutable_data_ptr<float>(), 0.0f,
                         attention_threads(x.T * len * (x.H + hkv) * D));
  } catch (const std::exception& e) {
    fail(ctx, std::string("attention: ") + e.what());
  }
  return out;
}

}  // namespace

// ---- quantized-KV attention ----------------------------------------------------------------------------

// One layer's cache buffer, laid out as KVCacheLayout in ops.py: for K then V, codes [Hkv, S, row_bytes],
// scales float32 [Hkv, S, G], zeros float32 [Hkv, S, G].
struct CacheView {
  int64_t hkv, seq, dim, group, groups, row_bytes;
  int bits;
  uint8_t* codes[2];
  float* scales[2];
  float* zeros[2];

  spinquant::KVHeadView head(int64_t h) const {
    spinquant::KVHeadView v{};
    for (int w = 0; w < 2; ++w) {
      v.codes[w] = codes[w] + h * seq * row_bytes;
      v.scales[w] = scales[w] + h * seq * groups;
      v.zeros[w] = zeros[w] + h * seq * groups;
    }
    v.head_dim = dim;
    v.group = group;
    v.groups = groups;
    v.row_bytes = row_bytes;
    v.bits = bits;
    return v;
  }

  // Quantizes x [dim] into row `pos` of head h of K (w = 0) or V (w = 1).
  void store(int w, int64_t h, int64_t pos, const float* x) const {
    const int64_t r = h * seq + pos;
    spinquant::store_row_asym(x, dim, group, bits, codes[w] + r * row_bytes, scales[w] + r * groups,
                              zeros[w] + r * groups);
  }
};

bool make_cache_view(KernelRuntimeContext& ctx, Tensor& cache, int64_t hkv, int64_t dim, int64_t bits,
                     int64_t group, CacheView* v) {
  group = group > 0 ? group : dim;
  if (!check(ctx, (bits == 4 || bits == 8) && dim % group == 0 && dim % 2 == 0,
             "kv_attention: bits must be 4 or 8, group must divide head_dim (even)"))
    return false;
  const int64_t groups = dim / group, row_bytes = dim * bits / 8;
  const int64_t per_pos = 2 * hkv * (row_bytes + 8 * groups);
  if (!check(ctx, cache.scalar_type() == ScalarType::Byte && cache.dim() == 1 && cache.numel() % (4 * per_pos) == 0,
             "kv_attention: cache must be a flat uint8 buffer laid out as KVCacheLayout"))
    return false;
  const int64_t seq = cache.numel() / per_pos, rows = hkv * seq;
  uint8_t* base = cache.mutable_data_ptr<uint8_t>();
  *v = CacheView{hkv, seq, dim, group, groups, row_bytes, static_cast<int>(bits), {}, {}, {}};
  for (int w = 0; w < 2; ++w) {
    uint8_t* p = base + w * rows * (row_bytes + 8 * groups);
    v->codes[w] = p;
    v->scales[w] = reinterpret_cast<float*>(p + rows * row_bytes);
    v->zeros[w] = reinterpret_cast<float*>(p + rows * row_bytes + rows * groups * 4);
  }
  return true;
}

Tensor& kv_attention_out(KernelRuntimeContext& ctx, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                         const std::optional<Tensor>& hk, Tensor& cache, const Tensor& input_pos, int64_t n_heads,
                         int64_t n_kv_heads, int64_t bits, int64_t group, Tensor& out) {
  QKV x{};
  CacheView cv{};
  if (!prepare_qkv(ctx, "kv_attention", qkv, cos, sin, hk, n_heads, n_kv_heads, &x) ||
      !check_positions(ctx, input_pos, x.T) || !make_cache_view(ctx, cache, n_kv_heads, x.D, bits, group, &cv) ||
      !resize(ctx, out, {static_cast<SizesType>(x.T), static_cast<SizesType>(x.H * x.D)}))
    return out;
  const int64_t start = input_pos.const_data_ptr<int64_t>()[0];
  if (!check(ctx, start >= 0 && start + x.T <= cv.seq, "kv_attention: positions exceed the cache (max_seq_len)"))
    return out;
  std::vector<int64_t> pos(static_cast<size_t>(x.T));
  std::vector<spinquant::KVHeadView> heads(static_cast<size_t>(n_kv_heads));
  for (int64_t h = 0; h < n_kv_heads; ++h) heads[h] = cv.head(h);
  try {
    for (int64_t t = 0; t < x.T; ++t) {
      pos[t] = start + t;
      for (int64_t h = 0; h < n_kv_heads; ++h) {
        cv.store(0, h, start + t, x.k + (t * n_kv_heads + h) * x.D);
        cv.store(1, h, start + t, x.v + t * x.v_stride + h * x.D);
      }
    }
    spinquant::attention(heads.data(), n_kv_heads, x.q, x.T, x.H, pos.data(), out.mutable_data_ptr<float>(), 0.0f,
                         attention_threads(x.T * (start + x.T) * (x.H + n_kv_heads) * x.D));
  } catch (const std::exception& e) {
    fail(ctx, std::string("kv_attention: ") + e.what());
  }
  return out;
}

// ---- fused element-wise ops ----------------------------------------------------------------------------

bool check_float(KernelRuntimeContext& ctx, const Tensor& x, Tensor& out, const char* what) {
  return check(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float && x.dim() >= 1,
               what);
}

Tensor& rms_norm_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  if (!check_float(ctx, x, out, "rms_norm: x must be float32") ||
      !check(ctx, weight.scalar_type() == ScalarType::Float && weight.numel() == x.size(x.dim() - 1),
             "rms_norm: weight must be float32 [dim]") ||
      !resize(ctx, out, sizes_of(x)))
    return out;
  const int64_t n = x.size(x.dim() - 1);
  try {
    spinquant::rms_norm(x.const_data_ptr<float>(), weight.const_data_ptr<float>(), n ? x.numel() / n : 0, n,
                        static_cast<float>(eps), out.mutable_data_ptr<float>(), g_threads.load());
  } catch (const std::exception& e) {
    fail(ctx, std::string("rms_norm: ") + e.what());
  }
  return out;
}

Tensor& silu_mul_out(KernelRuntimeContext& ctx, const Tensor& gate_up, Tensor& out) {
  if (!check_float(ctx, gate_up, out, "silu_mul: input must be float32") ||
      !check(ctx, gate_up.size(gate_up.dim() - 1) % 2 == 0, "silu_mul: the last dim must be even (gate, up)"))
    return out;
  std::vector<SizesType> shape = sizes_of(gate_up);
  const int64_t f = shape.back() / 2, rows = f ? gate_up.numel() / (2 * f) : 0;
  shape.back() = static_cast<SizesType>(f);
  if (!resize(ctx, out, shape)) return out;
  spinquant::silu_mul(gate_up.const_data_ptr<float>(), rows, f, out.mutable_data_ptr<float>(), g_threads.load());
  return out;
}

// ---- the 8-bit ends -----------------------------------------------------------------------------------

bool check_table(KernelRuntimeContext& ctx, const char* op, const Tensor& codes, const Tensor& scales) {
  const bool ok = codes.scalar_type() == ScalarType::Char && codes.dim() == 2 &&
                  scales.scalar_type() == ScalarType::Float && scales.numel() == codes.size(0);
  return ok || fail(ctx, std::string(op) + ": codes must be int8 [N, K] and scales float32 [N]");
}

spinquant::int8::Weight table_of(const Tensor& codes, const Tensor& scales, const Tensor* rowsum) {
  return {codes.const_data_ptr<int8_t>(), scales.const_data_ptr<float>(),
          rowsum ? rowsum->const_data_ptr<int32_t>() : nullptr, codes.size(0), codes.size(1)};
}

Tensor& int8_linear_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& codes, const Tensor& scales,
                        const Tensor& rowsum, const std::optional<Tensor>& norm, double norm_eps,
                        const std::optional<Tensor>& pre, Tensor& out) {
  if (!check(ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1, "int8_linear: x must be float32") ||
      !check_table(ctx, "int8_linear", codes, scales))
    return out;
  const int64_t K = x.size(x.dim() - 1), rows = K ? x.numel() / K : 0;
  std::vector<SizesType> shape = sizes_of(x);
  shape.back() = static_cast<SizesType>(codes.size(0));
  if (!check(ctx, codes.size(1) == K, "int8_linear: codes must be [N, x.size(-1)]") ||
      !check(ctx, rowsum.scalar_type() == ScalarType::Int && rowsum.numel() == codes.size(0),
             "int8_linear: rowsum must be int32 [N]") ||
      !check(ctx, !norm || (norm->scalar_type() == ScalarType::Float && norm->numel() == K),
             "int8_linear: norm must be float32 [x.size(-1)]") ||
      !check(ctx, !pre || (pre->scalar_type() == ScalarType::Float && pre->numel() == K * K),
             "int8_linear: pre must be float32 [K, K]") ||
      !resize(ctx, out, shape))
    return out;
  try {
    const float* input = linear_input(x.const_data_ptr<float>(), rows, K, norm ? norm->const_data_ptr<float>() : nullptr,
                                      static_cast<float>(norm_eps), false, nullptr, g_threads.load());
    spinquant::int8::linear(table_of(codes, scales, &rowsum), input, rows, out.mutable_data_ptr<float>(),
                            pre ? pre->const_data_ptr<float>() : nullptr, g_threads.load());
  } catch (const std::exception& e) {
    fail(ctx, std::string("int8_linear: ") + e.what());
  }
  return out;
}

Tensor& int8_embedding_out(KernelRuntimeContext& ctx, const Tensor& ids, const Tensor& codes, const Tensor& scales,
                           Tensor& out) {
  if (!check(ctx, ids.scalar_type() == ScalarType::Long && ids.dim() == 1, "int8_embedding: ids must be int64 [T]") ||
      !check_table(ctx, "int8_embedding", codes, scales) ||
      !check(ctx, out.scalar_type() == ScalarType::Float, "int8_embedding: out must be float32") ||
      !resize(ctx, out, {static_cast<SizesType>(ids.numel()), static_cast<SizesType>(codes.size(1))}))
    return out;
  try {
    spinquant::int8::embedding(table_of(codes, scales, nullptr), ids.const_data_ptr<int64_t>(), ids.numel(),
                               out.mutable_data_ptr<float>(), op_threads(ids.numel() * codes.size(1)));
  } catch (const std::exception& e) {
    fail(ctx, std::string("int8_embedding: ") + e.what());
  }
  return out;
}

EXECUTORCH_LIBRARY(spinquant, "attention.out", attention_out);
EXECUTORCH_LIBRARY(spinquant, "int8_linear.out", int8_linear_out);
EXECUTORCH_LIBRARY(spinquant, "int8_embedding.out", int8_embedding_out);
EXECUTORCH_LIBRARY(spinquant, "rms_norm.out", rms_norm_out);
EXECUTORCH_LIBRARY(spinquant, "silu_mul.out", silu_mul_out);
EXECUTORCH_LIBRARY(spinquant, "hadamard.out", hadamard_out);
EXECUTORCH_LIBRARY(spinquant, "int4_linear.out", int4_linear_out);
EXECUTORCH_LIBRARY(spinquant, "kv_attention.out", kv_attention_out);

extern "C" {
__attribute__((visibility("default"))) void spinquant_et_set_threads(int threads) {
  g_threads.store(threads < 0 ? 0 : threads);
}
__attribute__((visibility("default"))) void spinquant_et_clear_cache() {
  std::lock_guard<std::mutex> lock(g_pack_mu);
  g_pack_order.clear();
  g_pack_index.clear();
  g_pack_next = 0;
}
}
