"""What a TrainingRun may use, as the platform team sets it: images, ServiceAccounts,
credential Secrets and S3 endpoints.

Creating a TrainingRun creates pods that run the run's image under the ServiceAccount it
names, with the keys of the Secrets it names in their environment, signing S3 requests to
the endpoint it names. The chart's ValidatingAdmissionPolicy (templates/run-policy.yaml)
refuses a run outside these rules at ``kubectl apply``; the operator checks the same rules
again (``violations``) before it creates anything, so a run admitted before the policy
existed, or while it was off, still cannot use what it forbids. Both say the same words.
"""

from __future__ import annotations

import dataclasses

from trainingrun_operator.spec import RunSpec

# A list holding this entry allows any value.
ANY = "*"
# An allowed image entry ending in one of these is a prefix (a registry path, a repository
# with any tag or digest); any other entry must equal the image, so "registry.io/team"
# does not let "registry.io/team-evil/x" through.
PREFIX_ENDS = ("/", ":", "@")


@dataclasses.dataclass(frozen=True)
class RunPolicy:
    """The four allow-lists; see the chart's runPolicy values for their meaning."""

    image_prefixes: tuple[str, ...]
    service_accounts: tuple[str, ...] = ()
    credential_secrets: tuple[str, ...] = (ANY,)
    s3_endpoints: tuple[str, ...] = (ANY,)


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """True when `image` equals an entry or starts with an entry that ends a path or name."""
    return any(
        image == entry or (image.startswith(entry) and entry.endswith(PREFIX_ENDS))
        for entry in prefixes
    )


def _listed(value: str, allowed: tuple[str, ...]) -> bool:
    """True when `value` is in `allowed` or `allowed` holds ANY."""
    return ANY in allowed or value in allowed


def _shown(allowed: tuple[str, ...]) -> str:
    """An allow-list as the messages print it."""
    return ",".join(allowed) or "none"


def violations(run: RunSpec, policy: RunPolicy) -> list[str]:
    """One message per field of `run` the policy forbids; empty when the run may start."""
    found: list[str] = []
    for field, image in (("image", run.image), ("dask.image", run.dask_image)):
        if image and not image_allowed(image, policy.image_prefixes):
            found.append(
                f"spec.{field} {image} is not allowed by the run policy "
                f"(allowedImagePrefixes: {_shown(policy.image_prefixes)})"
            )
    account = run.service_account_name
    if account and not _listed(account, policy.service_accounts):
        found.append(
            f"spec.serviceAccountName {account} is not allowed by the run policy "
            f"(allowedServiceAccountNames: {_shown(policy.service_accounts)}; "
            "leave it unset to use the run's own)"
        )
    for field, secret in (
        ("data.credentialsSecret", run.data_secret),
        ("output.credentialsSecret", run.output_secret),
    ):
        if secret and not _listed(secret, policy.credential_secrets):
            found.append(
                f"spec.{field} {secret} is not allowed by the run policy "
                f"(allowedCredentialSecrets: {_shown(policy.credential_secrets)})"
            )
    for field, endpoint in (
        ("data.endpoint", run.data_endpoint), ("output.endpoint", run.output_endpoint),
    ):  # fmt: skip
        if endpoint and not _listed(endpoint, policy.s3_endpoints):
            found.append(
                f"spec.{field} {endpoint} is not allowed by the run policy "
                f"(allowedS3Endpoints: {_shown(policy.s3_endpoints)})"
            )
    return found
