/*
 * ssmc.h -- the ssmc runtime's C API: run a compiled policy step inside a control loop.
 *
 *   ssmc_policy *p = NULL;
 *   if (ssmc_open("dmm-host-fp32.ssmc", &p) != SSMC_OK) { puts(ssmc_last_error(NULL)); return 1; }
 *   ssmc_reset(p, ssmc_default_target_return(p));
 *   float obs[11], action[3]; double reward = 0.0;
 *   for (;;) {
 *       read_sensors(obs);
 *       if (ssmc_act(p, obs, 11, reward, action, 3) != SSMC_OK) { hold_last_command(); continue; }
 *       reward = apply(action);
 *   }
 *   ssmc_close(p);
 *
 * An artifact is the directory `ssmc compile` writes (docs/artifact.md). ssmc_open verifies it
 * before anything runs: its signature when trusted keys are configured (ssmc_open_with), the manifest
 * against its schema (runtime/c/manifest.schema.json, compiled in: types, enums, finite numbers,
 * lengths against dims, no unknown fields, nesting at most 64 deep), its format version, every file's
 * size and sha256, no file missing or extra, a CPU artifact built for this machine's architecture and
 * CPU features. It then loads the compiled library, checks the compiled step's arguments and results
 * (count, dtypes, shapes) against the manifest, and allocates every buffer the step needs. How depends
 * on the manifest's executor:
 *   - "static": the library is native code exporting ssmc_static_abi.h; libssmc loads it itself
 *     (dlopen). Nothing of TVM is needed: libssmc.so and libc suffice.
 *   - "vm": the library is a Relax VM executable; libssmc loads its plugin libssmc_vm.so from its own
 *     directory, which runs it through TVM's runtime (libtvm_runtime + libtvm_ffi, next to it).
 *
 * Semantics (the same as the PyTorch reference, ssmc.train.rollout.TorchPolicy):
 *   - ssmc_reset(p, R) zeroes the model state and sets the return-to-go to R (unscaled, e.g. 3600
 *     for Hopper). ssmc_open leaves the policy reset with the artifact's default target return.
 *   - ssmc_act(p, obs, n, last_reward, action, m) feeds one observation and the reward received
 *     after the previous action; the runtime subtracts last_reward from the return-to-go (ignored on
 *     the first call after a reset), runs one step and writes the action.
 *
 * Errors: every call returns an ssmc_status; ssmc_last_error(p) says why in one line. A call that
 * fails changes nothing: the state, the return-to-go and the step count are those before the call,
 * so the next valid call returns the same action as if the failed call had never happened. No call
 * lets a C++ exception, a signal from bad input or an abort reach the caller.
 *
 * Memory: ssmc_open allocates every buffer: inputs, outputs, two copies of the state (the step
 * writes the next state into the spare copy, which becomes current only when the step succeeded)
 * and, for static artifacts, the step's scratch arena. ssmc_act writes into the caller's action
 * buffer. For static artifacts ssmc_act allocates nothing at all (no malloc, on success or in the
 * step); for VM artifacts TVM's VM allocates small objects per call and serves intermediate tensors
 * from a pooled allocator that stops growing after the first step (resident memory stays flat;
 * docs/runtime.md has a one-million-step soak).
 *
 * Threads: a handle belongs to one control loop. Calls on one handle must not overlap (no locking
 * is done); different handles may be used from different threads. The compiled kernels run on the
 * calling thread (for VM artifacts ssmc_open sets TVM_NUM_THREADS=1 unless the process already set it).
 */
#ifndef SSMC_H_
#define SSMC_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SSMC_API __attribute__((visibility("default")))
#else
#define SSMC_API
#endif

/* Incremented when a function's behaviour or signature changes. 2: ssmc_open_with and trusted keys
 * (signed artifacts), the manifest checked against its schema and against the compiled library at open. */
#define SSMC_API_VERSION 2

typedef struct ssmc_policy ssmc_policy;

