"""Batch replays, plan then apply: plans, the atomic audited apply, the ledger, the validation gate, experiments."""
