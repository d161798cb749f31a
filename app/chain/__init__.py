"""A block's values and rows (layer 5): arguments checked, values encoded and hashed as the
old class hashed them, the chain written and blocks read back in SQL, the statements of
block indices behind pages and filters, and time windows compared as instants.

May import: the package root, ``app.engine``, ``app.schema``. The ``Database`` itself is
not needed here: these functions take a connection.
"""
