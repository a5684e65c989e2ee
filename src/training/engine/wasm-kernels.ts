/**
 * Kernels registered for the tfjs `wasm` backend to replace missing or slow ones.
 *
 * - `Slice` / `Unpack`: the stock wasm kernels copy the WHOLE input out of the wasm heap (`readSync`) for
 *   every slice, so taking k slices of a tensor costs k times its size (measured: a [128, 768] slice of a
 *   [1024, 768] tensor 1.4 ms; 48 unstacked heads 8-25 ms). These versions read the input through a view
 *   of the heap (`typedArrayFromHeap`) and copy only the slice.
 * - `UnsortedSegmentSum` (the gradient of `gather`) is not implemented by the wasm backend; it is built
 *   here on the backend's `ScatterNd` kernel (which sums duplicate indices), so `tf.gather` is
 *   differentiable on wasm.
 * - `GatherV2` (batchDims 0): copies contiguous rows through heap views (the stock kernel took ~3 ms for
 *   1536 rows of a `[512, 64]` embedding table, ~8 % of a stories260K step).
 * - `Identity` (tf.clone, and every tensor a custom gradient saves for its backward pass): the stock kernel
 *   copies the data; tensors are immutable (a variable's assign swaps its buffer, no kernel writes into an
 *   input), so the clone shares the buffer by reference count, as the cpu backend's Identity and the wasm
 *   backend's own Reshape do (measured: ~3 ms of copies per stories260K training step).
 * Values are identical to the reference kernels (pure data movement / the same summation).
 */
import * as tf from '@tensorflow/tfjs-core';
import { type TensorMemory, overrideKernel } from './kernels.js';

type SliceAttrs = { begin: number | number[]; size: number | number[] };
type KernelTensor = Float32Array | Int32Array | Uint8Array;

function parseSlice(shape: number[], begin: number | number[], size: number | number[]): [number[], number[]] {
  const rank = shape.length;
  const b = typeof begin === 'number' ? [begin, ...new Array(rank - 1).fill(0)] : begin.slice();
  while (b.length < rank) b.push(0);
  const s = typeof size === 'number' ? [size, ...new Array(rank - 1).fill(-1)] : size.slice();
  while (s.length < rank) s.push(-1);
  for (let i = 0; i < rank; i++) if (s[i] === -1) s[i] = shape[i]! - b[i]!;
  return [b, s];
}

/** Copy x[begin : begin+size] (any rank, non-string) into out, both flat row-major. */
function sliceInto(xv: KernelTensor, shape: number[], begin: number[], size: number[], out: KernelTensor): void {
  const rank = shape.length;
  if (rank === 0) {
    out[0] = xv[0]!;
    return;
  }
  const strides = new Array<number>(rank);
  strides[rank - 1] = 1;
  for (let i = rank - 2; i >= 0; i--) strides[i] = strides[i + 1]! * shape[i + 1]!;
  // Merge the trailing run: the innermost axis is copied as one contiguous block.
  const inner = size[rank - 1]!;
  const outer = size.slice(0, rank - 1);
  const nOuter = outer.reduce((a, c) => a * c, 1);
  const idx = new Array<number>(rank - 1).fill(0);
  let o = 0;
  for (let n = 0; n < nOuter; n++) {
    let off = begin[rank - 1]!;
    for (let d = 0; d < rank - 1; d++) off += (begin[d]! + idx[d]!) * strides[d]!;
    (out as Float32Array).set((xv as Float32Array).subarray(off, off + inner), o);
    o += inner;
    for (let d = rank - 2; d >= 0; d--) {
      if (++idx[d]! < outer[d]!) break;
      idx[d] = 0;
    }
  }
}

type Mem = TensorMemory;

function fastSlice(x: tf.TensorInfo, attrs: SliceAttrs, mem: Mem): tf.TensorInfo {
  const [begin, size] = parseSlice(x.shape, attrs.begin, attrs.size);
  const out = mem.out(size, x.dtype);
  if (size.some((s) => s === 0)) return out;
  // Views after the output is made: on wasm an allocation may grow (and so replace) the heap buffer.
  const ov = mem.data(out);
  sliceInto(mem.data(x), x.shape, begin, size, ov);
  return out;
}

function fastUnpack(value: tf.TensorInfo, axisAttr: number, mem: Mem): tf.TensorInfo[] {
  const rank = value.shape.length;
  const axis = axisAttr < 0 ? axisAttr + rank : axisAttr;
  const n = value.shape[axis]!;
  const outShape = value.shape.filter((_, i) => i !== axis);
  const size = value.shape.slice();
  size[axis] = 1;
  const outs: tf.TensorInfo[] = [];
  for (let i = 0; i < n; i++) outs.push(mem.out(outShape, value.dtype));
  const xv = mem.data(value);
  for (let i = 0; i < n; i++) {
    const begin = new Array<number>(rank).fill(0);
    begin[axis] = i;
    sliceInto(xv, value.shape, begin, size, mem.data(outs[i]!));
  }
  return outs;
}

