"""The project image, run for real as each of its roles (design.md section 6).

Every container runs as the image's own user (uid 10001) with a read-only root filesystem
and a tmpfs at /tmp, as the operator's pods do. Roles: the operator (its entrypoint), the
pipeline CLI, the Dask scheduler and worker, and the driver against them on a user-defined
network. Not covered here: the operator's liveness endpoint (kopf serves it only once it
talks to a Kubernetes API server; the k8s tier runs the operator against one).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Docker, project_version

# The first test may build the image (a few minutes cold); the build has its own bound.
pytestmark = pytest.mark.timeout(2400)

RESULTS = "/results"
# The operator package (operator/trainingrun_operator) lands separately from the pipeline;
# until it is in the tree, the image carries kopf and the operator's dependencies only.
HAS_OPERATOR = (ROOT / "operator" / "trainingrun_operator" / "__init__.py").is_file()


def run(
    docker: Docker,
    image: str,
    *args: str,
    mounts: dict[Path, str] | None = None,
    entrypoint: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``docker run`` the image hardened as in Kubernetes; returns the finished process."""
    options = ["--rm", "--read-only", "--tmpfs", "/tmp", "--label", docker.label]
    for host, target in (mounts or {}).items():
        options += ["--volume", f"{host}:{target}"]
    if entrypoint is not None:
        options += ["--entrypoint", entrypoint]
    return docker("run", *options, image, *args, timeout=timeout)


def walk_forward_line(stdout: str) -> str:
    """The summary line with the walk-forward skill, identical for every engine."""
    lines = [line for line in stdout.splitlines() if line.startswith("Walk-forward:")]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.fixture(scope="module")
