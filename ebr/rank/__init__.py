"""Second-stage ranking: features of retrieved candidates, a learned ranker (LambdaMART),
crowding with backfill. Imports no flytekit/ray/feast/beam."""
