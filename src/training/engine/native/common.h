/*
 * Shared by the native kernels (compiled as one translation unit, addon.c): headers, the 16-lane float
 * vector types (GCC vector extensions: AVX-512 or 2 x AVX2 from -march=native), a vector exp, the Node-API
 * argument readers, and a task pool over pthreads.
 */
#ifndef DPO_NATIVE_COMMON_H
#define DPO_NATIVE_COMMON_H
#include <node_api.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdatomic.h>
#include <sched.h>
#include <math.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64), aligned(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
/* exp(x) for 16 floats: 2^k * e^r, r = x - k ln2 in [-ln2/2, ln2/2], degree-6 polynomial (|rel err| < 2e-7),
   inputs clamped to [-87.3, 88.7] (e^-87.3 ~ 1.2e-38, the smallest normal float). */
typedef int v16i __attribute__((vector_size(64)));
/* m ? a : b lane-wise (m from a vector comparison: all ones or zero) */
static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
/* horizontal sum / max of 16 lanes as a 4-step tree (lane shuffles) rather than a 15-step chain */
static inline float hsum16(v16 x) {
  x += __builtin_shuffle(x, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  x += __builtin_shuffle(x, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  x += __builtin_shuffle(x, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  x += __builtin_shuffle(x, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return x[0];
}
static inline float hmax16(v16 x) {
  v16 y;
  y = __builtin_shuffle(x, (v16i){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  x = vsel(y > x, y, x);
  y = __builtin_shuffle(x, (v16i){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  x = vsel(y > x, y, x);
  y = __builtin_shuffle(x, (v16i){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  x = vsel(y > x, y, x);
  y = __builtin_shuffle(x, (v16i){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  x = vsel(y > x, y, x);
  return x[0];
}

/* m ? a : b lane-wise for any vector type VF_ and its integer type VI_ */
#define VSEL_(VF_, VI_, m, a, b) ((VF_)((((VI_)(a)) & (m)) | (((VI_)(b)) & ~(m))))
/* one definition of the vector exp for each vector type it is instantiated with (v16 here; attention.c adds its
   native-width type) */
#define DEFINE_VEXP(NAME, VF_, VI_)            \
  static inline VF_ NAME(VF_ x) {            \
  const VF_ hi = (VF_){0} + 88.7f, lo = (VF_){0} - 87.3f; \
  x = VSEL_(VF_, VI_, x > hi, hi, x); \
  x = VSEL_(VF_, VI_, x < lo, lo, x); \
  VF_ t = x * 1.44269504088896341f; \
  VF_ half = VSEL_(VF_, VI_, t >= 0, (VF_){0} + 0.5f, (VF_){0} - 0.5f); \
  VF_ kf = __builtin_convertvector(__builtin_convertvector(t + half, VI_), VF_); \
  VF_ r = x - kf * 0.693359375f + kf * 2.12194440e-4f; \
  VF_ p = (VF_){0} + 1.9875691500e-4f; \
  p = p * r + 1.3981999507e-3f; \
  p = p * r + 8.3334519073e-3f; \
  p = p * r + 4.1665795894e-2f; \
  p = p * r + 1.6666665459e-1f; \
  p = p * r + 5.0000001201e-1f; \
  p = p * r * r + r + 1.0f; \
  VI_ k = __builtin_convertvector(kf, VI_); \
  VI_ bits = (k + 127) << 23; \
  VF_ scale; \
  memcpy(&scale, &bits, sizeof scale); \
  return p * scale; \
  }
DEFINE_VEXP(vexp, v16, v16i)

/*
 * The machine's own vector width AW, for the loops that keep several vectors live (attention, softmax,
 * element-wise, optimizer): AW lanes are the machine's own (16 lanes with AVX-512, else 8: AVX2's registers,
 * or two NEON registers), never wider, so blocks of accumulators and the exp polynomial stay in registers
 * (16-lane v16 code on AVX2 made GCC spill: the attention loops ran at 3 GFLOP/s per core).
 */
#if defined(__AVX512F__)
#define AW 16
#else
#define AW 8
#endif
typedef float va __attribute__((vector_size(AW * 4), aligned(AW * 4)));
typedef int vai __attribute__((vector_size(AW * 4)));
typedef float vau __attribute__((vector_size(AW * 4), aligned(4))); /* unaligned loads and stores */
DEFINE_VEXP(va_exp, va, vai)
#define va_sel(m, a, b) VSEL_(va, vai, m, a, b)
static inline float va_hmax(va x) {
  float m = x[0];
  for (int l = 1; l < AW; l++) m = x[l] > m ? x[l] : m;
  return m;
}
static inline float va_hsum(va x) {
  float s = 0.f;
  for (int l = 0; l < AW; l++) s += x[l];
  return s;
}

static int get_f32(napi_env env, napi_value v, float **data, size_t *len) {
  napi_typedarray_type type;
  size_t length, offset;
  void *ptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &offset) != napi_ok) return 0;
  if (type != napi_float32_array) return 0;
  *data = (float *)ptr;
  *len = length;
  return 1;
}

static int get_i(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok;
}

static int get_f64(napi_env env, napi_value v, double *out) {
  return napi_get_value_double(env, v, out) == napi_ok;
}

/*
 * Per-thread scratch buffers, grown on demand and reused across calls (never freed; bounded by the largest
 * use). malloc/free of the GEMM's 2 MB packing block on every call went through mmap/munmap, whose page
 * faults and TLB shootdowns cost more than a small product.
 */
enum { SCRATCH_GEMM_A, SCRATCH_GEMM_B, SCRATCH_GEMM_PART, SCRATCH_SMALL_B, SCRATCH_SMALL_ACC, SCRATCH_ATTENTION, SCRATCH_SLOTS };
static __thread struct {
  void *p;
  size_t n;
} scratch_slots[SCRATCH_SLOTS];

/* 64-byte aligned scratch of at least `bytes` for this thread's `slot`, or NULL when out of memory. */
static void *scratch(int slot, size_t bytes) {
  if (scratch_slots[slot].n < bytes) {
    free(scratch_slots[slot].p);
    size_t n = (bytes + bytes / 4 + 63) & ~(size_t)63;
    scratch_slots[slot].p = aligned_alloc(64, n);
    scratch_slots[slot].n = scratch_slots[slot].p ? n : 0;
  }
  return scratch_slots[slot].p;
}

/*
 * A persistent pool of worker threads (created on first use, never joined: they live as long as the
 * process). parallel_for(fn, ctx, n, threads) runs fn(ctx, task) for task in [0, n) on the caller plus up
 * to threads - 1 workers; tasks are claimed one at a time from a shared counter, and the caller returns as
 * soon as every task has completed: it never waits for a worker to wake up or to arrive (a worker that
 * comes late finds no task left, and a job nobody joins runs on the caller alone). Tasks must therefore be
 * independent of each other and of which thread runs them (no barriers between tasks of one job).
 * Workers spin (with pause) for a while after each job before sleeping on a condition variable, so the
 * back-to-back kernels of a training step find them awake: creating and joining threads per call cost
 * 60-300 us in the training process, more than a small product itself. Jobs are serialised (one at a time
 * per process; the engine calls from the JS thread only).
 *
 * The claim counter `next` holds (job id << 32 | next task). A thread reads it, reads that job's slot (fn,
 * ctx, n, threads: two slots, alternating by job id), and claims the task with a compare-and-swap of the
 * counter: the swap succeeds only while the counter still belongs to that job, and a job's slot is written
 * again only two jobs later (after the counter has moved on), so a successful claim always ran against the
 * right slot. The caller resets `completed` before it publishes a job and waits until it reaches n.
 */
typedef void (*task_fn)(void *ctx, int task);

#define POOL_MAX 8
#define POOL_SPIN_US_DEFAULT 300
static int pool_spin_us = POOL_SPIN_US_DEFAULT; /* microseconds a worker spins after a job before sleeping (configure) */

static inline double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

typedef struct {
  _Atomic(task_fn) fn;
  _Atomic(void *) ctx;
  atomic_int n;
  atomic_int nthreads; /* threads taking part (caller included): worker i joins when i < nthreads */
} pool_job_t;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_uint gen;           /* id of the latest job (workers wait for it to change) */
  atomic_int sleeping;       /* workers blocked on cv */
  _Atomic uint64_t next;     /* (job id << 32) | next task of that job */
  atomic_int completed;      /* tasks of the current job completed */
  pool_job_t job[2];         /* job id & 1 */
  int workers;               /* started so far */
  unsigned gen0[POOL_MAX];   /* gen when worker i was created */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/*
 * Wait politely: spin (pause) for the first 2048 polls, then yield the core on each poll. On an
 * oversubscribed machine the thread being waited for may be descheduled; spinning would burn the time slice
 * it needs (measured: GEMM-bound steps 5x slower at load average 20 on 2 cores).
 */
static inline void relax_or_yield(int spins) {
  if (spins < 2048) cpu_relax();
  else sched_yield();
}

/* Claim and run tasks of the current job as thread `id` (0: the caller) until none is left. */
static void pool_work(int id) {
  for (;;) {
    uint64_t v = atomic_load(&pool.next);
    pool_job_t *j = &pool.job[(v >> 32) & 1];
    const int idx = (int)(uint32_t)v;
    const int n = atomic_load_explicit(&j->n, memory_order_relaxed);
    const int nth = atomic_load_explicit(&j->nthreads, memory_order_relaxed);
    task_fn fn = atomic_load_explicit(&j->fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&j->ctx, memory_order_relaxed);
    if (id >= nth || idx >= n) return;
    if (!atomic_compare_exchange_weak(&pool.next, &v, v + 1)) continue;
    fn(ctx, idx);
    atomic_fetch_add(&pool.completed, 1);
  }
}

static void *pool_main(void *arg) {
  const int id = (int)(intptr_t)arg; /* 1 .. POOL_MAX - 1; the caller of parallel_for is 0 */
  unsigned seen = pool.gen0[id];
  for (;;) {
    unsigned g;
    int spins = 0;
    double t0 = now_us();
    while ((g = atomic_load(&pool.gen)) == seen) {
      if ((++spins & 63) != 0 || now_us() - t0 < pool_spin_us) {
        cpu_relax();
        continue;
      }
      pthread_mutex_lock(&pool.mu);
      atomic_fetch_add(&pool.sleeping, 1);
      while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
      atomic_fetch_sub(&pool.sleeping, 1);
      pthread_mutex_unlock(&pool.mu);
      spins = 0;
      t0 = now_us();
    }
    seen = g;
    pool_work(id);
  }
  return NULL;
}

/*
 * Threads for a kernel of about `flops` floating-point operations: 1 below `mt_min_flops` (24 million
 * unless configure() sets it), else `threads`. On a small machine the OS (or hypervisor) now and then preempts one of our
 * threads for the runtime's own background threads; a multi-threaded kernel then waits for it (measured:
 * 2-3 ms spikes on a 0.2 ms product), which costs more on average than a second core saves on small work.
 */
static double mt_min_flops = 24e6;
static int mt_threads(double flops, int64_t threads) {
  return flops < mt_min_flops || threads < 2 ? 1 : (int)threads;
}

/* Start workers so that `want` threads (caller included) can run; returns how many can (>= 1). */
static int pool_threads(int want) {
  if (want > POOL_MAX) want = POOL_MAX;
  while (pool.workers < want - 1) {
    pthread_t th;
    pool.gen0[pool.workers + 1] = atomic_load(&pool.gen);
    if (pthread_create(&th, NULL, pool_main, (void *)(intptr_t)(pool.workers + 1)) != 0) break;
    pthread_detach(th);
    pool.workers++;
  }
  return want < pool.workers + 1 ? (want < 1 ? 1 : want) : pool.workers + 1;
}

static void parallel_for(task_fn fn, void *ctx, int n, int threads) {
  if (threads > n) threads = n;
  threads = pool_threads(threads);
  if (threads <= 1) {
    for (int t = 0; t < n; t++) fn(ctx, t);
    return;
  }
  const unsigned id = atomic_load(&pool.gen) + 1;
  pool_job_t *j = &pool.job[id & 1];
  atomic_store_explicit(&j->fn, fn, memory_order_relaxed);
  atomic_store_explicit(&j->ctx, ctx, memory_order_relaxed);
  atomic_store_explicit(&j->n, n, memory_order_relaxed);
  atomic_store_explicit(&j->nthreads, threads, memory_order_relaxed);
  atomic_store(&pool.completed, 0);
  atomic_store(&pool.next, (uint64_t)id << 32); /* publishes the job (sequentially consistent) */
  atomic_store(&pool.gen, id);                   /* and wakes the spinning workers */
  if (atomic_load(&pool.sleeping) > 0) {
    pthread_mutex_lock(&pool.mu);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
  }
  pool_work(0);
  for (int spins = 0; atomic_load(&pool.completed) < n; spins++) relax_or_yield(spins);
}

/*
 * configure(mtMflop, spinUs): the pool's modes, from the engine's settings (settings.ts): kernels below
 * mtMflop million flops run on one thread; idle workers spin spinUs microseconds before sleeping.
 */
static napi_value configure(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double mflop;
  int64_t spin;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !get_f64(env, argv[0], &mflop) || !get_i(env, argv[1], &spin) || mflop < 0 || spin < 0) {
    napi_throw_type_error(env, "CONFIGURE_ARGS", "configure(mtMflop >= 0, spinUs >= 0)");
    return NULL;
  }
  mt_min_flops = mflop * 1e6;
  pool_spin_us = (int)spin;
  return NULL;
}

#endif
