"""`find_terms`: every list term a text contains, with offsets in the original text.

A term is found as a whole word (never a substring of an ordinary word, so `Scunthorpe`,
`assassin` and `Dickens` stay clean) under each reading of the word (normalize.readings).
Letters spelt apart (`f u c k`, `n🔥i🔥g`) are joined. The riskier tricks are undone only for
slurs: the word read backwards and severe words inside a longer word (`#whitepower`,
`dirtykikes`, unless an allow-listed word contains them: `snigger`) only for the severe tiers
(`core`, `hate`); a word cut in two (`ret ard`) and CamelCase parts (`NoMoreSpics`) for any slur.
Scripts written without spaces are matched as substrings (terms of one or two characters only
as words of their own), minus an exception list of everyday words that contain list entries
(カントリー, 挿入歌).
"""

from __future__ import annotations

import bisect
import itertools
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import regex

from firehose_mod.scan.text.index import DELIBERATE, SEVERE, Hit, Term, TermIndex
from firehose_mod.scan.text.normalize import LEET, NOSPACE, is_word_char, normalize, readings


@dataclass(frozen=True, slots=True)
class _Token:
    start: int
    end: int
    text: str
    capitalised: bool
    camel: tuple[int, ...]  # offsets inside text where a CamelCase part starts
    disguised: bool  # written with characters nobody types by accident (ｆｕｌｌ-width, 𝐦𝐚𝐭𝐡, z̷a̷l̷g̷o̷, zero-width)
    original: str  # the characters as written


def _disguise_char(c: str) -> bool:
    o = ord(c)
    return (0xFF01 <= o <= 0xFF5E or 0x1D400 <= o <= 0x1D7FF or 0x1F100 <= o <= 0x1F1FF or 0x2460 <= o <= 0x24FF
            or 0x200B <= o <= 0x200D or o == 0x2060 or 0x0334 <= o <= 0x0338 or 0x0350 <= o <= 0x036F
            or 0x1AB0 <= o <= 0x1AFF or 0x20D0 <= o <= 0x20FF)


MAX_SPELT = 40  # letters: no term is longer, so a longer run is only searched for severe words
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}@$!+|€*]+")


def _tokens(text: str, norm: str, origin: list[int]) -> list[_Token]:
    tokens = []
    n = len(text)
    for m in _WORD.finditer(norm):
        start, i = m.span()
        a, b = origin[start], origin[i - 1] + 1
        while b < n and (unicodedata.category(text[b])[0] == "M" or text[b] in "\u200b\u200c\u200d"):
            b += 1  # marks after the last letter belong to the word
        span = text[a:b]
        camel: tuple[int, ...] = ()
        if not span.islower() and not span[1:].islower():
            camel = tuple(k - start for k in range(start + 1, i)
                          if text[origin[k]].isupper() and text[origin[k - 1]].islower())
        disguised = False
        if not span.isascii():
            marks = sum(1 for ch in span if unicodedata.category(ch) == "Mn")
            disguised = any(_disguise_char(ch) for ch in span) or marks > len(span) - marks
        tokens.append(_Token(start, i, norm[start:i], text[a].isupper(), camel, disguised, span))
    return tokens


Allowed = Callable[[Term], bool]


def _token_readings(t: _Token) -> list[tuple[str, str]]:
    return [(t.text, "word")] if t.text.isdigit() else readings(t.text, t.original)


def find_terms(text: str, index: TermIndex, allowed: Allowed | None = None) -> list[Hit]:
    """Every list term in `text` that `allowed` accepts, with original offsets, most severe per word."""
    norm, origin = normalize(text)
    if not norm:
        return []
    hits: list[Hit] = []

    def hit(cands: list[tuple[Term, str]], a: int, b: int) -> bool:
        cands = [(t, how) for t, how in cands
                 if allowed is None or allowed(t) or (how in DELIBERATE and t.category == "slur")]
        if not cands:
            return False
        merged: dict[tuple[str, str, str], tuple[Term, str]] = {}
        for t, how in cands:  # one word in several lists: one term, all its languages
            key = (t.text, t.category, t.tier)
            if key in merged:
                old = merged[key][0]
                t = Term(t.text, t.category, tuple(dict.fromkeys(old.languages + t.languages)), old.value or t.value,
                         old.note or t.note, t.tier, tuple(dict.fromkeys(old.innocent + t.innocent)),
                         old.inflected and t.inflected)
                how = merged[key][1]
            merged[key] = (t, how)
        term, how = max(merged.values(), key=lambda c: (c[0].severity[:2], len(c[0].languages), c[0].severity[2]))
        s, e = origin[a], origin[b - 1] + 1
        hits.append(Hit(term, s, e, text[s:e], how))
        return True

    tokens = _tokens(text, norm, origin)
    forms = [_token_readings(t) for t in tokens]
    masked = _allowed_phrase_tokens(tokens, forms, index)
    rx = index.compound_rx()
    starts = [t.start for t in tokens]
    inside = {bisect.bisect_right(starts, m.start()) - 1 for m in rx.finditer(norm)} if rx is not None else set()
    for k, (t, rs) in enumerate(zip(tokens, forms)):
        if k in masked or t.text in index.allow_words:
            continue
        near = [tokens[j] for j in (k - 1, k + 1) if 0 <= j < len(tokens)]
        cands = _word_candidates(t, rs, index, near)
        if hit(cands, t.start, t.end):
            continue
        severe = _severe_inside(t, rs, index, k in inside)
        if severe:
            hit(severe, t.start, t.end)
    _split_words(tokens, masked, index, hit)
    _phrases(tokens, forms, masked, index, hit)
    if index.substrings and NOSPACE.search(norm):
        _substrings(norm, index, hit)
    return hits


