/**
 * Time limits on promises, with `AbortSignal.timeout` as the timer (unref'd by Node: a pending limit never
 * keeps the process alive, and nothing needs clearing).
 */

/**
 * Settle as `p` does, or reject with `onTimeout()` once `ms` milliseconds have passed, whichever is first.
 * @param opts.afterPendingIo wait one more event-loop turn (`setImmediate`) before declaring the timeout, so
 *   that a reply that arrived while the loop was blocked is processed first (I/O callbacks run before
 *   immediates)
 * @throws whatever `p` rejects with, or the value `onTimeout` returns
 */
export function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => unknown, opts: { afterPendingIo?: boolean } = {}): Promise<T> {
  const signal = AbortSignal.timeout(ms);
  return new Promise<T>((resolve, reject) => {
    const expire = (): void => {
      if (opts.afterPendingIo) setImmediate(() => reject(onTimeout()));
      else reject(onTimeout());
    };
    signal.addEventListener('abort', expire, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', expire);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', expire);
        reject(e);
      },
    );
  });
}

const TIMED_OUT = Symbol('timed out');

/**
 * Whether `p` settles within `ms` milliseconds (true) or not (false); a rejection of `p` is rethrown.
 */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  try {
    await withTimeout(p, ms, () => TIMED_OUT);
    return true;
  } catch (e) {
    if (e === TIMED_OUT) return false;
    throw e;
  }
}
