"""Sending: pacing, the token bucket, the retry policy, stops, the spend cap, the HTTP client and what its
answers mean.
"""
