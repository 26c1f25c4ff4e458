"""The live log on top of a slot (the top layer: it searches with ``ebr.index.query`` and
compacts with ``ebr.index.build``).

``wal`` (the durable upsert/delete log; damage in it is skipped and reported), ``frames`` (its
byte format, and finding an intact frame after damage), ``overlay`` (upserted rows searched
beside the snapshot), ``slot`` (``LiveSlot``: snapshot + log, one search path for every
caller), ``handover`` (compaction into a new slot and the log hand-over to it: the copy a
compaction makes, and the one a writer taking over the new slot makes).
"""
