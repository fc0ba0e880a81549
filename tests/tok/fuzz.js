// Deterministic random documents for the exactness tests: concatenations of
// pieces chosen from pools of tricky characters (whitespace kinds,
// contractions in all cases, combining marks, scripts, emoji, digits, the
// OLMo added tokens), some repeated up to 30 times.
//   node fuzz.js N SEED OUT.jsonl [--js-safe]
// --js-safe leaves out U+0085 and U+FEFF, which JavaScript's \s classifies
// differently from Unicode White_Space (so js-tiktoken differs from
// tiktoken and Hugging Face there).
//   node fuzz.js --all-code-points OUT.jsonl
// instead writes every assigned code point (no surrogates, no private use)
// between letters and digits, 64 per document, and the NFD form of each
// document that NFD changes: Unicode classes and normalization of the whole
// repertoire.
'use strict';
const fs = require('fs');
if (process.argv[2] === '--all-code-points') {
  const cps = [];
  for (let c = 0x20; c < 0x110000; c++) {
    if ((c >= 0xd800 && c < 0xf900) || c >= 0xf0000) continue;
    if (/\p{Cn}/u.test(String.fromCodePoint(c))) continue;
    cps.push(c);
  }
  const lines = [];
  for (let i = 0; i < cps.length; i += 64) {
    const s = cps.slice(i, i + 64).map((c) => 'x' + String.fromCodePoint(c) + '1' + String.fromCodePoint(c)).join(' ');
    lines.push(JSON.stringify({ text: s }));
    const d = s.normalize('NFD');
    if (d !== s) lines.push(JSON.stringify({ text: d }));
  }
  fs.writeFileSync(process.argv[3], lines.join('\n') + '\n');
  process.exit(0);
}
const [n, seed, out, flag] = process.argv.slice(2);
let x = Number(seed) >>> 0 || 1;
const rnd = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 4294967296; };
let pools = [
  ' ', '  ', '\t', '\n', '\r\n', '\r', '\u000b', '\u000c', '\u00a0', '\u3000', '\u2009', '\u200b', '\ufeff', '\u0085', '\u2028', '\u1680',
  'a', 'B', 'z', 'é', 'e\u0301', '\u0301', '\u0308', 'ñ', 'ß', 'ſ', 'ﬁ', 'Å', 'A\u030a', '\u212b', 'İ', 'ǅ', 'ʰ',
  "'", "'s", "'S", "'ll", "'LL", "'Re", "'ve", "'d", "'m", "'t", "'T", "'M", '’', '"',
  '0', '7', '123', '٣', '²', '½', 'Ⅻ', '①', '٫', '१',
  '!', '.', ',', '-', '_', '(', ')', '<', '>', '|', '/', '\\', '@', '#', '$', '%', '^', '&', '*', '~', '`',
  '中', '文', '日本', '한', '\u1100\u1161', 'ก', '\u0e31', 'ع', '\u064b', 'ש', '\u05b8', 'क', '\u093f', '\u094d', 'Ω', 'ж',
  '😀', '👍🏽', '\u200d', '👨\u200d👩\u200d👧', '🇺🇸', '\ufe0f', '𝐀', '𠀀', '🏳️‍🌈',
  '<|endoftext|>', '<|endoftext|', '<|padding|>', '|||IP_ADDRESS|||', '|||EMAIL_ADDRESS|||', '|||PHONE_NUMBER|||',
  '\u0000', '\u0001', '\u007f', '\u00ad', '\u2060', '\ud7ff', '\ue000',
];
if (flag === '--js-safe') pools = pools.filter((p) => !/[\u0085\ufeff]/.test(p));
const lines = [];
for (let i = 0; i < Number(n); i++) {
  const k = Math.floor(rnd() * 41);
  let s = '';
  for (let j = 0; j < k; j++) {
    let p = pools[Math.floor(rnd() * pools.length)];
    if (rnd() < 0.1) p = p.repeat(2 + Math.floor(rnd() * 29));
    s += p;
  }
  lines.push(JSON.stringify({ text: s }));
}
fs.writeFileSync(out, lines.join('\n') + '\n');
