"""What a run did: its counters, figures over time, progress, the JSON summary and the HTML page."""
