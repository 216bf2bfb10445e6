"""Text scanner: multilingual lists, obfuscations, no Scunthorpe, operator blocklist."""

from __future__ import annotations

import pytest

from firehose_mod.scan.base import ScanContext, Track
from firehose_mod.scan.text import TextBlocklist, TextBlocklistError, TextScanner, find_terms, track_fields

SCANNER = TextScanner()


def terms(text: str) -> set[tuple[str, str]]:
    return {(h.term.text, h.term.category) for h in find_terms(text, SCANNER.index)}


@pytest.mark.parametrize("text", [
    "Scunthorpe United", "assassin", "classic rock", "Dickens", "Bass in the class", "spices and herbs",
    "cumulus clouds", "analysis", "Assume nothing", "shiitake", "Titanic", "Hardcore", "The xx", "I am here",
    "Essex", "Cockburn", "Penistone", "Sussex", "cocktail", "grape", "therapist", "Matsushita",
])
def test_innocent_words_containing_list_terms_are_not_flagged(text):
    assert terms(text) == set()


@pytest.mark.parametrize("text, term", [
    ("sh1t happens", "shit"), ("$hit", "shit"), ("@ss", "ass"), ("fuuuuuck", "fuck"), ("F*CK", "fuck"),
    ("Ｆｕｃｋ", "fuck"), ("fück", "fuck"), ("s\u200bhit", "shit"), ("f u c k this", "fuck"),
    ("f.u.c.k", "fuck"), ("motherfuckers", "motherfucker"), ("a$$hole", "asshole"),
])
def test_obfuscations_are_undone(text, term):
    if term is not None:
        assert (term, "profanity") in terms(text)


@pytest.mark.parametrize("text, term", [
    ("Arschloch!", "arschloch"), ("hijo de puta", "hijo de puta"), ("va te faire foutre", "foutre"),
    ("你妈的", "你妈的"), ("씨발", None), ("ちんこ", "ちんこ"), ("kurwa mać", "kurwa"), ("vaffanculo", "vaffanculo"),
])
def test_multilingual_profanity(text, term):
    found = terms(text)
    assert found, text
    if term is not None:
        assert any(t == term for t, _ in found), found


def test_slurs_rank_above_profanity():
    assert ("nigger", "slur") in terms("n*gger")
    assert ("wetback", "slur") in terms("wetbacks")
    assert ("faggot", "slur") in terms("FAGGOT")


@pytest.mark.anyio
async def test_explicit_song_title_is_reported_without_a_label_value():
    record = {"title": "Fuck Tha Police", "artist": "N.W.A", "description": "Explicit. Some shit.",
              "features": [{"did": "did:plc:x", "handle": "bitch.example", "displayName": "Clean Name"}]}
    track = Track("at://did:plc:a/fm.plyr.track/1", "did:plc:a", "1", "bafy", record)
    findings = await SCANNER.scan(track, ScanContext(media=None, run_cpu=None))
    by_field = {f.evidence["field"]: f for f in findings}
    assert set(by_field) == {"title", "description", "features[0].handle"}
    title = by_field["title"]
    assert title.kind == "text" and title.value is None and title.score == 0.5
    assert title.evidence["term"] == "fuck" and title.evidence["category"] == "profanity"
    assert title.evidence["matched"] == "Fuck" and "Police" in title.evidence["excerpt"]
    assert "english" in title.evidence["language"]


def test_track_fields_reads_features_defensively():
    record = {"title": "t", "album": 3, "features": [{"handle": "h"}, "junk", {"displayName": "d"}]}
    assert track_fields(record) == [("title", "t"), ("features[0].handle", "h"), ("features[2].displayName", "d")]


def test_operator_blocklist_terms_and_regexes():
    blocklist = TextBlocklist.parse(
        "# scam campaign\n"
        "term free followers -> spam   # seen in Nov\n"
        "term badname\n"
        r"re \bt\.me/\w+ -> spam # telegram links" "\n"
    )
    scanner = TextScanner(blocklist=blocklist, builtin=False)
    findings = scanner.check([("description", "Get FREE   followers at t.me/scam now"), ("artist", "b4dn4me")])
    got = {(f.evidence["field"], f.evidence["term"], f.value) for f in findings}
    assert got == {("description", "free followers", "spam"), ("description", r"\bt\.me/\w+", "spam"),
                   ("artist", "badname", None)}
    assert all(f.score == 1.0 and f.evidence["category"] == "blocklist" for f in findings)
    assert {f.evidence.get("note") for f in findings} == {"seen in Nov", "telegram links", None}
    assert scanner.check([("title", "freedom followers")]) == []


@pytest.mark.parametrize("line, error", [
    ("word foo", r"bl.txt:2: start the line with `term` or `re`"),
    ("re (unclosed", r"bl.txt:2: invalid regex"),
    ("re a*", r"bl.txt:2: .*matches empty text"),
    ("term foo -> Spam!", r"bl.txt:2: label value 'Spam!'"),
    ("term", r"bl.txt:2: empty term"),
    ("term ...", r"bl.txt:2: term '...' has no letters"),
])
def test_blocklist_errors_name_the_line(line, error):
    with pytest.raises(TextBlocklistError, match=error):
        TextBlocklist.parse(f"# header\n{line}\n", source="bl.txt")


def test_findings_are_capped_and_deduplicated():
    text = " ".join(["shit"] * 50 + ["fuck", "cunt", "bitch", "twat", "wanker"] * 10)
    findings = SCANNER.check([("description", text)])
    shit = [f for f in findings if f.evidence["term"] == "shit"]
    assert len(shit) == 1 and shit[0].evidence["count"] == 50
    assert len(findings) <= 20


def test_russian_in_cyrillic_is_caught_and_ordinary_cyrillic_words_are_not():
    scanner = TextScanner()
    found = {(f.evidence["category"], f.evidence["term"]) for f in scanner.check([
        ("title", "Сука любовь"), ("artist", "Пидор"), ("album", "с у к а"),
    ])}
    assert found == {("profanity", "сука"), ("slur", "пидор")}
    assert scanner.check([("title", "сукно и ткань"), ("description", "Классика жанра, хачапури")]) == []
