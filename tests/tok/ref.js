// Reference ids from the official Hugging Face tokenizers library (npm
// tokenizers@0.23.2, the Rust library as a prebuilt native module).
//
//   node ref.js encode TOKENIZER.json IN.jsonl OUT.txt
//       one line per document: the ids of its "text", space-separated
//   node ref.js encode-gpt2 ENCODER.json VOCAB.bpe IN.jsonl OUT.txt
//       GPT-2 built from OpenAI's files (ByteLevel, <|endoftext|> special)
//   node ref.js save-gpt2 ENCODER.json VOCAB.bpe OUT.json
//       write that GPT-2 tokenizer as a tokenizer.json
//   node ref.js encode-tiktoken cl100k_base IN.jsonl OUT.txt
//       js-tiktoken's encoder, special tokens allowed
//   node ref.js save-tiktoken-hf RANKS.tiktoken REGEX OUT.json [SPECIAL ID]...
//       an HF tokenizer.json with that vocabulary and Split(REGEX)
//   node ref.js set-normalizer IN.json OUT.json NFD|NFKC|NFKD
//       a copy of a tokenizer.json with another normalizer
//   node ref.js edit IN.json OUT.json key.path=JSON...
//       a copy of a tokenizer.json with some values replaced
//   node ref.js time TOKENIZER.json IN.jsonl
//       single-call encode rate over the documents (MB/s)
'use strict';
const fs = require('fs');
const readline = require('readline');
const tk = require('tokenizers');

async function gpt2(encoder, vocab) {
  const model = await tk.BPE.fromFile(encoder, vocab);
  const t = new tk.Tokenizer(model);
  t.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
  t.addSpecialTokens(['<|endoftext|>']);
  return t;
}

async function readDocs(path) {
  const docs = [];
  const rl = readline.createInterface({ input: fs.createReadStream(path), crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.length === 0) continue;
    docs.push(JSON.parse(line).text);
  }
  return docs;
}

async function encodeAll(t, inPath, outPath) {
  const docs = await readDocs(inPath);
  const out = [];
  const B = 16;
  for (let i = 0; i < docs.length; i += B) {
    const encs = await t.encodeBatch(docs.slice(i, i + B));
    for (const e of encs) out.push(e.getIds().join(' '));
  }
  fs.writeFileSync(outPath, out.join('\n') + (out.length ? '\n' : ''));
}

async function main() {
  const [cmd, ...a] = process.argv.slice(2);
  if (cmd === 'encode') {
    await encodeAll(tk.Tokenizer.fromFile(a[0]), a[1], a[2]);
  } else if (cmd === 'encode-gpt2') {
    await encodeAll(await gpt2(a[0], a[1]), a[2], a[3]);
  } else if (cmd === 'save-gpt2') {
    (await gpt2(a[0], a[1])).save(a[2]);
  } else if (cmd === 'encode-tiktoken') {
    // js-tiktoken (OpenAI's ranks; special tokens allowed, like HF)
    const { getEncoding } = require('js-tiktoken');
    const enc = getEncoding(a[0]);
    const docs = await readDocs(a[1]);
    const out = docs.map((d) => enc.encode(d, 'all').join(' '));
    fs.writeFileSync(a[2], out.join('\n') + (out.length ? '\n' : ''));
  } else if (cmd === 'save-tiktoken-hf') {
    // a tokenizer.json for HF from a tiktoken rank file: merges recovered
    // by running BPE over each token with the lower ranks (the usual
    // conversion), Split(regex, Isolated) + ByteLevel(use_regex=false)
    const [rankFile, regex, out, ...specials] = a;
    const ranks = new Map(), toks = [];
    for (const line of fs.readFileSync(rankFile, 'utf8').split('\n')) {
      if (!line) continue;
      const [b64, r] = line.split(' ');
      const b = Buffer.from(b64, 'base64').toString('latin1');
      ranks.set(b, Number(r)); toks[Number(r)] = b;
    }
    const map = []; let n = 0;
    for (let b = 0; b < 256; b++) {
      const keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      map[b] = String.fromCodePoint(keep ? b : 256 + n++);
    }
    const blv = (s) => Array.from(s, (c) => map[c.charCodeAt(0)]).join('');
    const vocab = {}, merges = [];
    toks.forEach((t, r) => { vocab[blv(t)] = r; });
    toks.forEach((t, r) => {
      if (t.length < 2) return;
      let parts = Array.from(t);
      for (;;) {
        let best = -1, br = Infinity;
        for (let i = 0; i + 1 < parts.length; i++) {
          const q = ranks.get(parts[i] + parts[i + 1]);
          if (q !== undefined && q < r && q < br) { br = q; best = i; }
        }
        if (best < 0) break;
        parts.splice(best, 2, parts[best] + parts[best + 1]);
      }
      if (parts.length === 2) merges.push([blv(parts[0]), blv(parts[1])]);
    });
    const added = [];
    for (let i = 0; i + 1 < specials.length; i += 2)
      added.push({ id: Number(specials[i + 1]), content: specials[i], single_word: false, lstrip: false,
                   rstrip: false, normalized: false, special: true });
    fs.writeFileSync(out, JSON.stringify({
      version: '1.0', truncation: null, padding: null, added_tokens: added, normalizer: null,
      pre_tokenizer: { type: 'Sequence', pretokenizers: [
        { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] },
      post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
               end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false,
               vocab, merges } }));
  } else if (cmd === 'set-normalizer') {
    const j = JSON.parse(fs.readFileSync(a[0], 'utf8'));
    j.normalizer = { type: a[2] };
    fs.writeFileSync(a[1], JSON.stringify(j));
  } else if (cmd === 'edit') {
    // edit IN OUT path.to.key=JSON ...
    const j = JSON.parse(fs.readFileSync(a[0], 'utf8'));
    for (const e of a.slice(2)) {
      const eq = e.indexOf('=');
      const keys = e.slice(0, eq).split('.');
      let o = j;
      for (const k of keys.slice(0, -1)) o = o[k];
      o[keys[keys.length - 1]] = JSON.parse(e.slice(eq + 1));
    }
    fs.writeFileSync(a[1], JSON.stringify(j));
  } else if (cmd === 'time') {
    const t = tk.Tokenizer.fromFile(a[0]);
    const docs = await readDocs(a[1]);
    let bytes = 0;
    for (const d of docs) bytes += Buffer.byteLength(d, 'utf8');
    await t.encode(docs[0]);
    const t0 = process.hrtime.bigint(), c0 = process.cpuUsage();
    for (const d of docs) await t.encode(d);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const cu = process.cpuUsage(c0), cs = (cu.user + cu.system) / 1e6;
    // cpu: the whole process (the encode runs on a libuv worker thread)
    console.log(`${(bytes / 1e6 / s).toFixed(3)} MB/s ${bytes} bytes ${s.toFixed(3)} s cpu ${(bytes / 1e6 / cs).toFixed(3)} MB/s`);
  } else {
    console.error('usage: ref.js encode|encode-gpt2|save-gpt2|time ...');
    process.exit(2);
  }
}
main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
