"""Text: the record's words against multilingual profanity/slur lists and an operator blocklist.

Explicit song titles are legitimate: built-in list hits carry no label value and feed review;
only an operator blocklist entry that names a value points at a label (the policy decides).

Matching is per word, never by substring, so `Scunthorpe`, `assassin`, `classic` and
`Dickens` stay clean. Both the text and the list terms go through one normalisation (NFKD,
case folding, accents on Latin/Greek/Cyrillic letters and invisible characters dropped);
then each word is also tried with leetspeak undone (`sh1t`, `@ss`, `$hit`), `*` as a vowel
(`f*ck`), repeated letters collapsed (`fuuuck`, never `as` -> `ass`), a plural `s` removed,
and Latin/Cyrillic look-alikes unified in mixed-script words. Letters spelt apart
(`f u c k`, `f.u.c.k`) are joined. Scripts written without spaces (Chinese, Japanese,
Korean, Thai) are matched as substrings of two characters or more.
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from firehose_mod.scan.base import Finding, ScanContext, Track

SCORES = {"slur": 0.9, "profanity": 0.5, "blocklist": 1.0}
_RANK = {"profanity": 0, "slur": 1, "blocklist": 2}
MAX_FINDINGS = 20  # per track: a 5000-character description must not flood the review queue
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s", "!": "i", "+": "t", "|": "l", "€": "e"})
_LEET_CHARS = frozenset("@$!+|€*")
_CONFUSABLES = str.maketrans(dict(zip("асеорхукмтвніѕјαοεικνρτυχ", "aceopxykmtbhisjaoeikvptux")))
_LABEL_VALUE_RE = re.compile(r"^[a-z][a-z-]{0,127}$")


def _nospace_script(ch: str) -> bool:
    o = ord(ch)
    return (0x0E00 <= o <= 0x0E7F or 0x1100 <= o <= 0x11FF or 0x3040 <= o <= 0x30FF or 0x3130 <= o <= 0x318F
            or 0x3400 <= o <= 0x9FFF or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF)


def normalize(text: str) -> tuple[str, list[int]]:
    """Folded text and, for each of its characters, the index of the original character it came from."""
    out: list[str] = []
    origin: list[int] = []
    latinish = False
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFKD", ch):
            cat = unicodedata.category(c)
            if cat == "Cf":  # zero-width spaces and joiners, soft hyphens: used to split words
                continue
            if cat == "Mn" and latinish:
                continue
            if cat[0] != "M":
                latinish = cat[0] == "L" and c < "\u0530"
            for f in c.casefold():
                out.append(f)
                origin.append(i)
    return "".join(out), origin


def _is_word_char(c: str) -> bool:
    return c in _LEET_CHARS or unicodedata.category(c)[0] in "LMN"


def _runs(word: str) -> tuple[str, tuple[int, ...]]:
    letters, counts = [], []
    for k, g in itertools.groupby(word):
        letters.append(k)
        counts.append(len(list(g)))
    return "".join(letters), tuple(counts)


@dataclass(frozen=True, slots=True)
class Term:
    """One list entry: its normalised text, category (profanity|slur|blocklist), source languages."""

    text: str
    category: str
    languages: tuple[str, ...] = ()
    value: str | None = None
    note: str = ""


@dataclass
class TermIndex:
    """Terms arranged for word, phrase and substring lookups."""

    words: dict[str, list[tuple[tuple[int, ...], Term]]] = field(default_factory=dict)
    phrases: dict[str, Term] = field(default_factory=dict)
    substrings: dict[str, Term] = field(default_factory=dict)
    max_phrase: int = 1

    def add(self, term: Term) -> bool:
        """Index a term (already normalised); False if it cannot be matched reliably."""
        text = term.text
        if any(_nospace_script(c) for c in text) or all(unicodedata.category(c) == "So" for c in text):
            if len(text) < 2 and not all(unicodedata.category(c) == "So" for c in text):
                return False  # one CJK character is part of too many ordinary words
            self.substrings[text] = _stronger(self.substrings.get(text), term)
            return True
        parts = [_word_form(p) for p in text.split()]
        if not parts or any(p is None for p in parts):
            return False
        if len(parts) > 1:
            key = " ".join(parts)  # type: ignore[arg-type]
            self.phrases[key] = _stronger(self.phrases.get(key), term)
            self.max_phrase = max(self.max_phrase, len(parts))
            return True
        term = Term(parts[0], term.category, term.languages, term.value, term.note)  # `a$$` is reported as `ass`
        squeezed, counts = _runs(parts[0])  # type: ignore[arg-type]
        bucket = self.words.setdefault(squeezed, [])
        for k, (c, old) in enumerate(bucket):
            if c == counts:
                bucket[k] = (c, _stronger(old, term))
                return True
        bucket.append((counts, term))
        return True

    def word(self, token: str) -> Term | None:
        squeezed, counts = _runs(token)
        for need, term in self.words.get(squeezed, ()):
            if all(have >= n for have, n in zip(counts, need)):
                return term
        return None


def _stronger(old: Term | None, new: Term) -> Term:
    if old is None:
        return new
    if _RANK[new.category] > _RANK[old.category]:
        return Term(new.text, new.category, tuple(dict.fromkeys(old.languages + new.languages)), new.value, new.note)
    return Term(old.text, old.category, tuple(dict.fromkeys(old.languages + new.languages)), old.value, old.note)


def _word_form(word: str) -> str | None:
    """A term word as letters only (leet in list entries like `a$$` undone), or None."""
    if not any(unicodedata.category(c)[0] == "L" for c in word):
        return word if word.isdigit() else None
    w = word.translate(_LEET)
    return w if all(unicodedata.category(c)[0] in "LM" for c in w) else None


@dataclass(frozen=True, slots=True)
class _Token:
    start: int
    end: int
    text: str


def _tokens(norm: str) -> list[_Token]:
    tokens, start = [], None
    for i, c in enumerate(norm + " "):
        if _is_word_char(c) and i < len(norm):
            if start is None:
                start = i
        elif start is not None:
            tokens.append(_Token(start, i, norm[start:i]))
            start = None
    return tokens


def _variants(token: str) -> list[str]:
    """Readings of one word: as written, leetspeak undone (1 as i and as l), `*` as each vowel."""
    stripped = token.strip("".join(_LEET_CHARS) + "0123456789")
    out = [stripped] if stripped else []
    if any(unicodedata.category(c)[0] == "L" for c in token) and token != stripped or any(
            c in _LEET_CHARS or c.isdigit() for c in token):
        for leet in (token.translate(_LEET), token.replace("1", "l").translate(_LEET)):
            if leet.count("*") <= 2:
                stars = [leet]
                for _ in range(leet.count("*")):
                    stars = [s.replace("*", v, 1) for s in stars for v in "aeiou"]
                out.extend(stars)
    if any("\u0400" <= c <= "\u04ff" or "\u0370" <= c <= "\u03ff" for c in token) and any("a" <= c <= "z" for c in token):
        out.append(token.translate(_CONFUSABLES))
    return list(dict.fromkeys(v for v in out if v))


def _latin(word: str) -> bool:
    return all("a" <= c <= "z" for c in word)


@dataclass(frozen=True, slots=True)
class Hit:
    term: Term
    start: int  # offsets in the original text
    end: int
    matched: str


def find_terms(text: str, index: TermIndex) -> list[Hit]:
    """Every list term in `text`, with original offsets; see the module docstring for the rules."""
    norm, origin = normalize(text)
    if not norm:
        return []
    hits: list[Hit] = []

    def hit(term: Term, a: int, b: int) -> None:
        s, e = origin[a], origin[b - 1] + 1
        hits.append(Hit(term, s, e, text[s:e]))

    tokens = _tokens(norm)
    forms: list[list[str]] = [_variants(t.text) for t in tokens]
    for t, variants in zip(tokens, forms):
        found = [term for v in variants
                 for term in (index.word(v) or (index.word(v[:-1]) if len(v) >= 4 and v.endswith("s") and _latin(v) else None),)
                 if term is not None]
        if found:  # several readings can match (`n*gger`): report the most severe, then the longest
            hit(max(found, key=lambda term: (_RANK[term.category], len(term.text), len(term.languages))), t.start, t.end)
    # Letters spelt apart: three or more one-letter words in a row, one separator apart.
    i = 0
    while i < len(tokens):
        j = i
        while j + 1 < len(tokens) and len(tokens[j + 1].text) == 1 and tokens[j + 1].start - tokens[j].end <= 2 \
                and len(tokens[j].text) == 1:
            j += 1
        if j - i >= 2:
            joined = "".join(tokens[k].text for k in range(i, j + 1)).translate(_LEET)
            term = index.word(joined)
            if term is not None:
                hit(term, tokens[i].start, tokens[j].end)
        i = j + 1
    if index.phrases:
        for n in range(2, index.max_phrase + 1):
            for k in range(len(tokens) - n + 1):
                key = " ".join(f[-1] if f else "" for f in forms[k:k + n])
                plain = " ".join(t.text for t in tokens[k:k + n])
                term = index.phrases.get(key) or index.phrases.get(plain)
                if term is not None:
                    hit(term, tokens[k].start, tokens[k + n - 1].end)
    for sub, term in index.substrings.items():
        at = norm.find(sub)
        if at >= 0:
            hit(term, at, at + len(sub))
    return hits


def _wordlist(name: str) -> Iterable[tuple[int, list[str]]]:
    text = importlib.resources.files("firehose_mod.scan").joinpath("wordlists", name).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield n, line.split(None, 1)


@lru_cache(maxsize=8)
def builtin_index(languages: tuple[str, ...] | None = None) -> TermIndex:
    """glin-profanity's dictionaries adjusted by this package's word lists (see wordlists/README.md)."""
    from glin_profanity.data.dictionary import DictionaryLoader  # 24 languages of lists: loaded on first use

    loader = DictionaryLoader()
    wanted = languages or tuple(loader.available_languages)
    unknown = set(wanted) - set(loader.available_languages)
    if unknown:
        raise ValueError(f"unknown text languages {sorted(unknown)}; available: {', '.join(loader.available_languages)}")
    ignore = {normalize(" ".join(parts))[0] for _, parts in _wordlist("ignore.txt")}
    keep_short = {normalize(parts[1])[0] for _, parts in _wordlist("keep_short.txt")}
    index = TermIndex()
    for language in wanted:
        for raw in loader.get_words(language):
            norm = " ".join(normalize(raw)[0].split())
            if not norm or norm in ignore:
                continue
            if " " not in norm and _latin(norm.translate(_LEET)) and len(norm) < 4 and norm not in keep_short:
                continue  # short Latin words collide with ordinary words of other languages
            index.add(Term(norm, "profanity", (language,)))
    for _, (language, term) in _wordlist("profanity_extra.txt"):
        if language in wanted:
            index.add(Term(" ".join(normalize(term)[0].split()), "profanity", (language,)))
    for _, (language, term) in _wordlist("slurs.txt"):
        index.add(Term(" ".join(normalize(term)[0].split()), "slur", (language,)))
    return index


class TextBlocklistError(ValueError):
    """An operator text blocklist is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TextBlocklist:
    """Operator entries: `term WORDS [-> value] [# note]` or `re PATTERN [-> value] [# note]`.

    Terms match like the built-in lists (whole words, normalised, obfuscations undone);
    regexes are Python `re` patterns, case-insensitive, tried on the original and the
    normalised text. A note starts at ` #`; write `[#]` for a literal ` #` in a regex.
    """

    terms: TermIndex
    regexes: tuple[tuple[re.Pattern[str], Term], ...]

    @property
    def values(self) -> frozenset[str]:
        """The label values its entries name (`-> value`)."""
        index = self.terms
        terms = [t for _, t in self.regexes] + list(index.phrases.values()) + list(index.substrings.values())
        terms += [t for bucket in index.words.values() for _, t in bucket]
        return frozenset(t.value for t in terms if t.value)

    @classmethod
    def parse(cls, text: str, *, source: str = "<text blocklist>") -> TextBlocklist:
        index, regexes = TermIndex(), []
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{n}"
            m = re.search(r"\s#", line)
            body, note = (line[:m.start()], line[m.end():].strip()) if m else (line, "")
            kind, _, rest = body.partition(" ")
            pattern, arrow, value = rest.rpartition(" -> ") if " -> " in rest else (rest, "", "")
            pattern, value = pattern.strip(), value.strip() or None
            if kind not in ("term", "re"):
                raise TextBlocklistError(f"{where}: start the line with `term` or `re`, got {kind[:40]!r}")
            if not pattern:
                raise TextBlocklistError(f"{where}: empty {kind}")
            if value is not None and not _LABEL_VALUE_RE.match(value):
                raise TextBlocklistError(f"{where}: label value {value!r} must be lowercase letters and '-'")
            if kind == "re":
                try:
                    rx = re.compile(pattern, re.IGNORECASE)
                except re.error as exc:
                    raise TextBlocklistError(f"{where}: invalid regex {pattern[:80]!r}: {exc}") from None
                if rx.search("") is not None:
                    raise TextBlocklistError(f"{where}: regex {pattern[:80]!r} matches empty text (it would match everything)")
                regexes.append((rx, Term(pattern, "blocklist", (), value, note)))
            else:
                norm = " ".join(normalize(pattern)[0].split())
                if not index.add(Term(norm, "blocklist", (), value, note)):
                    raise TextBlocklistError(f"{where}: term {pattern[:80]!r} has no letters to match (use `re` for symbols)")
        return cls(index, tuple(regexes))

    @classmethod
    def load(cls, path: str | Path) -> TextBlocklist:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TextBlocklistError(f"cannot read text blocklist {path}: {exc}") from None
        return cls.parse(text, source=str(path))

    def find(self, text: str) -> list[Hit]:
        hits = find_terms(text, self.terms) if (self.terms.words or self.terms.phrases or self.terms.substrings) else []
        norm = normalize(text)[0]
        for rx, term in self.regexes:
            m = rx.search(text)
            if m is not None:
                hits.append(Hit(term, m.start(), m.end(), m.group(0)))
            elif (m := rx.search(norm)) is not None:
                hits.append(Hit(term, 0, len(text), m.group(0)))  # offsets in folded text differ: whole field
        return hits


