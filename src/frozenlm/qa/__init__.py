"""Open-domain question answering with a frozen reader: retrieve, re-rank, pack, read."""
