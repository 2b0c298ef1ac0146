// et_runner.cpp -- time an ExecuTorch program natively (no Python): tools/bench/static_step.py's
// ExecuTorch peer. Built by static_step.py against the headers and shared libraries that the
// `executorch` wheel ships (include/, lib/: libexecutorch, the optimized CPU kernels and the XNNPACK
// delegate), one thread (the XNNPACK thread pool is reset to 1 thread before the method loads).
//
//   et_runner PROGRAM.pte INPUT_DIR --steps N [--warmup W] [--dump DIR]
//
// INPUT_DIR/in<i>.bin holds input i of method "forward" as raw float32 (row-major, the method's shape).
// Each step sets every input (Method::set_input copies it into the method's memory-planned input
// buffer) and runs Method::execute(): what Module::forward does, and what a control loop must do,
// since the state comes back as outputs and goes in as inputs. The inputs must be set every step: the
// memory plan reuses input buffers once they are dead, so a second execute() on inputs set once reads
// clobbered values. The step (set_input x n + execute) is timed alone with CLOCK_MONOTONIC. Prints:
//   {"steps": N, "samples_ns": [...]}        per-step latency, in step order
// --dump DIR writes output o of one step as DIR/out<o>.bin (float32) for the parity check.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

// The wheel ships libexecutorch_threadpool.so but not threadpool.h; these two declarations match it.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::Module;
using executorch::runtime::Error;

static int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

static bool read_file(const std::string& path, std::vector<char>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: et_runner PROGRAM.pte INPUT_DIR --steps N [--warmup W] [--dump DIR]\n");
    return 2;
  }
  const std::string program = argv[1], input_dir = argv[2];
  long steps = 1000, warmup = 20;
  std::string dump;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--steps")) steps = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--dump")) dump = argv[i + 1];
    else { std::fprintf(stderr, "et_runner: unknown option %s\n", argv[i]); return 2; }
  }
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool != nullptr) pool->_unsafe_reset_threadpool(1);

  Module module(program, Module::LoadMode::File);
  if (module.load_method("forward") != Error::Ok) {
    std::fprintf(stderr, "et_runner: cannot load method forward of %s\n", program.c_str());
    return 3;
  }
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return 3;
  const size_t n_in = meta->num_inputs();
  std::vector<std::vector<char>> data(n_in);
  std::vector<executorch::extension::TensorPtr> tensors;
  for (size_t i = 0; i < n_in; ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) return 3;
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    const std::string path = input_dir + "/in" + std::to_string(i) + ".bin";
    if (!read_file(path, data[i]) || data[i].size() != info->nbytes()) {
      std::fprintf(stderr, "et_runner: %s missing or not %zu bytes\n", path.c_str(), info->nbytes());
      return 3;
    }
    tensors.push_back(executorch::extension::make_tensor_ptr(sizes, data[i].data(), info->scalar_type()));
    if (module.set_input("forward", tensors.back(), i) != Error::Ok) return 3;
  }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  auto method = module.method("forward");
#pragma GCC diagnostic pop
  if (!method.ok()) return 3;
  executorch::runtime::Method* m = *method;
  std::vector<executorch::runtime::EValue> values;
  for (auto& t : tensors) values.emplace_back(*t);
  auto step = [&]() {
    for (size_t i = 0; i < n_in; ++i) {
      if (m->set_input(values[i], i) != Error::Ok) return Error::InvalidArgument;
    }
    return m->execute();
  };
  for (long s = 0; s < warmup; ++s) {
    if (step() != Error::Ok) { std::fprintf(stderr, "et_runner: step failed\n"); return 4; }
  }
  std::vector<int64_t> samples(size_t(steps > 0 ? steps : 0));
  for (long s = 0; s < steps; ++s) {
    const int64_t t0 = now_ns();
    const Error e = step();
    samples[size_t(s)] = now_ns() - t0;
    if (e != Error::Ok) { std::fprintf(stderr, "et_runner: step failed\n"); return 4; }
  }
  if (!dump.empty()) {
    for (size_t o = 0; o < m->outputs_size(); ++o) {
      const auto& t = m->get_output(o).toTensor();
      std::ofstream f(dump + "/out" + std::to_string(o) + ".bin", std::ios::binary);
      f.write(static_cast<const char*>(t.const_data_ptr()), std::streamsize(t.nbytes()));
    }
  }
  std::printf("{\"steps\": %ld, \"threads\": %zu, \"samples_ns\": [", steps, pool ? pool->get_thread_count() : 0);
  for (long s = 0; s < steps; ++s) std::printf("%s%lld", s ? ", " : "", (long long)samples[size_t(s)]);
  std::printf("]}\n");
  return 0;
}
