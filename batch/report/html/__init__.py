"""The run report in HTML: `<output>.report.html` beside the JSON, one self-contained page.

    write   where the reports go, the figures kept in the store, the JSON and then the page
    page    the page: inline CSS, a policy that forbids every load, the figures as attributes
    plots   the shared style of the plots and their SVG clean-up; latency
    pace    requests and tokens per minute against the limits in force, 429s and retries
    runs    rows by outcome, cost across the last runs, Batch API timelines
    drawer  the drawing process, started by the run as its output is written; `draw` is its main

matplotlib is imported by `page` only, and `page` only in the drawing process (`draw`): the run's
process, or a notebook's, loads it only if no process can be started (an embedded interpreter).
"""
