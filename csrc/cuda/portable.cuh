// steer CUDA kernels: the few GPU primitives they use, behind one small interface, so that the
// very same kernel source compiles two ways:
//
//   * by nvcc (__CUDACC__): thin inline wrappers over the CUDA intrinsics;
//   * by a host C++ compiler with STEER_EMULATE defined: a deterministic emulator that runs each
//     block's threads as cooperative fibers (ucontext), with real barriers, warp exchanges and
//     per-block shared memory. csrc/cuda/emulate/driver.cpp uses it to run the whole sampling
//     pipeline on a CPU, which lets tests/ops/test_cuda.py check the kernels' algorithm against
//     steer.reference on a machine without a GPU. The fibers can be scheduled forwards, backwards
//     or shuffled between barriers, so a missing barrier shows up as results that depend on
//     the schedule, and a barrier or warp operation that not every thread reaches is reported as
//     a deadlock instead of hanging.
//
// Kernel code uses only what is declared here (namespace steer::sk): thread / block indices,
// block_sync, warp shuffles of any 4..16-byte trivially copyable value, match_any, any,
// popc / ffs, integer atomics, read-only and 16-byte loads, 16-byte stores, IEEE float division,
// half -> float,
// shared<T>() for a block's shared storage (T must be trivially constructible), and
// SK_TRACE("event"), which counts the paths taken under the emulator and is nothing on a GPU.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define SK_DEV __device__ __forceinline__
#define SK_KERNEL(threads) __global__ void __launch_bounds__(threads)
#define SK_TRACE(event) ((void)0)

namespace steer {
namespace sk {

constexpr unsigned kFullMask = 0xffffffffu;

SK_DEV int tid() { return static_cast<int>(threadIdx.x); }
SK_DEV int64_t block_x() { return blockIdx.x; }
SK_DEV int64_t block_y() { return blockIdx.y; }
SK_DEV int64_t grid_y() { return gridDim.y; }
SK_DEV void block_sync() { __syncthreads(); }

template <class T>
SK_DEV T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) % 4 == 0 && sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / 4); ++i) w[i] = __shfl_xor_sync(kFullMask, w[i], lane_mask);
  memcpy(&v, w, sizeof(T));
  return v;
}

template <class T>
SK_DEV T shfl_up(T v, int delta) {
  static_assert(sizeof(T) % 4 == 0 && sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / 4); ++i) w[i] = __shfl_up_sync(kFullMask, w[i], delta);
  memcpy(&v, w, sizeof(T));
  return v;
}

template <class T>
SK_DEV T shfl_idx(T v, int src_lane) {
  static_assert(sizeof(T) % 4 == 0 && sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  uint32_t w[sizeof(T) / 4];
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(T) / 4); ++i) w[i] = __shfl_sync(kFullMask, w[i], src_lane);
  memcpy(&v, w, sizeof(T));
  return v;
}

SK_DEV uint32_t match_any(uint32_t v) { return __match_any_sync(kFullMask, v); }
SK_DEV bool any(bool p) { return __any_sync(kFullMask, p) != 0; }
SK_DEV int popc(uint32_t x) { return __popc(x); }
SK_DEV int ffs(uint32_t x) { return __ffs(static_cast<int>(x)); }

SK_DEV void atomic_add(uint32_t* p, uint32_t v) { atomicAdd(p, v); }
SK_DEV void atomic_add(unsigned long long* p, unsigned long long v) { atomicAdd(p, v); }
SK_DEV void atomic_min(unsigned long long* p, unsigned long long v) { atomicMin(p, v); }

template <class T>
SK_DEV T ldg(const T* p) {
  return __ldg(p);
}
SK_DEV uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
// One 16-byte store of four floats; p must be 16-byte aligned.
SK_DEV void st16(float* p, float a, float b, float c, float d) {
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

SK_DEV uint32_t f2u(float x) { return __float_as_uint(x); }
SK_DEV float u2f(uint32_t x) { return __uint_as_float(x); }
SK_DEV float fdiv(float a, float b) { return __fdiv_rn(a, b); }
SK_DEV float half_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// The block's one instance of T in shared memory (per kernel, per T).
template <class T>
SK_DEV T& shared() {
  static_assert(std::is_trivially_default_constructible<T>::value, "shared storage must be trivial");
  __shared__ T storage;
  return storage;
}

}  // namespace sk
}  // namespace steer

