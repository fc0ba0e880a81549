// Independent reference: dump Parquet files' rows as JSONL with hyparquet.
// usage: node hyparquet-dump.mjs FILE [COL,COL,...]        (to stdout)
//        node hyparquet-dump.mjs --meta FILE                (footer summary)
//        node hyparquet-dump.mjs --batch LIST               (many at once)
// LIST has one "FILE<TAB>COLS<TAB>OUT" line per dump (COLS may be empty);
// a file hyparquet cannot read gets OUT.err instead of OUT.
// Values that JSON cannot carry exactly are tagged: {"$big": "digits"} for
// BigInt, {"$skip": 1} for types moe-fetch prints differently (decimals...).
import { readFileSync, writeFileSync } from 'node:fs'
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const raw = v => (typeof v === 'bigint' ? { $big: v.toString() } : v)
const utf8 = b => new TextDecoder('utf-8', { ignoreBOM: true }).decode(b)
const parsers = {
  timestampFromMilliseconds: raw,
  timestampFromMicroseconds: raw,
  timestampFromNanoseconds: raw,
  dateFromDays: raw,
  stringFromBytes: b => (b === undefined || b === null ? b : utf8(b)),
}

async function dump(file, cols) {
  const buf = await asyncBufferFromFile(file)
  const md = await parquetMetadataAsync(buf)
  const columns = cols ? cols.split(',') : undefined
  const skip = new Set()
  for (const el of md.schema) {
    const ct = el.converted_type
    const lt = el.logical_type?.type
    if (ct === 'DECIMAL' || ct === 'JSON' || ct === 'BSON' || ct === 'INTERVAL' ||
        lt === 'FLOAT16' || lt === 'UUID' || lt === 'GEOMETRY' || lt === 'GEOGRAPHY' || lt === 'VARIANT')
      skip.add(el.name)
  }
  const rows = await parquetReadObjects({ file: buf, columns, compressors, parsers, rowFormat: 'object' })
  const out = []
  for (const row of rows) {
    const o = {}
    for (const k of columns ?? Object.keys(row)) {
      const v = row[k]
      if (skip.has(k)) o[k] = { $skip: 1 }
      else if (typeof v === 'bigint') o[k] = { $big: v.toString() }
      else if (v instanceof Uint8Array) o[k] = utf8(v)
      else if (typeof v === 'number' && !Number.isFinite(v)) o[k] = null
      else o[k] = v
    }
    out.push(JSON.stringify(o))
  }
  return out.join('\n') + (out.length ? '\n' : '')
}

// Footer summary, in the shape of `moe-fetch info`: per leaf column the
// codec (or "mixed"), the union of encodings and summed sizes.
async function meta(file) {
  const md = await parquetMetadataAsync(await asyncBufferFromFile(file))
  const cols = new Map()
  md.row_groups.forEach((rg, g) => {
    for (const c of rg.columns) {
      const m = c.meta_data
      const name = m.path_in_schema.join('.')
      const e = cols.get(name) ?? { name, codec: m.codec, encodings: new Set(), compressed: 0, uncompressed: 0 }
      if (g > 0 && e.codec !== m.codec) e.codec = 'mixed'
      for (const x of m.encodings) e.encodings.add(x)
      e.compressed += Number(m.total_compressed_size)
      e.uncompressed += Number(m.total_uncompressed_size)
      cols.set(name, e)
    }
  })
  return JSON.stringify({
    rows: Number(md.num_rows), row_groups: md.row_groups.length, created_by: md.created_by ?? null,
    columns: [...cols.values()].map(e => ({ ...e, encodings: [...e.encodings].sort() })),
  }) + '\n'
}

const args = process.argv.slice(2)
if (args[0] === '--meta') {
  process.stdout.write(await meta(args[1]))
} else if (args[0] === '--batch') {
  for (const line of readFileSync(args[1], 'utf8').split('\n')) {
    if (!line) continue
    const [file, cols, out] = line.split('\t')
    try {
      writeFileSync(out, await dump(file, cols))
    } catch (e) {
      writeFileSync(out + '.err', String(e && e.stack || e))
    }
  }
} else {
  process.stdout.write(await dump(args[0], args[1]))
}
