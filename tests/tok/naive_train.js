// A deliberately naive byte-level BPE trainer (recounts every pair at each
// step), the reference for moe-tokenize train's incremental one.  ASCII only,
// so that the GPT-2 pattern can be written with JavaScript's ASCII classes.
//
//   node naive_train.js CORPUS.jsonl VOCAB OUT.json ASCII.jsonl
//       writes the ASCII-only corpus, trains on it (special <|endoftext|> = 0,
//       byte b = 1 + b), writes {"merges": [[a, b], ...]} as ids
//   node naive_train.js --compare OUT.json TOKENIZER.json
//       exit 0 when the tokenizer.json's merges are the same pairs of ids
'use strict';
const fs = require('fs');

function main() {
  const a = process.argv.slice(2);
  if (a[0] === '--compare') {
    const naive = JSON.parse(fs.readFileSync(a[1], 'utf8')).merges;
    const tj = JSON.parse(fs.readFileSync(a[2], 'utf8'));
    const v = tj.model.vocab;
    const ours = tj.model.merges.map((m) => [v[m[0]], v[m[1]]]);
    if (ours.length !== naive.length) { console.error(`merges: ${ours.length} vs ${naive.length}`); process.exit(1); }
    for (let i = 0; i < ours.length; i++)
      if (ours[i][0] !== naive[i][0] || ours[i][1] !== naive[i][1]) {
        console.error(`merge ${i}: ours ${ours[i]} naive ${naive[i]}`); process.exit(1);
      }
    return;
  }
  const [corpus, vocabStr, out, asciiOut] = a;
  const vocabSize = Number(vocabStr);
  const texts = fs.readFileSync(corpus, 'utf8').split('\n').filter((l) => l.trim())
    .map((l) => JSON.parse(l).text.replace(/[^\x00-\x7f]/g, ''));
  fs.writeFileSync(asciiOut, texts.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');
  const re = /'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+/g;
  const counts = new Map();
  for (const t of texts) for (const m of t.match(re) || []) counts.set(m, (counts.get(m) || 0) + 1);
  const words = [], wc = [];
  for (const [w, c] of counts) { words.push(Array.from(Buffer.from(w, 'latin1'), (b) => 1 + b)); wc.push(c); }
  const bytesOf = new Map();
  for (let b = 0; b < 256; b++) bytesOf.set(1 + b, String.fromCharCode(b));
  const idOf = new Map(); for (const [k, v] of bytesOf) idOf.set(v, k);
  let n = 257; const merges = [];
  while (n < vocabSize) {
    const pc = new Map();
    for (let i = 0; i < words.length; i++) {
      const w = words[i];
      for (let k = 0; k + 1 < w.length; k++) { const key = w[k] * 1048576 + w[k + 1]; pc.set(key, (pc.get(key) || 0) + wc[i]); }
    }
    let best = -1, bc = 0;
    for (const [k, c] of pc) if (c > bc || (c === bc && k < best)) { best = k; bc = c; }
    if (best < 0) break;
    const x = Math.floor(best / 1048576), y = best % 1048576;
    const s = bytesOf.get(x) + bytesOf.get(y);
    let id = idOf.get(s);
    if (id === undefined) { id = n++; idOf.set(s, id); bytesOf.set(id, s); }
    merges.push([x, y]);
    for (const w of words) {
      const o = [];
      for (let k = 0; k < w.length;) {
        if (k + 1 < w.length && w[k] === x && w[k + 1] === y) { o.push(id); k += 2; } else o.push(w[k++]);
      }
      w.length = 0; w.push(...o);
    }
  }
  fs.writeFileSync(out, JSON.stringify({ merges }));
}
main();
