/*
 * control_loop.c -- an onboard control loop around the ssmc C API (no Python anywhere).
 *
 *   ssmc_control ARTIFACT [--rate HZ] [--steps N] [--target-return R] [--print-actions]
 *   ssmc_control ARTIFACT --connect HOST:PORT [--rate HZ]
 *   --realtime: lock memory (mlockall) and run at SCHED_FIFO priority 80 when permitted, as an onboard
 *               loop would; the summary says whether it was granted.
 *
 * Standalone (default): a fixed-rate loop (clock_nanosleep on absolute CLOCK_MONOTONIC deadlines)
 * feeds a synthetic observation signal, obs[i] = sin(0.01 t (i + 1) + i) with reward 1 per step,
 * calls ssmc_act and counts deadline misses: a step whose action is ready after its period ends.
 *
 * --connect: the controller half of ssmc's hardware-in-the-loop harness (runtime/hil.py). The plant
 * (a MuJoCo simulation in another process) is the clock: it sends an observation each period and
 * applies whatever action has arrived by the deadline. Frames on the TCP socket, little-endian:
 *
 *   header  u32 magic 0x434d5353 ("SSMC"), u32 type, u32 seq, u32 n; then n float64 values
 *   plant -> controller: RESET [target_return or NaN for the default] | OBS [last_reward, obs...] | STOP
 *   controller -> plant: HELLO [obs_dim, act_dim] once after opening | ACK (after RESET)
 *                        | ACT [action...] with the OBS's seq | ERR (the step failed; nothing changed)
 *
 * Either way it ends by printing one JSON line: steps, errors, deadline misses, the step latency
 * (ssmc_act alone) p50/p99/max in microseconds, peak resident memory (VmHWM) and the resident memory at the
 * end split into anonymous and file-backed pages (RssAnon, RssFile), and the last action.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ssmc.h"

/* ------------------------------------------------------------------------------ options */

typedef struct {
  const char *artifact;
  double rate_hz;
  long steps;
  double target_return;
  int has_target_return;
  int print_actions;
  int realtime;
  long rss_every;
  const char *connect;
  const char *trusted_keys;
} Options;

static void usage(void) {
  fprintf(stderr,
          "usage: ssmc_control ARTIFACT [--rate HZ] [--steps N] [--target-return R] [--print-actions] [--realtime]\n"
          "                    [--rss-every N]   (print \"rss STEP KB MEAN_US MAX_US\" to stderr every N steps: soak tests)\n"
          "                    [--trusted-keys FILE|DIR]   (open only artifacts signed by these keys; default: SSMC_TRUSTED_KEYS)\n"
          "       ssmc_control ARTIFACT --connect HOST:PORT [--rate HZ] [--realtime]\n");
}

static int parse_options(int argc, char **argv, Options *o) {
  memset(o, 0, sizeof(*o));
  o->rate_hz = 500.0;
  o->steps = 1000;
  for (int i = 1; i < argc; ++i) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--rate") == 0 && v) { o->rate_hz = atof(v); ++i; }
    else if (strcmp(a, "--steps") == 0 && v) { o->steps = atol(v); ++i; }
    else if (strcmp(a, "--target-return") == 0 && v) { o->target_return = atof(v); o->has_target_return = 1; ++i; }
    else if (strcmp(a, "--connect") == 0 && v) { o->connect = v; ++i; }
    else if (strcmp(a, "--print-actions") == 0) { o->print_actions = 1; }
    else if (strcmp(a, "--realtime") == 0) { o->realtime = 1; }
    else if (strcmp(a, "--rss-every") == 0 && v) { o->rss_every = atol(v); ++i; }
    else if (strcmp(a, "--trusted-keys") == 0 && v) { o->trusted_keys = v; ++i; }
    else if (a[0] != '-' && o->artifact == NULL) { o->artifact = a; }
    else { usage(); return -1; }
  }
  if (o->artifact == NULL || !(o->rate_hz > 0.0) || o->steps <= 0) { usage(); return -1; }
  return 0;
}

