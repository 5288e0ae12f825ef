"""The fold of docs/semantics.md §3-§4: a ruleset compiled into validate -> dedup -> Gold over Arrow tables; tenant buckets, time chunks, scopes."""
