// The LSTM and the GRU over a whole sequence on a CPU, forwards and backwards, as XLA FFI
// handlers: for each cell, one pair for float32 and one for bfloat16. The GRU's are at the
// end, after the LSTM's.
//
// The LSTM's equations are lstm_jax.cells.lstm_cell's (Keras's gate order i, f, c, o; the candidate
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
// U [U, 4U], bias [4U], all of one dtype T (float32 or bfloat16). The time loop runs on one
// team of `threads` threads (Team, the kernel's own) for the whole sequence, the units split
// among them: each thread packs its units' columns of [W; U] (forwards) or rows of U
// (backwards) once a call and keeps them in its own cache from step to step. A step is, on
// each thread, one product through oneDNN's matmul primitive, [x_t, h_{t-1}] [N, D + U] by
// its columns of [W; U], and its units' gates, then one barrier for the other threads' part
// of h_t; backwards, its units' gate derivatives, a barrier for the whole dz_t, and its
// units' dh_{t-1} = dz_t U^T. The weight gradients and dX are products over all steps after
// the backward's time loop, each thread its units' columns of [dW; dU] and a share of dX's
// rows. The gate arithmetic is vectorised here, in float32. In bfloat16 the products read
// bfloat16 and sum in float32 (on AMX where the CPU has it), as PyTorch's autocast runs them;
// the cell state and the gates stay float32 inside, and what leaves the kernel is rounded to
// bfloat16.
//
// Forward results: hs [T, N, U] (h_T is hs[T - 1]), c_T [N, U], and what the backward reads:
// the activations [T, N, 4U] (i, f, g, o) and the cell states [T, N, U], float32, and the
// [x_t, h_{t-1}] rows [T, N, D + U] in T.

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
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

using bf16 = uint16_t;  // XLA's FFI hands bfloat16 over as its bits

inline float ToFloat(float x) { return x; }

inline float ToFloat(bf16 x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T FromFloat(float x);

template <>
inline float FromFloat<float>(float x) {
  return x;
}

// Rounded to the nearest bfloat16, ties to even (a NaN stays a NaN).
template <>
inline bf16 FromFloat<bf16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16>(bits >> 16);
}

template <typename T>
void Convert(const float* in, int64_t count, T* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = FromFloat<T>(in[k]);
}

template <typename T>
void ToFloats(const T* in, int64_t count, float* out) {
  for (int64_t k = 0; k < count; ++k) out[k] = ToFloat(in[k]);
}

// `count` elements of each of `rows` rows, from `in` (row stride in_stride) to `out` (row
// stride out_stride): a slice's columns out of a wider matrix, or back into it.
template <typename T>
void CopyRows(const T* in, int64_t in_stride, T* out, int64_t out_stride, int64_t rows,
              int64_t count) {
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out + r * out_stride, in + r * in_stride, count * sizeof(T));
}

