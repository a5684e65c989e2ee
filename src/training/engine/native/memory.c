/*
 * Kernel output buffers allocated here instead of by V8 (the native backend's buffer pool, buffer-pool.ts).
 *
 * Why: V8 counts every ArrayBuffer's backing store as external memory and starts a full (mark-compact) garbage
 * collection each time that count has grown by about 64 MB since the last one. A DPO step allocates gigabytes of
 * kernel outputs, so the process ran a major GC every ~70 ms of training (about 240 per SmolLM2-135M epoch),
 * whose concurrent marking thread took one of the two cores from the GEMM threads; the pool's evicted buffers
 * were garbage only a GC could free. Buffers made here are taken out of V8's count when they are made
 * (napi_adjust_external_memory), and the pool frees them explicitly when it drops them (bufferFree: the
 * ArrayBuffer is detached first, so a stale view reads as empty instead of freed memory); the memory returns to
 * malloc at once, and the next output of any size reuses it without page faults.
 *
 *   bufferAlloc(bytes) -> ArrayBuffer   uninitialised contents, 64-byte aligned, not in V8's external count
 *   bufferFree(ab)                       detach and free now (only for buffers nothing else can see)
 *   bufferEscape(ab)                     back into V8's count (it escaped the pool: the garbage collector frees
 *                                        it, and must know it is there)
 * V8's own accounting: +bytes when the ArrayBuffer is made, -bytes when it is detached or swept; so the balance
 * per buffer is 0 for one freed here (made +b, here -b; detached -b, here +b) and for one that escaped (+b, -b;
 * escape +b; swept -b). A buffer neither freed nor escaped is freed by its finalizer when V8 collects it.
 */
#include "common.h"

typedef struct {
  void *mem;   /* NULL once freed */
  size_t bytes;
  int escaped; /* back in V8's count */
} ext_buf_t;

static void ext_buf_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  ext_buf_t *b = (ext_buf_t *)hint;
  if (b->mem) free(b->mem);
  free(b);
}

static void adjust_external(napi_env env, int64_t bytes) {
  int64_t total;
  napi_adjust_external_memory(env, bytes, &total);
}

/* The record of an ArrayBuffer made by bufferAlloc (a header 64 bytes before its data), or NULL when it is
   detached or its header does not point back at it. Only for ArrayBuffers the caller got from bufferAlloc. */
static ext_buf_t *ext_buf_of(napi_env env, napi_value ab) {
  void *data;
  size_t len;
  bool is_ab;
  if (napi_is_arraybuffer(env, ab, &is_ab) != napi_ok || !is_ab) return NULL;
  if (napi_get_arraybuffer_info(env, ab, &data, &len) != napi_ok || !data) return NULL;
  ext_buf_t *b = ((ext_buf_t **)data)[-8]; /* the header 64 bytes before the data (see buffer_alloc) */
  return b && b->mem == (char *)data - 64 && b->bytes == len ? b : NULL;
}

/* The first argument of a call and its bufferAlloc record (NULL when there is none or it is not such a
   buffer); `ab` receives the argument. */
static ext_buf_t *ext_buf_arg(napi_env env, napi_callback_info info, napi_value *ab) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return NULL;
  *ab = argv[0];
  return ext_buf_of(env, argv[0]);
}

static napi_value buffer_alloc(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t bytes;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !get_i(env, argv[0], &bytes) || bytes < 0) {
    napi_throw_type_error(env, "BUFFER_ARGS", "bufferAlloc(bytes >= 0)");
    return NULL;
  }
  ext_buf_t *b = (ext_buf_t *)malloc(sizeof *b);
  char *mem = b ? (char *)aligned_alloc(64, ((size_t)bytes + 64 + 63) & ~(size_t)63) : NULL;
  if (!mem) {
    free(b);
    napi_throw_error(env, "BUFFER_OOM", "bufferAlloc: out of memory");
    return NULL;
  }
  b->mem = mem;
  b->bytes = (size_t)bytes;
  b->escaped = 0;
  ((ext_buf_t **)mem)[0] = b; /* header: the record, 64 bytes before the data */
  napi_value ab;
  if (napi_create_external_arraybuffer(env, mem + 64, (size_t)bytes, ext_buf_finalize, b, &ab) != napi_ok) {
    free(mem);
    free(b);
    napi_throw_error(env, "BUFFER_OOM", "bufferAlloc: napi_create_external_arraybuffer failed");
    return NULL;
  }
  adjust_external(env, -(int64_t)bytes);
  return ab;
}

static napi_value buffer_free(napi_env env, napi_callback_info info) {
  napi_value ab = NULL;
  ext_buf_t *b = ext_buf_arg(env, info, &ab);
  if (!b || b->escaped) {
    napi_throw_type_error(env, "BUFFER_ARGS", "bufferFree: not a live, unescaped buffer from bufferAlloc");
    return NULL;
  }
  if (napi_detach_arraybuffer(env, ab) != napi_ok) {
    napi_throw_error(env, "BUFFER_DETACH", "bufferFree: the ArrayBuffer cannot be detached");
    return NULL;
  }
  free(b->mem);
  b->mem = NULL;
  adjust_external(env, (int64_t)b->bytes); /* V8 took the bytes off its count at the detach */
  return NULL;
}

static napi_value buffer_escape(napi_env env, napi_callback_info info) {
  napi_value ab = NULL;
  ext_buf_t *b = ext_buf_arg(env, info, &ab);
  if (b && !b->escaped) {
    adjust_external(env, (int64_t)b->bytes);
    b->escaped = 1;
  }
  return NULL;
}
