"""The run policy's rules in Python (the operator's re-check), against hand-written cases."""

from __future__ import annotations

from typing import Any

import pytest

from trainingrun_operator.exceptions import PolicyViolationError
from trainingrun_operator.policy import RunPolicy, image_allowed, violations
from trainingrun_operator.settings import OperatorSettings
from trainingrun_operator.spec import RunSpec

pytestmark = pytest.mark.unit


def run(**spec: Any) -> RunSpec:
    """A run with `spec` on top of the required output."""
    body = {"metadata": {"name": "r", "namespace": "team", "uid": "u"},
            "spec": {"output": {"uri": "s3://out/r"}, **spec}}  # fmt: skip
    return RunSpec.from_body(body)


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("registry.io/team/pulse:1", True),  # under a path prefix
        ("registry.io/team-evil/pulse:1", False),  # shares characters, not the path
        ("registry.io/team", False),  # the prefix alone is not an image of it
        ("pulse:1.2", True),  # a repository with any tag
        ("pulse@sha256:abc", True),  # or digest
        ("pulse-evil:1", False),
        ("exact/image:1", True),
        ("exact/image:1-evil", False),  # an entry without a trailing / : @ is exact
    ],
)
def test_image_entries_are_exact_or_prefixes_that_end_a_path_or_name(
    image: str, allowed: bool
) -> None:
    """Prefix entries end in / : or @; any other entry must equal the image."""
    prefixes = ("registry.io/team/", "pulse:", "pulse@", "exact/image:1")
    assert image_allowed(image, prefixes) is allowed


def test_the_defaults_allow_the_run_image_and_the_runs_own_account_only() -> None:
    """OperatorSettings' policy: its image, no named ServiceAccount, any Secret and endpoint."""
    policy = OperatorSettings(image="reg/pulse:2").policy
    assert violations(run(), policy) == []
    assert violations(run(image="reg/pulse:2", dask={"image": "reg/pulse:2"}), policy) == []
    assert violations(run(data={"credentialsSecret": "s", "endpoint": "http://x"}), policy) == []
    assert violations(run(image="reg/pulse:3", serviceAccountName="admin"), policy) == [
        "spec.image reg/pulse:3 is not allowed by the run policy "
        "(allowedImagePrefixes: reg/pulse:2)",
        "spec.serviceAccountName admin is not allowed by the run policy "
        "(allowedServiceAccountNames: none; leave it unset to use the run's own)",
    ]


def test_every_field_is_named_with_its_rule() -> None:
    """Secrets and endpoints outside their lists are named one message each, in spec order."""
    policy = RunPolicy(("pulse:",), ("runner",), ("s3-read",), ("https://minio:9000",))
    assert violations(run(serviceAccountName="runner",
                          data={"credentialsSecret": "s3-read", "endpoint": "https://minio:9000"}),
                      policy) == []  # fmt: skip
    found = violations(
        run(dask={"image": "evil:1"}, data={"credentialsSecret": "db", "endpoint": "http://evil"},
            output={"uri": "s3://o", "credentialsSecret": "admin-keys",
                    "endpoint": "http://exfil"}),
        policy,
    )  # fmt: skip
    assert found == [
        "spec.dask.image evil:1 is not allowed by the run policy (allowedImagePrefixes: pulse:)",
        "spec.data.credentialsSecret db is not allowed by the run policy "
        "(allowedCredentialSecrets: s3-read)",
        "spec.output.credentialsSecret admin-keys is not allowed by the run policy "
        "(allowedCredentialSecrets: s3-read)",
        "spec.data.endpoint http://evil is not allowed by the run policy "
        "(allowedS3Endpoints: https://minio:9000)",
        "spec.output.endpoint http://exfil is not allowed by the run policy "
        "(allowedS3Endpoints: https://minio:9000)",
    ]
    assert str(PolicyViolationError(found)) == "; ".join(found)


def test_settings_read_the_policy_lists_from_the_environment() -> None:
    """PULSE_OPERATOR_ALLOWED_* are comma-separated lists; an empty image list means `image`."""
    settings = OperatorSettings.from_env({
        "PULSE_OPERATOR_IMAGE": "reg/pulse:2",
        "PULSE_OPERATOR_ALLOWED_IMAGE_PREFIXES": "",
        "PULSE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": "a, b",
        "PULSE_OPERATOR_ALLOWED_CREDENTIAL_SECRETS": "s3-read",
        "PULSE_OPERATOR_ALLOWED_S3_ENDPOINTS": "*",
    })  # fmt: skip
    assert settings.policy == RunPolicy(("reg/pulse:2",), ("a", "b"), ("s3-read",), ("*",))
