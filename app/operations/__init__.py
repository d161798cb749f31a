"""Operations on a database (layer 10): ``doctor``'s health checks, online backup and
checkpoints, the keyword index's rebuild, copying the store between SQLite and PostgreSQL,
and the stress run.

May import: every layer below it (the block store, search, the database, the schema,
the engine). Nothing below imports it; the command line (``app.cli``) is its only caller
in the package.
"""
