"""How to prune: prunable sites, schedules, masked layers, scopes, the pruning methods, export."""
