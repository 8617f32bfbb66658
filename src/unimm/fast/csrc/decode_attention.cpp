// unimm::decode_attention: one new query per row against a read-only key/value cache, for the
// compiled decoding steps on the CPU (fast/kernels.py builds it; fast/decode.py calls it).
//
// The same result as fast/steps.py step_attention, in float32:
//   s      = q . k_cache[t] * scale + bias[t]      for every cache slot t (bias: 0 or -inf)
//   s_new  = q . k * scale                          the new token (not in the cache yet)
//   out    = (sum_t e^(s - top) v_cache[t] + e^(s_new - top) v) / (sum_t e^(s - top) + e^(s_new - top))
// Why a kernel: at 16-32 rows a step's attention reads 3-6 MB of keys and values per layer from
// DRAM, and inductor's code for it (a reduction per slot for the scores, and the values read in
// half rows, one accumulator each) ran at ~12 GB/s where a plain read of the same bytes runs at
// ~18-25 GB/s. Here the scores of every row and head are computed first (the keys read in one
// stream), then the weighted values (the values in one stream, each slot's row whole, two
// accumulators per vector so the sums do not wait on each other). Every slot is read, masked or
// not: skipping the masked ones leaves gaps in the streams that cost more than they save.
//
// Shapes: q (r, g, n, e) (n query heads per key/value head), k_cache / v_cache (r, g, m, e),
// bias (r, m), k / v (r, g, 1, e); returns (r, g, n, e). All float32 on the CPU.

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

inline float dot(const float* a, const float* b, int64_t e) {
  const int64_t vs = Vec::size();
  int64_t c = 0;
  float acc = 0.f;
  if (e >= vs) {
    Vec s = Vec::loadu(a) * Vec::loadu(b);
    for (c = vs; c + vs <= e; c += vs) s = at::vec::fmadd(Vec::loadu(a + c), Vec::loadu(b + c), s);
    acc = at::vec::vec_reduce_all<float>([](const Vec& x, const Vec& y) { return x + y; }, s);
  }
  for (; c < e; ++c) acc += a[c] * b[c];
  return acc;
}

// out[0:e] = sum_t p[t] * v[t, 0:e] over t in [0, m), NC vectors per row (e == NC * Vec::size())
template <int NC>
void weighted_rows(const float* p, const float* v, int64_t m, float* out) {
  const int64_t vs = Vec::size(), e = NC * vs;
  Vec a[NC], b[NC];
  for (int c = 0; c < NC; ++c) a[c] = b[c] = Vec(0.f);
  int64_t t = 0;
  for (; t + 1 < m; t += 2) {
    const float* r0 = v + t * e;
    const Vec p0(p[t]), p1(p[t + 1]);
    for (int c = 0; c < NC; ++c) {
      a[c] = at::vec::fmadd(p0, Vec::loadu(r0 + c * vs), a[c]);
      b[c] = at::vec::fmadd(p1, Vec::loadu(r0 + e + c * vs), b[c]);
    }
  }
  if (t < m) {
    const Vec p0(p[t]);
    for (int c = 0; c < NC; ++c) a[c] = at::vec::fmadd(p0, Vec::loadu(v + t * e + c * vs), a[c]);
  }
  for (int c = 0; c < NC; ++c) (a[c] + b[c]).store(out + c * vs);
}

