"""The labeler's public declaration: the `app.bsky.labeler.service` record and the DID document.

Pure functions. `load_declaration` reads what we declare (the built-in `DEFAULT_DECLARATION`, or
`[labeler] declaration_file`); `build_record` turns it into the record (rkey `self`);
`record_problems` and `sdk_problems` check a record against the lexicon, by our reading and by
the atproto SDK's generated models; `diff_records` shows what publishing would change;
`check_did_document` says what the DID document lacks for clients to use this labeler, and
`document_fix` the exact change that fixes it.

The lexicon facts, from github.com/bluesky-social/atproto `lexicons/` (copied in tests/lexicons/):

- `app/bsky/labeler/service.json`: a record, key `literal:self`; required `policies`
  (`app.bsky.labeler.defs#labelerPolicies`) and `createdAt` (datetime); optional `labels`
  (self-labels), `reasonTypes` (`com.atproto.moderation.defs#reasonType`[]: absent = every reason,
  [] = none), `subjectTypes` (`#subjectType`[]) and `subjectCollections` (nsid[]: absent = any).
- `app/bsky/labeler/defs.json#labelerPolicies`: required `labelValues` (every value we publish,
  global or our own), optional `labelValueDefinitions` (our own values, scoped to this labeler).
- `com/atproto/label/defs.json#labelValueDefinition`: required `identifier` ([a-z-]+, at most
  100), `severity` (inform | alert | none), `blurs` (content | media | none), `locales`; optional
  `defaultSetting` (ignore | warn | hide, default warn) and `adultOnly`. `#labelValueDefinitionStrings`:
  `lang` (language), `name` (64 graphemes, 640 bytes), `description` (10000 graphemes, 100000 bytes).
  `#labelValue` knownValues: !hide, !warn, !no-unauthenticated, porn, sexual, nudity,
  graphic-media, bot (Bluesky's global values: their look and the adult-content switch are the
  app's own, so we list them and do not redefine them).
- `com/atproto/moderation/defs.json`: `#reasonType` knownValues (the legacy reasons, `#reasonAppeal`,
  and `tools.ozone.report.defs#reason*`); `#subjectType` knownValues account, record, chat.

The lexicon's `knownValues` are open sets; we accept only the known ones, since a client does
nothing sensible with others.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firehose_mod.ingest.lexicon import string_problems
from firehose_mod.syntax import is_nsid

COLLECTION = "app.bsky.labeler.service"
RKEY = "self"

SEVERITIES = ("inform", "alert", "none")
BLURS = ("content", "media", "none")
DEFAULT_SETTINGS = ("ignore", "warn", "hide")
SUBJECT_TYPES = ("account", "record", "chat")
# com.atproto.label.defs#labelValue knownValues.
GLOBAL_VALUES = ("!hide", "!warn", "!no-unauthenticated", "porn", "sexual", "nudity", "graphic-media", "bot")
_OZONE_REASONS = (
    "Appeal Other ViolenceAnimal ViolenceThreats ViolenceGraphicContent ViolenceGlorification"
    " ViolenceExtremistContent ViolenceTrafficking ViolenceOther SexualAbuseContent SexualNCII SexualDeepfake"
    " SexualAnimal SexualUnlabeled SexualOther ChildSafetyCSAM ChildSafetyGroom ChildSafetyPrivacy"
    " ChildSafetyHarassment ChildSafetyOther HarassmentTroll HarassmentTargeted HarassmentHateSpeech"
    " HarassmentDoxxing HarassmentOther MisleadingBot MisleadingImpersonation MisleadingSpam MisleadingScam"
    " MisleadingElections MisleadingOther RuleSiteSecurity RuleProhibitedSales RuleBanEvasion RuleOther"
    " SelfHarmContent SelfHarmED SelfHarmStunts SelfHarmSubstances SelfHarmOther"
).split()
# com.atproto.moderation.defs#reasonType knownValues, in the lexicon's order.
REASON_TYPES = tuple(
    [f"com.atproto.moderation.defs#reason{r}" for r in ("Spam", "Violation", "Misleading", "Sexual", "Rude",
                                                         "Other", "Appeal")]
    + [f"tools.ozone.report.defs#reason{r}" for r in _OZONE_REASONS]
)
# The identifier's own rule ([a-z-]+), which is also the test @atproto/api applies before it looks a
# value up among a labeler's definitions (CUSTOM_LABEL_VALUE_RE): a digit makes a value unusable.
_IDENTIFIER = re.compile(r"[a-z-]+")
_LABEL_VALUE = re.compile(r"!?[a-z][a-z0-9-]*")
_LANGUAGE = re.compile(r"(?:[a-zA-Z]{2,3}|i|x)(?:-[a-zA-Z0-9]{1,8})*")  # format: language (BCP 47, loosely)
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
# Fields of the record `build_record` writes; any other top-level field of the published record
# (such as `labels`, the declaration's self-labels) is carried over as it is.
MANAGED_FIELDS = ("$type", "policies", "reasonTypes", "subjectTypes", "subjectCollections", "createdAt")

DEFAULT_DECLARATION = """
# What firehose-mod declares in the labeler account's app.bsky.labeler.service record (rkey self).
# `firehose-mod declare` shows how the published record differs; `declare --apply` publishes this.

