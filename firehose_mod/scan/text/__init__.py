"""Text: the record's words against multilingual profanity, slur and hate lists and an operator blocklist.

normalize.py folds text and undoes look-alike letters; index.py holds the terms; match.py finds
them as whole words under each reading; lists.py loads the built-in lists with their tiers; language.py says which
languages each field is in; scanner.py decides which hits count and makes findings;
blocklist.py parses the operator's own list.
"""

from firehose_mod.scan.text.blocklist import TextBlocklist, TextBlocklistError
from firehose_mod.scan.text.index import SCORES, Hit, Term, TermIndex
from firehose_mod.scan.text.lists import builtin_index
from firehose_mod.scan.text.match import find_terms
from firehose_mod.scan.text.normalize import normalize
from firehose_mod.scan.text.scanner import MAX_FINDINGS, TextScanner, track_fields

__all__ = ["MAX_FINDINGS", "SCORES", "Hit", "Term", "TermIndex", "TextBlocklist", "TextBlocklistError",
           "TextScanner", "builtin_index", "find_terms", "normalize", "track_fields"]