template <typename T>
constexpr dnnl::memory::data_type Dtype() {
  return std::is_same_v<T, float> ? dnnl::memory::data_type::f32
                                  : dnnl::memory::data_type::bf16;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// c [M, N] (float32, row stride ldc) = a [M, K] @ b [K, N] through oneDNN's matmul primitive,
// made once per shape, layout, dtype and thread count and shared. Each Product has its own
// scratch memory: oneDNN's shared one is not safe when devices call at the same time. With
// `pack`, b is one matrix for every call (a step's weights), reordered once into the layout
// the primitive reads fastest; otherwise b is given at each call, in the layout described.
class Product {
 public:
  // a's and b's strides (row, column) describe their layout: {lda, 1} plain, {1, lda} the
  // transpose of a plain [K, M] matrix.
  Product(int64_t m, int64_t k, int64_t n, dnnl::memory::data_type dt,
          dnnl::memory::dims a_strides, dnnl::memory::dims b_strides, int64_t ldc,
          const void* packed_b, int threads)
      : plan_(GetPlan(m, k, n, dt, a_strides, packed_b ? dnnl::memory::dims{} : b_strides, ldc,
                      threads)),
        stream_(Engine()) {
    const auto& pd = plan_->pd;
    size_t scratch = pd.scratchpad_desc().get_size();
    if (packed_b != nullptr) {
      dnnl::memory user({{k, n}, dt, b_strides}, Engine(), const_cast<void*>(packed_b));
      packed_ = dnnl::memory(pd.weights_desc(), Engine());
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      dnnl::reorder::primitive_desc reorder_pd(user, packed_, attr);
      scratch_.resize(std::max(scratch, reorder_pd.scratchpad_desc().get_size()) + 1);
      dnnl::memory reorder_scratch(reorder_pd.scratchpad_desc(), Engine(), scratch_.data());
      dnnl::reorder(reorder_pd).execute(stream_, {{DNNL_ARG_FROM, user},
                                                  {DNNL_ARG_TO, packed_},
                                                  {DNNL_ARG_SCRATCHPAD, reorder_scratch}});
    } else {
      scratch_.resize(scratch + 1);
    }
    scratchpad_ = dnnl::memory(pd.scratchpad_desc(), Engine(), scratch_.data());
  }

  void operator()(const void* a, float* c, const void* b = nullptr) {
    // The memory objects and the argument map are made once; each call swaps the pointers.
    if (args_.empty()) {
      const auto& pd = plan_->pd;
      a_ = dnnl::memory(pd.src_desc(), Engine(), nullptr);
      c_ = dnnl::memory(pd.dst_desc(), Engine(), nullptr);
      if (!packed_) packed_ = dnnl::memory(pd.weights_desc(), Engine(), nullptr);
      args_ = {{DNNL_ARG_SRC, a_},
               {DNNL_ARG_WEIGHTS, packed_},
               {DNNL_ARG_DST, c_},
               {DNNL_ARG_SCRATCHPAD, scratchpad_}};
    }
    a_.set_data_handle(const_cast<void*>(a));
    c_.set_data_handle(c);
    if (b != nullptr) packed_.set_data_handle(const_cast<void*>(b));
    plan_->prim.execute(stream_, args_);
  }

 private:
  struct Plan {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
  };

  // b_strides empty: b in the layout the primitive chooses (to be packed into).
  static Plan* GetPlan(int64_t m, int64_t k, int64_t n, dnnl::memory::data_type dt,
                       const dnnl::memory::dims& a_strides, const dnnl::memory::dims& b_strides,
                       int64_t ldc, int threads) {
    using Key = std::tuple<int64_t, int64_t, int64_t, int, dnnl::memory::dims,
                           dnnl::memory::dims, int64_t, int>;
    static std::mutex mutex;
    static std::map<Key, std::unique_ptr<Plan>> plans;
    std::lock_guard<std::mutex> lock(mutex);
    auto& plan = plans[{m, k, n, static_cast<int>(dt), a_strides, b_strides, ldc, threads}];
    if (!plan) {
      dnnl::memory::desc a({m, k}, dt, a_strides);
      dnnl::memory::desc b = b_strides.empty()
                                 ? dnnl::memory::desc({k, n}, dt, dnnl::memory::format_tag::any)
                                 : dnnl::memory::desc({k, n}, dt, b_strides);
      dnnl::memory::desc c({m, n}, dnnl::memory::data_type::f32, {ldc, 1});
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      auto pd = dnnl::matmul::primitive_desc(Engine(), a, b, c, attr);
      plan = std::make_unique<Plan>(Plan{pd, dnnl::matmul(pd)});
    }
    return plan.get();
  }

  Plan* plan_;
  dnnl::stream stream_;
  dnnl::memory packed_;  // b, packed or given at each call
  std::vector<uint8_t> scratch_;
  dnnl::memory scratchpad_;
  dnnl::memory a_, c_;
  std::unordered_map<int, dnnl::memory> args_;
};

// a [M, K] @ b [K, N] (layouts as Product's) into results of type T that hold its rows in
// blocks: {result, rows} in order, M in all. In float32 each block's product writes its
// result itself; in bfloat16 it sums in float32 and is rounded.
template <typename T>
void ProductInto(const T* a, dnnl::memory::dims a_strides, const T* b,
                 dnnl::memory::dims b_strides, int64_t k, int64_t n,
                 std::initializer_list<std::pair<T*, int64_t>> blocks, int threads) {
  std::vector<float> sums;
  int64_t first = 0;
  for (auto [result, rows] : blocks) {
    Product product(rows, k, n, Dtype<T>(), a_strides, b_strides, n, nullptr, threads);
    const T* a_rows = a + first * a_strides[0];
    if constexpr (std::is_same_v<T, float>) {
      product(a_rows, result, b);
    } else {
      sums.resize(rows * n);
      product(a_rows, sums.data(), b);
      Convert(sums.data(), rows * n, result);
    }
    first += rows;
  }
}

// One thread's share of the LSTM's units, [lo, hi).
struct Slice {
  int64_t lo, hi;
};

// At most `threads` slices, of at least 16 units each.
std::vector<Slice> Slices(int64_t u, int threads) {
  const int64_t count = std::max<int64_t>(1, std::min<int64_t>(threads, u / 16));
  std::vector<Slice> slices;
  for (int64_t s = 0; s < count; ++s) slices.push_back({u * s / count, u * (s + 1) / count});
  return slices;
}

// Waits a moment: the CPU's hint that this thread spins.
inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Spins until ready(); after many rounds, gives its core to another thread between checks
// (more threads than cores).
template <typename Ready>
void SpinUntil(Ready ready) {
  for (int round = 0; !ready(); ++round) {
    if (round < 4096) {
      Pause();
    } else {
      std::this_thread::yield();
    }
  }
}

// A team of the kernel's own threads that runs one call's time loop: the caller and
// `threads - 1` helpers, each with its slices of the units, in the same order at every call
// (a slice's cache stays with one thread). Between two steps the threads meet at a barrier
// that spins: while a call runs, each has a core. Between calls the helpers spin a moment
// (the backward call comes soon after the forward one), then sleep until the next call, so
// that XLA's own operations have the cores. Teams are made once and reused, a device's calls
// on the one it last used (Acquire); calls made at the same time get different teams. Every
// thread reaches the same barriers, also after an exception, which is kept and rethrown by
// Run once the team is done. Never destroyed: the helpers wait for work until the process
// ends.
class Team {
 public:
  // An idle team of `threads` threads, the most recently used, or a new one.
  static Team* Acquire(int threads) {
    auto& pool = Pool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    auto& idle = pool.idle[threads];
    if (idle.empty()) return new Team(threads);
    Team* team = idle.back();
    idle.pop_back();
    return team;
  }

  static void Release(Team* team) {
    auto& pool = Pool();
    std::lock_guard<std::mutex> lock(pool.mutex);
    pool.idle[team->threads_].push_back(team);
  }

  // Runs body(for_mine, barrier) on every thread of the team: for_mine(fn) runs fn(s) for
  // this thread's slices of `slices`, barrier() waits for the whole team.
  template <typename Body>
  void Run(size_t slices, Body body) {
    failed_ = false;
    work_ = [&](int tid) {
      auto for_mine = [&](auto fn) {
        for (size_t s = tid; s < slices; s += threads_) {
          if (failed_) return;
          try {
            fn(s);
          } catch (const std::exception& error) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!failed_) error_ = error.what();
            failed_ = true;
          }
        }
      };
      body(for_mine, [this] { Barrier(); });
    };
    finished_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      call_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    omp_set_num_threads(1);  // oneDNN's products and reorders on this thread alone
    work_(0);
    SpinUntil([&] { return finished_.load(std::memory_order_acquire) == threads_ - 1; });
    work_ = nullptr;
    if (failed_) throw std::runtime_error(error_);
  }

 private:
  struct Teams {
    std::mutex mutex;
    std::map<int, std::vector<Team*>> idle;
  };

  static Teams& Pool() {
    static Teams* pool = new Teams;
    return *pool;
  }

  explicit Team(int threads) : threads_(threads) {
    for (int tid = 1; tid < threads; ++tid) std::thread([this, tid] { Help(tid); }).detach();
  }

  void Help(int tid) {
    omp_set_num_threads(1);
    uint64_t seen = 0;
    for (;;) {
      auto called = [&] { return call_.load(std::memory_order_acquire) != seen; };
      for (int round = 0; round < 8192 && !called(); ++round) Pause();
      if (!called()) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, called);
      }
      seen = call_.load(std::memory_order_acquire);
      work_(tid);
      finished_.fetch_add(1, std::memory_order_release);
    }
  }

  // Waits for every thread of the team; the last to arrive lets the others go.
  void Barrier() {
    const uint64_t round = round_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      round_.store(round + 1, std::memory_order_release);
    } else {
      SpinUntil([&] { return round_.load(std::memory_order_acquire) != round; });
    }
  }

  const int threads_;
  std::function<void(int)> work_;
  std::atomic<uint64_t> call_{0};  // calls so far: a helper starts on a new value
  std::atomic<int> finished_{0};   // helpers done with this call
  std::atomic<int> arrived_{0};    // threads at the barrier
  std::atomic<uint64_t> round_{0};
  std::atomic<bool> failed_{false};
  std::string error_;
  std::mutex mutex_;
  std::condition_variable wake_;
};

