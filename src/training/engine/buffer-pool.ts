/**
 * Recycled float32 output buffers for the native backend.
 *
 * Every kernel output used to be a fresh `Float32Array`. V8 backs large ones with freshly mapped, zeroed pages,
 * so a kernel writing a 100 MB output (the logits of one batch, a 50k-row embedding gradient, AdamW's three
 * outputs per weight) first page-faults through all of it, and the disposed tensor's memory only returns when
 * the garbage collector runs. The pool keeps the `ArrayBuffer`s of disposed outputs (up to `maxBytes`, the
 * least recently freed dropped first) and hands them to the next output of a size that fits.
 *
 * Safety: a buffer is recycled only while exactly one tensor owns it and no code outside the kernels has seen
 * it. The backend reports every store ({@link BufferPool.stored}); a buffer stored under a second tensor, or as
 * a view (tfjs-backend-cpu's contiguous Slice shares a subarray), escapes the pool for good. Reading a tensor
 * (`dataSync`, `data`) goes through {@link BufferPool.exposed}: a whole buffer escapes; a view is copied.
 * Outputs come with unspecified contents (as on the wasm backend): kernels write every element.
 */

/** Hit and miss counts and the bytes held free (tests, benchmarks). */
export interface BufferPoolStats {
  hits: number;
  misses: number;
  freeBytes: number;
}

type Lent = { view: Float32Array; stored: boolean };

/**
 * Where the pool's buffers come from when not from V8 (the native addon's bufferAlloc/bufferFree/bufferEscape,
 * native/memory.c): buffers outside V8's external-memory count, so making them never starts a garbage
 * collection, and the pool frees them itself (at once, back to malloc) when it drops them.
 */
export interface BufferAllocator {
  /** A new buffer of `bytes` (contents unspecified). */
  alloc(bytes: number): ArrayBuffer;
  /** Free a buffer from `alloc` that nothing else can see (it is detached: stale views read as empty). */
  free(buf: ArrayBuffer): void;
  /** A buffer from `alloc` escaped the pool (read, shared): the garbage collector frees it from now on. */
  escape(buf: ArrayBuffer): void;
}

/**
 * A new ArrayBuffer of `bytes` without zero-filling (Node's Buffer.allocUnsafeSlow: malloc, where
 * `new ArrayBuffer` is calloc, which clears recycled heap memory page by page before the kernel overwrites
 * it; outputs come with unspecified contents anyway). A plain ArrayBuffer where Buffer is absent.
 */
function uninitialized(bytes: number): ArrayBuffer {
  const B = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): { buffer: ArrayBufferLike; byteOffset: number; byteLength: number } } }).Buffer;
  const b = B?.allocUnsafeSlow(bytes);
  return b && b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer ? b.buffer : new ArrayBuffer(bytes);
}

export class BufferPool {
  /** free buffers by capacity in floats, the most recently freed last */
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** every free buffer, the least recently freed first (eviction order) */
  private readonly order = new Set<ArrayBuffer>();
  /** buffers out of the pool, each with the view it was lent as */
  private readonly lent = new WeakMap<ArrayBuffer, Lent>();
  private freeBytes = 0;
  private hits = 0;
  private misses = 0;

  /**
   * @param maxBytes the most bytes held free (0 turns the pool off: every take is a new array)
   * @param minFloats smaller outputs are plain new arrays (V8 allocates those cheaply)
   * @param allocator where new buffers come from and go to (default: V8's ArrayBuffers, left to the collector)
   */
  constructor(
    private cap: number,
    readonly minFloats = 16384,
    private readonly allocator?: BufferAllocator,
  ) {}

  /** The most bytes held free (0: the pool is off). */
  get maxBytes(): number {
    return this.cap;
  }

  /**
   * Change the most bytes held free (e.g. to the memory a run has to spare); when it is lowered, the least
   * recently freed buffers are dropped first until the free bytes fit.
   * @throws RangeError for a negative or non-finite size
   */
  resize(maxBytes: number): void {
    if (!Number.isFinite(maxBytes) || maxBytes < 0) throw new RangeError(`pool size must be >= 0 bytes, not ${maxBytes}`);
    this.cap = maxBytes;
    this.evictTo(maxBytes);
  }