#elif defined(STEER_EMULATE)

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <cstdlib>
#include <memory>
#include <random>
#include <typeindex>
#include <unordered_map>
#include <vector>

#define SK_DEV inline
#define SK_KERNEL(threads) void
// Counts which paths the kernels took (thread 0 of a block), for the emulation tests.
#define SK_TRACE(event) \
  do {                  \
    if (::steer::sk::tid() == 0) ++::steer::emu::trace()[event]; \
  } while (0)

struct uint4 {
  uint32_t x, y, z, w;
};

namespace steer {
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

enum class FiberState { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

// Fiber schedules: 0 forwards, 1 backwards, 2 shuffled (seeded) at every sweep.
struct Options {
  int schedule = 0;
  unsigned seed = 1;
  size_t stack_bytes = 256 * 1024;
};
inline Options& options() {
  static Options o;
  return o;
}

// Switching fibers: on x86-64 a few instructions that save the callee-saved registers and swap
// stacks (swapcontext would make two signal-mask system calls per switch, which dominates the
// emulator's time); elsewhere ucontext.
#if defined(__x86_64__) && defined(__linux__) && !defined(STEER_EMU_UCONTEXT)
#define STEER_EMU_FAST_SWITCH 1
extern "C" void steer_emu_switch(void** save_sp, void* load_sp);
__asm__(
    ".text\n"
    ".globl steer_emu_switch\n"
    ".type steer_emu_switch,@function\n"
    "steer_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size steer_emu_switch,.-steer_emu_switch\n");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc;
};
#endif

struct Fiber {
  Context context;
  FiberState state = FiberState::kRunnable;
};

// Fiber stacks, allocated once and reused by every block.
inline char* fiber_stack(int i) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (static_cast<int>(stacks.size()) <= i) stacks.emplace_back(new char[options().stack_bytes]);
  return stacks[i].get();
}

struct Block {
  Dim3 grid, block_idx;
  int num_threads = 0;
  int current = -1;
  Context scheduler;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> exchange;  // two words per thread: a warp exchange slot
  std::unordered_map<std::type_index, std::unique_ptr<uint64_t[]>> shared;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
};

inline std::map<std::string, long>& trace() {
  static std::map<std::string, long> counts;
  return counts;
}

inline Block*& current_block() {
  static Block* block = nullptr;
  return block;
}

[[noreturn]] inline void fail(const char* what) {
  const Block* b = current_block();
  std::fprintf(stderr, "steer emulator: %s (block %u,%u thread %d)\n", what, b ? b->block_idx.x : 0u,
               b ? b->block_idx.y : 0u, b ? b->current : -1);
  std::abort();
}

inline void switch_context(Context& save, Context& load) {
#ifdef STEER_EMU_FAST_SWITCH
  steer_emu_switch(&save.sp, load.sp);
#else
  swapcontext(&save.uc, &load.uc);
#endif
}

inline void yield(FiberState state) {
  Block& b = *current_block();
  Fiber& f = b.fibers[b.current];
  f.state = state;
  switch_context(f.context, b.scheduler);
}

inline void fiber_entry() {
  Block& b = *current_block();
  b.body(b.body_arg);
  b.fibers[b.current].state = FiberState::kDone;
  switch_context(b.fibers[b.current].context, b.scheduler);
  fail("a finished fiber was resumed");
}