// A team from Team::Acquire for one call, released when the call is done.
class TeamFor {
 public:
  explicit TeamFor(int threads) : team_(Team::Acquire(threads)) {}
  ~TeamFor() { Team::Release(team_); }
  Team* operator->() { return team_; }

 private:
  Team* team_;
};

// One forward step's gates for the units [lo, lo + us) of every batch row: z is the slice's
// product ([N, 4us], gate blocks i, f, g, o of us columns each). Writes the activations to act
// (row stride 4U, gate block k at column k U + lo), c_t, and h_t both to h and to h_next (the
// next step's row of [x, h], row stride next_stride; null after the last step).
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void ForwardGates(
    const float* z, const T* bias, const float* c_prev, float* c, float* act, T* h, T* h_next,
    int64_t next_stride, int64_t n, int64_t u, int64_t lo, int64_t us) {
  const T* b = bias + lo;
  for (int64_t r = 0; r < n; ++r) {
    const float* zr = z + r * 4 * us;
    float* ar = act + r * 4 * u + lo;
    const float* cp = c_prev + r * u + lo;
    float* cr = c + r * u + lo;
    T* hr = h + r * u + lo;
#pragma omp simd
    for (int64_t j = 0; j < us; ++j) {
      const float i = Sigmoid(zr[j] + ToFloat(b[j]));
      const float f = Sigmoid(zr[us + j] + ToFloat(b[u + j]));
      const float g = Tanh(zr[2 * us + j] + ToFloat(b[2 * u + j]));
      const float o = Sigmoid(zr[3 * us + j] + ToFloat(b[3 * u + j]));
      ar[j] = i;
      ar[u + j] = f;
      ar[2 * u + j] = g;
      ar[3 * u + j] = o;
      const float cn = f * cp[j] + i * g;
      cr[j] = cn;
      hr[j] = FromFloat<T>(o * Tanh(cn));
    }
    if (h_next != nullptr) std::memcpy(h_next + r * next_stride + lo, hr, us * sizeof(T));
  }
}

