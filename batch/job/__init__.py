"""The job: its options (the job file's keys), their checks, the paths, the model catalog, the endpoint,
templates and the structured-output schema.
"""
