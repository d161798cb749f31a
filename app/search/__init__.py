"""Search over the chain (layer 6): keyword lookups through the trigram index with the exact
semantics of a scan, exact cosine similarity from an in-memory cache of the embeddings
(kept in step with changes made anywhere), the fusion of both rankings, and the searches
the block store runs in one read snapshot.

May import: the package root, ``app.engine``, ``app.schema``, ``app.database``,
``app.chain``. The only layer that loads numpy.
"""
