"""What a validation found: the failed expectations, the result of a suite, the gate."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that failed on one batch."""

    suite: str
    batch: str
    expectation: str
    column: str | None
    details: str  # observed value or unexpected percent, human-readable

    def line(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        return f"{self.batch}: {target}: {self.details}"


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of one suite over all of its batches."""

    suite: str
    success: bool
    batches: int
    evaluated: int
    failed: tuple[FailedExpectation, ...]
    docs_index: Path | None
    seconds: float = field(default=0.0, compare=False)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line per failure, or one line saying that everything passed."""
        if not self.failed:
            return (
                f"{self.suite}: all {self.evaluated} expectations passed on {self.batches} batches"
            )
        return "\n".join(f.line() for f in self.failed)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, for reports and lineage tags (a failure's suite is this one)."""
        out = asdict(self)
        out["failed"] = [{k: v for k, v in f.items() if k != "suite"} for f in out["failed"]]
        out["docs_index"] = str(self.docs_index) if self.docs_index else None
        out["seconds"] = round(self.seconds, 2)
        out["notes"] = list(self.notes)
        return out


class ValidationFailed(Exception):
    """A suite failed; the message names every failed expectation and where the docs are."""

    def __init__(self, result: ValidationResult):
        self.result = result
        where = result.docs_index or "not published"
        super().__init__(
            f"validation suite '{result.suite}' failed: {len(result.failed)} failed "
            f"expectation(s) over {result.batches} batch(es)\n{result.summary()}\n"
            f"Data Docs: {where}"
        )


def gate(result: ValidationResult) -> None:
    """Raise `ValidationFailed` unless the result is a success."""
    if not result.success:
        raise ValidationFailed(result)