/** UnsortedSegmentSum as ScatterNd (which sums duplicate indices): x `[...segShape, ...rest]`, ids segShape. */
function unsortedSegmentSum(x: tf.Tensor, segmentIds: tf.Tensor, numSegments: number): tf.TensorInfo {
  const segRank = segmentIds.shape.length;
  const n = segmentIds.size;
  const rest = x.shape.slice(segRank);
  return tf.tidy(() => {
    const idx = tf.reshape(tf.cast(segmentIds, 'int32'), [n, 1]);
    const upd = tf.reshape(x, [n, ...rest]);
    return tf.scatterND(idx, upd, [numSegments, ...rest]);
  });
}

/**
 * GatherV2 (batchDims 0, numeric dtypes): x viewed as `[outer, x.shape[axis], inner]`, output
 * `[outer, nIndices, inner]` copied as contiguous runs of `inner` elements straight from the heap (the stock
 * wasm kernel took ~3 ms for 1536 rows of a `[512, 64]` table). Returns null for what it does not handle.
 * @throws RangeError when an index is outside [0, x.shape[axis] - 1]
 */
function fastGather(x: tf.TensorInfo, indices: tf.TensorInfo, attrs: GatherAttrs, mem: Mem): tf.TensorInfo | null {
  const rank = x.shape.length;
  const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
  if ((attrs.batchDims ?? 0) !== 0 || x.dtype === 'string' || indices.dtype === 'string' || axis < 0 || axis >= rank) return null;
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const dim = x.shape[axis]!;
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const n = indices.shape.reduce((a, b) => a * b, 1);
  const out = mem.out([...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)], x.dtype);
  if (outer * n * inner === 0) return out;
  const ov = mem.data(out);
  const xv = mem.data(x);
  const iv = mem.data(indices);
  const idx = new Int32Array(n);
  for (let j = 0; j < n; j++) {
    const v = Number(iv[j]);
    if (!(v >= 0 && v < dim)) throw new RangeError(`GatherV2: index ${v} is not in [0, ${dim - 1}]`);
    idx[j] = v;
  }
  for (let o = 0; o < outer; o++) {
    const src = o * dim * inner;
    const dst = o * n * inner;
    if (inner === 1) for (let j = 0; j < n; j++) ov[dst + j] = xv[src + idx[j]!]!;
    else for (let j = 0; j < n; j++) ov.set(xv.subarray(src + idx[j]! * inner, src + (idx[j]! + 1) * inner), dst + j * inner);
  }
  return out;
}

type GatherAttrs = { axis: number; batchDims?: number };
const registered = new Set<string>();

/**
 * Register the kernels above for `backendName` (idempotent): Slice, Unpack, GatherV2 and Identity replace
 * the stock ones; UnsortedSegmentSum is added where missing. Call after the backend is set up.
 */
export function registerWasmKernels(backendName = 'wasm'): void {
  if (registered.has(backendName)) return;
  registered.add(backendName);
  overrideKernel<{ x: tf.TensorInfo }, SliceAttrs>('Slice', backendName, ({ inputs: { x }, attrs, mem, raw }, stock) =>
    x.dtype === 'string' && stock ? stock(raw) : fastSlice(x, attrs, mem),
  );
  overrideKernel<{ value: tf.TensorInfo }, { axis: number }>('Unpack', backendName, ({ inputs: { value }, attrs, mem, raw }, stock) =>
    value.dtype === 'string' && stock ? stock(raw) : fastUnpack(value, attrs.axis, mem),
  );
  overrideKernel<{ x: tf.TensorInfo; indices: tf.TensorInfo }, GatherAttrs>('GatherV2', backendName, ({ inputs: { x, indices }, attrs, mem, raw }, stock) => {
    const out = fastGather(x, indices, attrs, mem);
    if (out) return out;
    if (!stock) throw new RangeError(`GatherV2 with batchDims ${attrs.batchDims} on ${x.dtype} has no kernel on ${backendName}`);
    return stock(raw);
  });
  // Identity as a new reference to the same buffer (see the file comment)
  overrideKernel<{ x: tf.TensorInfo }, Record<string, never>>('Identity', backendName, ({ inputs: { x }, mem }) => mem.share(x));
  if (!tf.getKernel('UnsortedSegmentSum', backendName)) {
    // the inputs are tensors of the running engine (a kernel's inputs are its tensors' infos)
    overrideKernel<{ x: tf.Tensor; segmentIds: tf.Tensor }, { numSegments: number }>('UnsortedSegmentSum', backendName, ({ inputs, attrs }) =>
      unsortedSegmentSum(inputs.x, inputs.segmentIds, attrs.numSegments),
    );
  }
}