  /** Drop the least recently freed buffers until at most `limit` bytes are held free. */
  private evictTo(limit: number): void {
    while (this.freeBytes > limit) {
      const oldest = this.order.values().next().value as ArrayBuffer;
      this.order.delete(oldest);
      const stack = this.free.get(oldest.byteLength / 4)!;
      stack.splice(stack.indexOf(oldest), 1);
      this.freeBytes -= oldest.byteLength;
      this.allocator?.free(oldest);
    }
  }

  /** The capacity (floats) a request of `n` floats gets: `n` rounded up to 1/8 of its power of two (≤ 12.5% more). */
  static capacity(n: number): number {
    if (n <= 8) return n;
    const step = 2 ** (Math.floor(Math.log2(n)) - 3);
    return Math.ceil(n / step) * step;
  }

  /** A float32 array of length `n` (contents unspecified), from a free buffer when one of its capacity is held. */
  take(n: number): Float32Array {
    if (this.maxBytes === 0 || n < this.minFloats) return new Float32Array(n);
    const cap = BufferPool.capacity(n);
    let buf = this.free.get(cap)?.pop() ?? this.bestFit(cap);
    if (buf) {
      this.order.delete(buf);
      this.freeBytes -= buf.byteLength;
      this.hits++;
    } else {
      buf = this.allocator ? this.allocator.alloc(cap * 4) : uninitialized(cap * 4);
      this.misses++;
    }
    const view = new Float32Array(buf, 0, n);
    this.lent.set(buf, { view, stored: false });
    return view;
  }

  /** The smallest free buffer of capacity in (cap, 1.5 cap], taken off its stack (batches of varying length). */
  private bestFit(cap: number): ArrayBuffer | undefined {
    let best = 0;
    for (const [c, stack] of this.free) if (c > cap && c <= cap * 1.5 && stack.length > 0 && (best === 0 || c < best)) best = c;
    return best ? this.free.get(best)!.pop() : undefined;
  }

  /** `values` was stored as a tensor's data: the first store of a lent view is its owner; any other use of the buffer escapes. */
  stored(values: unknown): void {
    if (!(values instanceof Float32Array)) return;
    const l = this.lent.get(values.buffer as ArrayBuffer);
    if (!l) return;
    if (l.view === values && !l.stored) l.stored = true;
    else this.escape(values.buffer as ArrayBuffer);
  }

  /** `buf` leaves the pool for good: the garbage collector owns it from now on. */
  private escape(buf: ArrayBuffer): void {
    this.lent.delete(buf);
    this.allocator?.escape(buf);
  }

  /**
   * `values` is about to be handed to code outside the kernels (a tensor read).
   * @returns the array to hand out: `values` itself (its buffer escapes the pool) or, for a view shorter than
   *   its buffer, a copy (the buffer stays recyclable)
   */
  exposed<T>(values: T): T {
    if (!(values instanceof Float32Array)) return values;
    const buf = values.buffer as ArrayBuffer;
    if (!this.lent.has(buf)) return values;
    if (values.byteLength === buf.byteLength) {
      this.escape(buf);
      return values;
    }
    return values.slice() as T;
  }

  /** The tensor owning `values` was disposed: its buffer returns to the pool (if it is the pool's, unshared). */
  release(values: unknown): void {
    if (!(values instanceof Float32Array)) return;
    const buf = values.buffer as ArrayBuffer;
    const l = this.lent.get(buf);
    if (!l || l.view !== values) return;
    this.lent.delete(buf);
    if (buf.byteLength > this.maxBytes) {
      this.allocator?.free(buf);
      return;
    }
    this.evictTo(this.maxBytes - buf.byteLength);
    const cap = buf.byteLength / 4;
    const stack = this.free.get(cap);
    if (stack) stack.push(buf);
    else this.free.set(cap, [buf]);
    this.order.add(buf);
    this.freeBytes += buf.byteLength;
  }

  /** Drop every free buffer (freed by the allocator, or left to the garbage collector). */
  clear(): void {
    if (this.allocator) for (const buf of this.order) this.allocator.free(buf);
    this.free.clear();
    this.order.clear();
    this.freeBytes = 0;
  }

  stats(): BufferPoolStats {
    return { hits: this.hits, misses: this.misses, freeBytes: this.freeBytes };
  }
}
