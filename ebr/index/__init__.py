"""Index slots, in three layers (each imports only the ones below it):

- ``ebr.index.query``: opening and searching a slot (query time);
- ``ebr.index.build``: building, tuning, writing and naming slots (build time);
- ``ebr.index.live``: the live log over a slot and its compaction (serving's search path).
"""
