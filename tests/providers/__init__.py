"""Provider tests: one module per provider, plus the shared HTTP contract."""
