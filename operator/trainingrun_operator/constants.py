"""Names shared by the builders, the reconcile loop and the driver: one place, all Final."""

from __future__ import annotations

from typing import Final

GROUP: Final = "pulse.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "TrainingRun"
PLURAL: Final = "trainingruns"
SINGULAR: Final = "trainingrun"
SHORT_NAME: Final = "tr"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

LABEL_PREFIX: Final = "pulse.dev/"
LABEL_RUN: Final = f"{LABEL_PREFIX}trainingrun"
LABEL_COMPONENT: Final = f"{LABEL_PREFIX}component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "pulse-operator"
# kopf's finalizer and annotation prefix for this operator, never kopf's shared defaults.
KOPF_PREFIX: Final = f"operator.{GROUP}"
FINALIZER: Final = f"{KOPF_PREFIX}/finalizer"

DASK_GROUP: Final = "kubernetes.dask.org"
DASK_VERSION: Final = "v1"
DASK_API_VERSION: Final = f"{DASK_GROUP}/{DASK_VERSION}"

# Kueue (the Kueue route, kueue.py): its API, the labels a run asks for a queue and a priority
# with (the same labels Kueue reads on its built-in integrations).
KUEUE_GROUP: Final = "kueue.x-k8s.io"
KUEUE_VERSION: Final = "v1beta2"
KUEUE_API_VERSION: Final = f"{KUEUE_GROUP}/{KUEUE_VERSION}"
KUEUE_QUEUE_LABEL: Final = f"{KUEUE_GROUP}/queue-name"
KUEUE_PRIORITY_LABEL: Final = f"{KUEUE_GROUP}/priority-class"

DEFAULT_IMAGE: Final = "pulse-recursive-training:0.1.0"
DEFAULT_NAMESPACE: Final = "pulse-system"
OPERATOR_NAME: Final = "pulse-operator"
# The coordination.k8s.io Lease whose holder is the one active operator replica.
LEASE_NAME: Final = "pulse-trainingrun-operator"
DASK_CONTROLLER_NAME: Final = "dask-kubernetes-operator"

SCHEDULER_PORT: Final = 8786
DASHBOARD_PORT: Final = 8787
# The longest run name: its Dask scheduler Service, `<run>-dask-<first 8 of its UID>-scheduler`
# (workload.cluster_name), is a DNS label of at most 63 characters.
RUN_NAME_MAX: Final = 63 - len("-dask-") - 8 - len("-scheduler")
# Non-root user of the project image (see the Dockerfile).
RUN_AS_USER: Final = 10001

# Phases of status.phase, in the order a run normally passes them.
PENDING: Final = "Pending"
# Waiting for Kueue to admit the run (or re-admit it after an eviction): nothing of it runs.
QUEUED: Final = "Queued"
PROVISIONING: Final = "Provisioning"
RUNNING: Final = "Running"
SUSPENDED: Final = "Suspended"
SUCCEEDED: Final = "Succeeded"
FAILED: Final = "Failed"
FINISHED_PHASES: Final = frozenset({SUCCEEDED, FAILED})

# Condition types of status.conditions.
# True from the moment a run may create its Dask cluster until it finishes or is suspended
# (under Kueue: while Kueue admits it).
CONDITION_ADMITTED: Final = "Admitted"
CONDITION_READY: Final = "WorkloadReady"
CONDITION_RUNNING: Final = "Running"
CONDITION_SUSPENDED: Final = "Suspended"
CONDITION_COMPLETE: Final = "Complete"
CONDITION_FAILED: Final = "Failed"
# kstatus conventions (sigs.k8s.io/cli-utils; what Flux, kpt and Argo CD's readers expect):
# Reconciling while the run is in flight, Stalled once it failed, Ready once it succeeded or
# while it is suspended (nothing left to do: what the spec asks for is reached).
CONDITION_RECONCILING: Final = "Reconciling"
CONDITION_STALLED: Final = "Stalled"
CONDITION_KSTATUS_READY: Final = "Ready"

# Environment of the driver container: where it reports to, where it leaves its last word.
ENV_RUN_NAME: Final = "PULSE_TRAININGRUN_NAME"
ENV_RUN_NAMESPACE: Final = "PULSE_TRAININGRUN_NAMESPACE"
# The driver's environment variables holding spec.output.credentialsSecret's keys: a prefix of
# their own, so they never clash with the data Secret's AWS_* (the pipeline's
# --s3-output-credentials-env reads them).
OUTPUT_CREDENTIALS_PREFIX: Final = "PULSE_OUTPUT_AWS_"
ENV_TERMINATION_MESSAGE_PATH: Final = "PULSE_TERMINATION_MESSAGE_PATH"
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
# Exit status of a driver whose pipeline failed in a way a retry cannot fix (a bad input:
# the pipeline recorded its error as not retryable). The Job's podFailurePolicy fails the
# run at once on it instead of spending backoffLimit. Unused by Python, shells and signals.
EXIT_DO_NOT_RETRY: Final = 3

# Labels the dask-kubernetes controller puts on the pods of a DaskCluster.
DASK_LABEL_CLUSTER: Final = "dask.org/cluster-name"
DASK_LABEL_COMPONENT: Final = "dask.org/component"
# Label the Job controller puts on the pods of a Job: the Job's UID.
JOB_LABEL_CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"

# The pipeline's default grid (recursive_training.constants.DEFAULT_ALPHA_GRID; the operator
# does not import the pipeline, tests/unit/test_run_defaults.py keeps the two equal).
DEFAULT_ALPHA_GRID: Final = (
    0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0,
)  # fmt: skip
