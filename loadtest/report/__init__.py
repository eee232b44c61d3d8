"""`kvgate report`: swarm runs side by side, and shards merged into one run."""
