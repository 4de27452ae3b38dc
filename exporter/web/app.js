// The page of `resexport web`: every file of the run opened through engine.js (the code the headless runner
// drives), each image run through every kind, top-3 and latency side by side; the Keras reference's answer
// for test images (validate's reference_outputs.npz) and where a kind's top-1 differs from it.
import * as engine from './engine.js';

const $ = (id) => document.getElementById(id);
const run = await (await fetch('/api/run.json')).json();
const samples = await (await fetch('/api/samples.json')).json();
const pp = run.preprocessing;
const [H, W] = pp.size, C = pp.channels, classes = run.class_names;
const perImage = samples.shape.reduce((a, b) => a * b, 1);
const X = engine.fromBase64(samples.x);
const REF = samples.reference ? engine.fromBase64(samples.reference) : null;
$('run').textContent = run.run;

const opened = [];
for (const k of run.kinds) {
  try {
    const {id, info} = await engine.open(k.url, k.family, k.io, 1);
    opened.push({...k, id, info});
  } catch (e) {
    opened.push({...k, error: String(e.message || e).split('\n')[0].slice(0, 200)});
  }
}
$('status').textContent = `${opened.filter((k) => !k.error).length} of ${run.kinds.length} files open in this browser ` +
  `(onnxruntime-web, LiteRT.js on WASM, 1 thread). ${run.reference ? '' : run.reference_note}`;
window.resexportPage = {ready: true, opened};

function softmaxIfNeeded(v) {  // probabilities as they are; logits -> softmax (the run's convention is in validate)
  const sum = v.reduce((a, b) => a + b, 0);
  if (v.every((p) => p >= 0) && Math.abs(sum - 1) < 1e-2) return v;
  const m = Math.max(...v), e = v.map((x) => Math.exp(x - m)), s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}
const top = (v) => [...v.keys()].sort((a, b) => v[b] - v[a]).slice(0, 3);
const fmt = (v, i) => `${classes[i]} ${(100 * v[i]).toFixed(1)}%`;

function show(x) {  // the model input back to pixels (min..max), for the eye only
  const c = $('shown'); c.width = W; c.height = H;
  const ctx = c.getContext('2d'), img = ctx.createImageData(W, H);
  let lo = Infinity, hi = -Infinity;
  for (const v of x) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (let p = 0; p < H * W; p++) {
    for (let ch = 0; ch < 3; ch++) img.data[4 * p + ch] = 255 * (x[p * C + (C === 3 ? ch : 0)] - lo) / ((hi - lo) || 1);
    img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

async function classify(x, ref, label) {
  show(x);
  $('what').textContent = label;
  const body = $('results').tBodies[0];
  body.innerHTML = '';
  const refTop = ref ? top(softmaxIfNeeded(Array.from(ref))) : null;
  const row = (cells, cls) => { const tr = body.insertRow(); if (cls) tr.className = cls;
    for (const c of cells) tr.insertCell().textContent = c; return tr; };
  if (ref) { const p = softmaxIfNeeded(Array.from(ref)); row(['keras (reference)', 'Python, validate', ...refTop.map((i) => fmt(p, i)), '-', '-']); }
  for (const k of opened) {
    if (k.error) { row([k.kind, k.engine, `cannot run here: ${k.error}`, '', '', '', ''], 'disagree'); continue; }
    const xi = k.rgb_adapter && C === 1 ? Float32Array.from({length: x.length * 3}, (_, j) => x[Math.floor(j / 3)]) : x;
    const shape = k.rgb_adapter && C === 1 ? [H, W, 3] : pp.input_shape;
    await engine.predict(k.id, xi, 1, shape);  // warm: the latency shown is a second call's
    const {out, ms} = await engine.predict(k.id, xi, 1, shape);
    const p = softmaxIfNeeded(Array.from(out)), t = top(p);
    const agree = refTop ? (t[0] === refTop[0] ? 'same top-1' : 'DIFFERENT top-1') : '-';
    row([k.kind, `${k.engine} ${k.version}`, ...t.map((i) => fmt(p, i)), `${ms[0].toFixed(2)} ms`, agree],
        refTop && t[0] !== refTop[0] ? 'disagree' : '');
  }
  window.resexportPage.last = body.rows.length;
}

function sample(i) {
  document.querySelectorAll('#samples img').forEach((el, j) => el.classList.toggle('on', i === j));
  const x = X.subarray(i * perImage, (i + 1) * perImage);
  const ref = REF ? REF.subarray(i * classes.length, (i + 1) * classes.length) : null;
  return classify(x, ref, `test image ${i}, label ${classes[samples.labels[i]]}`);
}
window.resexportPage.sample = sample;

for (let i = 0; i < samples.labels.length; i++) {  // thumbnails
  show(X.subarray(i * perImage, (i + 1) * perImage));
  const img = new Image(); img.src = $('shown').toDataURL(); img.title = classes[samples.labels[i]];
  img.onclick = () => sample(i); $('samples').appendChild(img);
}

async function own(file) {  // the visitor's image, preprocessed as the run records: resize, colour, scale
  const bmp = await createImageBitmap(file);
  const c = new OffscreenCanvas(W, H), ctx = c.getContext('2d');
  ctx.drawImage(bmp, 0, 0, W, H);
  const d = ctx.getImageData(0, 0, W, H).data, x = new Float32Array(H * W * C);
  for (let p = 0; p < H * W; p++) {
    const rgb = [d[4 * p], d[4 * p + 1], d[4 * p + 2]];
    const vals = C === 1 ? [(299 * rgb[0] + 587 * rgb[1] + 114 * rgb[2]) / 1000] : rgb;
    vals.forEach((v, ch) => {
      let u = v / 255;
      if (pp.scale === 'symmetric') u = 2 * u - 1;
      else if (pp.scale === 'raw') u = v;
      else if (pp.scale === 'imagenet') u = (u - pp.mean[ch]) / pp.std[ch];
      x[p * C + ch] = u;
    });
  }
  return classify(x, null, `${file.name} (no Keras answer: Keras does not run in the browser)`);
}
$('pick').onchange = (e) => e.target.files[0] && own(e.target.files[0]);
const drop = $('drop');
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); if (e.dataTransfer.files[0]) own(e.dataTransfer.files[0]); };
if (samples.labels.length) await sample(0);
