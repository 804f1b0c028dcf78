// The LSTM over a whole sequence on a CPU, forwards and backwards, as two XLA FFI handlers.
//
// The equations are lstm_jax.cells.lstm_cell's (Keras's gate order i, f, c, o; the candidate
// is called g here):
//
//   z_t = x_t W + h_{t-1} U + b          i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_g)
//   c_t = f * c_{t-1} + i * g            h_t = o * tanh(c_t)
//
// and the backward pass, with dh_t = dy_t + dz_{t+1} U^T and dc_t carried from t + 1:
//
//   dc_t += dh_t * o * (1 - tanh(c_t)^2)         dc_{t-1} = dc_t * f
//   dz = [dc_t g i (1 - i), dc_t c_{t-1} f (1 - f), dc_t i (1 - g^2), dh_t tanh(c_t) o (1 - o)]
//   dW = X^T dZ     dU = H_{t-1}^T dZ     db = sum dZ     dX = dZ W^T     (over all steps)
//
// Shapes, row-major: xs [T, N, D], h0 and c0 [N, U], kernel W [D, 4U], recurrent_kernel
// U [U, 4U], bias [4U]. Each step is one product, [x_t, h_{t-1}] [N, D + U] by [W; U], and
// the backward's dz_t U^T: oneDNN's matmul primitive, its weights reordered once a call into
// the layout its kernels read fastest. The weight gradients and dX are one product each over
// all steps after the backward's time loop (oneDNN's sgemm). All run on `threads` OpenMP
// threads, which split a product's columns and the gate arithmetic's batch rows; the gate
// arithmetic is vectorised here.
//
// Forward results: hs [T, N, U] (h_T is hs[T - 1]), c_T [N, U], and what the backward reads:
// the activations [T, N, 4U] (i, f, g, o), the cell states [T, N, U] and the [x_t, h_{t-1}]
// rows [T, N, D + U].

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// tanh(x) for float, within 4e-7 of the exact value: a rational function of x (Eigen's and
// XLA's CPU tanh) that compilers vectorise. NaN in gives NaN out.
inline float Tanh(float x) {
  const float bound = 7.90531110763549805f;  // tanh is 1 to within float's precision beyond
  x = std::min(std::max(x, -bound), bound);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

inline float Sigmoid(float x) { return 0.5f + 0.5f * Tanh(0.5f * x); }

// Row-major c [m, n] = a [m, k] @ b [k, n], with row strides lda, ldb, ldc.
inline void Gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc) {
  dnnl_sgemm('N', 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

// The time loop's product, [M, K] @ [K, N] with the same right operand at every step:
// oneDNN's matmul primitive with that operand reordered once into the layout its kernels
// read fastest. Primitives are made once per shape and thread count and shared.
class StepProduct {
 public:
  StepProduct(const float* b, int64_t m, int64_t k, int64_t n, int64_t lda, int64_t ldc,
              int threads)
      : plan_(GetPlan(m, k, n, lda, ldc, threads)),
        engine_(Engine()),
        stream_(engine_),
        packed_(plan_->pd.weights_desc(), engine_) {
    dnnl::memory user({{k, n}, dnnl::memory::data_type::f32, dnnl::memory::format_tag::ab},
                      engine_, const_cast<float*>(b));
    // Each call has its own scratch memory: oneDNN's shared one is not safe when devices
    // call at the same time.
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::reorder::primitive_desc reorder_pd(user, packed_, attr);
    const size_t scratch = std::max(reorder_pd.scratchpad_desc().get_size(),
                                    plan_->pd.scratchpad_desc().get_size());
    scratch_.resize(scratch + 1);
    dnnl::memory reorder_scratch(reorder_pd.scratchpad_desc(), engine_, scratch_.data());
    dnnl::reorder(reorder_pd).execute(stream_, {{DNNL_ARG_FROM, user},
                                                {DNNL_ARG_TO, packed_},
                                                {DNNL_ARG_SCRATCHPAD, reorder_scratch}});
    scratchpad_ = dnnl::memory(plan_->pd.scratchpad_desc(), engine_, scratch_.data());
  }

  // c [M, N] (row stride ldc) = a [M, K] (row stride lda) @ b.
  void operator()(const float* a, float* c) {
    dnnl::memory am(plan_->pd.src_desc(), engine_, const_cast<float*>(a));
    dnnl::memory cm(plan_->pd.dst_desc(), engine_, c);
    plan_->prim.execute(stream_, {{DNNL_ARG_SRC, am},
                                  {DNNL_ARG_WEIGHTS, packed_},
                                  {DNNL_ARG_DST, cm},
                                  {DNNL_ARG_SCRATCHPAD, scratchpad_}});
  }

 private:
  struct Plan {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };

  static dnnl::engine& Engine() {
    static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
  }

  static Plan* GetPlan(int64_t m, int64_t k, int64_t n, int64_t lda, int64_t ldc,
                       int threads) {
    using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int>;
    static std::mutex mutex;
    static std::map<Key, std::unique_ptr<Plan>> plans;
    std::lock_guard<std::mutex> lock(mutex);
    auto& plan = plans[{m, k, n, lda, ldc, threads}];
    if (!plan) {
      using dt = dnnl::memory::data_type;
      dnnl::memory::desc a({m, k}, dt::f32, {lda, 1});
      dnnl::memory::desc b({k, n}, dt::f32, dnnl::memory::format_tag::any);
      dnnl::memory::desc c({m, n}, dt::f32, {ldc, 1});
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      auto pd = dnnl::matmul::primitive_desc(Engine(), a, b, c, attr);
      plan = std::make_unique<Plan>(Plan{pd, dnnl::matmul(pd)});
    }
    return plan.get();
  }

  Plan* plan_;
  dnnl::engine& engine_;
  dnnl::stream stream_;
  dnnl::memory packed_;
  std::vector<uint8_t> scratch_;
  dnnl::memory scratchpad_;
};

// out [cols, rows] = in [rows, cols]^T, so that every product below is a plain one
// (oneDNN's sgemm is slower on a transposed operand).
void Transpose(const float* in, int64_t rows, int64_t cols, float* out) {
  constexpr int64_t kBlock = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock)
      for (int64_t r = r0; r < std::min(r0 + kBlock, rows); ++r)
        for (int64_t c = c0; c < std::min(c0 + kBlock, cols); ++c)
          out[c * rows + r] = in[r * cols + c];
}

// One forward step's gates for batch rows [r0, r1): z (x_t W + h_{t-1} U, [N, 4U]) becomes
// the activations i, f, g, o; c_t is written, and h_t both to h and to h_next (the next
// step's row of [x, h], row stride next_stride; null after the last step).
__attribute__((target_clones("avx512f", "avx2", "default"))) void ForwardGates(
    float* z, const float* bias, const float* c_prev, float* c, float* h, float* h_next,
    int64_t next_stride, int64_t r0, int64_t r1, int64_t u) {
  for (int64_t r = r0; r < r1; ++r) {
    float* zr = z + r * 4 * u;
    const float* cp = c_prev + r * u;
    float* cr = c + r * u;
    float* hr = h + r * u;
#pragma omp simd
    for (int64_t j = 0; j < u; ++j) {
      const float i = Sigmoid(zr[j] + bias[j]);
      const float f = Sigmoid(zr[u + j] + bias[u + j]);
      const float g = Tanh(zr[2 * u + j] + bias[2 * u + j]);
      const float o = Sigmoid(zr[3 * u + j] + bias[3 * u + j]);
      zr[j] = i;
      zr[u + j] = f;
      zr[2 * u + j] = g;
      zr[3 * u + j] = o;
      const float cn = f * cp[j] + i * g;
      cr[j] = cn;
      hr[j] = o * Tanh(cn);
    }
    if (h_next != nullptr) std::memcpy(h_next + r * next_stride, hr, u * sizeof(float));
  }
}

// One backward step for batch rows [r0, r1): reads dh_t (dy_t plus the carried dh), the
// carried dc (updated to dc_{t-1}), the step's activations and cell states; writes dz.
__attribute__((target_clones("avx512f", "avx2", "default"))) void BackwardGates(
    const float* act, const float* c, const float* c_prev, const float* dy, const float* dh,
    float* dc, float* dz, int64_t r0, int64_t r1, int64_t u) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* a = act + r * 4 * u;
    const float* cr = c + r * u;
    const float* cp = c_prev + r * u;
    const float* dyr = dy + r * u;
    const float* dhr = dh + r * u;
    float* dcr = dc + r * u;
    float* dzr = dz + r * 4 * u;
#pragma omp simd
    for (int64_t j = 0; j < u; ++j) {
      const float i = a[j], f = a[u + j], g = a[2 * u + j], o = a[3 * u + j];
      const float tc = Tanh(cr[j]);
      const float dht = dyr[j] + dhr[j];
      const float dct = dcr[j] + dht * o * (1.0f - tc * tc);
      dzr[j] = dct * g * i * (1.0f - i);
      dzr[u + j] = dct * cp[j] * f * (1.0f - f);
      dzr[2 * u + j] = dct * i * (1.0f - g * g);
      dzr[3 * u + j] = dht * tc * o * (1.0f - o);
      dcr[j] = dct * f;
    }
  }
}

