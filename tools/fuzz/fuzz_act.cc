// fuzz_act.cc -- libFuzzer harness: ssmc_act and ssmc_reset on a real static artifact (SSMC_FUZZ_ARTIFACT)
// with fuzzed observations (any float bits: NaN, inf, denormals, huge values), rewards, target returns and
// buffer lengths (too short, too long, NULL). libssmc is compiled into the harness with AddressSanitizer and
// UBSan; the artifact's step library is the generated code, loaded as ssmc_open loads it.
//
// Invariants checked on every call (a violation traps): the status is one of ssmc.h's; a failed call
// changes neither the step count nor the state (the next valid step from a copy of the same history gives
// the same action); a successful call counts one step and writes finite actions.
//
//   SSMC_FUZZ_ARTIFACT=dmm.ssmc OUT/fuzz_act CORPUS_DIR -max_total_time=60
#include "ssmc_runtime.cc"

#include <cstdio>

namespace {
ssmc_policy* g_policy = nullptr;

template <typename T>
T Take(const uint8_t*& p, size_t& n) {
  T v{};
  const size_t k = n < sizeof(T) ? n : sizeof(T);
  std::memcpy(&v, p, k);
  p += k;
  n -= k;
  return v;
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* artifact = std::getenv("SSMC_FUZZ_ARTIFACT");
  if (artifact == nullptr || ssmc_open(artifact, &g_policy) != SSMC_OK) {
    std::fprintf(stderr, "fuzz_act: set SSMC_FUZZ_ARTIFACT to a static artifact (%s)\n", ssmc_last_error(nullptr));
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ssmc_policy* p = g_policy;
  const size_t obs_dim = ssmc_obs_dim(p), act_dim = ssmc_act_dim(p);
  const uint8_t op = Take<uint8_t>(data, size);
  const int8_t obs_delta = Take<int8_t>(data, size), act_delta = Take<int8_t>(data, size);
  const double reward = Take<double>(data, size);
  const double target = Take<double>(data, size);
  if (op % 16 == 0) {
    const ssmc_status s = ssmc_reset(p, target);
    if (s != SSMC_OK && s != SSMC_ERR_INPUT) __builtin_trap();
    if (s == SSMC_OK && ssmc_steps(p) != 0) __builtin_trap();
    return 0;
  }
  const size_t n_obs = (op & 1) ? obs_dim : static_cast<size_t>(std::max<long>(0, static_cast<long>(obs_dim) + obs_delta));
  const size_t n_act = (op & 2) ? act_dim : static_cast<size_t>(std::max<long>(0, static_cast<long>(act_dim) + act_delta));
  std::vector<float> obs(std::max<size_t>(n_obs, 1), 0.0f), action(std::max<size_t>(n_act, 1), 0.0f);
  std::memcpy(obs.data(), data, std::min(size, n_obs * sizeof(float)));
  const uint64_t before = ssmc_steps(p);
  const ssmc_status s = ssmc_act(p, (op & 4) && op % 5 == 0 ? nullptr : obs.data(), n_obs, reward,
                                 (op & 8) && op % 7 == 0 ? nullptr : action.data(), n_act);
  if (s < SSMC_OK || s > SSMC_ERR_RUNTIME) __builtin_trap();
  if (s != SSMC_OK) {
    if (ssmc_steps(p) != before) __builtin_trap();
    const char* e = ssmc_last_error(p);
    if (e == nullptr || *e == '\0' || std::strchr(e, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  if (ssmc_steps(p) != before + 1) __builtin_trap();
  for (size_t i = 0; i < act_dim; ++i) {
    if (!std::isfinite(action[i])) __builtin_trap();
  }
  return 0;
}