# Bluesky's global values we may apply (cover art): listed so clients know to expect them. Their
# look and the adult-content switch are the apps' own, so they get no definition here.
global_values = ["porn", "sexual", "nudity", "graphic-media", "!warn", "!hide"]

# Report reasons this labeler reviews (com.atproto.moderation.defs#reasonType; absent = every
# reason, [] = none): copyright and other violations, unlabelled adult covers, offensive text,
# appeals of our labels. The legacy reasons and tools.ozone.report.defs' newer ones both.
reason_types = [
  "com.atproto.moderation.defs#reasonViolation",
  "com.atproto.moderation.defs#reasonSexual",
  "com.atproto.moderation.defs#reasonRude",
  "com.atproto.moderation.defs#reasonOther",
  "com.atproto.moderation.defs#reasonAppeal",
  "tools.ozone.report.defs#reasonRuleOther",
  "tools.ozone.report.defs#reasonSexualUnlabeled",
  "tools.ozone.report.defs#reasonHarassmentHateSpeech",
  "tools.ozone.report.defs#reasonOther",
  "tools.ozone.report.defs#reasonAppeal",
]
# What may be reported to us: plyr.fm tracks (records) and their uploaders (accounts).
subject_types = ["record", "account"]
subject_collections = ["fm.plyr.track"]

# Our own values. severity: inform | alert | none; blurs: content | media | none;
# default_setting: ignore | warn | hide; locales: one table per language.
[[labels]]
identifier = "copyright-violation"
severity = "alert"
blurs = "content"
default_setting = "warn"
adult_only = false
locales = [
  { lang = "en", name = "Copyright violation", description = "This track matches a recording in a rights holder's catalogue for 30 seconds or more, or a moderator found that it infringes copyright. If you hold the rights or a licence, appeal the label." },
]

