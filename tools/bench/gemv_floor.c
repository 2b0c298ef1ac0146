/* gemv_floor.c -- this core's single-thread fp32 GEMV and GEMM rates, for tools/bench/static_step.py's
 * compute floor. Built there twice with gcc -O3: -march=x86-64-v3 (AVX2 + FMA, 8 lanes: what ssmc's
 * `host` target compiles for) and -march=native (AVX-512, 16 lanes, where the core has it). GCC vector
 * extensions, so the same source builds for any ISA; LANES follows the widest vector unit enabled.
 *
 *   gemv_floor gemv K N REPS    y(1, N) = x(1, K) @ W(K, N), W row-major (the layout of a folded
 *                               Linear weight): N in chunks of 8 vectors held in 8 accumulators, k
 *                               innermost, one broadcast of x[k] per 8 vector FMAs
 *   gemv_floor gemm M K N REPS  C(M, N) = A(M, K) @ B(K, N): 4 rows x 2 vectors of C in registers
 *
 * Each repetition is timed alone (CLOCK_MONOTONIC) after 10 untimed ones; prints one JSON line with
 * the MACs of one call and every repetition's nanoseconds. The operands are touched before timing,
 * so a GEMV whose W fits in L2 (256 x 256 fp32 = 256 KiB) runs from L2, as a step's weights do.
 */
#define _POSIX_C_SOURCE 200112L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#define ISA "avx512"
#elif defined(__AVX2__)
#define LANES 8
#define ISA "avx2"
#elif defined(__ARM_NEON) || defined(__SSE2__)
#define LANES 4
#define ISA "128-bit"
#else
#define LANES 4
#define ISA "generic"
#endif

typedef float vf __attribute__((vector_size(LANES * 4)));

static inline vf load(const float *p) {
  vf v;
  memcpy(&v, p, sizeof(v));
  return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof(v)); }
static inline vf splat(float x) { return (vf){0} + x; }

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static float *buffer(size_t n, unsigned seed) {
  float *p = NULL;
  if (posix_memalign((void **)&p, 64, n * sizeof(float)) != 0) exit(1);
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    p[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
  }
  return p;
}

#define CHUNK (8 * LANES)

static void gemv(const float *x, const float *W, float *y, int K, int N) {
  int n = 0;
  for (; n + CHUNK <= N; n += CHUNK) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    const float *w = W + n;
    for (int k = 0; k < K; ++k, w += N) {
      const vf xk = splat(x[k]);
      a0 += xk * load(w + 0 * LANES); a1 += xk * load(w + 1 * LANES);
      a2 += xk * load(w + 2 * LANES); a3 += xk * load(w + 3 * LANES);
      a4 += xk * load(w + 4 * LANES); a5 += xk * load(w + 5 * LANES);
      a6 += xk * load(w + 6 * LANES); a7 += xk * load(w + 7 * LANES);
    }
    store(y + n + 0 * LANES, a0); store(y + n + 1 * LANES, a1);
    store(y + n + 2 * LANES, a2); store(y + n + 3 * LANES, a3);
    store(y + n + 4 * LANES, a4); store(y + n + 5 * LANES, a5);
    store(y + n + 6 * LANES, a6); store(y + n + 7 * LANES, a7);
  }
  for (; n < N; ++n) {
    float s = 0.0f;
    for (int k = 0; k < K; ++k) s += x[k] * W[(size_t)k * N + n];
    y[n] = s;
  }
}

static void gemm(const float *A, const float *B, float *C, int M, int K, int N) {
  if (M % 4 != 0 || N % (2 * LANES) != 0) {
    for (int m = 0; m < M; ++m) gemv(A + (size_t)m * K, B, C + (size_t)m * N, K, N);
    return;
  }
  for (int m = 0; m < M; m += 4) {
    const float *a0 = A + (size_t)m * K, *a1 = a0 + K, *a2 = a1 + K, *a3 = a2 + K;
    for (int n = 0; n < N; n += 2 * LANES) {
      vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
      const float *b = B + n;
      for (int k = 0; k < K; ++k, b += N) {
        const vf b0 = load(b), b1 = load(b + LANES);
        vf a = splat(a0[k]);
        c00 += a * b0; c01 += a * b1;
        a = splat(a1[k]);
        c10 += a * b0; c11 += a * b1;
        a = splat(a2[k]);
        c20 += a * b0; c21 += a * b1;
        a = splat(a3[k]);
        c30 += a * b0; c31 += a * b1;
      }
      float *c = C + (size_t)m * N + n;
      store(c, c00); store(c + LANES, c01); c += N;
      store(c, c10); store(c + LANES, c11); c += N;
      store(c, c20); store(c + LANES, c21); c += N;
      store(c, c30); store(c + LANES, c31);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 2) goto usage;
  const int is_gemm = strcmp(argv[1], "gemm") == 0;
  if (!is_gemm && strcmp(argv[1], "gemv") != 0) goto usage;
  if (argc != (is_gemm ? 6 : 5)) goto usage;
  const int M = is_gemm ? atoi(argv[2]) : 1, K = atoi(argv[is_gemm ? 3 : 2]), N = atoi(argv[is_gemm ? 4 : 3]);
  const long reps = atol(argv[is_gemm ? 5 : 4]);
  if (M <= 0 || K <= 0 || N <= 0 || reps <= 0) goto usage;
  float *A = buffer((size_t)M * K, 1), *W = buffer((size_t)K * N, 2), *C = buffer((size_t)M * N, 3);
  int64_t *ns = malloc((size_t)reps * sizeof(int64_t));
  if (ns == NULL) return 1;
  volatile float sink = 0.0f;
  for (long r = -10; r < reps; ++r) {
    const int64_t t0 = now_ns();
    if (is_gemm) gemm(A, W, C, M, K, N);
    else gemv(A, W, C, K, N);
    const int64_t t1 = now_ns();
    sink += C[r & 7];
    A[0] = C[0] * 1e-30f; /* a dependency between repetitions: the calls cannot be merged or skipped */
    if (r >= 0) ns[r] = t1 - t0;
  }
  printf("{\"kind\": \"%s\", \"M\": %d, \"K\": %d, \"N\": %d, \"macs\": %lld, \"isa\": \"%s\", "
         "\"lanes\": %d, \"samples_ns\": [", argv[1], M, K, N, (long long)M * K * N, ISA, LANES);
  for (long r = 0; r < reps; ++r) printf("%s%lld", r ? ", " : "", (long long)ns[r]);
  printf("]}\n");
  (void)sink;
  return 0;
usage:
  fprintf(stderr, "usage: gemv_floor gemv K N REPS | gemv_floor gemm M K N REPS\n");
  return 2;
}
