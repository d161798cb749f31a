"""The engine and the drivers (layer 1): the engine factory and its pool, the hooks every
connection gets on SQLite and on PostgreSQL, the SQLite file checked before SQLite touches
it, statements sent straight to the driver, and SQL text as the layer reads it.

May import: the package root's shared modules (``app.errors``, ``app.settings``,
``app._hints``, ``app._url_checks``, ``app._process``). Nothing here knows of units,
blocks or searches.
"""