[[labels]]
identifier = "offensive-text"
severity = "alert"
blurs = "none"
default_setting = "warn"
adult_only = false
locales = [
  { lang = "en", name = "Offensive text", description = "A moderator found slurs or hateful words in this track's title, artist, album or description." },
]
"""


class DeclarationError(ValueError):
    """The declaration cannot be built; the message names the entry and the fix."""


@dataclass(frozen=True)
class Locale:
    lang: str
    name: str
    description: str


@dataclass(frozen=True)
class LabelDefinition:
    identifier: str
    severity: str
    blurs: str
    default_setting: str
    adult_only: bool
    locales: tuple[Locale, ...]


@dataclass(frozen=True)
class Declaration:
    definitions: tuple[LabelDefinition, ...]
    global_values: tuple[str, ...]
    reason_types: tuple[str, ...] | None  # None: the field is left out (every reason accepted)
    subject_types: tuple[str, ...] | None
    subject_collections: tuple[str, ...] | None
    source: str = "default"

    @property
    def label_values(self) -> list[str]:
        """`policies.labelValues`: our own values, then the global ones."""
        return [d.identifier for d in self.definitions] + list(self.global_values)


# -- reading the declaration -------------------------------------------------------------------

def parse_declaration(text: str, source: str = "default") -> Declaration:
    """The declaration in TOML `text`; raises DeclarationError naming `source` and the entry."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(f"{source}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"global_values", "reason_types", "subject_types", "subject_collections", "labels"}
    if unknown:
        raise DeclarationError(f"{source}: unknown key(s) {sorted(unknown)}; expected global_values, reason_types,"
                               " subject_types, subject_collections and [[labels]]")
    definitions = tuple(_definition(d, f"{source}: [[labels]] {i}") for i, d in enumerate(doc.get("labels", []), 1))
    global_values = _strings(doc.get("global_values", []), f"{source}: global_values")
    for value in global_values:
        if value not in GLOBAL_VALUES:
            raise DeclarationError(f"{source}: global_values: {value!r} is not one of Bluesky's global values"
                                   f" ({', '.join(GLOBAL_VALUES)}); define our own values as [[labels]]")
    decl = Declaration(
        definitions, global_values,
        _optional(doc, "reason_types", REASON_TYPES, source),
        _optional(doc, "subject_types", SUBJECT_TYPES, source),
        None if "subject_collections" not in doc else _strings(doc["subject_collections"],
                                                                 f"{source}: subject_collections"),
        source,
    )
    for nsid in decl.subject_collections or ():
        if not is_nsid(nsid):
            raise DeclarationError(f"{source}: subject_collections: {nsid!r} is not an NSID (e.g. fm.plyr.track)")
    values = decl.label_values
    if not values:
        raise DeclarationError(f"{source}: declares no label values: add [[labels]] or global_values")
    if dupes := sorted({v for v in values if values.count(v) > 1}):
        raise DeclarationError(f"{source}: {dupes[0]!r} is declared twice (a global value is listed, not defined)")
    return decl


def load_declaration(path: Path | None) -> Declaration:
    """The declaration in `path`, or the built-in default."""
    if path is None:
        return parse_declaration(DEFAULT_DECLARATION)
    try:
        return parse_declaration(path.read_text(), str(path))
    except OSError as exc:
        raise DeclarationError(f"cannot read declaration file {path}: {exc.strerror}") from exc


def _strings(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise DeclarationError(f"{where}: expected a list of strings")
    return tuple(raw)


def _optional(doc: dict, key: str, known: tuple[str, ...], source: str) -> tuple[str, ...] | None:
    if key not in doc:
        return None
    values = _strings(doc[key], f"{source}: {key}")
    for value in values:
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known[:8])}, ..."
            raise DeclarationError(f"{source}: {key}: unknown value {value!r}; {hint}")
    return values


def _definition(raw: object, where: str) -> LabelDefinition:
    if not isinstance(raw, dict):
        raise DeclarationError(f"{where}: expected a table")
    unknown = set(raw) - {"identifier", "severity", "blurs", "default_setting", "adult_only", "locales"}
    if unknown:
        raise DeclarationError(f"{where}: unknown field(s) {sorted(unknown)}")
    identifier = raw.get("identifier")
    if not isinstance(identifier, str) or not _IDENTIFIER.fullmatch(identifier) or len(identifier) > 100:
        raise DeclarationError(f"{where}: identifier {identifier!r} must be 1-100 lowercase letters a-z and '-'"
                               " (clients ignore a defined value with digits or other characters)")
    where = f"{where} ({identifier})"
    choices = {"severity": SEVERITIES, "blurs": BLURS, "default_setting": DEFAULT_SETTINGS}
    picked = {}
    for key, allowed in choices.items():
        value = raw.get(key, "warn" if key == "default_setting" else None)
        if value not in allowed:
            raise DeclarationError(f"{where}: {key} {value!r}: use one of {', '.join(allowed)}")
        picked[key] = value
    adult_only = raw.get("adult_only", False)
    if not isinstance(adult_only, bool):
        raise DeclarationError(f"{where}: adult_only must be true or false")
    locales_raw = raw.get("locales")
    if not isinstance(locales_raw, list) or not locales_raw:
        raise DeclarationError(f"{where}: needs locales = [{{ lang = \"en\", name = \"...\", description = \"...\" }}]")
    locales = []
    for loc in locales_raw:
        if not isinstance(loc, dict) or set(loc) != {"lang", "name", "description"}:
            raise DeclarationError(f"{where}: each locale is {{ lang, name, description }}, got {loc!r}"[:300])
        problems = _locale_problems(loc, "locale")
        if problems:
            raise DeclarationError(f"{where}: {problems[0]}")
        locales.append(Locale(loc["lang"], loc["name"], loc["description"]))
    langs = [loc.lang for loc in locales]
    if len(set(langs)) != len(langs):
        raise DeclarationError(f"{where}: a language appears twice in locales")
    return LabelDefinition(identifier, picked["severity"], picked["blurs"], picked["default_setting"], adult_only,
                           tuple(locales))