// One backward step for the units [lo, lo + us) of every batch row: reads dh_t (dy_t plus
// the carried dh, the slice's own [N, us]), the carried dc (updated to dc_{t-1}), the step's
// activations and cell states; writes dz (row stride 4U), in T too (dz_t, what the step's
// product reads; the same array in float32), and adds dz to db.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void BackwardGates(
    const float* act, const float* c, const float* c_prev, const T* dy, const float* dh,
    float* dc, float* dz, T* dz_t, float* db, int64_t n, int64_t u, int64_t lo, int64_t us) {
  float* dbs = db + lo;
  for (int64_t r = 0; r < n; ++r) {
    const float* a = act + r * 4 * u + lo;
    const int64_t at = r * u + lo;
    const float *cr = c + at, *cp = c_prev + at, *dhr = dh + r * us;
    const T* dyr = dy + at;
    float* dcr = dc + at;
    float* dzr = dz + r * 4 * u + lo;
#pragma omp simd
    for (int64_t j = 0; j < us; ++j) {
      const float i = a[j], f = a[u + j], g = a[2 * u + j], o = a[3 * u + j];
      const float tc = Tanh(cr[j]);
      const float dht = ToFloat(dyr[j]) + dhr[j];
      const float dct = dcr[j] + dht * o * (1.0f - tc * tc);
      const float di = dct * g * i * (1.0f - i), df = dct * cp[j] * f * (1.0f - f);
      const float dg = dct * i * (1.0f - g * g), d_o = dht * tc * o * (1.0f - o);
      dzr[j] = di;
      dzr[u + j] = df;
      dzr[2 * u + j] = dg;
      dzr[3 * u + j] = d_o;
      dbs[j] += di;
      dbs[u + j] += df;
      dbs[2 * u + j] += dg;
      dbs[3 * u + j] += d_o;
      dcr[j] = dct * f;
    }
    if constexpr (!std::is_same_v<T, float>) {
      for (int64_t k = 0; k < 4; ++k) Convert(dzr + k * u, us, dz_t + r * 4 * u + lo + k * u);
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
template <ffi::DataType DT>
ffi::Error Forward(ffi::Buffer<DT> xs, ffi::Buffer<DT> h0, ffi::Buffer<DT> c0,
                   ffi::Buffer<DT> kernel, ffi::Buffer<DT> recurrent, ffi::Buffer<DT> bias,
                   ffi::ResultBuffer<DT> hs, ffi::ResultBuffer<DT> c_last,
                   ffi::ResultBuffer<ffi::F32> act, ffi::ResultBuffer<ffi::F32> cs,
                   ffi::ResultBuffer<DT> xh_all, int64_t threads) {
  using T = ffi::NativeType<DT>;
  return Guarded([&] {
    const auto dims = xs.dimensions();
    if (dims.size() != 3 || h0.dimensions().size() != 2)
      return ffi::Error::InvalidArgument("lstm_cpu: xs must be [T, N, D] and h0 [N, U]");
    const int64_t t_len = dims[0], n = dims[1], d = dims[2], u = h0.dimensions()[1];
    const int64_t g4 = 4 * u, k = d + u;
    const bool keep = act->element_count() == t_len * n * g4;
    // Without the backward pass's buffers, the steps use their own, two steps deep.
    std::vector<float> own;
    std::vector<T> own_xh;
    float *a_all = act->typed_data(), *c_all = cs->typed_data();
    T* xh = xh_all->typed_data();
    if (!keep) {
      own.resize(2 * n * (g4 + u));
      own_xh.resize(2 * n * k);
      a_all = own.data();
      c_all = a_all + 2 * n * g4;
      xh = own_xh.data();
    }
    auto slot = [&](int64_t t) { return keep ? t : t % 2; };
    const T* x = xs.typed_data();
    CopyRows(x, d, xh, k, n, d);
    CopyRows(h0.typed_data(), u, xh + d, k, n, u);
    std::vector<float> c_first(n * u);
    ToFloats(c0.typed_data(), n * u, c_first.data());
    const auto slices = Slices(u, static_cast<int>(threads));
    std::vector<std::unique_ptr<Product>> products(slices.size());
    std::vector<std::vector<float>> z(slices.size());
    TeamFor team(static_cast<int>(threads));
    team->Run(slices.size(), [&](auto for_mine, auto barrier) {
      for_mine([&](size_t s) {  // the slice's columns of [W; U], gate block by gate block
        const int64_t lo = slices[s].lo, us = slices[s].hi - lo;
        std::unique_ptr<T[]> weights(new T[k * 4 * us]);  // every element written below
        for (int64_t q = 0; q < k; ++q) {
          const T* row =
              q < d ? kernel.typed_data() + q * g4 : recurrent.typed_data() + (q - d) * g4;
          for (int64_t gate = 0; gate < 4; ++gate)
            std::memcpy(weights.get() + (q * 4 + gate) * us, row + gate * u + lo,
                        us * sizeof(T));
        }
        products[s] = std::make_unique<Product>(n, k, 4 * us, Dtype<T>(),
                                                dnnl::memory::dims{k, 1},
                                                dnnl::memory::dims{4 * us, 1}, 4 * us,
                                                weights.get(), 1);
        z[s].resize(n * 4 * us);
      });
      for (int64_t t = 0; t < t_len; ++t) {
        const float* c_prev = t > 0 ? c_all + slot(t - 1) * n * u : c_first.data();
        T* xh_next = t + 1 < t_len ? xh + slot(t + 1) * n * k : nullptr;
        for_mine([&](size_t s) {
          const int64_t lo = slices[s].lo, us = slices[s].hi - lo;
          (*products[s])(xh + slot(t) * n * k, z[s].data());
          ForwardGates<T>(z[s].data(), bias.typed_data(), c_prev, c_all + slot(t) * n * u,
                          a_all + slot(t) * n * g4, hs->typed_data() + t * n * u,
                          xh_next ? xh_next + d : nullptr, k, n, u, lo, us);
          if (s == 0 && xh_next) CopyRows(x + (t + 1) * n * d, d, xh_next, k, n, d);  // x_{t+1}
        });
        barrier();
      }
    });
    Convert(c_all + slot(t_len - 1) * n * u, n * u, c_last->typed_data());
    return ffi::Error::Success();
  });
}

// The backward pass, from the forward's results and the cotangents of hs, h_T and c_T. A
// gradient nothing needs is a result of size 0 and is not computed: dX (xs not
// differentiated, as the trainer's inputs), dh0 and dc0 (the state starts from constants).
template <ffi::DataType DT>
ffi::Error Backward(ffi::Buffer<DT> c0, ffi::Buffer<DT> kernel, ffi::Buffer<DT> recurrent,
                    ffi::Buffer<ffi::F32> act, ffi::Buffer<ffi::F32> cs, ffi::Buffer<DT> xh,
                    ffi::Buffer<DT> dhs, ffi::Buffer<DT> dh_last, ffi::Buffer<DT> dc_last,
                    ffi::ResultBuffer<DT> dxs, ffi::ResultBuffer<DT> dh0,
                    ffi::ResultBuffer<DT> dc0, ffi::ResultBuffer<DT> dkernel,
                    ffi::ResultBuffer<DT> drecurrent, ffi::ResultBuffer<DT> dbias,
                    ffi::ResultBuffer<ffi::F32> dz_all, int64_t threads) {
  using T = ffi::NativeType<DT>;
  return Guarded([&] {
    const auto dims = dhs.dimensions();
    const int64_t t_len = dims[0], n = dims[1], u = dims[2], d = kernel.dimensions()[0];
    const int64_t g4 = 4 * u, k = d + u, rows = t_len * n;
    const bool need_dx = dxs->element_count() != 0, need_state = dh0->element_count() != 0;
    const int nthreads = static_cast<int>(threads);
    constexpr bool f32 = std::is_same_v<T, float>;
    float* dz = dz_all->typed_data();
    // dZ in T for the products; in float32 it is dz itself.
    std::vector<T> dz_t_own(f32 ? 0 : rows * g4);
    T* dz_t = f32 ? reinterpret_cast<T*>(dz) : dz_t_own.data();
    std::vector<float> dh(n * u), dc(n * u), c_first(n * u), db(g4, 0.0f);
    ToFloats(dh_last.typed_data(), n * u, dh.data());
    ToFloats(dc_last.typed_data(), n * u, dc.data());
    ToFloats(c0.typed_data(), n * u, c_first.data());
    const auto slices = Slices(u, nthreads);
    std::vector<std::unique_ptr<Product>> products(slices.size());
    std::vector<std::vector<float>> dh_of(slices.size());  // each slice's dh, [N, us]
    TeamFor team(nthreads);
    team->Run(slices.size(), [&](auto for_mine, auto barrier) {
      for_mine([&](size_t s) {  // the slice's U^T [4U, us]: rows lo..hi of U, transposed
        const int64_t lo = slices[s].lo, us = slices[s].hi - lo;
        products[s] = std::make_unique<Product>(
            n, g4, us, Dtype<T>(), dnnl::memory::dims{g4, 1}, dnnl::memory::dims{1, g4}, us,
            recurrent.typed_data() + lo * g4, 1);
        dh_of[s].resize(n * us);
        CopyRows(dh.data() + lo, u, dh_of[s].data(), us, n, us);
      });
      for (int64_t t = t_len - 1; t >= 0; --t) {
        const float* c_prev = t > 0 ? cs.typed_data() + (t - 1) * n * u : c_first.data();
        for_mine([&](size_t s) {
          const int64_t lo = slices[s].lo, us = slices[s].hi - lo;
          BackwardGates<T>(act.typed_data() + t * n * g4, cs.typed_data() + t * n * u, c_prev,
                           dhs.typed_data() + t * n * u, dh_of[s].data(), dc.data(),
                           dz + t * n * g4, dz_t + t * n * g4, db.data(), n, u, lo, us);
        });
        if (t == 0 && !need_state) break;  // dh_{-1}: dh0
        barrier();  // dz_t whole: each slice's dh reads every unit's
        for_mine([&](size_t s) { (*products[s])(dz_t + t * n * g4, dh_of[s].data()); });
      }
    });
    if (need_state) {
      for (size_t s = 0; s < slices.size(); ++s) {
        const int64_t lo = slices[s].lo, us = slices[s].hi - lo;
        CopyRows(dh_of[s].data(), us, dh.data() + lo, u, n, us);
      }
      Convert(dh.data(), n * u, dh0->typed_data());
      Convert(dc.data(), n * u, dc0->typed_data());
    }
    Convert(db.data(), g4, dbias->typed_data());
    // Over all steps at once, as products of the transposed layouts (strides) summed in
    // float32: [dW; dU] = [X, H_{t-1}]^T dZ, each thread a block of whole columns (of the
    // gates' 4U, a multiple of 16 wide), and dX = dZ W^T, each thread a share of its rows. In
    // float32 they are written in place.
    std::vector<float> sums(f32 ? 0 : k * g4);
    float* dw = f32 ? reinterpret_cast<float*>(dkernel->typed_data()) : sums.data();
    float* du = f32 ? reinterpret_cast<float*>(drecurrent->typed_data()) : sums.data() + d * g4;
    const auto column = [&](int64_t part) {
      return part == nthreads ? g4 : g4 * part / nthreads / 16 * 16;
    };
    team->Run(nthreads, [&](auto for_mine, auto) {
      for_mine([&](size_t part) {
        const int64_t c0 = column(part), c1 = column(part + 1);
        if (c1 == c0) return;
        if (d > 0) {  // none for inputs of no features
          Product w(d, rows, c1 - c0, Dtype<T>(), {1, k}, {g4, 1}, g4, nullptr, 1);
          w(xh.typed_data(), dw + c0, dz_t + c0);
        }
        Product r(u, rows, c1 - c0, Dtype<T>(), {1, k}, {g4, 1}, g4, nullptr, 1);
        r(xh.typed_data() + d, du + c0, dz_t + c0);
      });
    });
    if constexpr (!f32) {
      Convert(dw, d * g4, dkernel->typed_data());
      Convert(du, u * g4, drecurrent->typed_data());
    }
    if (need_dx) {
      std::vector<float> dx_sums(f32 ? 0 : rows * d);
      float* dx = f32 ? reinterpret_cast<float*>(dxs->typed_data()) : dx_sums.data();
      team->Run(nthreads, [&](auto for_mine, auto) {
        for_mine([&](size_t part) {
          const int64_t r0 = rows * part / nthreads, r1 = rows * (part + 1) / nthreads;
          if (r1 == r0) return;
          Product product(r1 - r0, g4, d, Dtype<T>(), {g4, 1}, {1, g4}, d, nullptr, 1);
          product(dz_t + r0 * g4, dx + r0 * d, kernel.typed_data());
        });
      });
      if constexpr (!f32) Convert(dx, rows * d, dxs->typed_data());
    }
    return ffi::Error::Success();
  });
}

// ---- The GRU (lstm_jax.cells.gru_cell: Keras's reset_after, gate order z, r, n) ----
//
//   a_t = x_t W + b_x       (every step at once, before the time loop)
//   e_t = h_{t-1} U + b_h   (one product a step)
//   z = sigmoid(a_z + e_z)   r = sigmoid(a_r + e_r)   n = tanh(a_n + r * e_n)
//   h_t = z * h_{t-1} + (1 - z) * n
//
// and backwards, with dh_t = dy_t + dh_t^direct + dh_t^rec carried from t + 1:
//
//   da_n = dh (1 - z)(1 - n^2)   da_z = dh (h_{t-1} - n) z (1 - z)   da_r = da_n e_n r (1 - r)
//   dA = [da_z, da_r, da_n]      dE = [da_z, da_r, da_n r]
//   dh_{t-1}^direct = dh z       dh_{t-1}^rec = dE U^T
//   dW = X^T dA   dU = H_{t-1}^T dE   db = [sum dA, sum dE]   dX = dA W^T   (over all steps)
//
// Shapes, row-major: xs [T, N, D], h0 [N, U], W [D, 3U], U [U, 3U], bias [2, 3U] (b_x, b_h).
// The forward keeps, for the backward, the activations [T, N, 4U] (z, r, n, e_n), float32,
// and the states each step reads, h_{t-1} [T, N, U] in T.

// One forward step's gates for batch rows [r0, r1): act holds a_t (x_t W, row stride 4U) and
// becomes z, r, n, e_n; e is h_{t-1} U [N, 3U]; h_t is written to h and, unless null, to
// h_next (the next step's h_{t-1}).
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void GruForwardGates(
    float* act, const float* e, const T* bias, const T* h_prev, T* h, T* h_next, int64_t r0,
    int64_t r1, int64_t u) {
  const T* bx = bias;
  const T* bh = bias + 3 * u;
  for (int64_t r = r0; r < r1; ++r) {
    float* ar = act + r * 4 * u;
    const float* er = e + r * 3 * u;
    const T* hp = h_prev + r * u;
    T* hr = h + r * u;
#pragma omp simd
    for (int64_t j = 0; j < u; ++j) {
      const float z = Sigmoid(ar[j] + ToFloat(bx[j]) + er[j] + ToFloat(bh[j]));
      const float rg =
          Sigmoid(ar[u + j] + ToFloat(bx[u + j]) + er[u + j] + ToFloat(bh[u + j]));
      const float en = er[2 * u + j] + ToFloat(bh[2 * u + j]);
      const float n = Tanh(ar[2 * u + j] + ToFloat(bx[2 * u + j]) + rg * en);
      ar[j] = z;
      ar[u + j] = rg;
      ar[2 * u + j] = n;
      ar[3 * u + j] = en;
      hr[j] = FromFloat<T>(z * ToFloat(hp[j]) + (1.0f - z) * n);
    }
    if (h_next != nullptr) std::memcpy(h_next + r * u, hr, u * sizeof(T));
  }
}

// One backward step for batch rows [r0, r1): dh_t from dy_t, direct and rec; writes dA and
// dE (float32, and in T for the products when T is not float32) and direct = dh_t z.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void GruBackwardGates(
    const float* act, const T* h_prev, const T* dy, float* direct, const float* rec,
    float* da, float* de, T* da_t, T* de_t, int64_t r0, int64_t r1, int64_t u) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* a = act + r * 4 * u;
    const T* hp = h_prev + r * u;
    const T* dyr = dy + r * u;
    float* dir = direct + r * u;
    const float* rr = rec + r * u;
    float* dar = da + r * 3 * u;
    float* der = de + r * 3 * u;
#pragma omp simd
    for (int64_t j = 0; j < u; ++j) {
      const float z = a[j], rg = a[u + j], n = a[2 * u + j], en = a[3 * u + j];
      const float dh = ToFloat(dyr[j]) + dir[j] + rr[j];
      const float dan = dh * (1.0f - z) * (1.0f - n * n);
      const float daz = dh * (ToFloat(hp[j]) - n) * z * (1.0f - z);
      const float dar_ = dan * en * rg * (1.0f - rg);
      dar[j] = daz;
      dar[u + j] = dar_;
      dar[2 * u + j] = dan;
      der[j] = daz;
      der[u + j] = dar_;
      der[2 * u + j] = dan * rg;
      dir[j] = dh * z;
    }
    if constexpr (!std::is_same_v<T, float>) {
      Convert(dar, 3 * u, da_t + r * 3 * u);
      Convert(der, 3 * u, de_t + r * 3 * u);
    }
  }
}

