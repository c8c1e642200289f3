"""Hub I/O: sources (a folder, a Hub-compatible URL), ranged file reads, the one retry policy, declared parents, per-repo cataloguing."""