# -- the record --------------------------------------------------------------------------------

def build_record(decl: Declaration, created_at: str, keep: dict | None = None) -> dict:
    """The app.bsky.labeler.service record for `decl`. `keep`: the published record, whose
    fields we do not manage (e.g. `labels`) are carried over unchanged."""
    record: dict[str, Any] = {"$type": COLLECTION}
    policies: dict[str, Any] = {"labelValues": decl.label_values}
    if decl.definitions:
        policies["labelValueDefinitions"] = [
            {"identifier": d.identifier, "severity": d.severity, "blurs": d.blurs,
             "defaultSetting": d.default_setting, "adultOnly": d.adult_only,
             "locales": [{"lang": loc.lang, "name": loc.name, "description": loc.description} for loc in d.locales]}
            for d in decl.definitions
        ]
    record["policies"] = policies
    for key, value in (("reasonTypes", decl.reason_types), ("subjectTypes", decl.subject_types),
                       ("subjectCollections", decl.subject_collections)):
        if value is not None:
            record[key] = list(value)
    record["createdAt"] = created_at
    for key, value in (keep or {}).items():
        if key not in MANAGED_FIELDS:
            record[key] = copy.deepcopy(value)
    return record


def record_problems(record: object) -> list[str]:
    """The record's problems against the lexicon, as we read it (known values only); [] = valid."""
    if not isinstance(record, dict):
        return ["the record is not an object"]
    out: list[str] = []
    if record.get("$type") != COLLECTION:
        out.append(f"$type: expected {COLLECTION!r}")
    created = record.get("createdAt")
    if not isinstance(created, str) or not _DATETIME.fullmatch(created):
        out.append(f"createdAt: {created!r} is not an RFC 3339 datetime")
    policies = record.get("policies")
    if not isinstance(policies, dict):
        return out + ["policies: required object"]
    values = policies.get("labelValues")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        out.append("policies.labelValues: required list of strings")
        values = []
    for v in values:
        if not _LABEL_VALUE.fullmatch(v) or len(v) > 128:
            out.append(f"policies.labelValues: {v!r} is not a label value (lowercase a-z, 0-9, '-'; at most 128)")
    defs = policies.get("labelValueDefinitions", [])
    if not isinstance(defs, list):
        out.append("policies.labelValueDefinitions: expected a list")
        defs = []
    for i, d in enumerate(defs):
        where = f"policies.labelValueDefinitions[{i}]"
        if not isinstance(d, dict):
            out.append(f"{where}: expected an object")
            continue
        for key in ("identifier", "severity", "blurs", "locales"):
            if key not in d:
                out.append(f"{where}.{key}: required")
        ident = d.get("identifier")
        if "identifier" in d:
            out += string_problems(f"{where}.identifier", ident, max_length=100, max_graphemes=100)
            if isinstance(ident, str) and not _IDENTIFIER.fullmatch(ident):
                out.append(f"{where}.identifier: {ident!r} is not [a-z-]+")
            if ident not in values:
                out.append(f"{where}.identifier: {ident!r} is defined but not in policies.labelValues")
        for key, allowed in (("severity", SEVERITIES), ("blurs", BLURS), ("defaultSetting", DEFAULT_SETTINGS)):
            if key in d and d[key] not in allowed:
                out.append(f"{where}.{key}: {d[key]!r} is not one of {', '.join(allowed)}")
        if "adultOnly" in d and not isinstance(d["adultOnly"], bool):
            out.append(f"{where}.adultOnly: expected a boolean")
        locales = d.get("locales", [])
        if not isinstance(locales, list):
            out.append(f"{where}.locales: expected a list")
            continue
        for j, loc in enumerate(locales):
            out += _locale_problems(loc, f"{where}.locales[{j}]")
    for key, known in (("reasonTypes", REASON_TYPES), ("subjectTypes", SUBJECT_TYPES)):
        if key in record:
            items = record[key]
            if not isinstance(items, list):
                out.append(f"{key}: expected a list")
                continue
            out += [f"{key}: unknown value {v!r}" for v in items if v not in known]
    if "subjectCollections" in record:
        items = record["subjectCollections"]
        if not isinstance(items, list):
            out.append("subjectCollections: expected a list")
        else:
            out += [f"subjectCollections: {v!r} is not an NSID" for v in items if not is_nsid(v)]
    return out


