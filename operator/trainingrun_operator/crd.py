"""The TrainingRun CustomResourceDefinition, built in Python: the one source of its schema.

``build_crd()`` returns the manifest that ``hack/generate_manifests.py`` renders to
``manifests/base/`` (a test fails when the two drift). Validation a user can get wrong
lives here, so ``kubectl apply`` rejects a bad run before the operator sees it: OpenAPI
types, defaults and bounds, and CEL rules for what types cannot say (date order, known
rule names, fields that cannot change once a run started).
"""

from __future__ import annotations

from typing import Any, Final

from trainingrun_operator.constants import (
    CRD_NAME,
    DEFAULT_ALPHA_GRID,
    GROUP,
    KIND,
    PLURAL,
    RUN_NAME_MAX,
    SHORT_NAME,
    SINGULAR,
)
from trainingrun_operator.constants import VERSION as API_VERSION_NAME

Schema = dict[str, Any]

DATE_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# The rule grammar of recursive_training.rules.parse_rule, as one RE2 expression for CEL.
RULE_PATTERN: Final = (
    r"^(momentum\([1-9][0-9]*\)|mean_reversion\([1-9][0-9]*\)|cross|model"
    r"|cross\(\s*[^()\s>-][^()>]*?\s*->\s*[^()\s][^()]*?\s*\))$"
)
RULE_MESSAGE: Final = (
    "unknown rule; known rules: momentum(W), mean_reversion(W), cross, cross(U->V), model"
)
# Changing these mid-run would mix two different trainings in one checkpoint and result,
# or (image, scheduling) could only take effect on pods that already run: refused rather
# than accepted and ignored. ridgeAlpha is the exception CEL cannot hold: a number or
# "auto" has no CEL type (see its schema), so a change reaches only a retried driver.
# dask.workers, activeDeadlineSeconds, backoffLimit, suspend and
# ttlSecondsAfterFinished may change: the operator applies them to the running run.
IMMUTABLE_FIELDS: Final = (
    "variables", "startDate", "endDate", "batchSizeDays", "horizon", "horizons", "lags",
    "alphaGrid", "halfLifeDays", "rules", "fdr", "intervals", "model", "data", "output",
    "resumeFrom", "image",
    "serviceAccountName", "nodeSelector", "tolerations",
)  # fmt: skip
IMMUTABLE_DASK_FIELDS: Final = ("minWorkers", "threads", "resources", "image")
# A Kubernetes resource.Quantity ("500m", "2Gi", 1), as controller-gen writes its pattern.
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A size as the pipeline's --max-memory reads it: bytes, or a number with a decimal (kB..TB)
# or binary (KiB..TiB, or Kubernetes' Ki..Ti) unit.
MEMORY_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?([kKMGT]B|[KMGT]iB?|B)?$"
# Bounds on strings and lists: every value reaches the driver's command line, whose single
# arguments the kernel caps at 128 KiB; with these the longest is below 70 KiB.
URI_MAX: Final = 2048
# A number strictly between 0 and 1 (a false discovery rate, an interval's level).
OPEN_UNIT_INTERVAL: Final = {
    "type": "number", "minimum": 0, "exclusiveMinimum": True,
    "maximum": 1, "exclusiveMaximum": True,
}  # fmt: skip
NAME_MAX: Final = 253
VARIABLES_MAX: Final = 256
EXOG_MAX: Final = 64
INTERVALS_MAX: Final = 8
HORIZONS_MAX: Final = 32
ALPHA_GRID_MAX: Final = 64


def _string(description: str, **extra: Any) -> Schema:
    """A string property."""
    return {"type": "string", "description": description, **extra}


def _integer(description: str, minimum: int, **extra: Any) -> Schema:
    """An integer property with a lower bound."""
    return {
        "type": "integer",
        "format": "int32",
        "minimum": minimum,
        "description": description,
        **extra,
    }


