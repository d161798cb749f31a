"""The writers' turn and shared transactions (layer 2): the first-come-first-served lock that
writers of one database take in one process, the write side that owns the turn together
with the write transaction it guards, successive units sharing one commit, and the WAL
kept small while readers never stop.

May import: the package root's shared modules. Nothing here opens a connection of its own
or knows of sessions, the schema or blocks.
"""
