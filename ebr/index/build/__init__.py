"""Build time: making slots (may call query-time code, never the other way round).

``faiss_index`` (index factory, recall measurement), ``filtered_gate`` and ``tune`` (the
cheapest search setting that reaches the recall target, filtered searches included),
``writer`` (a slot written atomically), ``aliases`` (which slot each name serves).
``ebr slot tune`` re-tunes an existing slot from the command line (``cli.build``).
"""