def _locale_problems(loc: object, where: str) -> list[str]:
    if not isinstance(loc, dict):
        return [f"{where}: expected an object"]
    out = [f"{where}.{key}: required" for key in ("lang", "name", "description") if key not in loc]
    if "lang" in loc and (not isinstance(loc["lang"], str) or not _LANGUAGE.fullmatch(loc["lang"])):
        out.append(f"{where}.lang: {loc['lang']!r} is not a language tag (e.g. en, pt-BR)")
    if "name" in loc:
        out += string_problems(f"{where}.name", loc["name"], min_length=1, max_length=640, max_graphemes=64)
    if "description" in loc:
        out += string_problems(f"{where}.description", loc["description"], min_length=1, max_length=100000,
                               max_graphemes=10000)
    return out


def sdk_problems(record: dict) -> list[str]:
    """The record checked by the atproto SDK's generated model of the lexicon; [] = it accepts it."""
    from atproto_client import models
    from atproto_client.exceptions import ModelError
    from atproto_client.models.utils import get_or_create

    try:
        get_or_create(record, models.AppBskyLabelerService.Record, strict=True, strict_string_format=True)
    except (ModelError, ValueError) as exc:
        return [f"atproto SDK: {' '.join(str(exc).split())[:500]}"]
    return []


# -- comparing records -------------------------------------------------------------------------

_NESTED_TYPES = {"policies": "app.bsky.labeler.defs#labelerPolicies",
                 "definition": "com.atproto.label.defs#labelValueDefinition",
                 "locale": "com.atproto.label.defs#labelValueDefinitionStrings"}


def normalise(record: dict | None) -> dict | None:
    """`record` without the `$type` a writer may put on nested objects that are no union (the
    atproto SDK's typed models add them): they say nothing the lexicon does not."""
    if record is None:
        return None
    out = copy.deepcopy(record)

    def drop(obj: object, expected: str) -> None:
        if isinstance(obj, dict) and obj.get("$type") == expected:
            del obj["$type"]

    policies = out.get("policies")
    drop(policies, _NESTED_TYPES["policies"])
    if isinstance(policies, dict) and isinstance(policies.get("labelValueDefinitions"), list):
        for d in policies["labelValueDefinitions"]:
            drop(d, _NESTED_TYPES["definition"])
            if isinstance(d, dict) and isinstance(d.get("locales"), list):
                for loc in d["locales"]:
                    drop(loc, _NESTED_TYPES["locale"])
    return out


def canonical(record: dict | None) -> str:
    """Sorted-key, indented JSON of the normalised record ('' for none): stable lines to diff."""
    if record is None:
        return ""
    return json.dumps(normalise(record), sort_keys=True, indent=2, ensure_ascii=False)


def same_record(published: dict | None, declared: dict) -> bool:
    return published is not None and normalise(published) == normalise(declared)


def diff_records(published: dict | None, declared: dict) -> list[str]:
    """A unified diff, published -> declared, of the canonical JSON; [] when they are the same."""
    if same_record(published, declared):
        return []
    return list(difflib.unified_diff(canonical(published).splitlines(), canonical(declared).splitlines(),
                                     "published" if published is not None else "published (none)", "declared",
                                     lineterm="", n=3))