def _letter_at(plain: str, i: int) -> bool:
    return 0 <= i < len(plain) and bool(NOSPACE.match(plain[i]) or unicodedata.category(plain[i])[0] == "M")


def _substrings(norm: str, index: TermIndex, hit) -> None:
    """Terms of scripts written without spaces. A term of one or two characters (`日你`, `グロ`,
    Thai `กู`) is part of too many everyday words (`今日你好`, `グローバル`, `กู้`): it counts only
    as a word of its own, and in Korean, which spaces its words, at the start of one."""
    plain = norm
    for word in index.allow_substrings:
        plain = plain.replace(word, " " * len(word))
    kept = [i for i, c in enumerate(plain) if is_word_char(c)]  # `짱 깨`, `짱💀깨`: separators dropped
    compact = "".join(plain[i] for i in kept)
    for sub, terms in index.substrings.items():
        at = compact.find(sub)
        while at >= 0:
            a, b = kept[at], kept[at + len(sub) - 1] + 1
            short = len(unicodedata.normalize("NFC", sub)) <= 2
            korean = "\u1100" <= sub[0] <= "\u11ff"
            severe = any(t.tier in SEVERE for t in terms)  # 黑鬼 has no innocent reading to protect
            if severe or not short or not _letter_at(plain, a - 1) and (korean or not _letter_at(plain, b)):
                hit([(t, "substring") for t in terms], a, b)
                break
            at = compact.find(sub, at + 1)


def _word_candidates(t: _Token, rs: list[tuple[str, str]], index: TermIndex, near: list[_Token]) -> list[tuple[Term, str]]:
    look_alike_only = not any("a" <= c <= "z" for c in t.text)
    name = t.capitalised and t.text in index.names and any(n.capitalised for n in near)
    cands = []
    for r, how in rs:
        for term in index.word(r) or (index.word(r[:-1]) if len(r) >= 4 and r.endswith("s") and r.isascii() else []):
            if how == "skeleton" and look_alike_only and term.category != "slur":
                continue  # an all-Cyrillic or all-Greek word that reads as English profanity: an ordinary word
            if name and term.category == "profanity":
                continue  # `Dick Van Dyke`, `Fanny Brice`: a given name before a surname
            cands.append((term, "disguised" if t.disguised and how == "plain" else how))
    return cands


def _severe_inside(t: _Token, rs: list[tuple[str, str]], index: TermIndex, plain_inside: bool) -> list[tuple[Term, str]]:
    """Severe terms read backwards, in CamelCase parts, or inside a compound or hashtag."""
    out = []
    for r, _ in rs:
        out += [(term, "reversed") for term in index.word(r[::-1]) if term.tier in SEVERE and len(r) >= 4]
    if t.camel:  # word boundaries the writer marked: every part is a word, in the field's language
        bounds = (0, *t.camel, len(t.text))
        for a, b in itertools.pairwise(bounds):
            part = t.text[a:b].translate(LEET)
            out += [(term, "camel") for term in index.word(part) or index.word(part[:-1]) if term.category != "profanity"]
    rx = index.compound_rx()
    if rx is not None and len(t.text) >= 6 and not out:
        for r, how in rs:
            if how == "plain" and not plain_inside:
                continue  # the whole text was searched once (find_terms)
            for m in rx.finditer(r):
                if not any(w in r and _covers(r, w, m.start(), m.end()) for w in index.allow_words if len(w) > len(m.group())):
                    out += [(term, "compound") for term in index.compounds[m.group()]]
    return out


