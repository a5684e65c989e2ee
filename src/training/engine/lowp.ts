/**
 * Frozen weights in low precision on the native backend. A frozen float32 tensor's storage is replaced by
 * a {@link LowPrecisionWeights} (the tensor keeps dtype float32 and its shape), which the native GEMM
 * consumes directly: the packing widens each element to float32 (gemm.c), so the compute and the packed
 * panels are float32 and a frozen copy costs half (bfloat16) or a quarter plus one scale per column (int8).
 * Every other reader gets the widened float32 values (a copy): `dataSync`, and the native kernels through
 * TensorMemory.f32. The conversion is native-backend.ts `storeInLowPrecision`.
 *
 *   bfloat16: the upper 16 bits of the float32, rounded to nearest even (the rounding of torch's
 *             `.to(torch.bfloat16)`); relative error <= 2^-8.
 *   int8:     weight-only int8 with one scale per column of the stored `[in, out]` weight, i.e. per output
 *             feature (PaddleNLP `weight_quantize_algo: weight_only_int8`): q = round(w / s), s = max|w| / 127.
 */

export type LowPrecision = 'bfloat16' | 'int8';

/** The storage of a frozen weight in low precision. */
export class LowPrecisionWeights {
  constructor(
    readonly kind: LowPrecision,
    /** bfloat16 bits, or int8 values, row-major like the float32 tensor */
    readonly data: Uint16Array | Int8Array,
    /** int8: one scale per column (the last axis); bfloat16: empty */
    readonly scale: Float32Array,
  ) {}

  /** Bytes held. */
  get bytes(): number {
    return this.data.byteLength + this.scale.byteLength;
  }

  /** The float32 values (a new array). */
  decode(): Float32Array {
    const n = this.data.length;
    const out = new Float32Array(n);
    if (this.kind === 'bfloat16') {
      const u = new Uint32Array(out.buffer);
      const h = this.data as Uint16Array;
      for (let i = 0; i < n; i++) u[i] = h[i]! << 16;
    } else {
      const q = this.data as Int8Array;
      const cols = this.scale.length;
      for (let i = 0; i < n; i++) out[i] = q[i]! * this.scale[i % cols]!;
    }
    return out;
  }
}

/**
 * float32 -> bfloat16 bits, round to nearest even, as torch's `.to(torch.bfloat16)`: every NaN becomes the
 * canonical quiet NaN 0x7fc0 (c10::BFloat16's round_to_nearest_even), infinities stay infinities. The one
 * conversion of the repo: frozen BF16 weights here and BF16 checkpoints (models/safetensors.ts).
 * @param src float32 values; @returns their bfloat16 bit patterns, `[src.length]`.
 */
export function toBfloat16(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i]!;
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) out[i] = 0x7fc0;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Weight-only int8 of a row-major `[rows, cols]` matrix, one scale per column. */
export function quantizeInt8(src: Float32Array, rows: number, cols: number): { data: Int8Array; scale: Float32Array } {
  const scale = new Float32Array(cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++) {
      const a = Math.abs(src[r * cols + c]!);
      if (a > scale[c]!) scale[c] = a;
    }
  for (let c = 0; c < cols; c++) scale[c] = scale[c]! > 0 ? scale[c]! / 127 : 1;
  const data = new Int8Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[r * cols + c] = Math.max(-127, Math.min(127, Math.round(src[r * cols + c]! / scale[c]!)));
  return { data, scale };
}