def serial_run(
    docker: Docker,
    image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The pipeline on its embedded default data, serial, with an HTML report."""
    out = tmp_path_factory.mktemp("serial") / "out"
    out.mkdir()
    out.chmod(0o777)
    result = run(
        docker,
        image,
        "--output-dir",
        RESULTS,
        "--report",
        f"{RESULTS}/report",
        "--no-progress",
        mounts={out: RESULTS},
        entrypoint="pulse-train",
    )
    return result, out


def test_runs_as_unprivileged_user(docker: Docker, image: str) -> None:
    """The image's user is uid/gid 10001 with no login shell, and owns no file."""
    ids = run(
        docker,
        image,
        "-c",
        "id -u; id -g; getent passwd 10001 | cut -d: -f7; find / -xdev -user 10001 | wc -l",
        entrypoint="sh",
    )
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == ["10001", "10001", "/usr/sbin/nologin", "0"]
    user = docker("image", "inspect", "--format", "{{.Config.User}}", image)
    assert user.stdout.strip() == "10001:10001"


def test_no_caches_or_build_leftovers(docker: Docker, image: str) -> None:
    """No apt lists, pip caches, pip itself or build-stage files made it into the image."""
    script = (
        "import importlib.util, pathlib\n"
        "lists = [p.name for p in pathlib.Path('/var/lib/apt/lists').iterdir()]\n"
        "assert not lists, lists\n"
        "gone = ['/root/.cache', '/tmp/.cache', '/opt/build-venv', '/opt/stage', '/wheels',\n"
        "        '/src']\n"
        "left = [p for p in gone if pathlib.Path(p).exists()]\n"
        "assert not left, left\n"
        "apt = pathlib.Path('/var/cache/apt').rglob('*')\n"
        "cached = [p for p in apt if p.is_file() and p.stat().st_size]  # not the empty lock\n"
        "assert not cached, cached\n"
        "homes = ['/root', '/tmp', '/opt', '/home']\n"
        "pip_caches = [p for h in homes for p in pathlib.Path(h).glob('**/.cache/pip')]\n"
        "assert not pip_caches, pip_caches\n"
        "assert importlib.util.find_spec('pip') is None, 'pip in the runtime venv'\n"
        "print('clean')\n"
    )
    # As root (an inspection only): the image's user may not read /root.
    checked = docker(
        "run",
        "--rm",
        "--label",
        docker.label,
        "--user",
        "0",
        "--entrypoint",
        "python",
        image,
        "-c",
        script,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "clean"


def test_oci_labels(docker: Docker, image: str) -> None:
    """Title, version (from pyproject.toml) and revision (a commit) are stamped in."""
    raw = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image)
    labels = json.loads(raw.stdout)
    assert labels["org.opencontainers.image.title"] == "pulse-recursive-training"
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert "org.opencontainers.image.source" in labels


def test_operator_entrypoint_help(docker: Docker, image: str) -> None:
    """The default entrypoint is the operator's CLI (kopf's, in a tree without it yet)."""
    if HAS_OPERATOR:
        result = run(docker, image, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: pulse-operator")
    else:
        result = run(docker, image, "--help", entrypoint="kopf")
        assert result.returncode == 0, result.stderr
        assert "Usage: kopf" in result.stdout


def test_operator_modules_import_read_only(docker: Docker, image: str) -> None:
    """The operator's handlers and dask-kubernetes' controller import on a read-only root."""
    modules = ["kopf", "dask_kubernetes.operator.controller"]
    if HAS_OPERATOR:
        modules.append("trainingrun_operator.handlers")
    result = run(
        docker, image, "-c", f"import {', '.join(modules)}; print('ok')", entrypoint="python"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok"


def test_pipeline_help(docker: Docker, image: str) -> None:
    """``pulse-train --help`` works in the image."""
    result = run(docker, image, "--help", entrypoint="pulse-train")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pulse-train")


def test_pipeline_default_run(serial_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The CLI on its embedded data: exit 0, the summary, results and a matplotlib report."""
    result, out = serial_run
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Trained on "), result.stdout
    walk_forward_line(result.stdout)
    document = json.loads((out / "results.json").read_text())
    assert document
    assert (out / "report" / "index.html").is_file()
    assert sorted(p.name for p in (out / "report").glob("*.png")), "no charts rendered"
    assert "Traceback" not in result.stderr


def test_dask_scheduler_worker_and_driver(
    docker: Docker,
    image: str,
    writable_dir: Path,
    serial_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Scheduler and worker containers on a network; the driver's run matches serial."""
    network = docker.name("net")
    made = docker("network", "create", "--label", docker.label, network)
    assert made.returncode == 0, made.stderr
    hardened = ["--read-only", "--tmpfs", "/tmp", "--label", docker.label, "--network", network]
    scheduler = docker(
        "run",
        "-d",
        "--name",
        docker.name("scheduler"),
        *hardened,
        "--network-alias",
        "scheduler",
        "--entrypoint",
        "dask",
        image,
        "scheduler",
        "--port",
        "8786",
        "--no-dashboard",
    )
    assert scheduler.returncode == 0, scheduler.stderr
    worker = docker(
        "run",
        "-d",
        "--name",
        docker.name("worker"),
        *hardened,
        "--entrypoint",
        "dask",
        image,
        "worker",
        "tcp://scheduler:8786",
        "--nthreads",
        "1",
        "--no-dashboard",
        "--name",
        "worker-1",
    )
    assert worker.returncode == 0, worker.stderr

    probe = docker(
        "run",
        "--rm",
        *hardened,
        "--entrypoint",
        "python",
        image,
        "-c",
        "from distributed import Client\n"
        "with Client('tcp://scheduler:8786', timeout=60) as c:\n"
        "    c.wait_for_workers(1, timeout=120)\n"
        "    print(sorted(w['name'] for w in c.scheduler_info()['workers'].values()))\n",
        timeout=240,
    )
    assert probe.returncode == 0, probe.stderr + logs_of(docker, "scheduler", "worker")
    assert probe.stdout.strip() == "['worker-1']"

    driver = docker(
        "run",
        "--rm",
        *hardened,
        "--volume",
        f"{writable_dir}:{RESULTS}",
        "--entrypoint",
        "pulse-train",
        image,
        "--dask-scheduler-address",
        "tcp://scheduler:8786",
        "--dask-connect-timeout",
        "60",
        "--output-dir",
        RESULTS,
        "--no-progress",
        timeout=600,
    )
    assert driver.returncode == 0, driver.stderr + logs_of(docker, "scheduler", "worker")
    assert (writable_dir / "results.json").is_file()
    serial, _ = serial_run
    assert walk_forward_line(driver.stdout) == walk_forward_line(serial.stdout)
    # The worker really did the work and is still healthy.
    assert (
        docker("inspect", "--format", "{{.State.Running}}", docker.name("worker")).stdout.strip()
        == "true"
    )


def logs_of(docker: Docker, *roles: str) -> str:
    """Recent logs of the session's containers in these roles, for failure messages."""
    parts = []
    for role in roles:
        logs = docker("logs", "--tail", "30", docker.name(role))
        parts.append(f"\n--- {role} ---\n{logs.stdout}{logs.stderr}")
    return "".join(parts)


def test_dockerfile_lint_clean() -> None:
    """hadolint (and shellcheck on the image scripts) report nothing."""
    result = subprocess.run(
        [str(ROOT / "hack" / "lint-dockerfile.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
