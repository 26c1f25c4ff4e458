"""Batch wing: Beam batch pipelines over the workspace's tables (``embed``: member-interest
and catalogue embeddings; ``joins``: the member records they complete first)."""