// The GRU's forward pass. Results: hs [T, N, U], and for the backward pass (or, when it will
// not run, arrays of size 0): the activations [T, N, 4U] and each step's h_{t-1} [T, N, U].
template <ffi::DataType DT>
ffi::Error GruForward(ffi::Buffer<DT> xs, ffi::Buffer<DT> h0, ffi::Buffer<DT> kernel,
                      ffi::Buffer<DT> recurrent, ffi::Buffer<DT> bias, ffi::ResultBuffer<DT> hs,
                      ffi::ResultBuffer<ffi::F32> act_all, ffi::ResultBuffer<DT> h_prev_all,
                      int64_t threads) {
  using T = ffi::NativeType<DT>;
  return Guarded([&] {
    const auto dims = xs.dimensions();
    if (dims.size() != 3 || h0.dimensions().size() != 2)
      return ffi::Error::InvalidArgument("lstm_cpu: xs must be [T, N, D] and h0 [N, U]");
    const int64_t t_len = dims[0], n = dims[1], d = dims[2], u = h0.dimensions()[1];
    const int64_t g3 = 3 * u, rows = t_len * n;
    const int nthreads = static_cast<int>(threads);
    const bool keep = act_all->element_count() == rows * 4 * u;
    omp_set_num_threads(nthreads);
    std::vector<float> own;
    std::vector<T> own_h;
    float* act = act_all->typed_data();
    T* h_prev = h_prev_all->typed_data();
    if (!keep) {
      own.resize(rows * 4 * u);
      own_h.resize(2 * n * u);
      act = own.data();
      h_prev = own_h.data();
    }
    // x_t W for every step, into the activations' first 3U columns.
    Product inputs(rows, d, g3, Dtype<T>(), {d, 1}, {g3, 1}, 4 * u, nullptr, nthreads);
    inputs(xs.typed_data(), act, kernel.typed_data());
    Product product(n, u, g3, Dtype<T>(), {u, 1}, {g3, 1}, g3, recurrent.typed_data(),
                    nthreads);
    std::vector<float> e(n * g3);
    std::memcpy(h_prev, h0.typed_data(), n * u * sizeof(T));
    for (int64_t t = 0; t < t_len; ++t) {
      T* hp = h_prev + (keep ? t : t % 2) * n * u;
      T* h_next = t + 1 < t_len ? h_prev + (keep ? t + 1 : (t + 1) % 2) * n * u : nullptr;
      product(hp, e.data());
      float* at = act + t * n * 4 * u;
      T* ht = hs->typed_data() + t * n * u;
      OverRows(n, u, nthreads, [&](int64_t r0, int64_t r1) {
        GruForwardGates<T>(at, e.data(), bias.typed_data(), hp, ht, h_next, r0, r1, u);
      });
    }
    return ffi::Error::Success();
  });
}