// A fresh fiber whose first switch-in starts fiber_entry on its own stack.
inline void start_context(Context& c, char* stack, size_t bytes) {
#ifdef STEER_EMU_FAST_SWITCH
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~static_cast<uintptr_t>(15);
  auto* slot = reinterpret_cast<void**>(top);
  *--slot = nullptr;                                         // fiber_entry's return address: never used
  *--slot = reinterpret_cast<void*>(&fiber_entry);           // where steer_emu_switch's ret goes
  for (int i = 0; i < 6; ++i) *--slot = nullptr;             // rbp rbx r12 r13 r14 r15
  c.sp = slot;
#else
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fiber_entry, 0);
#endif
}

inline void run_block(Block& b) {
  const int n = b.num_threads;
  if (n % 32 != 0) fail("block size must be a multiple of 32");
  b.fibers.clear();
  b.fibers.resize(n);
  b.exchange.assign(2 * static_cast<size_t>(n), 0xdeadbeefdeadbeefull);
  for (int i = 0; i < n; ++i) {
    start_context(b.fibers[i].context, fiber_stack(i), options().stack_bytes);
  }
  std::vector<int> order(n);
  for (int i = 0; i < n; ++i) order[i] = i;
  std::mt19937 rng(options().seed + 7919u * b.block_idx.x + 104729u * b.block_idx.y);
  for (;;) {
    bool ran = false;
    if (options().schedule == 1) {
      std::reverse(order.begin(), order.end());
    } else if (options().schedule == 2) {
      std::shuffle(order.begin(), order.end(), rng);
    }
    for (int i : order) {
      if (b.fibers[i].state != FiberState::kRunnable) continue;
      ran = true;
      b.current = i;
      switch_context(b.scheduler, b.fibers[i].context);
    }
    b.current = -1;
    if (ran) continue;
    int live = 0, at_block = 0;
    for (const Fiber& f : b.fibers) {
      live += f.state != FiberState::kDone;
      at_block += f.state == FiberState::kAtBlockBarrier;
    }
    if (live == 0) break;
    if (at_block == live) {
      for (Fiber& f : b.fibers)
        if (f.state == FiberState::kAtBlockBarrier) f.state = FiberState::kRunnable;
      continue;
    }
    bool released = false;
    for (int w = 0; w < n / 32; ++w) {
      int waiting = 0, done = 0;
      for (int l = 0; l < 32; ++l) {
        waiting += b.fibers[w * 32 + l].state == FiberState::kAtWarpBarrier;
        done += b.fibers[w * 32 + l].state == FiberState::kDone;
      }
      if (waiting > 0 && done > 0) fail("a warp operation with exited lanes");
      if (waiting == 32) {
        for (int l = 0; l < 32; ++l) b.fibers[w * 32 + l].state = FiberState::kRunnable;
        released = true;
      }
    }
    if (!released) fail("deadlock: threads wait at different barriers (divergent __syncthreads or warp op)");
  }
  b.fibers.clear();
}

// Runs body() once per thread of every block of the grid, block after block.
template <class F>
void launch(Dim3 grid, Dim3 block, F&& body) {
  if (block.y != 1 || block.z != 1) fail("only 1-D blocks are emulated");
  using Body = typename std::remove_reference<F>::type;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.grid = grid;
        b.block_idx = Dim3{x, y, z};
        b.num_threads = static_cast<int>(block.x);
        b.body = [](void* arg) { (*static_cast<Body*>(arg))(); };
        b.body_arg = const_cast<void*>(static_cast<const void*>(&body));
        current_block() = &b;
        run_block(b);
        current_block() = nullptr;
      }
    }
  }
}

// One warp-wide exchange: publish up to 16 bytes, wait for the whole warp, read a lane's copy.
template <class T>
T exchange(const T& mine, int src_lane) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "exchange type");
  Block& b = *current_block();
  const int t = b.current;
  uint64_t words[2] = {0, 0};
  std::memcpy(words, &mine, sizeof(T));
  b.exchange[2 * t] = words[0];
  b.exchange[2 * t + 1] = words[1];
  yield(FiberState::kAtWarpBarrier);
  const int src = (t & ~31) + src_lane;
  words[0] = b.exchange[2 * src];
  words[1] = b.exchange[2 * src + 1];
  yield(FiberState::kAtWarpBarrier);
  T out;
  std::memcpy(&out, words, sizeof(T));
  return out;
}

}  // namespace emu

