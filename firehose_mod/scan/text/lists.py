"""The built-in lists: glin-profanity's dictionaries adjusted by wordlists/ (see its README).

Slurs carry a tier: `core` ones count in any language, `context` ones only where the field's
language makes them slurs (`retard` is French for late, `negre` Catalan for black). Each slur's
inflected and plural forms are generated from its language's common endings; `hate` phrases
count anywhere, and numeric `code`s (88, 1488) only next to other hate (scanner.py).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Iterable
from functools import lru_cache

from firehose_mod.scan.text.index import Term, TermIndex
from firehose_mod.scan.text.normalize import LEET, is_latin, normalize

# Endings added to a slur, and to its stem without a final vowel, to find plurals and cases.
# Kept to endings that do not turn a slur into an everyday word (English -y: spic -> spicy;
# Portuguese a -> o: bicha -> bicho, "animal").
INFLECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # language: (on the word, on the stem)
    "english": (("s", "z"), ()),
    "german": (("e", "en", "n", "s", "in", "innen", "es"), ()),
    "dutch": (("s", "e"), ()),  # not -en: flikkeren is an everyday verb
    "french": (("s", "e", "es", "x"), ()),
    "spanish": (("s", "es"), ()),
    "portuguese": (("s", "inho", "zinho"), ()),
    "italian": ((), ("i", "e")),
    "polish": (("a", "y", "i", "e", "em", "u", "ów", "om", "ami", "ach"), ("y", "i")),
    "czech": (("a", "y", "i", "e", "em", "u", "ů", "ům"), ()),
    "russian": (("а", "у", "ом", "е", "ы", "и", "ов", "ам", "ами", "ах"), ("и", "ы", "у", "е", "ой", "ам", "ами", "ах")),
    "swedish": (("ar", "en", "arna", "n", "na"), ()),
    "turkish": (("ler", "lar", "in", "ın", "e", "a", "i", "ı"), ()),
}
_VOWELS = frozenset("aeiouyаеёиоуыэюяь")


def inflect(term: str, language: str) -> list[str]:
    """`term` and its generated forms in `language` (one-word terms only)."""
    if " " in term or not term.isalpha():
        return [term]
    on_word, on_stem = INFLECTIONS.get(language, ((), ()))
    forms = [term] + [term + e for e in on_word]
    if term[-1] in _VOWELS and len(term) > 3 and on_stem:
        stem = term[:-1]
        forms += [stem + e for e in on_stem] + ([stem] if stem[-1] in _VOWELS else [])  # frocio -> froci
    return list(dict.fromkeys(normalize(f)[0] for f in forms))


def wordlist(name: str, fields: int = 2) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of one file in wordlists/, comments and blank lines skipped."""
    text = importlib.resources.files("firehose_mod.scan").joinpath("wordlists", name).read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield n, line.split(None, fields - 1)


def _norm(text: str) -> str:
    return " ".join(normalize(text)[0].split())


@lru_cache(maxsize=8)
def builtin_index(languages: tuple[str, ...] | None = None) -> TermIndex:
    """The built-in lists for `languages` (glin-profanity names; None: all of them)."""
    from glin_profanity.data.dictionary import DictionaryLoader  # 24 languages of lists: loaded on first use

    loader = DictionaryLoader()
    wanted = languages or tuple(loader.available_languages)
    unknown = set(wanted) - set(loader.available_languages)
    if unknown:
        raise ValueError(f"unknown text languages {sorted(unknown)}; available: {', '.join(loader.available_languages)}")
    ignore = {_norm(parts[0]) for _, parts in wordlist("ignore.txt", 1)}
    keep_short = {_norm(parts[1]) for _, parts in wordlist("keep_short.txt")}
    index = TermIndex()
    slur_words: set[str] = set()
    for _, (tier, language, spec) in wordlist("slurs.txt", 3):
        spec, _, innocent = spec.partition(" !")
        forms = [_norm(f) for f in spec.split("|")]
        term = Term(forms[0], "slur", (language,), tier=tier, innocent=tuple(innocent.split(",")) if innocent else ())
        generated = dataclasses.replace(term, inflected=True)
        for f in dict.fromkeys(forms + inflect(forms[0], language)):
            index.add(term if f in forms else generated, f)
            slur_words.add(f)
    for _, (tier, language, phrase) in wordlist("hate.txt", 3):
        if tier == "context":
            index.hate_context.add(_norm(phrase))
        else:
            index.add(Term(_norm(phrase), "slur", (language,), tier=tier))
    for language in wanted:
        for raw in loader.get_words(language):
            norm = _norm(raw)
            if not norm or norm in ignore or norm in slur_words:
                continue
            if " " not in norm and is_latin(norm.translate(LEET)) and len(norm) < 4 and norm not in keep_short:
                continue  # short Latin words collide with ordinary words of other languages
            index.add(Term(norm, "profanity", (language,)))
    for _, (language, term) in wordlist("profanity_extra.txt"):
        if language in wanted:
            index.add(Term(_norm(term), "profanity", (language,)))
    for _, (kind, rest) in wordlist("allow.txt"):
        text = _norm(rest)
        {"word": index.allow_words, "phrase": index.allow_phrases, "name": index.names,
         "substring": index.allow_substrings}[kind].add(text)
    return index
