"""Precise mode: what each replica's cache holds, from the engines' own KV cache events."""
