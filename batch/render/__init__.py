"""Rows to chat requests: templates filled, messages built, bodies fingerprinted, row by row or a chunk at
once.
"""
