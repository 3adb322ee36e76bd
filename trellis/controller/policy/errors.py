"""Problems found in a policy document, each tied to its line and column."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem. ``line``/``column`` are 1-based (0 when the problem has no place)."""

    line: int
    column: int
    path: str  # where in the document, e.g. "rules[2].ports[0]" ("" for the document itself)
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}" if self.line else "policy"
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {'warning: ' if self.warning else ''}{what}"


class PolicyInvalid(ValueError):
    """The document is not a valid policy; ``issues`` says every place that is wrong."""

    def __init__(self, issues: tuple[Issue, ...]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues))
        self.issues = issues


class UnknownSite(KeyError):
    """A site name or identity that the inventory does not hold (a caller's mistake)."""

    def __str__(self) -> str:
        return f"unknown site {self.args[0]!r}"