// Runs fn(r0, r1) over the batch rows, split across the OpenMP threads when there is enough
// work to pay for waking them.
template <typename Fn>
void OverRows(int64_t n, int64_t u, int threads, Fn fn) {
  if (threads <= 1 || n < 2 || n * u < 2048) {
    fn(0, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int k = omp_get_thread_num(), m = omp_get_num_threads();
    fn(n * k / m, n * (k + 1) / m);
  }
}

// Runs fn; a failure inside oneDNN (or of memory) becomes an error JAX raises, not a crash.
template <typename Fn>
ffi::Error Guarded(Fn fn) {
  try {
    return fn();
  } catch (const std::exception& error) {
    return ffi::Error::Internal(std::string("lstm_cpu: ") + error.what());
  }
}

// The forward pass. Results: hs [T, N, U], c_T [N, U], and for the backward pass (or, when
// it will not run, arrays of size 0): the activations [T, N, 4U], the cell states [T, N, U]
// and each step's [x_t, h_{t-1}] rows, [T, N, D + U].
ffi::Error Forward(ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> recurrent,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> hs,
                   ffi::ResultBuffer<ffi::F32> c_last, ffi::ResultBuffer<ffi::F32> act,
                   ffi::ResultBuffer<ffi::F32> cs, ffi::ResultBuffer<ffi::F32> xh_all,
                   int64_t threads) {
  return Guarded([&] {
    const auto dims = xs.dimensions();
    if (dims.size() != 3 || h0.dimensions().size() != 2)
      return ffi::Error::InvalidArgument("lstm_cpu: xs must be [T, N, D] and h0 [N, U]");
    const int64_t t_len = dims[0], n = dims[1], d = dims[2], u = h0.dimensions()[1];
    const int64_t g4 = 4 * u, k = d + u;
    const bool keep = act->element_count() == t_len * n * g4;
    omp_set_num_threads(static_cast<int>(threads));
    // Without the backward pass's buffers, the steps use their own, two steps deep.
    std::vector<float> own;
    float *z = act->typed_data(), *c_all = cs->typed_data(), *xh = xh_all->typed_data();
    if (!keep) {
      own.resize(2 * n * (g4 + u + k));
      z = own.data();
      c_all = z + 2 * n * g4;
      xh = c_all + 2 * n * u;
    }
    std::vector<float> weights(k * g4);  // [W; U]
    std::memcpy(weights.data(), kernel.typed_data(), d * g4 * sizeof(float));
    std::memcpy(weights.data() + d * g4, recurrent.typed_data(), u * g4 * sizeof(float));
    StepProduct product(weights.data(), n, k, g4, k, g4, static_cast<int>(threads));
    const float* x = xs.typed_data();
    for (int64_t r = 0; r < n; ++r) std::memcpy(xh + r * k + d, h0.typed_data() + r * u, u * 4);
    const float* c_prev = c0.typed_data();
    for (int64_t t = 0; t < t_len; ++t) {
      const int64_t slot = keep ? t : t % 2, next = keep ? t + 1 : (t + 1) % 2;
      float* xht = xh + slot * n * k;
      for (int64_t r = 0; r < n; ++r) std::memcpy(xht + r * k, x + (t * n + r) * d, d * 4);
      float* zt = z + slot * n * g4;
      product(xht, zt);
      float* ct = c_all + slot * n * u;
      float* ht = hs->typed_data() + t * n * u;
      float* h_next = t + 1 < t_len ? xh + next * n * k + d : nullptr;
      OverRows(n, u, static_cast<int>(threads), [&](int64_t r0, int64_t r1) {
        ForwardGates(zt, bias.typed_data(), c_prev, ct, ht, h_next, k, r0, r1, u);
      });
      c_prev = ct;
    }
    std::memcpy(c_last->typed_data(), c_prev, n * u * sizeof(float));
    return ffi::Error::Success();
  });
}

// The backward pass, from the forward's results and the cotangents of hs, h_T and c_T.
ffi::Error Backward(ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> kernel,
                    ffi::Buffer<ffi::F32> recurrent, ffi::Buffer<ffi::F32> act,
                    ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> xh,
                    ffi::Buffer<ffi::F32> dhs, ffi::Buffer<ffi::F32> dh_last,
                    ffi::Buffer<ffi::F32> dc_last, ffi::ResultBuffer<ffi::F32> dxs,
                    ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0,
                    ffi::ResultBuffer<ffi::F32> dkernel, ffi::ResultBuffer<ffi::F32> drecurrent,
                    ffi::ResultBuffer<ffi::F32> dbias, ffi::ResultBuffer<ffi::F32> dz_all,
                    int64_t threads) {
  return Guarded([&] {
    const auto dims = dhs.dimensions();
    const int64_t t_len = dims[0], n = dims[1], u = dims[2], d = kernel.dimensions()[0];
    const int64_t g4 = 4 * u, k = d + u, rows = t_len * n;
    omp_set_num_threads(static_cast<int>(threads));
    float* dz = dz_all->typed_data();
    float* dh = dh0->typed_data();  // the carried dh, dh_0 at the end
    float* dc = dc0->typed_data();  // the carried dc, dc_0 at the end
    std::memcpy(dh, dh_last.typed_data(), n * u * sizeof(float));
    std::memcpy(dc, dc_last.typed_data(), n * u * sizeof(float));
    std::vector<float> recurrent_t(g4 * u);
    Transpose(recurrent.typed_data(), u, g4, recurrent_t.data());
    StepProduct product(recurrent_t.data(), n, g4, u, g4, u, static_cast<int>(threads));
    float* db = dbias->typed_data();
    std::fill(db, db + g4, 0.0f);
    for (int64_t t = t_len - 1; t >= 0; --t) {
      const float* c_prev = t > 0 ? cs.typed_data() + (t - 1) * n * u : c0.typed_data();
      float* dzt = dz + t * n * g4;
      const float* at = act.typed_data() + t * n * g4;
      const float* ct = cs.typed_data() + t * n * u;
      const float* dy = dhs.typed_data() + t * n * u;
      OverRows(n, u, static_cast<int>(threads), [&](int64_t r0, int64_t r1) {
        BackwardGates(at, ct, c_prev, dy, dh, dc, dzt, r0, r1, u);
      });
      product(dzt, dh);
      for (int64_t r = 0; r < n; ++r) {
        const float* row = dzt + r * g4;
  #pragma omp simd
        for (int64_t j = 0; j < g4; ++j) db[j] += row[j];
      }
    }
    // Over all steps at once: [dW; dU] = [X, H_{t-1}]^T dZ and dX = dZ W^T.
    std::vector<float> other(std::max(rows * k, g4 * d));
    Transpose(xh.typed_data(), rows, k, other.data());
    Gemm(d, g4, rows, other.data(), rows, dz, g4, dkernel->typed_data(), g4);
    Gemm(u, g4, rows, other.data() + d * rows, rows, dz, g4,
         drecurrent->typed_data(), g4);
    Transpose(kernel.typed_data(), d, g4, other.data());
    Gemm(rows, d, g4, dz, g4, other.data(), d, dxs->typed_data(), d);
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent_kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // activations
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cell states
                                  .Ret<ffi::Buffer<ffi::F32>>()  // [x, h] rows
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // recurrent_kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()  // activations
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cell states
                                  .Arg<ffi::Buffer<ffi::F32>>()  // [x, h] rows
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d h_T
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d c_T
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d xs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d h0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d c0
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d recurrent_kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dz, the backward's buffer
                                  .Attr<int64_t>("threads"));
