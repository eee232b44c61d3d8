"""`kvgate analyze`: hit-rate ceilings by cache TTL, refresh counts and working set of a trace."""
