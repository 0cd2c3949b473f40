"""The doors onto the engine: the command line and its commands, the Python door, the built-in simulator as
an endpoint.
"""
