"""Serving the frozen backbone over HTTP."""
