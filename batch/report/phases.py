"""A run's phases as a trace sees them: the engine's passes and the Batch API's steps each run in a
`Phase` block, which `report.otel` makes a child span of the run when the run is traced, and which is
`no_phase` (nothing at all) when it is not. Here, apart from otel, so that the layers above name it
without importing anything of OpenTelemetry's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Figure = str | int | float | bool  # a span attribute's value: a count, an id, a status; never row text


class Phase(Protocol):
    """`with phase(name, **figures) as more:` a block of the run, a child span when traced; `more`
    takes figures known only at its end."""

    def __call__(self, name: str, /, **figures: Figure) -> AbstractContextManager[dict[str, Figure]]: ...


@contextmanager
def no_phase(name: str, /, **figures: Figure) -> Iterator[dict[str, Figure]]:
    """The phase of a run that is not traced: the block, and figures nobody reads."""
    yield {}
