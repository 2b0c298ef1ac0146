/* LD_PRELOAD shim: counts malloc/calloc/realloc/aligned allocations and prints the totals at exit.
 * Used by tools/bench/allocs_per_step.py to count the runtime's heap allocations per control step. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long n_alloc;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

/* dlsym may itself call calloc: serve that from a static buffer. */
static char bootstrap[4096];
static size_t bootstrap_used;

static void init(void) {
  real_malloc = dlsym(RTLD_NEXT, "malloc");
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
}

void *malloc(size_t n) {
  if (!real_malloc) init();
  atomic_fetch_add(&n_alloc, 1);
  return real_malloc(n);
}

void *calloc(size_t a, size_t b) {
  if (!real_calloc) {
    if (bootstrap_used + a * b > sizeof(bootstrap)) return NULL;
    void *p = bootstrap + bootstrap_used;
    bootstrap_used += (a * b + 15) & ~(size_t)15;
    return p;
  }
  atomic_fetch_add(&n_alloc, 1);
  return real_calloc(a, b);
}

void *realloc(void *p, size_t n) {
  if (!real_realloc) init();
  atomic_fetch_add(&n_alloc, 1);
  return real_realloc(p, n);
}

int posix_memalign(void **p, size_t a, size_t n) {
  if (!real_posix_memalign) init();
  atomic_fetch_add(&n_alloc, 1);
  return real_posix_memalign(p, a, n);
}

void *aligned_alloc(size_t a, size_t n) {
  if (!real_aligned_alloc) init();
  atomic_fetch_add(&n_alloc, 1);
  return real_aligned_alloc(a, n);
}

void free(void *p) {
  static void (*real_free)(void *);
  if (p >= (void *)bootstrap && p < (void *)(bootstrap + sizeof(bootstrap))) return;
  if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
  real_free(p);
}

__attribute__((destructor)) static void report(void) {
  fprintf(stderr, "allocations %ld\n", atomic_load(&n_alloc));
}
