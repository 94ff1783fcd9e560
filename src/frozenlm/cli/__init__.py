"""The `frozenlm` command: a command table, shared helpers, a module per command group."""
