"""One run: preflight, pass 1 (online), pass 2 (output), and `drive`, how every door runs it (signals,
the report of a stopped run); plan and status read the same parts without sending.
"""