def _immutable(schema: Schema, name: str) -> Schema:
    """Add a transition rule that forbids changing `name` once set."""
    rule = {"rule": "self == oldSelf", "message": f"{name} is immutable once the run exists"}
    return {
        **schema,
        "x-kubernetes-validations": [*schema.get("x-kubernetes-validations", []), rule],
    }


def _presence_rules(names: tuple[str, ...], prefix: str = "") -> list[Schema]:
    """Transition rules that forbid adding or removing the optional fields `names`."""
    return [
        {
            "rule": f"has(self.{name}) == has(oldSelf.{name})",
            "message": f"{prefix}{name} is immutable once the run exists",
        }
        for name in names
    ]


def _quantities(description: str) -> Schema:
    """A map of resource name to quantity, checked by the API server, not at pod creation."""
    quantity = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": QUANTITY_PATTERN,
    }
    return {
        "type": "object",
        "description": description,
        "additionalProperties": quantity,
        "maxProperties": 16,
    }


def _resources_schema() -> Schema:
    """spec.dask.resources: requests and limits, as in a container."""
    return {
        "type": "object",
        "description": "Requests and limits of each scheduler and worker pod.",
        "properties": {
            "requests": _quantities("Resources each pod is guaranteed, e.g. cpu: 500m."),
            "limits": _quantities("Resources each pod may use at most, e.g. memory: 2Gi."),
        },
    }


def _toleration_schema() -> Schema:
    """One toleration, with the fields of core/v1 Toleration."""
    return {
        "type": "object",
        "description": "A toleration.",
        "properties": {
            "key": _string("Taint key.", maxLength=NAME_MAX),
            "operator": _string("Exists or Equal.", enum=["Exists", "Equal"]),
            "value": _string("Taint value.", maxLength=63),
            "effect": _string(
                "Taint effect.", enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]
            ),
            "tolerationSeconds": {
                "type": "integer",
                "format": "int64",
                "description": "Seconds a NoExecute taint is tolerated.",
            },
        },
    }


def _data_schema() -> Schema:
    """spec.data: where the time series come from."""
    return {
        "type": "object",
        "description": "Input data: builtin:synthetic, builtin:macro, a path or s3:// URI.",
        "properties": {
            "uri": _string(
                "Data source URI.", default="builtin:synthetic", minLength=1, maxLength=URI_MAX
            ),
            "format": _string("File format.", enum=["auto", "csv", "parquet"], default="auto"),
            "credentialsSecret": _string(
                "Secret whose AWS_* keys are given to the pods (envFrom) to read the data.",
                maxLength=NAME_MAX,
            ),
            "endpoint": _string(
                "S3-compatible endpoint URL (MinIO, Ceph).", pattern="^https?://", maxLength=URI_MAX
            ),
        },
    }


def _model_schema() -> Schema:
    """spec.model: the model structure and its settings (the pipeline's --model flags)."""
    return {
        "type": "object",
        "description": "Model structure: var regresses every variable on the lags of every "
        "variable; ar fits one model per series on its own lags; pooled fits one model shared "
        "by all series. ar and pooled grow linearly with the number of series.",
        "default": {},
        "properties": {
            "structure": _string("var, ar or pooled.", enum=["var", "ar", "pooled"], default="var"),
            "exog": {
                "type": "array",
                "description": "Shared regressors of ar and pooled: variables whose lags every "
                "series also uses (a market index, say); they are not modelled themselves. "
                "When spec.variables is given, list them there too.",
                "items": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
                "maxItems": EXOG_MAX,
                "x-kubernetes-list-type": "set",
            },
            "pooledScale": _string(
                "How pooled puts series of different scales on one footing: rms divides each "
                "sample by its series' RMS change over the scaleWindow changes up to its origin "
                "(no look-ahead); none pools the raw changes.",
                enum=["rms", "none"],
                default="rms",
            ),
            "scaleWindow": _integer(
                "Changes in the pooled rms scale.", 1, default=52, maximum=100000
            ),
            "maxMemory": _string(
                "Memory a var run's statistics may need (8Gi, 8GB, 512MiB or bytes); a run "
                "over it fails before reading data, suggesting ar or pooled. Default: half of "
                "the driver container's memory limit (of the node's memory without one).",
                pattern=MEMORY_PATTERN,
                maxLength=32,
            ),
        },
        "x-kubernetes-validations": [
            {
                "rule": "self.structure != 'var' || !has(self.exog) || size(self.exog) == 0",
                "message": "model.exog applies to structure ar and pooled; var already "
                "regresses every series on the lags of every variable",
            }
        ],
    }


