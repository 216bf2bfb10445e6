"""Audio fingerprinting for the copyright matcher: landmark triplets, an in-memory index, chromaprint."""

from firehose_mod.scan.fingerprint.align import describe_edit
from firehose_mod.scan.fingerprint.analyse import AudioAnalysis, analyse_file, sha256_file
from firehose_mod.scan.fingerprint.chromaprint import (
    ChromaprintError, bit_error_rate, chromaprint_file, is_duplicate,
)
from firehose_mod.scan.fingerprint.extract import (
    DEFAULT_PARAMS, FINGERPRINT_VERSION, LONG_PARAMS, DecodeError, Fingerprint, FingerprintParams,
    fingerprint_file, fingerprint_samples,
)
from firehose_mod.scan.fingerprint.index import (
    Entries, FingerprintIndex, Match, MatchParams, index_entries,
)

__all__ = [
    "DEFAULT_PARAMS", "FINGERPRINT_VERSION", "LONG_PARAMS", "AudioAnalysis", "ChromaprintError", "DecodeError", "Entries",
    "Fingerprint", "FingerprintIndex", "FingerprintParams", "Match", "MatchParams", "analyse_file",
    "bit_error_rate", "chromaprint_file", "describe_edit", "fingerprint_file", "fingerprint_samples", "index_entries",
    "is_duplicate", "sha256_file",
]
