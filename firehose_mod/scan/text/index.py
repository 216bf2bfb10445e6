"""List terms arranged for lookup: `Term`, `TermIndex` (with the allow-lists) and `Hit`.

match.py finds them in text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from firehose_mod.scan.text.normalize import LEET, nospace_script, runs

_SQUEEZE = re.compile(r"(.)\1+")
SCORES = {"slur": 0.9, "profanity": 0.5, "blocklist": 1.0}
RANK = {"profanity": 0, "slur": 1, "blocklist": 2}
# core: a slur in every language; hate: slogans; context: a slur only in its own languages;
# code: numbers (88, 1488) that count only next to other hate.
TIER_RANK = {"": 0, "code": 1, "context": 2, "core": 3, "hate": 3}
SEVERE = frozenset({"core", "hate"})
# Readings that only a deliberate disguise produces: a slur found this way counts in any language.
DELIBERATE = frozenset({"skeleton", "leet", "split", "disguised", "reversed-field"})


@dataclass(frozen=True, slots=True)
class Term:
    """One list entry: normalised text, category (profanity|slur|blocklist), source languages, tier."""

    text: str
    category: str
    languages: tuple[str, ...] = ()
    value: str | None = None
    note: str = ""
    tier: str = ""
    innocent: tuple[str, ...] = ()  # languages in which a `context` term is an ordinary word
    inflected: bool = False  # a generated form (`negr` -> `negra`): may be a word of another language

    @property
    def severity(self) -> tuple[int, int, int]:
        return RANK[self.category], TIER_RANK[self.tier], len(self.text)


def _word_form(word: str) -> str | None:
    """A term word as letters only (leet in list entries like `a$$` undone), or None."""
    if not any(unicodedata.category(c)[0] == "L" for c in word):
        return word if word.isdigit() else None
    w = word.translate(LEET)
    return w if all(unicodedata.category(c)[0] in "LM" for c in w) else None


@dataclass
class TermIndex:
    """Terms arranged for word, phrase, substring and compound lookups, with the allow-lists."""

    words: dict[str, list[tuple[tuple[int, ...], Term]]] = field(default_factory=dict)
    phrases: dict[str, list[Term]] = field(default_factory=dict)
    substrings: dict[str, list[Term]] = field(default_factory=dict)
    compounds: dict[str, list[Term]] = field(default_factory=dict)
    allow_words: set[str] = field(default_factory=set)
    allow_phrases: set[str] = field(default_factory=set)
    allow_substrings: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    hate_context: set[str] = field(default_factory=set)
    max_phrase: int = 1
    _compound_rx: re.Pattern[str] | None = None
    _starts: frozenset[str] | None = None
    _cache: dict[str, list[Term]] = field(default_factory=dict)  # word lookups; cleared when a term is added
    _prefixes: frozenset[str] | None = None

    def add(self, term: Term, form: str | None = None) -> bool:
        """Index a term (already normalised), or one of its inflected `form`s; False if it cannot
        be matched reliably."""
        text = form or term.text
        if any(nospace_script(c) for c in text) or all(unicodedata.category(c) == "So" for c in text):
            if len(text) < 2 and not all(unicodedata.category(c) == "So" for c in text):
                return False  # one CJK character is part of too many ordinary words
            self.substrings.setdefault(text, []).append(term)
            return True
        parts = [_word_form(p) for p in text.split()]
        if not parts or any(p is None for p in parts):
            return False
        if len(parts) > 1:
            key = " ".join(parts)  # type: ignore[arg-type]
            self.phrases.setdefault(key, []).append(term)
            self._starts = None
            self.max_phrase = max(self.max_phrase, len(parts))
            if term.tier == "hate" and len(key) >= 8:
                self._add_compound("".join(parts), term)  # type: ignore[arg-type]
            return True
        if form is None:
            term = Term(parts[0], term.category, term.languages, term.value, term.note, term.tier, term.innocent,
                        term.inflected)  # `a$$` is reported as `ass`
        squeezed, counts = runs(parts[0])  # type: ignore[arg-type]
        self.words.setdefault(squeezed, []).append((counts, term))
        self._prefixes = None
        self._cache.clear()
        if term.tier in SEVERE and len(parts[0]) >= 5 and parts[0].isalpha():  # type: ignore[arg-type]
            self._add_compound(parts[0], term)  # type: ignore[arg-type]
        return True

    def _add_compound(self, text: str, term: Term) -> None:
        self.compounds.setdefault(text, []).append(term)
        self._compound_rx = None

    def word(self, token: str) -> list[Term]:
        """Terms written `token`, repeated letters allowed (`fuuuck`, never `as` -> `ass`)."""
        cached = self._cache.get(token)
        if cached is None:
            bucket = self.words.get(_SQUEEZE.sub(r"\1", token))
            counts = runs(token)[1] if bucket else ()
            cached = [term for need, term in bucket or () if all(have >= n for have, n in zip(counts, need))]
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[token] = cached
        return cached

    def phrase_starts(self) -> frozenset[str]:
        """First words of the multi-word terms: a phrase lookup starts only at one of them."""
        if self._starts is None:
            self._starts = frozenset(k.split(" ", 1)[0] for k in self.phrases)
        return self._starts

    def slur_prefixes(self) -> frozenset[str]:
        """Every leading part of a slur's forms: a split word is rejoined only after one of them."""
        if self._prefixes is None:
            forms = [k for k, bucket in self.words.items() if any(t.category == "slur" for _, t in bucket)]
            self._prefixes = frozenset(f[:i] for f in forms for i in range(1, len(f)))
        return self._prefixes

    def compound_rx(self) -> re.Pattern[str] | None:
        if self._compound_rx is None and self.compounds:
            alts = sorted(self.compounds, key=len, reverse=True)
            self._compound_rx = re.compile("|".join(map(re.escape, alts)))
        return self._compound_rx

    def terms(self) -> Iterator[Term]:
        yield from (t for bucket in self.words.values() for _, t in bucket)
        for group in (self.phrases, self.substrings):
            yield from (t for terms in group.values() for t in terms)

    def __bool__(self) -> bool:
        return bool(self.words or self.phrases or self.substrings)


@dataclass(frozen=True, slots=True)
class Hit:
    term: Term
    start: int  # offsets in the original text
    end: int
    matched: str
    how: str = "word"  # plain | leet | skeleton | disguised | reversed | split | camel | compound | phrase | substring
