// Runs the CUDA sampling / combine pipeline of csrc/cuda/kernels.cuh on the CPU, through the
// fiber emulator of csrc/cuda/portable.cuh, so tests/ops/test_cuda.py can check the kernels'
// algorithm (chunk partials, candidate selection, radix selects, the exact fallbacks, the
// orchestration and the workspace layout) against steer.reference without a GPU.
//
//   g++ -std=c++17 -O1 -DSTEER_EMULATE -I csrc/include csrc/cuda/emulate/driver.cpp -o driver
//   driver DIR [SCHEDULE [SEED]]
//
// DIR/params.txt holds "name value" lines (op = sample | combine, shapes, strides, sampler
// parameters); DIR/logits.bin the raw logits storage, weights.bin float32, seeds.bin,
// row_keys.bin, steps.bin int64. Writes status.txt, err.bin (3 x uint64) and tokens.bin +
// logprobs.bin (sample) or out.bin (combine). SCHEDULE: 0 forwards, 1 backwards, 2 shuffled
// fibers; results must not depend on it. The workspace and outputs are poisoned with 0x7f bytes
// (huge finite floats, large ints) so that a read of something never written shows up.

#ifndef STEER_EMULATE
#define STEER_EMULATE 1
#endif

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../kernels.cuh"

namespace {

using steer::Status;

struct EmuLaunch {
  template <class... Params, class... Args>
  void operator()(void (*kernel)(Params...), steer::kern::Grid grid, int threads, const Args&... args) {
    steer::emu::launch(steer::emu::Dim3{grid.x, grid.y, 1}, steer::emu::Dim3{static_cast<unsigned>(threads), 1, 1},
                       [&] { kernel(args...); });
  }
  Status status() const { return steer::STEER_OK; }
};

std::map<std::string, std::string> read_params(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::map<std::string, std::string> params;
  std::string name, value;
  while (in >> name >> value) params[name] = value;
  return params;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

// 256-byte aligned copy of a file, with `pad` poisoned bytes in front (to test misalignment) and
// 64 canary bytes behind, which check_canary() verifies were never written.
struct Buffer {
  std::vector<uint64_t> storage;
  char* data = nullptr;
  size_t size = 0;
  Buffer(const std::vector<char>& bytes, size_t pad) : size(bytes.size()) {
    storage.assign((bytes.size() + pad + 256 + 64) / 8 + 1, 0x7f7f7f7f7f7f7f7full);
    char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(storage.data()) + 255) & ~uintptr_t(255));
    data = base + pad;
    if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
  }
  // `slack`: bytes at the end that the callee may reserve but must not write (alignment slack).
  void check_canary(const char* name, size_t slack = 0) const {
    for (size_t i = size - slack; i < size + 64; ++i) {
      if (static_cast<unsigned char>(data[i]) != 0x7f) {
        std::fprintf(stderr, "write past the end of %s\n", name);
        std::exit(3);
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [SCHEDULE [SEED]]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  steer::emu::options().schedule = argc > 2 ? std::atoi(argv[2]) : 0;
  steer::emu::options().seed = argc > 3 ? static_cast<unsigned>(std::atoi(argv[3])) : 1u;
  auto p = read_params(dir + "/params.txt");
  auto i64 = [&](const char* name) { return static_cast<int64_t>(std::stoll(p.at(name))); };
  auto f32 = [&](const char* name) { return static_cast<float>(std::stod(p.at(name))); };

  const int64_t B = i64("B");
  Buffer logits(read_bytes(dir + "/logits.bin"), static_cast<size_t>(i64("logits_pad_bytes")));
  Buffer weights(read_bytes(dir + "/weights.bin"), 0);
  std::vector<unsigned long long> err(3, ~0ull);
  Status status;
  if (p.at("op") == "sample") {
    Buffer seeds(read_bytes(dir + "/seeds.bin"), 0);
    Buffer row_keys(read_bytes(dir + "/row_keys.bin"), 0);
    Buffer steps(read_bytes(dir + "/steps.bin"), 0);
    const size_t bytes = steer::kern::sample_workspace_bytes(B, i64("vocab_size"), f32("temperature"), i64("top_k"),
                                                             f32("top_p"), f32("plausibility_alpha"));
    std::vector<char> ws_bytes(bytes + static_cast<size_t>(i64("workspace_extra")));
    Buffer workspace(ws_bytes, 0);
    std::memset(workspace.data, 0x7f, ws_bytes.size());
    std::vector<int64_t> tokens(static_cast<size_t>(B), 0x7f7f7f7f7f7f7f7fll);
    std::vector<float> logprobs(static_cast<size_t>(B), 3.0e38f);
    steer::kern::SampleRequest r{logits.data,
                                 static_cast<int32_t>(i64("dtype")),
                                 B,
                                 i64("K"),
                                 i64("V"),
                                 i64("stride_b"),
                                 i64("stride_k"),
                                 i64("stride_v"),
                                 reinterpret_cast<const float*>(weights.data),
                                 i64("weight_stride_b"),
                                 i64("vocab_size"),
                                 f32("temperature"),
                                 i64("top_k"),
                                 f32("top_p"),
                                 f32("plausibility_alpha"),
                                 reinterpret_cast<const int64_t*>(seeds.data),
                                 i64("seed_stride"),
                                 reinterpret_cast<const int64_t*>(row_keys.data),
                                 i64("row_key_stride"),
                                 reinterpret_cast<const int64_t*>(steps.data),
                                 i64("step_stride"),
                                 tokens.data(),
                                 logprobs.data(),
                                 workspace.data,
                                 ws_bytes.size(),
                                 err.data()};
    EmuLaunch launch;
    status = steer::kern::run_sample(r, launch);
    workspace.check_canary("the workspace", 256 + static_cast<size_t>(i64("workspace_extra")));
    write_bytes(dir + "/tokens.bin", tokens.data(), tokens.size() * sizeof(int64_t));
    write_bytes(dir + "/logprobs.bin", logprobs.data(), logprobs.size() * sizeof(float));
  } else {
    const int64_t V = i64("V"), out_stride = i64("out_stride_b");
    const bool plausibility = f32("plausibility_alpha") > 0.0f;
    std::vector<char> ws_bytes(steer::kern::combine_workspace_bytes(B, V, plausibility));
    Buffer workspace(ws_bytes, 0);
    std::memset(workspace.data, 0x7f, ws_bytes.size());
    std::vector<char> out_bytes(static_cast<size_t>(B > 0 ? (B - 1) * out_stride + V : 0) * sizeof(float));
    Buffer out(out_bytes, 0);
    std::memset(out.data, 0x7f, out_bytes.size());
    steer::kern::CombineRequest r{logits.data,
                                  static_cast<int32_t>(i64("dtype")),
                                  B,
                                  i64("K"),
                                  V,
                                  i64("stride_b"),
                                  i64("stride_k"),
                                  i64("stride_v"),
                                  reinterpret_cast<const float*>(weights.data),
                                  i64("weight_stride_b"),
                                  i64("vocab_size"),
                                  i64("normalize") != 0,
                                  f32("plausibility_alpha"),
                                  reinterpret_cast<float*>(out.data),
                                  out_stride,
                                  workspace.data,
                                  ws_bytes.size(),
                                  err.data()};
    EmuLaunch launch;
    status = steer::kern::run_combine(r, launch);
    workspace.check_canary("the workspace", 256);
    out.check_canary("out");
    write_bytes(dir + "/out.bin", out.data, out_bytes.size());
  }
  write_bytes(dir + "/err.bin", err.data(), err.size() * sizeof(unsigned long long));
  {
    std::ofstream trace(dir + "/trace.txt");
    for (const auto& [event, count] : steer::emu::trace()) trace << event << " " << count << "\n";
  }
  std::ofstream(dir + "/status.txt") << static_cast<int>(status) << "\n";
  return 0;
}