/* -------------------------------------------------------------------------- timing, stats */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until(int64_t t_ns) {
  struct timespec ts = {(time_t)(t_ns / 1000000000LL), (long)(t_ns % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static double percentile_us(int64_t *sorted, long n, double q) {
  if (n == 0) return 0.0;
  long i = (long)ceil(q * (double)n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return (double)sorted[i] / 1000.0;
}

/* A "Name:  N kB" line of /proc/self/status, or -1. VmHWM is the peak resident memory of this process image,
 * which (unlike getrusage's ru_maxrss) starts afresh at execve instead of inheriting the parent's peak;
 * RssAnon and RssFile split the resident memory now into this process's own pages (heap, stacks) and
 * mapped files (the libraries, shared with every process that maps them). */
static long status_kb(const char *name) {
  char line[256];
  long kb = -1;
  size_t n = strlen(name);
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, name, n) == 0 && line[n] == ':') kb = atol(line + n + 1);
  }
  fclose(f);
  return kb;
}

static long rss_kb(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return -1;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
  fclose(f);
  return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

typedef struct {
  int realtime; /* SCHED_FIFO granted */
  long steps, errors, misses;
  int64_t *latency_ns; /* one per step, preallocated */
  long rss_open_kb;
} Stats;

static void print_summary(const char *mode, const Options *o, Stats *s, const float *action, size_t act_dim,
                          ssmc_policy *p) {
  qsort(s->latency_ns, (size_t)s->steps, sizeof(int64_t), cmp_i64);
  printf("{\"mode\": \"%s\", \"model_kind\": \"%s\", \"precision\": \"%s\", \"target\": \"%s\", \"executor\": \"%s\", "
         "\"signed_by\": \"%s\", "
         "\"realtime\": %s, \"rate_hz\": %.3f, \"steps\": %ld, \"errors\": %ld, \"deadline_misses\": %ld, "
         "\"latency_us\": {\"p50\": %.3f, \"p99\": %.3f, \"max\": %.3f}, "
         "\"rss_after_open_kb\": %ld, \"rss_end_kb\": %ld, \"peak_rss_kb\": %ld, \"rss_anon_kb\": %ld, "
         "\"rss_file_kb\": %ld, \"last_action\": [",
         mode, ssmc_info(p, "model_kind"), ssmc_info(p, "precision"), ssmc_info(p, "target"), ssmc_info(p, "executor"),
         ssmc_info(p, "signed_by"), s->realtime ? "true" : "false", o->rate_hz, s->steps,
         s->errors, s->misses, percentile_us(s->latency_ns, s->steps, 0.5), percentile_us(s->latency_ns, s->steps, 0.99),
         percentile_us(s->latency_ns, s->steps, 1.0), s->rss_open_kb, rss_kb(), status_kb("VmHWM"),
         status_kb("RssAnon"), status_kb("RssFile"));
  for (size_t i = 0; i < act_dim; ++i) printf("%s%.9g", i ? ", " : "", action[i]);
  printf("]}\n");
  fflush(stdout);
}

/* ---------------------------------------------------------------------- standalone loop */

static int run_standalone(const Options *o, ssmc_policy *p, Stats *s) {
  const size_t obs_dim = ssmc_obs_dim(p), act_dim = ssmc_act_dim(p);
  float *obs = calloc(obs_dim, sizeof(float)), *action = calloc(act_dim, sizeof(float));
  if (obs == NULL || action == NULL) return 1;
  ssmc_reset(p, o->has_target_return ? o->target_return : ssmc_default_target_return(p));
  const int64_t period = (int64_t)(1e9 / o->rate_hz);
  int64_t tick = now_ns();
  for (long t = 0; t < o->steps; ++t) {
    for (size_t i = 0; i < obs_dim; ++i) obs[i] = (float)sin(0.01 * (double)t * (double)(i + 1) + (double)i);
    const int64_t t0 = now_ns();
    const ssmc_status st = ssmc_act(p, obs, obs_dim, 1.0, action, act_dim);
    const int64_t t1 = now_ns();
    s->latency_ns[s->steps++] = t1 - t0;
    if (st != SSMC_OK) {
      if (s->errors++ == 0) fprintf(stderr, "ssmc_act: %s\n", ssmc_last_error(p));
    }
    if (o->print_actions) {
      for (size_t i = 0; i < act_dim; ++i) printf("%s%.9g", i ? " " : "", action[i]);
      printf("\n");
    }
    if (o->rss_every > 0 && (t + 1) % o->rss_every == 0) { /* RSS, and this window's latency mean and max */
      int64_t sum = 0, max = 0;
      for (long k = s->steps - o->rss_every; k < s->steps; ++k) {
        sum += s->latency_ns[k];
        if (s->latency_ns[k] > max) max = s->latency_ns[k];
      }
      fprintf(stderr, "rss %ld %ld %.3f %.3f\n", t + 1, rss_kb(), (double)sum / (double)o->rss_every / 1e3,
              (double)max / 1e3);
    }
    const int64_t deadline = tick + period;
    if (t1 > deadline) {
      ++s->misses;
      tick += ((t1 - tick) / period) * period; /* skip the periods already lost */
    }
    tick += period;
    sleep_until(tick);
  }
  print_summary("standalone", o, s, action, act_dim, p);
  free(obs);
  free(action);
  return s->errors == 0 ? 0 : 3;
}

/* -------------------------------------------------------------------- socket (HIL) loop */

enum { MAGIC = 0x434d5353u, RESET = 1, OBS = 2, STOP = 3, ACT = 4, ERR = 5, HELLO = 6, ACK = 7 };
#define MAX_VALUES 4096

static int read_all(int fd, void *buf, size_t n) {
  char *c = buf;
  while (n > 0) {
    ssize_t r = recv(fd, c, n, 0);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return -1;
    }
    c += r;
    n -= (size_t)r;
  }
  return 0;
}

static int write_frame(int fd, uint32_t type, uint32_t seq, const double *values, uint32_t n) {
  char buf[16 + 8 * 64];
  uint32_t head[4] = {MAGIC, type, seq, n};
  if (n > 64) return -1;
  memcpy(buf, head, 16);
  if (n) memcpy(buf + 16, values, 8 * (size_t)n);
  size_t len = 16 + 8 * (size_t)n, off = 0;
  while (off < len) {
    ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return -1;
    }
    off += (size_t)w;
  }
  return 0;
}

