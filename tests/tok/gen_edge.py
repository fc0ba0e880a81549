#!/usr/bin/env python3
"""Writes tests/tok/edge.jsonl: Unicode and whitespace edge cases for the
tokenizer exactness tests (the ids come from the reference library at test
time; this file only holds inputs)."""
import json, re, sys, unicodedata

docs = []
def add(s): docs.append(s)

# combining marks, NFC vs NFD
add("e\u0301 caf\u00e9 cafe\u0301 re\u0301sume\u0301 \u00c5ngstr\u00f6m A\u030angstro\u0308m")
add(unicodedata.normalize("NFD", "Cr\u00e8me br\u00fbl\u00e9e, na\u00efve, \u0174\u00ea\u00ef, \u1e9b\u0323, \u1e69"))
add("a\u0328\u0301 o\u031b\u0323 q\u0307\u0323 \u0041\u030a\u0301 x\u0300\u0301\u0302\u0303\u0304 \u212b \u2126 \u1e0a\u0323")
add("\u0915\u093c \u0958 \u09a1\u09bc \u0b47\u0b3e \u1100\u1161\u11a8 \uac00\u11a8 \u1100 \u1161")
add(" \u0301leading combining, \u0300\u0301 only marks \u20dd \u0489")
# emoji, ZWJ, flags, skin tones, variation selectors
add("\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 family \U0001F44D\U0001F3FD ok \U0001F1FA\U0001F1F8 \u2764\ufe0f \U0001F600\U0001F600\U0001F600")
add("emoji\U0001F680rocket \U0001F9D1\u200D\U0001F4BB coder \u200b zero\u200bwidth \u200c\u200d joiners \u2060 word joiner")
# CJK, Japanese, Korean
add("\u4e2d\u6587\u6587\u672c\uff0c\u6c49\u5b57\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3001\u30ab\u30bf\u30ab\u30ca\u3002\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8. \u3000\u5168\u89d2\u7a7a\u767d\u3000\u3000\u7d42\u308f\u308a")
add("\U00020000\U0002A6D6 \U00030000 extension B and G ideographs \u3007\u3021\u3038")
# Arabic, Hebrew (RTL, marks)
add("\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627 \u0661\u0662\u0663 \u06f4\u06f5 \ufdfa \ufefb")
add("\u05e2\u05d1\u05e8\u05d9\u05ea \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd \u200f\u202b embedded \u202c \ufb2a\ufb4b")
# Thai, Devanagari, others
add("\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a \u0e51\u0e52\u0e53 \u0939\u093f\u0928\u094d\u0926\u0940 \u0968\u0966\u0968\u096a")
add("\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440 \u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8 \u0540\u0561\u0575\u0565\u0580\u0565\u0576")
# full-width and compatibility forms
add("\uff21\uff22\uff23\uff41\uff42\uff43\uff10\uff11\uff12\uff01\uff1f \uff08\uff09 \ufb01\ufb02 \u2460\u2461 \u00bd \u2153 \u00b2\u00b3 \u2167 \u216b \u3395 \u33a1")
add("\u00a0nbsp\u00a0\u00a0two \u2002en\u2003em\u2009thin\u200a hair\u202fnarrow\u205fmath\u3000ideo\u1680ogham\u0085nel\u2028ls\u2029ps")
# whitespace runs of every length, spaces and mixed
for n in range(1, 41):
    add("a" + " " * n + "b" + " " * n)
for n in range(1, 41):
    add(" " * n)
for n in (1, 2, 3, 5, 8, 13, 24, 25, 26, 47, 48, 49):
    add("x" + " " * n + "\n" + " " * n + "y" + "\t" * n + "z")
