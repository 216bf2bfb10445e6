"""The operator's text blocklist: terms matched like the built-in lists, and regexes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from firehose_mod.scan.text.index import Hit, Term, TermIndex
from firehose_mod.scan.text.match import find_terms
from firehose_mod.scan.text.normalize import normalize

_LABEL_VALUE_RE = re.compile(r"^[a-z][a-z-]{0,127}$")


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
        terms = [t for _, t in self.regexes] + list(self.terms.terms())
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
            pattern, _, value = rest.rpartition(" -> ") if " -> " in rest else (rest, "", "")
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
        hits = find_terms(text, self.terms) if self.terms else []
        norm = normalize(text)[0]
        for rx, term in self.regexes:
            m = rx.search(text)
            if m is not None:
                hits.append(Hit(term, m.start(), m.end(), m.group(0)))
            elif (m := rx.search(norm)) is not None:
                hits.append(Hit(term, 0, len(text), m.group(0)))  # offsets in folded text differ: whole field
        return hits
