"""A small validator of data against lexicon JSON files (tests/lexicons/), for the records we write.

It follows atproto.com/specs/lexicon for what our records use: `record`, `object` (required,
nullable, properties), `ref` (`#local`, `nsid#def`, `nsid` = main), `union` (by `$type`),
`array` (items, min/maxLength in items), `string` (min/maxLength in UTF-8 bytes, min/maxGraphemes,
enum, const, formats datetime, nsid, language, did, at-uri, cid, uri), `boolean`, `integer`.
Stricter than atproto where it helps catch our mistakes: with `closed=True`, `knownValues` are
treated as an enum (except in `OPEN_VALUES`: `com.atproto.label.defs#labelValue` lists the global
values, and a labeler's own values are rightly not among them) and properties the lexicon does
not declare are problems.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from firehose_mod.ingest.lexicon import grapheme_count
from firehose_mod.syntax import is_did, is_nsid

LEXICONS = Path(__file__).parent.parent / "lexicons"
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_LANGUAGE = re.compile(r"(?:[a-zA-Z]{2,3}|i|x)(?:-[a-zA-Z0-9]{1,8})*")
OPEN_VALUES = {"com.atproto.label.defs#labelValue"}


class Lexicons:
    def __init__(self, directory: Path = LEXICONS):
        self.docs = {}
        for path in directory.glob("*.json"):
            doc = json.loads(path.read_text())
            self.docs[doc["id"]] = doc

    def definition(self, ref: str, context: str) -> tuple[str, dict]:
        """(full name, def) for a ref written in lexicon `context`."""
        nsid, _, name = ref.partition("#")
        nsid = nsid or context
        if nsid not in self.docs:
            raise KeyError(f"lexicon {nsid} is not in {LEXICONS} (needed for {ref} in {context})")
        return f"{nsid}#{name or 'main'}", self.docs[nsid]["defs"][name or "main"]

    def validate_record(self, nsid: str, value: object, *, closed: bool = True) -> list[str]:
        _, main = self.definition(nsid, nsid)
        assert main["type"] == "record", f"{nsid} is not a record lexicon"
        out: list[str] = []
        if not isinstance(value, dict) or value.get("$type") != nsid:
            out.append(f"$type: expected {nsid!r}")
        self._check(main["record"], value, nsid, "", out, closed)
        return out

    # -- the walk --------------------------------------------------------------------------------
    def _check(self, schema: dict, value: object, ctx: str, at: str, out: list[str], closed: bool,
               defname: str = "") -> None:
        kind = schema["type"]
        where = at or "record"
        if kind == "ref":
            name, target = self.definition(schema["ref"], ctx)
            self._check(target, value, name.partition("#")[0], at, out, closed, name)
        elif kind == "union":
            if not isinstance(value, dict) or not isinstance(value.get("$type"), str):
                out.append(f"{where}: a union member needs $type")
                return
            refs = {self.definition(r, ctx)[0].removesuffix("#main"): r for r in schema["refs"]}
            if value["$type"] not in refs:
                if schema.get("closed") or closed:
                    out.append(f"{where}: $type {value['$type']!r} is not one of {sorted(refs)}")
                return
            name, target = self.definition(refs[value["$type"]], ctx)
            self._check(target, value, name.partition("#")[0], at, out, closed)
        elif kind in ("object", "record"):
            if not isinstance(value, dict):
                out.append(f"{where}: expected an object")
                return
            props = schema.get("properties", {})
            for key in schema.get("required", []):
                if key not in value:
                    out.append(f"{where}.{key}: required")
            nullable = set(schema.get("nullable", []))
            for key, item in value.items():
                if key == "$type":
                    continue
                if key not in props:
                    if closed:
                        out.append(f"{where}.{key}: not in the lexicon")
                    continue
                if item is None and key in nullable:
                    continue
                self._check(props[key], item, ctx, f"{at}.{key}" if at else key, out, closed)
        elif kind == "array":
            if not isinstance(value, list):
                out.append(f"{where}: expected an array")
                return
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                out.append(f"{where}: {len(value)} items > maxLength {schema['maxLength']}")
            if "minLength" in schema and len(value) < schema["minLength"]:
                out.append(f"{where}: {len(value)} items < minLength {schema['minLength']}")
            for i, item in enumerate(value):
                self._check(schema["items"], item, ctx, f"{where}[{i}]", out, closed)
        elif kind == "string":
            self._string(schema, value, where, out, closed and defname not in OPEN_VALUES)
        elif kind == "boolean":
            if not isinstance(value, bool):
                out.append(f"{where}: expected a boolean")
        elif kind == "integer":
            if not isinstance(value, int) or isinstance(value, bool):
                out.append(f"{where}: expected an integer")
            elif not schema.get("minimum", value) <= value <= schema.get("maximum", value):
                out.append(f"{where}: {value} out of range")
        else:
            out.append(f"{where}: lexicon type {kind!r} is not supported by this walker")

    def _string(self, schema: dict, value: object, where: str, out: list[str], closed: bool) -> None:
        if not isinstance(value, str):
            out.append(f"{where}: expected a string")
            return
        size, graphemes = len(value.encode()), grapheme_count(value)
        for key, got in (("Length", size), ("Graphemes", graphemes)):
            if f"max{key}" in schema and got > schema[f"max{key}"]:
                out.append(f"{where}: {got} > max{key} {schema[f'max{key}']}")
            if f"min{key}" in schema and got < schema[f"min{key}"]:
                out.append(f"{where}: {got} < min{key} {schema[f'min{key}']}")
        if "enum" in schema and value not in schema["enum"]:
            out.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if "const" in schema and value != schema["const"]:
            out.append(f"{where}: must be {schema['const']!r}")
        if closed and "knownValues" in schema and value not in schema["knownValues"]:
            out.append(f"{where}: {value!r} is not a known value")
        fmt = schema.get("format")
        ok = {"datetime": lambda v: _DATETIME.fullmatch(v) is not None, "nsid": is_nsid, "did": is_did,
              "language": lambda v: _LANGUAGE.fullmatch(v) is not None,
              "at-uri": lambda v: v.startswith("at://"), "uri": lambda v: ":" in v,
              "cid": lambda v: v.startswith("b") and len(v) > 8}.get(fmt, lambda v: True)
        if not ok(value):
            out.append(f"{where}: {value!r} is not a valid {fmt}")
