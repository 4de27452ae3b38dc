// The browser runtimes, as a web app calls them: onnxruntime-web (WASM) for .onnx, LiteRT.js (WASM) for
// .tflite. One small interface for the headless runner (runner.html, driven from Python) and the page a
// person uses (index.html): open(url, family, io, threads) -> id; predict(id, Float32Array, n) -> outputs.
// `io` is what Python read from the file: the input's dtype and quantisation, the output's (an int8 file
// with uint8 input is fed and read exactly as an app feeds it: quantised here, dequantised here).
const NM = new URL('./node_modules/', import.meta.url).href;
const models = new Map();
let nextId = 1;
let ortModule = null;
const litert = new Map();  // threaded? -> module promise (LiteRT.js loads one Wasm per page)

async function ort(threads) {
  if (!ortModule) {
    ortModule = await import(NM + 'onnxruntime-web/dist/ort.wasm.min.mjs');
    ortModule.env.wasm.wasmPaths = NM + 'onnxruntime-web/dist/';
    ortModule.env.wasm.numThreads = threads || 1;  // fixed at the first session (a page-wide setting)
    ortModule.env.logLevel = 'error';
  }
  return ortModule;
}

async function liteRt(threads) {
  const threaded = (threads || 1) > 1 && self.crossOriginIsolated;
  if (litert.size === 0) {
    litert.set(threaded, (async () => {
      const m = await import(NM + '@litertjs/core/dist/index.js');
      await m.loadLiteRt(NM + '@litertjs/core/wasm/', {threads: threaded});
      return m;
    })());
  }
  return litert.values().next().value;
}

function toInput(x, io) {
  if (!io || io.dtype === 'float32') return x;
  const T = io.dtype === 'uint8' ? Uint8Array : Int8Array;
  const [lo, hi] = io.dtype === 'uint8' ? [0, 255] : [-128, 127];
  const out = new T(x.length);
  for (let i = 0; i < x.length; i++) {
    out[i] = Math.min(hi, Math.max(lo, Math.round(x[i] / io.scale + io.zero_point)));
  }
  return out;
}

function fromOutput(y, io) {
  if (!io || io.dtype === 'float32' || y instanceof Float32Array) return Float32Array.from(y);
  const out = new Float32Array(y.length);
  for (let i = 0; i < y.length; i++) out[i] = (y[i] - io.zero_point) * io.scale;
  return out;
}

export async function open(url, family, io = {}, threads = 1) {
  const id = nextId++;
  if (family === 'onnx') {
    const o = await ort(threads);
    const session = await o.InferenceSession.create(url, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
    models.set(id, {family, io, session, o, input: session.inputNames[0], output: session.outputNames[0],
                    shape: io.shape});
  } else if (family === 'tflite') {
    const m = await liteRt(threads);
    const model = await m.loadAndCompile(url, {accelerator: 'wasm', cpuOptions: {numThreads: threads || 1}});
    const d = model.getInputDetails()[0];
    models.set(id, {family, io, model, m, shape: Array.from(d.shape), dtype: d.dtype});
  } else {
    throw new Error(`the browser runs onnx and tflite files, not ${family}`);
  }
  return {id, info: info(id)};
}

export function info(id) {
  const e = models.get(id);
  const common = {crossOriginIsolated: self.crossOriginIsolated, userAgent: navigator.userAgent,
                  hardwareConcurrency: navigator.hardwareConcurrency};
  if (e.family === 'onnx') {
    return {...common, engine: 'onnxruntime-web', version: e.o.env.versions?.web || e.o.env.versions?.common,
            backend: 'wasm', simd: e.o.env.wasm.simd !== false, threads: e.o.env.wasm.numThreads};
  }
  return {...common, engine: 'LiteRT.js', backend: 'wasm', input_shape: e.shape, input_dtype: e.dtype,
          threaded_wasm: litert.keys().next().value};
}

async function runOnce(e, x, shape) {
  if (e.family === 'onnx') {
    const t = new e.o.Tensor(e.io.dtype || 'float32', toInput(x, e.io), shape);
    const out = await e.session.run({[e.input]: t});
    const y = out[e.output];
    const data = fromOutput(y.data, e.io.output);
    t.dispose?.(); y.dispose?.();
    return data;
  }
  const t = new e.m.Tensor(toInput(x, e.io), shape);
  const outs = await e.model.run([t]);
  const host = await outs[0].moveTo('wasm');
  const data = fromOutput(host.toTypedArray(), e.io.output);
  t.delete(); host.delete();
  return data;
}

// x: n images, each of `shape` (no batch axis), float32, flat. LiteRT.js does not resize a file's input
// to a batch (its compiled batch is 1), so a .tflite runs image by image, as an app calls it. Returns the outputs (n x classes, flat) and the time in ms
// of each model call.
export async function predict(id, x, n, shape) {
  const e = models.get(id);
  const per = x.length / n;
  const fixedOne = e.family === 'tflite';
  const calls = fixedOne ? n : 1;
  const chunks = [], ms = [];
  for (let i = 0; i < calls; i++) {
    const b = fixedOne ? 1 : n;
    const xi = fixedOne ? x.subarray(i * per, (i + 1) * per) : x;
    const t0 = performance.now();
    chunks.push(await runOnce(e, xi, [b, ...shape]));
    ms.push(performance.now() - t0);
  }
  const out = new Float32Array(chunks.reduce((s, c) => s + c.length, 0));
  let o = 0;
  for (const c of chunks) { out.set(c, o); o += c.length; }
  return {out, ms};
}

export function close(id) {
  const e = models.get(id);
  if (!e) return;
  if (e.family === 'onnx') e.session.release?.(); else e.model.delete?.();
  models.delete(id);
}

// base64 <-> typed arrays (how Python hands batches over without JSON number lists)
export function fromBase64(b64) {
  const s = atob(b64);
  const u = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
  return new Float32Array(u.buffer);
}

export function toBase64(f32) {
  const u = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  let s = '';
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
  return btoa(s);
}