def _output_schema() -> Schema:
    """spec.output: where results, state and checkpoints go."""
    return {
        "type": "object",
        "description": "Where the results document, the state and the checkpoints are written.",
        "required": ["uri"],
        "properties": {
            "uri": _string(
                "Output folder: a path on a mounted volume or s3://bucket/prefix.",
                minLength=1,
                maxLength=URI_MAX,
            ),
            "credentialsSecret": _string(
                "Secret whose AWS_* keys write the output. Alone (or the data's): every pod "
                "gets it (envFrom). Another than data.credentialsSecret: only its "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), to the "
                "driver only, apart from the data's.",
                maxLength=NAME_MAX,
            ),
            "endpoint": _string(
                "S3-compatible endpoint URL of the output when it is another store than the "
                "data's; default: data.endpoint.",
                pattern="^https?://",
                maxLength=URI_MAX,
            ),
        },
    }


def _dask_schema() -> Schema:
    """spec.dask: the ephemeral Dask cluster."""
    properties: dict[str, Schema] = {
        "workers": _integer(
            "Number of Dask workers; may change while the run runs.", 1, default=2, maximum=1000
        ),
        "minWorkers": _integer(
            "Workers that must run before the driver starts; default: all of workers.",
            1,
            maximum=1000,
        ),
        "threads": _integer("Threads per worker.", 1, default=1, maximum=256),
        "resources": _resources_schema(),
        "image": _string(
            "Image of scheduler and workers; default: spec.image.", maxLength=NAME_MAX * 2
        ),
    }
    for name in IMMUTABLE_DASK_FIELDS:
        properties[name] = _immutable(properties[name], f"dask.{name}")
    return {
        "type": "object",
        "description": "The Dask cluster started for the run and deleted when it ends.",
        "default": {},
        "properties": properties,
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.minWorkers) || self.minWorkers <= self.workers",
                "message": "dask.minWorkers must not exceed dask.workers",
            },
            *_presence_rules(IMMUTABLE_DASK_FIELDS, "dask."),
        ],
    }


