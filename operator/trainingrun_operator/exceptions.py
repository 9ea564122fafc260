"""Domain errors of the operator and the driver, each with a message a user can act on."""

from __future__ import annotations


class OperatorError(Exception):
    """Base class of the operator's own errors."""


class InvalidSpecError(OperatorError):
    """A TrainingRun spec the CRD schema let through but the operator cannot run."""

    def __init__(self, field: str, problem: str) -> None:
        """Name the field and what is wrong with it."""
        super().__init__(field, problem)
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        """`spec.<field>: <problem>`."""
        return f"spec.{self.field}: {self.problem}"


class SettingsError(OperatorError):
    """An operator setting (environment variable or flag) has a value that cannot be used."""

    def __init__(self, variable: str, value: str, expected: str) -> None:
        """Name the variable, its value and what was expected."""
        super().__init__(variable, value, expected)
        self.variable = variable
        self.value = value
        self.expected = expected

    def __str__(self) -> str:
        """`VARIABLE='value': expected ...`."""
        return f"{self.variable}={self.value!r}: expected {self.expected}"


class DriverError(OperatorError):
    """The driver could not run the pipeline or report its status."""
