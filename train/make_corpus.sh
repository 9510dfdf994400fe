#!/usr/bin/env bash
# Rebuilds the training corpus of models/moeflux-tiny-kjv from Debian's King James Bible packages.
#
#   train/make_corpus.sh [OUT_DIR]        (default: train/data; needs apt-get, dpkg-deb, python3)
#
# 1. `apt-get download bible-kjv bible-kjv-text` (Debian 12 "bookworm", version 4.38) into
#    OUT_DIR/deb and unpack them there with `dpkg -x` (nothing is installed system-wide).
# 2. Runs the package's own `bible` program on its data file to print all 31,102 verses, one a
#    line (`bible -f gen1:1-rev22:21`: references on, pretty-printing off).
# 3. Splits by whole books, deterministically, in canonical order:
#      train   Genesis .. Hebrews            (58 books, 30,267 verses)
#      valid   James, 1 Peter                ( 2 books,    213 verses)  model selection only
#      heldout 2 Peter .. Revelation         ( 6 books,    622 verses = 2.0%)  final perplexity
#    Each book becomes one JSON line {"book", "abbrev", "chapters", "verses", "text"} where text is
#    its verses without references, one verse a line, chapters separated by one empty line.
#    Files: OUT_DIR/kjv_{train,valid,heldout}.jsonl and OUT_DIR/corpus_meta.json (counts, sha256).
#
# Licence: the KJV text is in the public domain (Debian's copyright file of both packages: "The
# copyright for the King James Version text of the Bible is expired"); the data file is
# distributed by the Bible Retrieval System under "Users may copy, modify or distribute this file
# at will". See train/README.md and models/moeflux-tiny-kjv/LICENSE-DATA.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/data}"
mkdir -p "$out/deb"
out="$(cd "$out" && pwd)"

cd "$out/deb"
for pkg in bible-kjv bible-kjv-text; do
  if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
    apt-get download "$pkg" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download "$pkg"; }
  fi
done
rm -rf root
for f in bible-kjv_*.deb bible-kjv-text_*.deb; do dpkg -x "$f" root; done
echo "packages: $(ls bible-kjv_*.deb bible-kjv-text_*.deb | tr '\n' ' ')"
echo "copyright (bible-kjv-text):"
sed -n '/King James/,/Britain/p' root/usr/share/doc/bible-kjv-text/copyright | sed 's/^/    /'

root/usr/bin/bible -p root/usr/lib -f "gen1:1-rev22:21" > "$out/kjv_verses.txt"

python3 - "$out" <<'PY'
import hashlib, json, os, re, sys

out = sys.argv[1]
# (abbreviation printed by `bible`, full name), canonical order
BOOKS = [
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deu", "Deuteronomy"), ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"),
    ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"), ("1Ki", "1 Kings"), ("2Ki", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"), ("Neh", "Nehemiah"),
    ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"), ("Prv", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Eze", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"),
    ("Joel", "Joel"), ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"),
    ("Nahum", "Nahum"), ("Hab", "Habakkuk"), ("Zep", "Zephaniah"), ("Hag", "Haggai"),
    ("Zec", "Zechariah"), ("Mal", "Malachi"), ("Mat", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"),
    ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"), ("1Cor", "1 Corinthians"),
    ("2Cor", "2 Corinthians"), ("Gal", "Galatians"), ("Eph", "Ephesians"), ("Phi", "Philippians"),
    ("Col", "Colossians"), ("1Th", "1 Thessalonians"), ("2Th", "2 Thessalonians"),
    ("1Tim", "1 Timothy"), ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phmn", "Philemon"),
    ("Heb", "Hebrews"), ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"),
    ("2Jn", "2 John"), ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
]
VALID = {"Jas", "1Pet"}
HELDOUT = {"2Pet", "1Jn", "2Jn", "3Jn", "Jude", "Rev"}

ref = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
books = {}  # abbrev -> {chapter: [verse text]}
order = []
with open(os.path.join(out, "kjv_verses.txt"), encoding="ascii") as f:
    for line in f:
        m = ref.match(line.rstrip("\n"))
        if not m:
            sys.exit(f"make_corpus: unexpected line: {line!r}")
        b, c, v, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()
        if b not in books:
            books[b] = {}
            order.append(b)
        books[b].setdefault(c, []).append(text)
names = dict(BOOKS)
if order != [b for b, _ in BOOKS]:
    sys.exit(f"make_corpus: unexpected book order {order}")

splits = {"train": [], "valid": [], "heldout": []}
meta = {"source": "Debian packages bible-kjv / bible-kjv-text (King James Version, public domain)",
        "command": "bible -p root/usr/lib -f gen1:1-rev22:21", "splits": {}}
for b in order:
    chapters = [books[b][c] for c in sorted(books[b])]
    text = "\n\n".join("\n".join(vs) for vs in chapters)
    rec = {"book": names[b], "abbrev": b, "chapters": len(chapters),
           "verses": sum(len(vs) for vs in chapters), "text": text}
    split = "heldout" if b in HELDOUT else "valid" if b in VALID else "train"
    splits[split].append(rec)
total_verses = sum(r["verses"] for s in splits.values() for r in s)
for name, recs in splits.items():
    path = os.path.join(out, f"kjv_{name}.jsonl")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    data = open(path, "rb").read()
    meta["splits"][name] = {
        "file": os.path.basename(path), "books": [r["book"] for r in recs],
        "verses": sum(r["verses"] for r in recs),
        "verse_fraction": round(sum(r["verses"] for r in recs) / total_verses, 4),
        "chars": sum(len(r["text"]) for r in recs), "sha256": hashlib.sha256(data).hexdigest()}
meta["total_verses"] = total_verses
with open(os.path.join(out, "corpus_meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
for name, s in meta["splits"].items():
    print(f"{name:8s} {len(s['books']):2d} books {s['verses']:6d} verses ({100 * s['verse_fraction']:.1f}%) "
          f"{s['chars']:8d} chars  sha256 {s['sha256'][:16]}")
PY