def build_spec_schema() -> Schema:
    """The OpenAPI schema of TrainingRun.spec, CEL rules included."""
    properties: dict[str, Schema] = {
        "variables": {
            "type": "array",
            "description": "Variables (columns) to model; default: every variable in the data.",
            "items": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
            "minItems": 1,
            "maxItems": VARIABLES_MAX,
            "x-kubernetes-list-type": "set",
        },
        "startDate": _string(
            "First realization date trained on (YYYY-MM-DD).", format="date", pattern=DATE_PATTERN
        ),
        "endDate": _string(
            "End of the range, exclusive (YYYY-MM-DD).", format="date", pattern=DATE_PATTERN
        ),
        "batchSizeDays": _integer("Length of each date-range batch in days.", 1, default=365),
        "horizon": _integer("Forecast horizon in steps.", 1, default=1),
        "horizons": {
            "type": "array",
            "description": "Several forecast horizons in one run, increasing (1, 5, 20): each "
            "has its own walk-forward models, metrics and rule counts, as if run alone; "
            "replaces horizon.",
            "items": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 100000},
            "minItems": 1,
            "maxItems": HORIZONS_MAX,
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                {"rule": "self.isSorted()", "message": "list horizons increasing (1, 5, 20)"}
            ],
        },
        "lags": _integer("Past changes of every variable used as features.", 1, default=5),
        # A number or "auto". Kubernetes cannot type a number-or-string field (int-or-string
        # takes no fractions) and CEL cannot read an untyped one, so plain value checks do it:
        # minimum binds numbers only, the pattern strings only, maxItems/maxProperties lists
        # and objects (a boolean gets through to the driver, which refuses it in one line).
        "ridgeAlpha": {
            "x-kubernetes-preserve-unknown-fields": True,
            "default": 0.01,
            "description": "Ridge penalty on standardized features (a number, 0 = least "
            "squares), or auto: per batch and target, the alphaGrid value with the least "
            "walk-forward error on earlier batches.",
            "minimum": 0,
            "pattern": "^auto$",
            "maxItems": 0,
            "maxProperties": 0,
        },
        "alphaGrid": {
            "type": "array",
            "description": "Penalties ridgeAlpha auto chooses from; ignored with a number.",
            "items": {"type": "number", "minimum": 0},
            "minItems": 1,
            "maxItems": ALPHA_GRID_MAX,
            "default": list(DEFAULT_ALPHA_GRID),
        },
        "halfLifeDays": {
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
            "description": "Exponential forgetting half-life in days; default: no forgetting.",
        },
        "rules": {
            "type": "array",
            "description": "Rules whose trust is learned.",
            "default": ["momentum(5)", "mean_reversion(20)", "model"],
            "items": {
                "type": "string",
                "maxLength": 256,
                "x-kubernetes-validations": [
                    {"rule": f"self.matches(r'{RULE_PATTERN}')", "message": RULE_MESSAGE}
                ],
            },
            "maxItems": 64,
        },
        "fdr": {
            **OPEN_UNIT_INTERVAL,
            "default": 0.1,
            "description": "False discovery rate of rule validation (Benjamini-Hochberg over "
            "all rules of the run).",
        },
        "intervals": {
            "type": "array",
            "description": "Levels of walk-forward conformal prediction intervals (0.8 for an "
            "80% interval), in increasing order; default: none.",
            "default": [],
            "items": OPEN_UNIT_INTERVAL,
            "maxItems": INTERVALS_MAX,
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                {"rule": "self.isSorted()", "message": "list intervals in increasing order"}
            ],
        },
        "model": _model_schema(),
        "data": {**_data_schema(), "default": {}},
        "output": _output_schema(),
        "dask": _dask_schema(),
        "image": _string(
            "Image of the driver (and of Dask pods unless dask.image is set).",
            maxLength=NAME_MAX * 2,
        ),
        "serviceAccountName": _string(
            "ServiceAccount of the driver pod (default: the run's own); the operator binds it "
            "a Role that may patch this run's status only.",
            maxLength=NAME_MAX,
        ),
        "nodeSelector": {
            "type": "object",
            "description": "Node selector of every pod of the run.",
            "additionalProperties": {"type": "string", "maxLength": 63},
            "maxProperties": 64,
        },
        "tolerations": {
            "type": "array",
            "description": "Tolerations of every pod of the run.",
            "items": _toleration_schema(),
            "maxItems": 64,
        },
        "activeDeadlineSeconds": _integer(
            "Fail the run when its driver has been active this long; may change while it runs.", 1
        ),
        "startupDeadlineSeconds": _integer(
            "Fail the run when it has not started this long after its creation (it waits for "
            "its turn and for capacity until then); default: wait as long as it takes.",
            1,
        ),
        "backoffLimit": _integer(
            "Driver retries before the run fails; a retry resumes from checkpoints. May change "
            "while the run runs.",
            0,
            default=2,
            maximum=100,
        ),
        "ttlSecondsAfterFinished": _integer(
            "Delete the run (and all it owns) this long after it ends.", 0
        ),
        "suspend": {
            "type": "boolean",
            "default": False,
            "description": "Pause the run: its pods are deleted until resumed.",
        },
        "resumeFrom": _string(
            "State file of an earlier run to continue learning from.",
            minLength=1,
            maxLength=URI_MAX,
        ),
    }
    for name in IMMUTABLE_FIELDS:
        properties[name] = _immutable(properties[name], name)
    presence_rules = _presence_rules(IMMUTABLE_FIELDS)
    return {
        "type": "object",
        "required": ["output"],
        "properties": properties,
        "x-kubernetes-validations": [
            {
                "rule": "!has(self.startDate) || !has(self.endDate) "
                "|| self.endDate > self.startDate",
                "message": "endDate must be after startDate",
            },
            {
                "rule": "!has(self.horizons) || self.horizon == 1",
                "message": "horizon and horizons were both given; give horizons for several "
                "horizons, horizon for one",
            },
            {
                "rule": "!has(self.variables) || !has(self.model) || !has(self.model.exog) "
                "|| self.model.exog.all(name, name in self.variables)",
                "message": "every model.exog must be among spec.variables (or leave out "
                "variables to use every variable of the data)",
            },
            *presence_rules,
        ],
    }


