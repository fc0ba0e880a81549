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