def _covers(text: str, word: str, a: int, b: int) -> bool:
    at = text.find(word)
    while at >= 0:
        if at <= a and b <= at + len(word):
            return True
        at = text.find(word, at + 1)
    return False


def _allowed_phrase_tokens(tokens: list[_Token], forms, index: TermIndex) -> set[int]:
    masked: set[int] = set()
    if not index.allow_phrases:
        return masked
    starts = {p.split(" ", 1)[0] for p in index.allow_phrases}
    for k in range(len(tokens) - 1):
        if tokens[k].text in starts:
            for n in (2, 3):
                if " ".join(t.text for t in tokens[k:k + n]) in index.allow_phrases:
                    masked.update(range(k, k + n))
    return masked


def _split_words(tokens: list[_Token], masked: set[int], index: TermIndex, hit) -> None:
    """Letters spelt apart (`f u c k`, `n🔥i🔥g🔥g🔥a`) and severe words cut in two (`fag got`)."""
    i = 0
    while i < len(tokens):
        j = i
        while (j + 1 < len(tokens) and len(tokens[j].text) == 1 and len(tokens[j + 1].text) == 1
               and tokens[j + 1].start - tokens[j].end <= 4):
            j += 1
        tail = j + 1 < len(tokens) and len(tokens[j + 1].text) <= 3 and tokens[j + 1].start - tokens[j].end <= 4
        if (j - i >= 2 or j - i >= 1 and tail) and not masked.intersection(range(i, j + 1)):
            _spelt_apart(tokens, i, j, tail, index, hit)
        i = j + 1
    prefixes = index.slur_prefixes()
    for k in range(len(tokens) - 1):
        a, b = tokens[k], tokens[k + 1]
        if (b.start - a.end <= 3 and len(a.text) + len(b.text) >= 4 and k not in masked
                and (a.text in prefixes or a.text.translate(LEET) in prefixes)):
            joined = (a.text + b.text).translate(LEET)
            # severe words cut anywhere (`ki ke`); other slurs only when both halves are not words (`ret ard`)
            too_short = len(a.text) < 2 or len(b.text) < 2 or len(joined) < 5  # `co on`, `dy ke`: real words
            cut = [(t, "split") for r, _ in readings(joined) for t in index.word(r)
                   if t.tier in SEVERE or t.category == "slur" and not too_short]
            if cut and not {a.text, b.text} & index.allow_words:
                hit(cut, a.start, b.end)


def _spelt_apart(tokens: list[_Token], i: int, j: int, tail: bool, index: TermIndex, hit) -> None:
    """Letters i..j, one per token (and a short ending after them), read as one word."""
    if j - i < MAX_SPELT:
        ends = [j + 1, j] if tail else [j]  # `🇳 🇮 🇬 🇬 🇪 🇷s`, `s-p-i-cs`: a plural ending after the letters
        for a, b in [(a, b) for b in ends for a in (i, i + 1, i + 2)] + [(i, j - 1), (i, j - 2)]:  # `a f a g g o t`
            joined = "".join(tokens[k].text for k in range(a, b + 1))
            rs = readings(joined) + [(joined.translate(LEET), "leet")]
            if (b - a >= 2 or b - a >= 1 and len(joined) >= 4) and hit(
                    [(t, "split") for r, _ in rs for t in index.word(r)], tokens[a].start, tokens[b].end):
                return
    rx = index.compound_rx()  # a severe word inside a longer run: `x y n i g g e r s z`
    if rx is not None and j - i >= 4:
        joined = "".join(tokens[k].text for k in range(i, j + 1)).translate(LEET)
        for m in rx.finditer(joined):
            hit([(t, "split") for t in index.compounds[m.group()]], tokens[i + m.start()].start,
                tokens[i + m.end() - 1].end)


def _phrases(tokens: list[_Token], forms, masked: set[int], index: TermIndex, hit) -> None:
    if not index.phrases:
        return
    best = [rs[-1][0] if rs else "" for rs in forms]
    starts = index.phrase_starts()
    for k in range(len(tokens) - 1):
        if best[k] not in starts and tokens[k].text not in starts:
            continue
        for n in range(2, min(index.max_phrase, len(tokens) - k) + 1):
            if masked.intersection(range(k, k + n)):
                continue
            for key in {" ".join(best[k:k + n]), " ".join(t.text for t in tokens[k:k + n])}:
                terms = index.phrases.get(key)
                if terms and hit([(t, "phrase") for t in terms], tokens[k].start, tokens[k + n - 1].end):
                    break