static int connect_to(const char *host_port) {
  char host[256];
  const char *colon = strrchr(host_port, ':');
  if (colon == NULL || (size_t)(colon - host_port) >= sizeof(host)) return -1;
  memcpy(host, host_port, (size_t)(colon - host_port));
  host[colon - host_port] = '\0';
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, colon + 1, &hints, &res) != 0) return -1;
  int fd = -1;
  for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

static int run_socket(const Options *o, ssmc_policy *p, Stats *s) {
  const size_t obs_dim = ssmc_obs_dim(p), act_dim = ssmc_act_dim(p);
  const int64_t period = (int64_t)(1e9 / o->rate_hz);
  double *values = calloc(MAX_VALUES, sizeof(double)), act_out[64];
  float *obs = calloc(obs_dim, sizeof(float)), *action = calloc(act_dim, sizeof(float));
  int fd = connect_to(o->connect);
  if (fd < 0) {
    fprintf(stderr, "ssmc_control: cannot connect to %s\n", o->connect);
    return 2;
  }
  if (values == NULL || obs == NULL || action == NULL || act_dim > 64) return 1;
  const double hello[2] = {(double)obs_dim, (double)act_dim};
  if (write_frame(fd, HELLO, 0, hello, 2) != 0) return 2;
  for (;;) {
    uint32_t head[4];
    if (read_all(fd, head, sizeof(head)) != 0 || head[0] != MAGIC || head[3] > MAX_VALUES) {
      fprintf(stderr, "ssmc_control: the plant closed the connection or sent a bad frame\n");
      break;
    }
    if (head[3] && read_all(fd, values, 8 * (size_t)head[3]) != 0) break;
    if (head[1] == STOP) break;
    if (head[1] == RESET) {
      const double target = head[3] >= 1 && !isnan(values[0]) ? values[0] : ssmc_default_target_return(p);
      const ssmc_status st = ssmc_reset(p, target);
      if (write_frame(fd, st == SSMC_OK ? ACK : ERR, head[2], NULL, 0) != 0) break;
      continue;
    }
    if (head[1] != OBS) continue;
    const size_t n = head[3] >= 1 ? head[3] - 1 : 0;
    for (size_t i = 0; i < obs_dim && i < n; ++i) obs[i] = (float)values[1 + i];
    const int64_t t0 = now_ns();
    const ssmc_status st = ssmc_act(p, obs, n, head[3] >= 1 ? values[0] : 0.0, action, act_dim);
    const int64_t t1 = now_ns();
    if (s->steps < o->steps) s->latency_ns[s->steps] = t1 - t0;
    ++s->steps;
    if (t1 - t0 > period) ++s->misses;
    if (st != SSMC_OK) {
      if (s->errors++ == 0) fprintf(stderr, "ssmc_act: %s\n", ssmc_last_error(p));
      if (write_frame(fd, ERR, head[2], NULL, 0) != 0) break;
      continue;
    }
    for (size_t i = 0; i < act_dim; ++i) act_out[i] = action[i];
    if (write_frame(fd, ACT, head[2], act_out, (uint32_t)act_dim) != 0) break;
  }
  close(fd);
  if (s->steps > o->steps) s->steps = o->steps; /* latencies kept for the first --steps only */
  print_summary("socket", o, s, action, act_dim, p);
  free(values);
  free(obs);
  free(action);
  return 0;
}

int main(int argc, char **argv) {
  Options o;
  if (parse_options(argc, argv, &o) != 0) return 2;
  ssmc_policy *p = NULL;
  /* --trusted-keys: the options struct (and not the environment) says which keys an artifact must be signed by */
  ssmc_open_options open_options = {sizeof(ssmc_open_options), SSMC_OPEN_NO_ENV, o.trusted_keys};
  if (ssmc_open_with(o.artifact, o.trusted_keys ? &open_options : NULL, &p) != SSMC_OK) {
    fprintf(stderr, "error: %s\n", ssmc_last_error(NULL));
    return 2;
  }
  Stats s = {0};
  if (o.realtime) {
    struct sched_param sp = {.sched_priority = 80};
    mlockall(MCL_CURRENT | MCL_FUTURE);
    s.realtime = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
    if (!s.realtime) fprintf(stderr, "ssmc_control: SCHED_FIFO not permitted, running at normal priority\n");
  }
  if (o.connect != NULL && o.steps == 1000) o.steps = 1000000; /* socket mode: room for the latencies of 1M steps */
  s.latency_ns = malloc((size_t)o.steps * sizeof(int64_t));
  if (s.latency_ns == NULL) return 1;
  for (long i = 0; i < o.steps; ++i) s.latency_ns[i] = INT64_MAX; /* resident now, so RSS stays flat later */
  s.rss_open_kb = rss_kb();
  const int rc = o.connect ? run_socket(&o, p, &s) : run_standalone(&o, p, &s);
  free(s.latency_ns);
  ssmc_close(p);
  return rc;
}
