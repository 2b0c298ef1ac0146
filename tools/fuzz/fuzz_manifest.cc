// fuzz_manifest.cc -- libFuzzer harness: manifest.json's text through everything libssmc.so checks before it
// touches a file: UTF-8, the JSON parser (depth <= 64), the format version, the schema interpreter and the
// rules between fields (CheckManifestText in runtime/c/ssmc_runtime.cc, compiled into this harness with
// AddressSanitizer and UBSan). Every input must end in a refusal (a Failure with a one-line message) or a
// valid manifest; a crash, a sanitizer report, a hang or any other exception is a finding.
//
//   tools/fuzz/build.sh OUT && OUT/fuzz_manifest CORPUS_DIR SEED_DIR -max_total_time=60
#include "ssmc_runtime.cc"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<TensorSpec> inputs, outputs, state;
  try {
    CheckManifestText(text, &inputs, &outputs, &state);
    // A valid manifest: what the runtime derives from it must be consistent.
    uint64_t sum = 0;
    for (const TensorSpec& s : state) sum += s.bytes;
    for (const auto* group : {&inputs, &outputs, &state}) {
      for (const TensorSpec& s : *group) {
        if (s.bytes == 0 || s.bytes > kMaxTensorBytes) __builtin_trap();
      }
    }
    (void)sum;
  } catch (const Failure& f) {
    if (f.status != SSMC_ERR_ARTIFACT || f.message.empty() || f.message.find('\n') != std::string::npos) __builtin_trap();
  }
  return 0;
}
