"""batch: run a prompt over every row of a table against Groq, at the account's rate limits."""

__version__ = "0.1.0"
