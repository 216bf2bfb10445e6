"""The review desk: the second phase of moderation, for people and for an LLM that proposes.

- `states`: the item state machine and its mapping onto Ozone's vocabulary (pure);
- `actors`: operators and agents as named actors with hashed tokens, and their roles;
- `desk`: `ReviewDesk`, the service the CLI and the admin API call (every action checks the role);
- `triage`, `llm`: the optional LLM agent that proposes (OpenAI-compatible or Anthropic);
- `notify`: webhook and Bluesky DM when items wait.

Kept free of imports so `store/` can use `states` without a cycle.
"""
