"""Introspection XML for the interfaces busd defines or serves (the single source of truth)."""
