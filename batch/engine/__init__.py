"""One run: preflight, pass 1 (online), pass 2 (output); plan and status read the same parts without
sending.
"""
