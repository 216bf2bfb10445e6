"""firehose-mod: a moderation labeler for plyr.fm on ATProto."""

__version__ = "0.1.0"
