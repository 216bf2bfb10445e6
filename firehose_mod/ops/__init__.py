"""Policy operations: dry-run scans, explain, rescans (logic here, the CLI only parses)."""
