"""Bytes -> tags + embedding: weights, decoding, the model and its explanations.

The bottom floor: it imports nothing of tagger above it, so a Dask worker needs only this
package and tagger.cluster.
"""
