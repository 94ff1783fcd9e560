"""Plug-ins: small modules that condition the frozen backbone (soft tokens and/or per-layer
key/value prefixes), their protocol, registry and checkpoints."""
