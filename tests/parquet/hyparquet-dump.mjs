// Independent reference: dump a Parquet file's rows as JSONL with hyparquet.
// usage: node hyparquet-dump.mjs FILE [COL,COL,...]
// Values that JSON cannot carry exactly are tagged: {"$big": "digits"} for
// BigInt, {"$skip": 1} for types moe-fetch prints differently (decimals...).
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects, parquetSchema } from 'hyparquet'
import { compressors } from 'hyparquet-compressors'

const [file, cols] = process.argv.slice(2)
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
const raw = v => (typeof v === 'bigint' ? { $big: v.toString() } : v)
const parsers = {
  timestampFromMilliseconds: raw,
  timestampFromMicroseconds: raw,
  timestampFromNanoseconds: raw,
  dateFromDays: raw,
  stringFromBytes: b => (b === undefined || b === null ? b : new TextDecoder('utf-8', { ignoreBOM: true }).decode(b)),
}
const rows = await parquetReadObjects({ file: buf, columns, compressors, parsers, rowFormat: 'object' })
const out = []
for (const row of rows) {
  const o = {}
  for (const k of columns ?? Object.keys(row)) {
    const v = row[k]
    if (skip.has(k)) o[k] = { $skip: 1 }
    else if (typeof v === 'bigint') o[k] = { $big: v.toString() }
    else if (v instanceof Uint8Array) o[k] = new TextDecoder('utf-8', { ignoreBOM: true }).decode(v)
    else if (typeof v === 'number' && !Number.isFinite(v)) o[k] = null
    else o[k] = v
  }
  out.push(JSON.stringify(o))
}
process.stdout.write(out.join('\n') + (out.length ? '\n' : ''))
