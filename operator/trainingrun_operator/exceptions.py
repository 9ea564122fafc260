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


class PolicyViolationError(InvalidSpecError):
    """A run names an image, ServiceAccount, Secret or endpoint that the run policy forbids."""

    def __init__(self, problems: list[str]) -> None:
        """Keep every violation; the message lists them all."""
        super().__init__("", "; ".join(problems))
        self.problems = problems

    def __str__(self) -> str:
        """The violations, each naming its field and rule."""
        return self.problem


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


class KubeError(OperatorError):
    """The API server refused a call; carries its status code and message."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        """Keep the request and the server's answer."""
        super().__init__(method, path, status, message)
        self.status = status
        self.message = message
        self.request = f"{method} {path}"

    def __str__(self) -> str:
        """`METHOD path: HTTP status: message`."""
        return f"{self.request}: HTTP {self.status}: {self.message}"


class KubeUnreachableError(KubeError):
    """The API server could not be reached at all (connection refused, reset, timed out)."""

    def __init__(self, method: str, path: str, message: str) -> None:
        """Keep the request and the transport's error; there is no HTTP status."""
        super().__init__(method, path, 0, message)

    def __str__(self) -> str:
        """`METHOD path: API server unreachable: error`."""
        return f"{self.request}: API server unreachable: {self.message}"
