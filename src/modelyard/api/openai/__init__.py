"""The OpenAI-compatible API: ``protocol`` (schemas), ``serving`` (logic), ``routes`` (HTTP)."""
