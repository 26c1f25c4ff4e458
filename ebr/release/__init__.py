"""Embedding releases: what was co-trained, checked, recorded once and served by id.

A release pins one two-tower model version end to end: its request and item towers
(checksums), the member-interest model it was co-trained with, the Feast feature views and
request ``FeatureService`` of that version, the index slot its item tower's embeddings were
built into, the share of active jobs that slot holds and the held-out evaluation. Layers,
each importing only those above it:

- ``slots``: build a version's index slot from its job embeddings (the re-embedding step);
- ``record``: the immutable, checksummed record ``releases/<id>/release.json``;
- ``gates``: recall, coverage, lineage and quality gates a release must pass to serve;
- ``state``: the one mutable pointer ``releases/state.json`` (live release, experiment arms,
  each release's state: candidate -> serving -> retired), changed under a lock;
- ``assign``: deterministic experiment arms (a salted hash of the member id or request key);
- ``provision``: gather a version's facts, run the gates, write the record as a candidate.

    ebr release --help     # list, show, provision, promote, rollback, retire (cli.release)
"""
