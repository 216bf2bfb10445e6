"""The text scanner: each field of a track against the lists of its own language.

Explicit song titles are legitimate: built-in list hits carry no label value and feed review;
only an operator blocklist entry that names a value points at a label (the policy decides).
What a term counts as depends on its tier and the field's language (language.py):
profanity and `context` slurs only where their language is likely, `core` slurs and `hate`
phrases everywhere, numeric hate `code`s only when the record has other hate in it.
A `context` slur (slurs.txt) names the languages where it is an ordinary word (`retard`:
French, Catalan...): it counts unless the field is likely in one of them; a title of two words
is judged with the rest of the record (language.py).
"""

from __future__ import annotations

import unicodedata

from firehose_mod.scan.base import Finding, ScanContext, Track
from firehose_mod.scan.text.blocklist import TextBlocklist
from firehose_mod.scan.text.index import SCORES, Hit, Term, TermIndex
from firehose_mod.scan.text.language import confidence, field_languages
from firehose_mod.scan.text.lists import builtin_index
from firehose_mod.scan.text.match import find_terms
from firehose_mod.scan.text.normalize import is_word_char, normalize

REVERSED_FIELD_MAX = 300  # characters: a title or name typed backwards (`reggin yduts`); not descriptions
FIELD_MAX = 6000  # characters read per field: the lexicon allows 5,000 bytes of description, 256 of a title
MAX_FINDINGS = 20  # per track: a 5000-character description must not flood the review queue
CONTEXT_ORDINARY_MAX = 0.25  # a `context` slur does not count where its innocent languages are this likely
CONTEXT_INFLECTED_MIN = 0.25  # ...and a generated form of one only where its own language is this likely
PROFANITY_MIN = 0.15
ENGLISH_PROFANITY_MIN = 0.05  # English swearing turns up in every language's songs
_PROFANITY_ALIASES = {"russian": ("ukrainian", "belarusian"), "norwegian": ("danish", "swedish"),
                      "danish": ("norwegian",), "hindi": ("urdu",), "persian": ("urdu",)}


def _likely(term: Term, langs: dict[str, float]) -> bool:
    if term.category != "slur" and term.category != "profanity":
        return True
    if term.tier in ("core", "hate", "code"):
        return True
    if term.tier == "context":  # not where the field is likely in a language that uses the word innocently
        ordinary = sum(langs.get(lang, 0.0) for lang in term.innocent)
        own = max((langs.get(lang, 0.0) for lang in term.languages), default=0.0)
        if term.inflected and own < CONTEXT_INFLECTED_MIN:
            return False  # a generated form needs its own language to be likely: Czech negr -> Spanish negra
        return ordinary < CONTEXT_ORDINARY_MAX and own >= ordinary
    for lang in term.languages:
        p = langs.get(lang, 0.0) + sum(langs.get(a, 0.0) for a in _PROFANITY_ALIASES.get(lang, ()))
        if p >= (ENGLISH_PROFANITY_MIN if lang == "english" else PROFANITY_MIN):
            return True
    return False


def _hate_context(fields: list[tuple[str, str]], index: TermIndex, hits: list[Hit]) -> bool:
    if any(h.term.category == "slur" and h.term.tier != "code" for h in hits):
        return True
    for _, text in fields:
        norm = normalize(text)[0]
        words = set("".join(c if is_word_char(c) else " " for c in norm).split())
        if words & index.hate_context or any(w in norm for w in index.hate_context if not w.isalnum()):
            return True
    return False


def _reversed_field(text: str, index: TermIndex) -> list[Hit]:
    """Slurs in a field written backwards, when it reads as language only that way round."""
    back = text[::-1]
    hits = [h for h in find_terms(back, index) if h.term.category == "slur"]
    if not hits:
        return []
    gain = confidence(back) - confidence(text)  # `Im Regen` backwards has a slur: it does not read better so
    words = len(text.split())
    hits = [h for h in hits if gain >= -0.05 and h.term.tier in ("core", "hate") or gain >= 0.1 and words >= 2]
    n = len(text)
    return [Hit(h.term, n - h.end, n - h.start, text[n - h.end:n - h.start], "reversed-field") for h in hits]


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
    """Reports profanity, slurs, hate phrases and operator blocklist terms in a track's text fields."""

    name = "text"
    version = "2"
    kinds = frozenset({"text"})
    after_local = False

    def __init__(self, *, blocklist: TextBlocklist | None = None, languages: tuple[str, ...] | None = None,
                 builtin: bool = True):
        self.blocklist = blocklist
        # Built-in list hits carry no value; an operator entry carries the value it names.
        self.values: frozenset[str] = blocklist.values if blocklist else frozenset()
        self.index = builtin_index(languages) if builtin else TermIndex()

    def hits(self, fields: list[tuple[str, str]]) -> list[tuple[str, str, Hit, dict[str, float]]]:
        """(field, text, hit, field languages) for every term that counts in its field."""
        fields = [(name, text[:FIELD_MAX]) for name, text in fields]
        langs = field_languages(fields) if self.index else {}
        out = []
        for name, text in fields:
            lang = langs.get(name, {})
            found = find_terms(text, self.index, lambda t, lang=lang: _likely(t, lang)) if self.index else []
            if self.index and len(text) <= REVERSED_FIELD_MAX:
                found += _reversed_field(text, self.index)
            found += self.blocklist.find(text) if self.blocklist else []
            out += [(name, text, h, lang) for h in found]
        if any(h.term.tier == "code" for _, _, h, _ in out) and not _hate_context(fields, self.index, [o[2] for o in out]):
            out = [o for o in out if o[2].term.tier != "code"]
        return out

    def check(self, fields: list[tuple[str, str]]) -> list[Finding]:
        """Findings for (field, text) pairs: one per field and term, at most MAX_FINDINGS."""
        found: dict[tuple[str, str, str], tuple[Hit, int, str, dict[str, float]]] = {}
        for name, text, h, lang in self.hits(fields):
            key = (name, h.term.text, h.term.category)
            first, count, src, _ = found.get(key, (h, 0, text, lang))
            found[key] = (first, count + 1, src, lang)
        findings = []
        order = sorted(found.items(), key=lambda kv: (-SCORES[kv[1][0].term.category], -kv[1][0].term.severity[1]))
        for (name, _, category), (h, count, src, lang) in order[:MAX_FINDINGS]:
            evidence = {"field": name, "term": unicodedata.normalize("NFC", h.term.text), "matched": h.matched, "category": category,
                        "language": ",".join(h.term.languages) or None, "excerpt": _excerpt(src, h.start, h.end),
                        "count": count}
            if h.term.tier:
                evidence["tier"] = h.term.tier
            if h.how not in ("word", "plain"):
                evidence["how"] = h.how
            if lang:
                evidence["field_language"] = max(lang, key=lang.get)
            if h.term.note:
                evidence["note"] = h.term.note
            findings.append(Finding(self.name, "text", SCORES[category], evidence, h.term.value))
        return findings

    async def scan(self, track: Track, ctx: ScanContext) -> list[Finding]:
        return self.check(track_fields(track.record))
