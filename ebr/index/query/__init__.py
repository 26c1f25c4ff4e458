"""Query time: what opening and searching a slot needs (no index building here).

Bottom to top: ``params`` (search settings), ``vectors`` (the vector contract), ``filters``
(plain filter data) and ``attributes`` (its one evaluator over a slot's columns), ``probing``
and ``planner`` (strict filtering during ANN), ``terms`` (BM25), ``fusion`` (hybrid scores),
``delta`` (exact search of a live slot's upserted rows), ``slot`` (a slot's layout, read
back), ``search`` (one search over a slot view).
"""