def _condition_schema() -> Schema:
    """One Kubernetes-style condition (metav1.Condition)."""
    return {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
        },
    }


def build_status_schema() -> Schema:
    """The OpenAPI schema of TrainingRun.status."""
    number = {"type": "number", "nullable": True}
    integer = {"type": "integer", "format": "int64"}
    return {
        "type": "object",
        "properties": {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Queued", "Provisioning", "Running", "Suspended", "Succeeded",
                         "Failed"],
            },
            "observedGeneration": integer,
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "startTime": {"type": "string", "format": "date-time"},
            "completionTime": {"type": "string", "format": "date-time"},
            "progress": {
                "type": "object",
                "properties": {
                    "stage": {"type": "string"},
                    "batchesCompleted": integer,
                    "batchesTotal": integer,
                    "summary": {"type": "string"},
                },
            },
            "results": {
                "type": "object",
                "properties": {
                    "uri": {"type": "string"},
                    "meanSkillVsPersistence": number,
                    "meanDirectionalAccuracy": number,
                    "rulesValidated": integer,
                    "rulesTotal": integer,
                },
            },
            "daskCluster": {
                "type": "object",
                "description": "The run's Dask cluster while it may exist; removed when the run "
                "ends or is suspended (the cluster is deleted then).",
                "properties": {"name": {"type": "string"}, "dashboardAddress": {"type": "string"}},
            },
            "attempts": integer,
            "message": {"type": "string"},
        },
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest of `trainingruns.pulse.dev`."""
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
        {"name": "Skill", "type": "number", "jsonPath": ".status.results.meanSkillVsPersistence",
         "description": "Mean skill vs persistence of the learned model (walk-forward)"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Queue", "type": "string", "priority": 1,
         "jsonPath": ".metadata.labels.kueue\\.x-k8s\\.io/queue-name",
         "description": "Kueue LocalQueue of the run (kubectl get -o wide; docs/kueue.md)"},
        {"name": "Dashboard", "type": "string", "priority": 1,
         "jsonPath": ".status.daskCluster.dashboardAddress",
         "description": "In-cluster address of the run's Dask dashboard (kubectl get -o wide)"},
    ]  # fmt: skip
    version = {
        "name": API_VERSION_NAME,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": "A retrodiction training run on an ephemeral Dask cluster.",
                "required": ["spec"],
                "x-kubernetes-validations": [
                    {
                        "rule": f"size(self.metadata.name) <= {RUN_NAME_MAX}",
                        "message": f"metadata.name: at most {RUN_NAME_MAX} characters (the run's "
                        "Dask scheduler Service is <name>-dask-<8 characters>-scheduler, a DNS "
                        "label of at most 63)",
                    }
                ],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": build_spec_schema(),
                    "status": build_status_schema(),
                },
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": SINGULAR,
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": [SHORT_NAME],
                "categories": ["pulse"],
            },
            "versions": [version],
        },
    }