void weighted_rows_any(const float* p, const float* v, int64_t m, int64_t e, float* out) {
  for (int64_t c = 0; c < e; ++c) out[c] = 0.f;
  for (int64_t t = 0; t < m; ++t)
    for (int64_t c = 0; c < e; ++c) out[c] += p[t] * v[t * e + c];
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& kc_in,
                            const at::Tensor& vc_in, const at::Tensor& bias_in,
                            const at::Tensor& k_in, const at::Tensor& v_in, double scale) {
  TORCH_CHECK(q_in.dim() == 4 && kc_in.dim() == 4 && vc_in.dim() == 4 && bias_in.dim() == 2 &&
                  k_in.dim() == 4 && v_in.dim() == 4,
              "decode_attention: expected q (r, g, n, e), caches (r, g, m, e), bias (r, m), "
              "k / v (r, g, 1, e)");
  for (const at::Tensor* t : {&q_in, &kc_in, &vc_in, &bias_in, &k_in, &v_in})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "decode_attention: float32 CPU tensors only");
  const int64_t r = q_in.size(0), g = q_in.size(1), n = q_in.size(2), e = q_in.size(3);
  const int64_t m = kc_in.size(2);
  TORCH_CHECK(kc_in.sizes() == vc_in.sizes() && kc_in.size(0) == r && kc_in.size(1) == g &&
                  kc_in.size(3) == e && bias_in.size(0) == r && bias_in.size(1) == m &&
                  k_in.size(0) == r && k_in.size(1) == g && k_in.size(2) == 1 &&
                  k_in.size(3) == e && k_in.sizes() == v_in.sizes(),
              "decode_attention: shapes do not match");
  const at::Tensor q = q_in.contiguous(), kc = kc_in.contiguous(), vc = vc_in.contiguous(),
                   bias = bias_in.contiguous(), kn = k_in.contiguous(), vn = v_in.contiguous();
  at::Tensor out = at::empty({r, g, n, e}, q.options());
  const float* Q = q.data_ptr<float>();
  const float* K = kc.data_ptr<float>();
  const float* V = vc.data_ptr<float>();
  const float* B = bias.data_ptr<float>();
  const float* KN = kn.data_ptr<float>();
  const float* VN = vn.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const int64_t rows = r * g * n, stride = m + 1;  // one query each; its m weights + the new one
  std::vector<float> P(rows * stride);
  const float sc = static_cast<float>(scale);
  const int64_t vs = Vec::size();

  // 1. scores and their exponentials, every row's keys in one stream
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x) {
      const int64_t rg = x / n, i = rg / g;          // query x reads cache rows of (row, head)
      const float* qa = Q + x * e;
      const float* kb = K + rg * m * e;
      const float* b = B + i * m;
      float* p = P.data() + x * stride;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t t = 0; t < m; ++t) {
        const float s = dot(qa, kb + t * e, e) * sc + b[t];
        p[t] = s;
        top = s > top ? s : top;
      }
      const float s_new = dot(qa, KN + rg * e, e) * sc;
      top = s_new > top ? s_new : top;
      int64_t t = 0;
      const Vec tv(top);
      for (; t + vs <= m; t += vs) (Vec::loadu(p + t) - tv).exp().store(p + t);
      for (; t < m; ++t) p[t] = std::exp(p[t] - top);
      p[m] = std::exp(s_new - top);
    }
  });

  // 2. the weighted values, every row's values in one stream
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x) {
      const int64_t rg = x / n;
      const float* p = P.data() + x * stride;
      const float* vb = V + rg * m * e;
      float* o = O + x * e;
      if (e == vs) weighted_rows<1>(p, vb, m, o);
      else if (e == 2 * vs) weighted_rows<2>(p, vb, m, o);
      else if (e == 4 * vs) weighted_rows<4>(p, vb, m, o);
      else if (e == 8 * vs) weighted_rows<8>(p, vb, m, o);
      else weighted_rows_any(p, vb, m, e, o);
      float total = 0.f;
      for (int64_t t = 0; t <= m; ++t) total += p[t];
      const float p_new = p[m];
      const float* vn = VN + rg * e;
      for (int64_t c = 0; c < e; ++c) o[c] = (o[c] + p_new * vn[c]) / total;
    }
  });
  return out;
}

at::Tensor decode_attention_meta(const at::Tensor& q, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 double) {
  return at::empty_like(q, q.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace

TORCH_LIBRARY(unimm, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor bias, Tensor k, "
        "Tensor v, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(unimm, CPU, m) { m.impl("decode_attention", decode_attention); }
TORCH_LIBRARY_IMPL(unimm, Meta, m) { m.impl("decode_attention", decode_attention_meta); }