# -- the DID document --------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    code: str  # label-key-missing | label-key-mismatch | labeler-service-missing | labeler-service-type
    #            | labeler-endpoint-mismatch | public-url-unset | document-invalid
    message: str
    fix: str

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message, "fix": self.fix}


def _entries(doc: dict, field: str, fragment: str) -> list[dict]:
    items = doc.get(field)
    return [e for e in (items if isinstance(items, list) else [])
            if isinstance(e, dict) and isinstance(e.get("id"), str) and e["id"].endswith("#" + fragment)]


def _same_key(published: object, did_key: str) -> bool:
    from firehose_mod.labels.signing import parse_did_key, public_did_key

    if not isinstance(published, str):
        return False
    try:
        curve, public = parse_did_key(published)
        return public_did_key(curve, public) == did_key
    except Exception:  # noqa: BLE001 (a key that does not parse is not ours)
        return False


def check_did_document(doc: object, did: str, did_key: str, public_url: str) -> list[Problem]:
    """What `did`'s document lacks for clients to find this labeler and verify its labels: an
    `#atproto_label` Multikey that is `did_key`, and an `#atproto_labeler` service of type
    AtprotoLabeler at `public_url`. Each problem says what to change ([] = nothing)."""
    if not isinstance(doc, dict) or doc.get("id") != did:
        got = doc.get("id") if isinstance(doc, dict) else type(doc).__name__
        return [Problem("document-invalid", f"the DID document of {did} is about {str(got)[:100]!r}, not {did}",
                        f"publish a DID document whose id is {did}")]
    out = []
    keys = _entries(doc, "verificationMethod", "atproto_label")
    if not keys:
        out.append(Problem("label-key-missing",
                           f"{did}'s DID document has no #atproto_label key: clients cannot verify our labels",
                           f"add verificationMethods.atproto_label = {did_key}"))
    elif not _same_key(keys[0].get("publicKeyMultibase"), did_key):
        theirs = keys[0].get("publicKeyMultibase")
        out.append(Problem("label-key-mismatch",
                           f"{did}'s DID document publishes #atproto_label did:key:{theirs}, but this labeler signs"
                           f" with {did_key}: clients reject our labels",
                           f"set verificationMethods.atproto_label = {did_key} (or, if the document's key is the"
                           " right one, run with the key file that holds it: --data-dir or [labeler] key_file)"))
    services = _entries(doc, "service", "atproto_labeler")
    want = public_url.rstrip("/")
    if not services:
        out.append(Problem("labeler-service-missing",
                           f"{did}'s DID document has no #atproto_labeler service: clients cannot find our label"
                           " stream",
                           f"add services.atproto_labeler = {{type: AtprotoLabeler, endpoint: {want or 'PUBLIC_URL'}}}"))
    else:
        service = services[0]
        endpoint = service.get("serviceEndpoint")
        if service.get("type") != "AtprotoLabeler":
            out.append(Problem("labeler-service-type",
                               f"{did}'s #atproto_labeler service has type {service.get('type')!r}, not AtprotoLabeler",
                               "set services.atproto_labeler.type = AtprotoLabeler"))
        if not want:
            out.append(Problem("public-url-unset",
                               f"[server] public_url is not set, so the #atproto_labeler endpoint ({endpoint!r}) cannot"
                               " be checked",
                               "set [server] public_url (FIREHOSE_MOD_PUBLIC_URL) to the https URL clients reach this"
                               " server at"))
        elif not isinstance(endpoint, str) or endpoint.rstrip("/") != want:
            out.append(Problem("labeler-endpoint-mismatch",
                               f"{did}'s #atproto_labeler points at {endpoint!r}, not our public URL {want}: clients"
                               " subscribe elsewhere",
                               f"set services.atproto_labeler.endpoint = {want} (or, if that URL is right, set"
                               " [server] public_url to it)"))
    return out


