"""Live folding (docs/semantics.md §11): incremental steps over what Bronze gained, and the follower."""