namespace sk {

constexpr unsigned kFullMask = 0xffffffffu;

inline int tid() { return emu::current_block()->current; }
inline int64_t block_x() { return emu::current_block()->block_idx.x; }
inline int64_t block_y() { return emu::current_block()->block_idx.y; }
inline int64_t grid_y() { return emu::current_block()->grid.y; }
inline void block_sync() { emu::yield(emu::FiberState::kAtBlockBarrier); }

template <class T>
T shfl_idx(T v, int src_lane) {
  return emu::exchange(v, src_lane & 31);
}
template <class T>
T shfl_xor(T v, int lane_mask) {
  return emu::exchange(v, (tid() & 31) ^ lane_mask);
}
template <class T>
T shfl_up(T v, int delta) {
  const int lane = tid() & 31;
  return emu::exchange(v, lane >= delta ? lane - delta : lane);
}

inline uint32_t match_any(uint32_t v) {
  emu::Block& b = *emu::current_block();
  const int t = b.current;
  b.exchange[2 * t] = v;
  emu::yield(emu::FiberState::kAtWarpBarrier);
  uint32_t mask = 0;
  for (int l = 0; l < 32; ++l)
    if (static_cast<uint32_t>(b.exchange[2 * ((t & ~31) + l)]) == v) mask |= 1u << l;
  emu::yield(emu::FiberState::kAtWarpBarrier);
  return mask;
}
inline bool any(bool p) {
  emu::Block& b = *emu::current_block();
  const int t = b.current;
  b.exchange[2 * t] = p ? 1 : 0;
  emu::yield(emu::FiberState::kAtWarpBarrier);
  bool result = false;
  for (int l = 0; l < 32; ++l) result |= b.exchange[2 * ((t & ~31) + l)] != 0;
  emu::yield(emu::FiberState::kAtWarpBarrier);
  return result;
}
inline int popc(uint32_t x) { return __builtin_popcount(x); }
inline int ffs(uint32_t x) { return __builtin_ffs(static_cast<int>(x)); }

// Fibers of one OS thread never interleave inside these.
inline void atomic_add(uint32_t* p, uint32_t v) { *p += v; }
inline void atomic_add(unsigned long long* p, unsigned long long v) { *p += v; }
inline void atomic_min(unsigned long long* p, unsigned long long v) { *p = *p < v ? *p : v; }

template <class T>
T ldg(const T* p) {
  return *p;
}
inline uint4 ldg16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("misaligned 16-byte load");
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline void st16(float* p, float a, float b, float c, float d) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("misaligned 16-byte store");
  const float v[4] = {a, b, c, d};
  std::memcpy(p, v, 16);
}

inline uint32_t f2u(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float fdiv(float a, float b) {
  volatile float q = a / b;  // IEEE single division, as __fdiv_rn
  return q;
}
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return u2f(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  if (exponent == 0) {
    if (mantissa == 0) return u2f(sign);
    float value = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal, exact
    return sign ? -value : value;
  }
  return u2f(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Fresh shared storage is filled with 0xff bytes (NaN floats, all-ones integers), so a read of
// something no thread wrote shows up in the results.
template <class T>
T& shared() {
  static_assert(std::is_trivially_default_constructible<T>::value, "shared storage must be trivial");
  auto& map = emu::current_block()->shared;
  auto it = map.find(std::type_index(typeid(T)));
  if (it == map.end()) {
    const size_t words = (sizeof(T) + 7) / 8;
    std::unique_ptr<uint64_t[]> buffer(new uint64_t[words]);
    std::memset(buffer.get(), 0xff, words * 8);
    it = map.emplace(std::type_index(typeid(T)), std::move(buffer)).first;
  }
  return *reinterpret_cast<T*>(it->second.get());
}

}  // namespace sk
}  // namespace steer

#else
#error "portable.cuh: compile with nvcc, or define STEER_EMULATE for the host emulator"
#endif
