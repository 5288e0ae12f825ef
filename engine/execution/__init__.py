"""Running a fold: picklable task specs, the shard workers, and the local and Ray executors that run them."""