// The GRU's backward pass, from the forward's results and the cotangents of hs and h_T.
// dadE is the backward's own buffer, [2, T, N, 3U]: dA, then dE. As the LSTM's, it leaves
// out dX and dh0 where they are results of size 0.
template <ffi::DataType DT>
ffi::Error GruBackward(ffi::Buffer<DT> xs, ffi::Buffer<DT> kernel, ffi::Buffer<DT> recurrent,
                       ffi::Buffer<ffi::F32> act, ffi::Buffer<DT> h_prev, ffi::Buffer<DT> dhs,
                       ffi::Buffer<DT> dh_last, ffi::ResultBuffer<DT> dxs,
                       ffi::ResultBuffer<DT> dh0, ffi::ResultBuffer<DT> dkernel,
                       ffi::ResultBuffer<DT> drecurrent, ffi::ResultBuffer<DT> dbias,
                       ffi::ResultBuffer<ffi::F32> dade, int64_t threads) {
  using T = ffi::NativeType<DT>;
  return Guarded([&] {
    const auto dims = dhs.dimensions();
    const int64_t t_len = dims[0], n = dims[1], u = dims[2], d = kernel.dimensions()[0];
    const int64_t g3 = 3 * u, rows = t_len * n;
    const bool need_dx = dxs->element_count() != 0, need_state = dh0->element_count() != 0;
    const int nthreads = static_cast<int>(threads);
    omp_set_num_threads(nthreads);
    float* da = dade->typed_data();
    float* de = da + rows * g3;
    // dA and dE in T for the products; in float32 they are da and de themselves.
    constexpr bool f32 = std::is_same_v<T, float>;
    std::vector<T> own(f32 ? 0 : 2 * rows * g3);
    T* da_t = f32 ? reinterpret_cast<T*>(da) : own.data();
    T* de_t = f32 ? reinterpret_cast<T*>(de) : own.data() + rows * g3;
    std::vector<float> direct(n * u), rec(n * u, 0.0f);
    ToFloats(dh_last.typed_data(), n * u, direct.data());
    // U^T [3U, U], read by each step's product.
    Product product(n, g3, u, Dtype<T>(), {g3, 1}, {1, g3}, u, recurrent.typed_data(),
                    nthreads);
    std::vector<float> db(2 * g3, 0.0f);
    for (int64_t t = t_len - 1; t >= 0; --t) {
      const int64_t at = t * n * g3;
      OverRows(n, u, nthreads, [&](int64_t r0, int64_t r1) {
        GruBackwardGates<T>(act.typed_data() + t * n * 4 * u, h_prev.typed_data() + t * n * u,
                            dhs.typed_data() + t * n * u, direct.data(), rec.data(), da + at,
                            de + at, da_t + at, de_t + at, r0, r1, u);
      });
      if (t > 0 || need_state) product(de_t + at, rec.data());
      for (int64_t r = 0; r < n; ++r) {
        const float* a_row = da + at + r * g3;
        const float* e_row = de + at + r * g3;
#pragma omp simd
        for (int64_t j = 0; j < g3; ++j) {
          db[j] += a_row[j];
          db[g3 + j] += e_row[j];
        }
      }
    }
    if (need_state) {
      for (int64_t k = 0; k < n * u; ++k) direct[k] += rec[k];
      Convert(direct.data(), n * u, dh0->typed_data());
    }
    Convert(db.data(), 2 * g3, dbias->typed_data());
    ProductInto<T>(xs.typed_data(), {1, d}, da_t, {g3, 1}, rows, g3,
                   {{dkernel->typed_data(), d}}, nthreads);
    ProductInto<T>(h_prev.typed_data(), {1, u}, de_t, {g3, 1}, rows, g3,
                   {{drecurrent->typed_data(), u}}, nthreads);
    if (need_dx)
      ProductInto<T>(da_t, {g3, 1}, kernel.typed_data(), {1, g3}, g3, d,
                     {{dxs->typed_data(), rows}}, nthreads);
    return ffi::Error::Success();
  });
}

}  // namespace

