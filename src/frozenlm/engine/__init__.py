"""The only code that knows how rows, shared prefixes and KV prefixes are laid out for the
frozen backbone: splice, prefix caches, batching, scoring and generation."""