typedef enum ssmc_status {
  SSMC_OK = 0,
  SSMC_ERR_ARGUMENT = 1, /* NULL pointer, wrong buffer size, bad option */
  SSMC_ERR_INPUT = 2,    /* NaN or inf in the observation, the reward or the target return */
  SSMC_ERR_ARTIFACT = 3, /* missing, tampered, another format version, another target */
  SSMC_ERR_RUNTIME = 4,  /* the step failed, or produced NaN/inf (state left untouched) */
} ssmc_status;

/* Open and verify an artifact directory; on success *out is a reset policy, on failure NULL and
 * ssmc_last_error(NULL) says why. The same as ssmc_open_with(artifact_dir, NULL, out): trusted keys come
 * from the environment variable SSMC_TRUSTED_KEYS when it is set. */
SSMC_API ssmc_status ssmc_open(const char *artifact_dir, ssmc_policy **out);

/* Options of ssmc_open_with. Set size to sizeof(ssmc_open_options) (the struct may grow; fields are only
 * added at its end). */
typedef struct ssmc_open_options {
  uint32_t size;
  uint32_t flags;           /* SSMC_OPEN_* */
  const char *trusted_keys; /* a key file or a folder of *.pub key files; NULL: SSMC_TRUSTED_KEYS if set */
} ssmc_open_options;

/* Ignore SSMC_TRUSTED_KEYS: only options->trusted_keys configures keys. */
#define SSMC_OPEN_NO_ENV 1u

/* Open with options (NULL: as ssmc_open). Signing (docs/security.md): when trusted keys are configured
 * (options->trusted_keys, else SSMC_TRUSTED_KEYS) the artifact must carry manifest.sig, an Ed25519
 * signature of manifest.json by one of those keys, checked before the manifest is parsed; an unsigned
 * artifact, one signed by another key, or one changed after signing is refused (SSMC_ERR_ARTIFACT), and so
 * is every artifact when the configured keys cannot be read or hold no key. Without keys a signature is
 * not checked. Key files hold lines "ssmc-ed25519 <64 hex digits> [comment]" (`ssmc keygen` writes them). */
SSMC_API ssmc_status ssmc_open_with(const char *artifact_dir, const ssmc_open_options *options, ssmc_policy **out);

/* Free everything the handle owns. NULL is allowed. */
SSMC_API void ssmc_close(ssmc_policy *policy);

/* Zero the state and set the return-to-go to target_return (unscaled, finite). */
SSMC_API ssmc_status ssmc_reset(ssmc_policy *policy, double target_return);

/* One control step: obs has n_obs floats (== ssmc_obs_dim), action room for n_action
 * (== ssmc_act_dim). */
SSMC_API ssmc_status ssmc_act(ssmc_policy *policy, const float *obs, size_t n_obs, double last_reward,
                              float *action, size_t n_action);

/* The last error on this handle ("" if none), or with NULL the last ssmc_open error of this thread.
 * Valid until the next call on the same handle (or the next ssmc_open on this thread). */
SSMC_API const char *ssmc_last_error(const ssmc_policy *policy);

SSMC_API size_t ssmc_obs_dim(const ssmc_policy *policy);
SSMC_API size_t ssmc_act_dim(const ssmc_policy *policy);
SSMC_API double ssmc_default_target_return(const ssmc_policy *policy);
/* Steps taken since the last reset. */
SSMC_API uint64_t ssmc_steps(const ssmc_policy *policy);
/* Bytes of model state carried between steps (the manifest's state_bytes). */
SSMC_API size_t ssmc_state_bytes(const ssmc_policy *policy);
/* A manifest string field: "model_kind", "semantics", "precision", "target" (the target's name),
 * "library", "executor" ("static" or "vm"), or "signed_by": the id of the trusted key whose signature was
 * verified at open ("" when no keys were configured); NULL for anything else. */
SSMC_API const char *ssmc_info(const ssmc_policy *policy, const char *key);

/* The runtime's version string and SSMC_API_VERSION as compiled. */
SSMC_API const char *ssmc_version(void);
SSMC_API int ssmc_api_version(void);

#ifdef __cplusplus
}
#endif

#endif /* SSMC_H_ */