#define LSTM_CPU_HANDLERS(SUFFIX, DT)                                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuForward##SUFFIX, Forward<DT>,                          \
                                ffi::Ffi::Bind()                                              \
                                    .Arg<ffi::Buffer<DT>>()         /* xs */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* h0 */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* c0 */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* kernel */              \
                                    .Arg<ffi::Buffer<DT>>()         /* recurrent_kernel */    \
                                    .Arg<ffi::Buffer<DT>>()         /* bias */                \
                                    .Ret<ffi::Buffer<DT>>()         /* hs */                  \
                                    .Ret<ffi::Buffer<DT>>()         /* c_T */                 \
                                    .Ret<ffi::Buffer<ffi::F32>>()   /* activations */         \
                                    .Ret<ffi::Buffer<ffi::F32>>()   /* cell states */         \
                                    .Ret<ffi::Buffer<DT>>()         /* [x, h] rows */         \
                                    .Attr<int64_t>("threads"));                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmCpuBackward##SUFFIX, Backward<DT>,                        \
                                ffi::Ffi::Bind()                                              \
                                    .Arg<ffi::Buffer<DT>>()         /* c0 */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* kernel */              \
                                    .Arg<ffi::Buffer<DT>>()         /* recurrent_kernel */    \
                                    .Arg<ffi::Buffer<ffi::F32>>()   /* activations */         \
                                    .Arg<ffi::Buffer<ffi::F32>>()   /* cell states */         \
                                    .Arg<ffi::Buffer<DT>>()         /* [x, h] rows */         \
                                    .Arg<ffi::Buffer<DT>>()         /* d hs */                \
                                    .Arg<ffi::Buffer<DT>>()         /* d h_T */               \
                                    .Arg<ffi::Buffer<DT>>()         /* d c_T */               \
                                    .Ret<ffi::Buffer<DT>>()         /* d xs */                \
                                    .Ret<ffi::Buffer<DT>>()         /* d h0 */                \
                                    .Ret<ffi::Buffer<DT>>()         /* d c0 */                \
                                    .Ret<ffi::Buffer<DT>>()         /* d kernel */            \
                                    .Ret<ffi::Buffer<DT>>()         /* d recurrent_kernel */  \
                                    .Ret<ffi::Buffer<DT>>()         /* d bias */              \
                                    .Ret<ffi::Buffer<ffi::F32>>()   /* dz, the backward's */  \
                                    .Attr<int64_t>("threads"));

