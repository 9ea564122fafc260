"""What a TrainingRun may use, as the platform team sets it: images, ServiceAccounts,
credential Secrets and S3 endpoints.

Creating a TrainingRun creates pods that run the run's image under the ServiceAccount it
names, with the keys of the Secrets it names in their environment, signing S3 requests to
the endpoint it names. A ValidatingAdmissionPolicy (``build_admission_policy``: the
chart's templates/run-policy.yaml and manifests/base/run-policy.yaml are generated from it)
refuses a run outside these rules at ``kubectl apply``; the operator checks the same rules
again (``violations``) before it creates anything, so a run admitted before the policy
existed, or while it was off, still cannot use what it forbids. Both are written from one
table (``RULES``) and say the same words.
"""

from __future__ import annotations

import dataclasses
import json

from trainingrun_operator.constants import GROUP, PLURAL
from trainingrun_operator.objects import Manifest
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


@dataclasses.dataclass(frozen=True)
class Rule:
    """One checked field: where it is in the spec, which list allows it, how it is matched."""

    # Dotted path under spec, as messages name it.
    field: str
    # The RunSpec attribute holding the field's value.
    attribute: str
    # The RunPolicy list that allows it; also the name of the admission policy's variable.
    allow_list: str
    # The list's name in the chart's runPolicy values, as messages name the rule.
    value_name: str
    # Images match entries or prefixes (image_allowed); the others are names or ANY.
    is_image: bool = False
    # Said after the rule in the message.
    hint: str = ""


RULES: tuple[Rule, ...] = (
    Rule("image", "image", "image_prefixes", "allowedImagePrefixes", is_image=True),
    Rule("dask.image", "dask_image", "image_prefixes", "allowedImagePrefixes", is_image=True),
    Rule("serviceAccountName", "service_account_name", "service_accounts",
         "allowedServiceAccountNames", hint="; leave it unset to use the run's own"),
    Rule("data.credentialsSecret", "data_secret", "credential_secrets", "allowedCredentialSecrets"),
    Rule("output.credentialsSecret", "output_secret", "credential_secrets",
         "allowedCredentialSecrets"),
    Rule("data.endpoint", "data_endpoint", "s3_endpoints", "allowedS3Endpoints"),
    Rule("output.endpoint", "output_endpoint", "s3_endpoints", "allowedS3Endpoints"),
)  # fmt: skip


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """True when `image` equals an entry or starts with an entry that ends a path or name."""
    return any(
        image == entry or (image.startswith(entry) and entry.endswith(PREFIX_ENDS))
        for entry in prefixes
    )


def _allowed(rule: Rule, value: str, allowed: tuple[str, ...]) -> bool:
    """True when `allowed` lets `value` through `rule`."""
    if rule.is_image:
        return image_allowed(value, allowed)
    return ANY in allowed or value in allowed


def violations(run: RunSpec, policy: RunPolicy) -> list[str]:
    """One message per field of `run` the policy forbids; empty when the run may start."""
    found: list[str] = []
    for rule in RULES:
        value = getattr(run, rule.attribute)
        allowed: tuple[str, ...] = getattr(policy, rule.allow_list)
        if value and not _allowed(rule, value, allowed):
            shown = ",".join(allowed) or "none"
            found.append(
                f"spec.{rule.field} {value} is not allowed by the run policy "
                f"({rule.value_name}: {shown}{rule.hint})"
            )
    return found


# --- the same rules in CEL, for the API server ------------------------------------------


def _cel_string(text: str) -> str:
    """A CEL string literal (double-quoted: JSON's escapes are CEL's)."""
    return json.dumps(text)


def _cel_rule(rule: Rule) -> Manifest:
    """One validation of the admission policy: `rule` over `object.spec`."""
    value = f"object.spec.{rule.field}"
    steps = rule.field.split(".")
    unset = " || ".join(f"!has(object.spec.{'.'.join(steps[: i + 1])})" for i in range(len(steps)))
    allowed = f"variables.{rule.allow_list}"
    if rule.is_image:
        ends = "[" + ", ".join(_cel_string(end) for end in PREFIX_ENDS) + "]"
        match = (f"{allowed}.exists(p, {value} == p || ({value}.startsWith(p) && "
                 f"{ends}.exists(e, p.endsWith(e))))")  # fmt: skip
    else:
        match = f"{allowed}.exists(a, a == {_cel_string(ANY)} || a == {value})"
    shown = f'({allowed}.size() == 0 ? "none" : {allowed}.join(","))'
    message = (f"{_cel_string(f'spec.{rule.field} ')} + {value} + "
               f"{_cel_string(f' is not allowed by the run policy ({rule.value_name}: ')} + "
               f"{shown} + {_cel_string(rule.hint + ')')}")  # fmt: skip
    return {"expression": f"{unset} || {match}", "messageExpression": message,
            "reason": "Forbidden"}  # fmt: skip


def admission_checks() -> Manifest:
    """The admission policy's spec without its variables: what it matches and checks.

    Runs are checked when they are created: the CRD keeps every checked field immutable
    (setting one that was unset included), so no later edit can change them, and a run
    admitted before the policy tightened can still be edited (dask.workers, suspend) and
    finalized. The chart adds the variables from its values.
    """
    return {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{
            "apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE"],
            "resources": [PLURAL],
        }]},
        "validations": [_cel_rule(rule) for rule in RULES],
    }  # fmt: skip


def admission_variables(policy: RunPolicy) -> list[Manifest]:
    """The allow-lists as the admission policy's CEL variables, written into the policy itself
    (no parameter object: the API server then never admits or refuses a run before it has
    seen them)."""
    lists = dict.fromkeys(rule.allow_list for rule in RULES)
    return [
        {"name": name, "expression": json.dumps(list(getattr(policy, name)), separators=(",", ":"))}
        for name in lists
    ]


def build_admission_policy(name: str, policy: RunPolicy) -> list[Manifest]:
    """The ValidatingAdmissionPolicy of `policy` and the binding that puts it in force."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {**admission_checks(), "variables": admission_variables(policy)},
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]
