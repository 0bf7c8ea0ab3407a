"""The one writer of a user's library: the scan, its records, JSON and XMP sidecars, keywording.

A scan runs its model work through a backend (tagger.library.backend): here, or on a cluster.
"""