LSTM_CPU_HANDLERS(F32, ffi::F32)
LSTM_CPU_HANDLERS(BF16, ffi::BF16)

#define GRU_CPU_HANDLERS(SUFFIX, DT)                                                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(GruCpuForward##SUFFIX, GruForward<DT>,                        \
                                ffi::Ffi::Bind()                                              \
                                    .Arg<ffi::Buffer<DT>>()         /* xs */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* h0 */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* kernel */              \
                                    .Arg<ffi::Buffer<DT>>()         /* recurrent_kernel */    \
                                    .Arg<ffi::Buffer<DT>>()         /* bias */                \
                                    .Ret<ffi::Buffer<DT>>()         /* hs */                  \
                                    .Ret<ffi::Buffer<ffi::F32>>()   /* activations */         \
                                    .Ret<ffi::Buffer<DT>>()         /* h_{t-1} */             \
                                    .Attr<int64_t>("threads"));                               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(GruCpuBackward##SUFFIX, GruBackward<DT>,                      \
                                ffi::Ffi::Bind()                                              \
                                    .Arg<ffi::Buffer<DT>>()         /* xs */                  \
                                    .Arg<ffi::Buffer<DT>>()         /* kernel */              \
                                    .Arg<ffi::Buffer<DT>>()         /* recurrent_kernel */    \
                                    .Arg<ffi::Buffer<ffi::F32>>()   /* activations */         \
                                    .Arg<ffi::Buffer<DT>>()         /* h_{t-1} */             \
                                    .Arg<ffi::Buffer<DT>>()         /* d hs */                \
                                    .Arg<ffi::Buffer<DT>>()         /* d h_T */               \
                                    .Ret<ffi::Buffer<DT>>()         /* d xs */                \
                                    .Ret<ffi::Buffer<DT>>()         /* d h0 */                \
                                    .Ret<ffi::Buffer<DT>>()         /* d kernel */            \
                                    .Ret<ffi::Buffer<DT>>()         /* d recurrent_kernel */  \
                                    .Ret<ffi::Buffer<DT>>()         /* d bias */              \
                                    .Ret<ffi::Buffer<ffi::F32>>()   /* dA, dE: the backward's */ \
                                    .Attr<int64_t>("threads"));

GRU_CPU_HANDLERS(F32, ffi::F32)
GRU_CPU_HANDLERS(BF16, ffi::BF16)