# tabs, CR, LF mixes
add("line1\nline2\r\nline3\rline4\n\n\nline5\r\n\r\n\t\tindented\n \n \t \r\n end")
add("\t\t\t \t\n\n \n  \n   x\n\t\ny\r\r\rz \r\n \r\n")
add("trailing spaces   \n   leading\n\t \n")
add("\n\n\n")
add("\r\n")
add("a\n b\n  c\n   d\n    e\n     f")
add("code:\n    def f(x):\n        return x  # two\n\n\tif (a) {\n\t\tb();\n\t}\n")
# contractions in every case
base = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
variants = []
for c in base:
    body = c[1:]
    forms = set()
    for mask in range(1 << len(body)):
        forms.add("'" + "".join(ch.upper() if mask >> i & 1 else ch for i, ch in enumerate(body)))
    variants.extend(sorted(forms))
add(" ".join("it" + v for v in variants))
add(" ".join("x" + v + "y" for v in variants))
add("I'M YOU'RE WE'VE THEY'LL HE'D SHE'S IT'S DON'T can't won't I'm you're we've they'll he'd she's ''s 's ' s'")
add("\u2019s \u2019t curly \u2018quoted\u2019 \u201cdouble\u201d \u017fo long s \u0027\u017f \u02bcs modifier")
# numbers
add("1 12 123 1234 12345 123456 1234567 12345678901234567890123456789012345678901234567890")
add("3.14159 2,718 1e10 -42 +7 0x1F 0b1010 1_000_000 \u0661\u0662\u0663\u0664 \u00b2\u00b3\u00b9 \u2155 \u2160\u2161")
add("".join(str(i % 10) for i in range(1000)))
# very long words and runs
add("a" * 3000)
add("ab" * 1500 + " " + "xyz" * 700)
add("Pneumonoultramicroscopicsilicovolcanoconiosis " * 5 + "supercalifragilisticexpialidocious" * 20)
add("!" * 500 + "?" * 3 + "..." * 100 + "-" * 80 + "=" * 80)
add("\u00e9" * 800 + " " + "\u4e00" * 400 + " " + "\U0001F600" * 100)
add("https://example.com/path/to/page?query=1&b=2#frag user@example.org C:\\Windows\\System32 /usr/bin/env")
# special tokens inside text
add("Hello<|endoftext|>world")
add("a <|endoftext|> b<|endoftext|><|endoftext|> c")
add("<|endoftext|>")
add("<|endoftext|")
add("<|padding|> |||IP_ADDRESS||| |||EMAIL_ADDRESS|||x|||PHONE_NUMBER|||  <|endoftext|>   tail")
add("<|endoftext|>" + " " * 30 + "<|endoftext|>")
add("  <|endoftext|>  ")
# punctuation and symbols
add("Hello, world! How's it going? (fine) [ok] {yes} <tag> \"quotes\" 'single' `back` ~tilde ^caret @at #hash $dollar %pct &amp *star _under")
add("\u00a9 \u00ae \u2122 \u20ac100 \u00a35 \u00a5 \u2192 \u2190 \u21d2 \u2200x\u2208\u211d \u221e \u2211 \u222b \u2248 \u2260 \u2264 \u00b1 \u00d7 \u00f7")
add("mixed\u0041\u0301\u00c1script \u03a9\u2126 \u00b5\u03bc \u212a K \u0130 \u0131 \u00df \u1e9e \ufb00")
add("")
add(" ")
add("x")
add("\u0000nul\u0000 \u0001\u0002\u001f \u007f del")
add("\ufeffBOM at start and \ufeff in middle")
add("\U0001D400\U0001D401 math bold \U0001D7CE\U0001D7CF digits \U00010400 deseret \U0001F130")

with open(sys.argv[1] if len(sys.argv) > 1 else "edge.jsonl", "w", encoding="utf-8") as f:
    for d in docs:
        # compact, with upper-case escapes: the form moe-tokenize decode writes
        line = json.dumps({"text": d}, ensure_ascii=False, separators=(",", ":"))
        line = re.sub(r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), line)
        f.write(line + "\n")
print(len(docs), "documents")
