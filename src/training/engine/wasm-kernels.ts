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

/** The parts of tfjs-backend-wasm's BackendWasm used here (it exports no types for them). */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  incRef(dataId: tf.DataId): void;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

type KernelArgs = { inputs: tf.NamedTensorInfoMap; attrs?: tf.NamedAttrMap; backend: unknown };

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
function sliceInto(
  xv: Float32Array | Int32Array | Uint8Array,
  shape: number[],
  begin: number[],
  size: number[],
  out: Float32Array | Int32Array | Uint8Array,
): void {
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

let stockSlice: tf.KernelFunc | null = null;
let stockUnpack: tf.KernelFunc | null = null;

function fastSlice(args: KernelArgs): tf.TensorInfo {
  const backend = args.backend as WasmBackendLike;
  const x = args.inputs.x as tf.TensorInfo;
  if (x.dtype === 'string' && stockSlice) return stockSlice(args as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
  const attrs = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
  const [begin, size] = parseSlice(x.shape, attrs.begin, attrs.size);
  const out = backend.makeOutput(size, x.dtype);
  if (size.some((s) => s === 0)) return out;
  // Views after makeOutput: an allocation may grow (and so replace) the heap buffer.
  const ov = backend.typedArrayFromHeap(out);
  const xv = backend.typedArrayFromHeap(x);
  sliceInto(xv, x.shape, begin, size, ov);
  return out;
}

function fastUnpack(args: KernelArgs): tf.TensorInfo[] {
  const backend = args.backend as WasmBackendLike;
  const value = args.inputs.value as tf.TensorInfo;
  if (value.dtype === 'string' && stockUnpack) return stockUnpack(args as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo[];
  let axis = (args.attrs as unknown as { axis: number }).axis;
  const rank = value.shape.length;
  if (axis < 0) axis += rank;
  const n = value.shape[axis]!;
  const outShape = value.shape.filter((_, i) => i !== axis);
  const size = value.shape.slice();
  size[axis] = 1;
  const outs: tf.TensorInfo[] = [];
  for (let i = 0; i < n; i++) outs.push(backend.makeOutput(outShape, value.dtype));
  const xv = backend.typedArrayFromHeap(value);
  for (let i = 0; i < n; i++) {
    const begin = new Array<number>(rank).fill(0);
    begin[axis] = i;
    sliceInto(xv, value.shape, begin, size, backend.typedArrayFromHeap(outs[i]!));
  }
  return outs;
}

function unsortedSegmentSum(args: KernelArgs): tf.TensorInfo {
  const x = args.inputs.x as tf.Tensor;
  const segmentIds = args.inputs.segmentIds as tf.Tensor;
  const numSegments = (args.attrs as unknown as { numSegments: number }).numSegments;
  // x: [...segShape, ...rest]; segmentIds: segShape. Flatten to [n, ...rest] and scatter-add rows.
  const segRank = segmentIds.shape.length;
  const n = segmentIds.size;
  const rest = x.shape.slice(segRank);
  const res = tf.tidy(() => {
    const idx = tf.reshape(tf.cast(segmentIds, 'int32'), [n, 1]);
    const upd = tf.reshape(x, [n, ...rest]);
    return tf.scatterND(idx, upd, [numSegments, ...rest]);
  });
  return res;
}

let stockGather: tf.KernelFunc | null = null;

/**
 * GatherV2 (batchDims 0, numeric dtypes): x viewed as `[outer, x.shape[axis], inner]`, output
 * `[outer, nIndices, inner]` copied as contiguous runs of `inner` elements straight from the heap (the stock
 * wasm kernel took ~3 ms for 1536 rows of a `[512, 64]` table).
 * @throws RangeError when an index is outside [0, x.shape[axis] - 1]
 */
function fastGather(args: KernelArgs): tf.TensorInfo {
  const backend = args.backend as WasmBackendLike;
  const x = args.inputs.x as tf.TensorInfo;
  const indices = args.inputs.indices as tf.TensorInfo;
  const attrs = args.attrs as unknown as { axis: number; batchDims?: number };
  const rank = x.shape.length;
  const axis = attrs.axis < 0 ? attrs.axis + rank : attrs.axis;
  if ((attrs.batchDims ?? 0) !== 0 || x.dtype === 'string' || indices.dtype === 'string' || !stockGather || axis < 0 || axis >= rank)
    return (stockGather as tf.KernelFunc)(args as Parameters<tf.KernelFunc>[0]) as tf.TensorInfo;
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const dim = x.shape[axis]!;
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const n = indices.shape.reduce((a, b) => a * b, 1);
  const out = backend.makeOutput([...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)], x.dtype);
  if (outer * n * inner === 0) return out;
  const ov = backend.typedArrayFromHeap(out);
  const xv = backend.typedArrayFromHeap(x);
  const iv = backend.typedArrayFromHeap(indices);
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

/** Identity as a new reference to the same buffer (see the file comment). */
function sharedIdentity(args: KernelArgs): tf.TensorInfo {
  const x = args.inputs.x as tf.TensorInfo;
  (args.backend as WasmBackendLike).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape.slice(), dtype: x.dtype };
}

let registered = false;

/**
 * Register the kernels above for the `wasm` backend (idempotent). Call after the wasm backend is set up.
 */
export function registerWasmKernels(): void {
  if (registered) return;
  registered = true;
  const replace = (kernelName: string, kernelFunc: (a: KernelArgs) => tf.TensorInfo | tf.TensorInfo[]): tf.KernelFunc | null => {
    const stock = tf.getKernel(kernelName, 'wasm');
    if (stock) tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc });
    return stock ? stock.kernelFunc : null;
  };
  stockSlice = replace('Slice', fastSlice);
  stockUnpack = replace('Unpack', fastUnpack);
  stockGather = replace('GatherV2', fastGather);
  replace('Identity', sharedIdentity);
  if (!tf.getKernel('UnsortedSegmentSum', 'wasm')) {
    tf.registerKernel({
      kernelName: 'UnsortedSegmentSum',
      backendName: 'wasm',
      kernelFunc: unsortedSegmentSum as unknown as tf.KernelFunc,
    });
  }
}
