"""Pure rules over a model's tags: keyword terms, the user's rules, keywords and the query language.

No SQL and no files of a library here: the index, the library and the viewer apply them.
"""
