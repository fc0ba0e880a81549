#!/usr/bin/env python3
"""Write small hand-built Parquet files that writers in parquet-testing do not
produce: one BYTE_ARRAY column chunk that starts with a dictionary page, then
RLE_DICTIONARY data pages, then PLAIN data pages (the dictionary fallback),
with nulls, CRCs and gzip; a v2 variant; and multi-row-group INT64/DOUBLE
columns named like FineWeb's score columns.

usage: make-fallback.py OUTDIR
       make-fallback.py --big FILE   (40 row groups of ~1 MB of text)
"""
import gzip
import os
import struct
import sys
import zlib


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zz(n):
    return uvarint((n << 1) ^ (n >> 63))


class Struct:
    """Thrift compact struct writer: fields given in increasing id order."""

    def __init__(self):
        self.buf = bytearray()
        self.last = 0

    def _hdr(self, fid, t):
        d = fid - self.last
        if 0 < d <= 15:
            self.buf.append((d << 4) | t)
        else:
            self.buf.append(t)
            self.buf += zz(fid)
        self.last = fid

    def i32(self, fid, v):
        self._hdr(fid, 5)
        self.buf += zz(v)
        return self

    def i64(self, fid, v):
        self._hdr(fid, 6)
        self.buf += zz(v)
        return self

    def binary(self, fid, b):
        if isinstance(b, str):
            b = b.encode()
        self._hdr(fid, 8)
        self.buf += uvarint(len(b)) + b
        return self

    def boolean(self, fid, v):
        self._hdr(fid, 1 if v else 2)
        return self

    def struct(self, fid, s):
        self._hdr(fid, 12)
        self.buf += s.end()
        return self

    def lst(self, fid, etype, items):
        self._hdr(fid, 9)
        n = len(items)
        self.buf.append((n << 4 | etype) if n < 15 else (0xF0 | etype))
        if n >= 15:
            self.buf += uvarint(n)
        for it in items:
            if etype == 5:
                self.buf += zz(it)
            elif etype == 8:
                b = it.encode() if isinstance(it, str) else it
                self.buf += uvarint(len(b)) + b
            elif etype == 12:
                self.buf += it.end()
        return self

    def end(self):
        return bytes(self.buf) + b"\x00"


