"""Prompt design: rendering examples within the context budget, choosing demonstrations."""
