"""Live folding (SPEC 11): incremental steps over what Bronze gained, and the follower."""