def rle_run(value, count, bw):
    return uvarint(count << 1) + value.to_bytes((bw + 7) // 8, "little")


def bitpacked(values, bw):
    while len(values) % 8:
        values = values + [0]
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * bw)
    nbytes = len(values) * bw // 8
    return uvarint((len(values) // 8) << 1 | 1) + acc.to_bytes(nbytes, "little")


def plain_ba(strings):
    out = bytearray()
    for s in strings:
        b = s.encode() if isinstance(s, str) else s
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def def_levels_v1(valid):
    body = bitpacked([1 if v else 0 for v in valid], 1)
    return struct.pack("<I", len(body)) + body


def page(ptype, payload, uncompressed_len, sub_id, sub, crc=True):
    h = Struct().i32(1, ptype).i32(2, uncompressed_len).i32(3, len(payload))
    if crc:
        c = zlib.crc32(payload)
        h.i32(4, c - (1 << 32) if c >= 1 << 31 else c)
    h.struct(sub_id, sub)
    return h.end() + payload


def compress(codec, data):
    if codec == 0:
        return data
    if codec == 2:
        # two gzip members, as some writers produce
        half = len(data) // 2
        return gzip.compress(data[:half]) + gzip.compress(data[half:])
    raise ValueError(codec)


def write_file(path, columns, rows_per_group):
    """columns: list of (schema Struct leaf, list-of-chunks builder per group)."""
    out = bytearray(b"PAR1")
    rgs = []
    for g, nrows in enumerate(rows_per_group):
        chunks = []
        for leaf_name, ptype, build in columns:
            start = len(out)
            dict_off, data_off, blob, codec, encs = build(g, start)
            out += blob
            md = (Struct().i32(1, ptype).lst(2, 5, encs).lst(3, 8, [leaf_name]).i32(4, codec)
                  .i64(5, nrows).i64(6, len(blob)).i64(7, len(blob)).i64(9, data_off))
            if dict_off is not None:
                md.i64(11, dict_off)
            chunks.append(Struct().i64(2, start).struct(3, md))
        rgs.append(Struct().lst(1, 12, chunks).i64(2, 0).i64(3, nrows))
    schema = [Struct().binary(4, "schema").i32(5, len(columns))]
    for leaf_name, ptype, _ in columns:
        s = Struct().i32(1, ptype).i32(3, 1).binary(4, leaf_name)
        if ptype == 6:
            s.i32(6, 0)
        schema.append(s)
    fmd = (Struct().i32(1, 1).lst(2, 12, schema).i64(3, sum(rows_per_group)).lst(4, 12, rgs)
           .binary(6, "moe tests/parquet/make-fallback.py").end())
    out += fmd + struct.pack("<I", len(fmd)) + b"PAR1"
    with open(path, "wb") as f:
        f.write(out)


WORDS = ["alpha", "b\u00e9ta \"quoted\"", "gamma\\back\nslash", "\u4e2d\u6587 \U0001F600", "tab\tctl\x01"]


def text_chunk(codec, v2):
    """dictionary page + 2 RLE_DICTIONARY pages + 2 PLAIN pages, with nulls."""

    def build(g, start):
        blob = bytearray()
        dvals = WORDS
        dict_raw = plain_ba(dvals)
        dict_c = compress(codec, dict_raw)
        blob += page(2, dict_c, len(dict_raw), 7, Struct().i32(1, len(dvals)).i32(2, 0))
        data_off = start + len(blob)
        pages = [
            ("dict", [0, 1, None, 4, 3, 3, 3, 3, 3, 3, 2, None]),
            ("dict", [1, None, None, 0]),
            ("plain", ["fallback %d-%d" % (g, i) if i % 3 else None for i in range(7)]),
            ("plain", ["ascii only", "", "\u00fcml\u00e4\u00fct", None,
                       b"bad \xc3\x28 \xed\xa0\x80 \xf0\x9f\x98 \xff end \xe2\x82"]),
        ]
        for kind, vals in pages:
            valid = [v is not None for v in vals]
            present = [v for v in vals if v is not None]
            if kind == "dict":
                bw = 3
                body = bytes([bw]) + bitpacked(present[:8], bw)
                if len(present) > 8:
                    body = bytes([bw]) + rle_run(present[0], 1, bw) + bitpacked(present[1:], bw)
                enc = 8
            else:
                body = plain_ba(present)
                enc = 0
            if not v2:
                raw = def_levels_v1(valid) + body
                comp = compress(codec, raw)
                sub = Struct().i32(1, len(vals)).i32(2, enc).i32(3, 3).i32(4, 3)
                blob += page(0, comp, len(raw), 5, sub)
            else:
                levels = bitpacked([1 if v else 0 for v in valid], 1)
                comp = compress(codec, body)
                sub = (Struct().i32(1, len(vals)).i32(2, len(vals) - len(present)).i32(3, len(vals))
                       .i32(4, enc).i32(5, len(levels)).i32(6, 0).boolean(7, codec != 0))
                blob += page(3, levels + comp, len(levels) + len(body), 8, sub)
        return start, data_off, bytes(blob), codec, [0, 3, 8]

    return build


def num_chunk(ptype, fmt, values_for_group):
    def build(g, start):
        vals = values_for_group(g)
        valid = [v is not None for v in vals]
        body = b"".join(struct.pack(fmt, v) for v in vals if v is not None)
        raw = def_levels_v1(valid) + body
        sub = Struct().i32(1, len(vals)).i32(2, 0).i32(3, 3).i32(4, 3)
        blob = page(0, raw, len(raw), 5, sub, crc=False)
        return None, start, blob, 0, [0, 3]

    return build


def raw_chunk(codec, enc, payload):
    """One data page with the given codec and encoding (for error paths)."""

    def build(g, start):
        sub = Struct().i32(1, 3).i32(2, enc).i32(3, 3).i32(4, 3)
        return None, start, page(0, payload, len(payload), 5, sub), codec, [enc]

    return build


def big_file(path, groups=40, rows=200, width=5000):
    """Many row groups of PLAIN text, about 1 MB each (memory-bound test)."""

    def text_build(g, start):
        vals = [("%d:%d " % (g, i)) * (width // 8) for i in range(rows)]
        raw = def_levels_v1([True] * rows) + plain_ba(vals)
        sub = Struct().i32(1, rows).i32(2, 0).i32(3, 3).i32(4, 3)
        return None, start, page(0, raw, len(raw), 5, sub, crc=False), 0, [0, 3]

    write_file(path, [("text", 6, text_build)], [rows] * groups)


def main():
    if sys.argv[1] == "--big":
        big_file(sys.argv[2])
        return
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    nrows = 28
    for name, codec, v2 in [("fallback-v1-plain.parquet", 0, False),
                            ("fallback-v1-gzip.parquet", 2, False),
                            ("fallback-v2-gzip.parquet", 2, True)]:
        cols = [
            ("text", 6, text_chunk(codec, v2)),
            ("score", 5, num_chunk(5, "<d", lambda g: [((i * 37 + g) % 50) / 10 + 0.05 if i % 5 else None
                                                        for i in range(nrows)])),
            ("int_score", 2, num_chunk(2, "<q", lambda g: [(i + g) % 6 if i % 7 else None
                                                           for i in range(nrows)])),
        ]
        write_file(os.path.join(outdir, name), cols, [nrows, nrows])
    # error paths: codecs and encodings moe-fetch refuses
    bad = os.path.join(outdir, "unsupported")
    os.makedirs(bad, exist_ok=True)
    for name, codec, enc in [("brotli.parquet", 4, 0), ("lz4.parquet", 5, 0), ("lzo.parquet", 3, 0),
                             ("delta-byte-array.parquet", 0, 7), ("byte-stream-split.parquet", 0, 9)]:
        write_file(os.path.join(bad, name), [("text", 6, raw_chunk(codec, enc, def_levels_v1([True] * 3) + bytes(range(40))))], [3])


if __name__ == "__main__":
    main()
