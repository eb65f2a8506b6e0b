"""What a simulation run produced and what the API answered, as it goes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Observer = Callable[["Stats"], None]


@dataclass(slots=True)
class Stats:
    """What a run produced and what the API answered."""

    readings: int = 0  # generated: sent, or written to the file
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # in batches the API refused, or given up on
    assignments: int = 0  # created (or written to the side file)
    assignments_unchanged: int = 0
    assignment_conflicts: int = 0  # 409: the database already holds later boundaries
    assignment_errors: int = 0
    first_error: str | None = None

    @property
    def answered(self) -> int:
        """Readings the API has answered for."""
        return self.accepted + self.duplicates + self.rejected

    def fail(self, message: str) -> None:
        """Keep the first failure to show at the end."""
        self.first_error = self.first_error or message
