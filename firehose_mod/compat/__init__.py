"""Other moderation services' APIs, served by this labeler for their existing clients (plyr.py)."""