def track_fields(record: dict) -> list[tuple[str, str]]:
    """(field name, text) for every text field a listener sees."""
    out = [(k, record[k]) for k in ("title", "artist", "album", "description") if isinstance(record.get(k), str)]
    features = record.get("features")
    if isinstance(features, list):
        for i, f in enumerate(features[:10]):
            if isinstance(f, dict):
                out += [(f"features[{i}].{k}", f[k]) for k in ("handle", "displayName") if isinstance(f.get(k), str)]
    return out


def _excerpt(text: str, start: int, end: int, width: int = 40) -> str:
    a, b = max(0, start - width), min(len(text), end + width)
    return ("…" if a else "") + text[a:b] + ("…" if b < len(text) else "")


class TextScanner:
    """Reports profanity, slurs and operator blocklist terms in a track's text fields."""

    name = "text"
    version = "1"
    kinds = frozenset({"text"})
    after_local = False

    def __init__(self, *, blocklist: TextBlocklist | None = None, languages: tuple[str, ...] | None = None,
                 builtin: bool = True):
        self.blocklist = blocklist
        # Built-in list hits carry no value; an operator entry carries the value it names.
        self.values: frozenset[str] = blocklist.values if blocklist else frozenset()
        self.index = builtin_index(languages) if builtin else TermIndex()

    def check(self, fields: list[tuple[str, str]]) -> list[Finding]:
        """Findings for (field, text) pairs: one per field and term, at most MAX_FINDINGS."""
        found: dict[tuple[str, str, str], tuple[Hit, int, str]] = {}
        for name, text in fields:
            hits = find_terms(text, self.index) + (self.blocklist.find(text) if self.blocklist else [])
            for h in hits:
                key = (name, h.term.text, h.term.category)
                first, count, src = found.get(key, (h, 0, text))
                found[key] = (first, count + 1, src)
        findings = []
        order = sorted(found.items(), key=lambda kv: -SCORES[kv[1][0].term.category])
        for (name, _, category), (h, count, src) in order[:MAX_FINDINGS]:
            evidence = {"field": name, "term": h.term.text, "matched": h.matched, "category": category,
                        "language": ",".join(h.term.languages) or None, "excerpt": _excerpt(src, h.start, h.end),
                        "count": count}
            if h.term.note:
                evidence["note"] = h.term.note
            findings.append(Finding(self.name, "text", SCORES[category], evidence, h.term.value))
        return findings

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        return self.check(track_fields(track.record))
