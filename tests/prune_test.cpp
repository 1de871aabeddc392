// prune/ tests: added with the pruning code.