def plc_fields(doc: dict, plc_data: dict | None = None) -> tuple[dict, dict]:
    """(verificationMethods, services) as PLC operations write them: from the directory's
    `/{did}/data` when given, else read back from the DID document."""
    if isinstance(plc_data, dict) and isinstance(plc_data.get("verificationMethods"), dict) \
            and isinstance(plc_data.get("services"), dict):
        return copy.deepcopy(plc_data["verificationMethods"]), copy.deepcopy(plc_data["services"])
    methods, services = {}, {}
    for vm in doc.get("verificationMethod") or []:
        if isinstance(vm, dict) and isinstance(vm.get("id"), str) and "#" in vm["id"] \
                and isinstance(vm.get("publicKeyMultibase"), str):
            methods[vm["id"].rsplit("#", 1)[1]] = "did:key:" + vm["publicKeyMultibase"]
    for s in doc.get("service") or []:
        if isinstance(s, dict) and isinstance(s.get("id"), str) and "#" in s["id"]:
            services[s["id"].rsplit("#", 1)[1]] = {"type": s.get("type"), "endpoint": s.get("serviceEndpoint")}
    return methods, services


def plc_operation(doc: dict, did_key: str, public_url: str, plc_data: dict | None = None) -> dict:
    """The `com.atproto.identity.signPlcOperation` input that fixes the document. Its maps replace
    the current ones whole, so they keep every other entry (#atproto, #atproto_pds, ...)."""
    methods, services = plc_fields(doc, plc_data)
    methods["atproto_label"] = did_key
    services["atproto_labeler"] = {"type": "AtprotoLabeler", "endpoint": public_url.rstrip("/") or "PUBLIC_URL"}
    return {"verificationMethods": methods, "services": services}


def web_document(doc: dict, did: str, multibase: str, public_url: str) -> dict:
    """The did:web document to serve: `doc` with our #atproto_label and #atproto_labeler in place."""
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    out["id"] = did
    out.setdefault("@context", ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"])
    methods = [vm for vm in out.get("verificationMethod") or []
               if not (isinstance(vm, dict) and str(vm.get("id", "")).endswith("#atproto_label"))]
    methods.append({"id": f"{did}#atproto_label", "type": "Multikey", "controller": did,
                    "publicKeyMultibase": multibase})
    services = [s for s in out.get("service") or []
                if not (isinstance(s, dict) and str(s.get("id", "")).endswith("#atproto_labeler"))]
    services.append({"id": "#atproto_labeler", "type": "AtprotoLabeler",
                     "serviceEndpoint": public_url.rstrip("/") or "PUBLIC_URL"})
    out["verificationMethod"], out["service"] = methods, services
    return out


def document_fix(doc: dict, did: str, did_key: str, public_url: str, plc_data: dict | None = None) -> str:
    """The exact steps that give `did`'s document our label key and labeler service."""
    if did.startswith("did:web:"):
        host = did.removeprefix("did:web:").replace("%3A", ":")
        document = web_document(doc, did, did_key.removeprefix("did:key:"), public_url)
        return (f"serve this at https://{host}/.well-known/did.json (firehose-mod serves its own part of it there"
                " when [server] public_url is set; keep the account's #atproto and #atproto_pds entries):\n"
                + json.dumps(document, indent=2))
    op = json.dumps(plc_operation(doc, did_key, public_url, plc_data), indent=2)
    return (
        f"{did} lives in the PLC directory: change it with a PLC operation that the account's PDS signs. That takes\n"
        "the account's main password (an app password cannot) and a token the PDS emails. With goat:\n"
        f"  goat account login -u {did} -p 'MAIN-PASSWORD'\n"
        "  goat account plc request-token\n"
        "  cat > plc-op.json <<'EOF'\n"
        f"{op}\n"
        "EOF\n"
        "  goat account plc sign --token TOKEN-FROM-EMAIL plc-op.json > plc-op-signed.json\n"
        "  goat account plc submit plc-op-signed.json\n"
        "or with the atproto SDK (client = Client(PDS); client.login(DID, MAIN-PASSWORD)):\n"
        "  client.com.atproto.identity.request_plc_operation_signature()\n"
        "  op = client.com.atproto.identity.sign_plc_operation({'token': TOKEN, **json.load(open('plc-op.json'))})\n"
        "  client.com.atproto.identity.submit_plc_operation({'operation': op.operation})\n"
        "Both maps replace the current ones whole: they keep the document's other entries."
    )
