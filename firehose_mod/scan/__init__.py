"""Scanning: workers that take jobs from the durable queue; scanners and policy come next."""
