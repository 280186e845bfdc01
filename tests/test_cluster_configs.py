"""The cluster definitions users launch: the Ray cluster launcher config, the KubeRay manifests, the image.

Offline checks only: the launcher config against the installed ray's own schema and `validate_config`, the
KubeRay resources against the fields KubeRay requires (its CRD schema is 700 kB, so it is not vendored), the
RayService's Serve config against Ray Serve's schema, and the versions, image tags and install steps against
ray, pyproject.toml, the Makefile and deploy/Dockerfile. Command lines in the manifests and docs/cluster.md
are parsed by the `recbandits` CLI once their subcommand exists.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"
LAUNCHER_CONFIG = DEPLOY / "cluster-launcher" / "aws.yaml"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
CLUSTER_DOC = REPO_ROOT / "docs" / "cluster.md"

# Each manifest, its kind, and where the RayCluster spec sits in it.
MANIFESTS = {
    "raycluster.yaml": ("RayCluster", ()),
    "rayjob-sweep.yaml": ("RayJob", ("rayClusterSpec",)),
    "rayservice.yaml": ("RayService", ("rayClusterConfig",)),
}

# Kubernetes names: metadata.name (RFC 1123 subdomain; KubeRay derives service names from it, so keep it a
# label), container names and worker group names (RFC 1123 labels).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# <recbandits version>-ray<ray version><base suffix>, as deploy/Dockerfile's header says.
IMAGE_TAG = re.compile(r"^(?P<repo>[^:@]+):(?P<version>[0-9][^-]*)-ray(?P<ray>\d+\.\d+\.\d+)(?P<suffix>-.+)$")
DOCKERFILE_FROM = re.compile(
    r"^FROM\s+(?P<image>rayproject/ray:(?P<ray>\d+\.\d+\.\d+)(?P<suffix>-\S+))\s*$", re.M
)


def _load(path: Path) -> Any:
    documents = [document for document in yaml.safe_load_all(path.read_text()) if document is not None]
    assert len(documents) == 1, f"{path.relative_to(REPO_ROOT)}: expected one YAML document"
    return documents[0]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _pin(prefix: str) -> str:
    """The dependency in pyproject.toml starting with ``prefix``, e.g. ``ray[rllib,serve]==2.60.0``."""
    matches = [dep for dep in _pyproject()["project"]["dependencies"] if dep.startswith(prefix)]
    assert len(matches) == 1, f"pyproject.toml: one dependency should start with {prefix!r}: {matches}"
    return matches[0]


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(.+)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile: {name} not found"
    return match.group(1).strip()


def _dockerfile_base() -> re.Match[str]:
    match = DOCKERFILE_FROM.search(DOCKERFILE.read_text())
    assert match, "deploy/Dockerfile: no `FROM rayproject/ray:<version><suffix>` line"
    return match


def _cluster_spec(manifest: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    spec = manifest["spec"]
    for key in path:
        assert isinstance(spec.get(key), dict), f"spec.{key} missing"
        spec = spec[key]
    return spec


def _pod_containers(group: dict[str, Any], where: str) -> list[dict[str, Any]]:
    containers = group.get("template", {}).get("spec", {}).get("containers")
    assert isinstance(containers, list) and containers, f"{where}.template.spec.containers is empty"
    return containers


# --------------------------------------------------------------------------------------------- every file


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {LAUNCHER_CONFIG, *(KUBERAY / name for name in MANIFESTS)} <= set(files)
    for path in files:
        assert isinstance(_load(path), dict), f"{path.relative_to(REPO_ROOT)} is not a mapping"


# ------------------------------------------------------------------------------------ the cluster launcher


def test_launcher_config_matches_the_installed_rays_schema() -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}"
              for error in validator.iter_errors(_load(LAUNCHER_CONFIG))]
    assert not errors, "\n".join(errors)


def test_launcher_config_passes_rays_own_validation() -> None:
    """What `ray up` does before it talks to AWS: merge the provider defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _load(LAUNCHER_CONFIG)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"] and prepared["provider"]["availability_zone"]
    assert prepared["auth"]["ssh_user"]
    node_types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert head in node_types and len(node_types) >= 2, "a head type and at least one worker type"
    for name, node_type in node_types.items():
        assert {"InstanceType", "ImageId"} <= set(node_type["node_config"]), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] <= prepared["max_workers"], name
    assert node_types[head]["max_workers"] == 0
    for remote, local in config["file_mounts"].items():
        assert (REPO_ROOT / local).exists(), f"file mount {remote}: {local} is not in the repository"


def test_launcher_config_installs_the_measured_stack() -> None:
    config = _load(LAUNCHER_CONFIG)
    setup = "\n".join(config["setup_commands"])
    for pin in (_pin("ray["), _pin("torch==")):
        assert pin in setup, f"setup_commands do not install pyproject.toml's {pin}"
    assert "download.pytorch.org/whl/cpu" in setup
    # The Makefile's second step, verbatim.
    assert f"pip install --quiet --no-deps {_makefile_var('TF_AGENTS_PKGS')}" in setup
    assert f"pip install --quiet {_makefile_var('TF_AGENTS_DEPS')}" in setup
    mounts = config["file_mounts"]
    mounted = [remote for remote, local in mounts.items() if (REPO_ROOT / local).resolve() == REPO_ROOT]
    assert mounted and f"pip install --quiet -e {mounted[0]}" in setup, "the project installs from its mount"

    # The container is the Dockerfile's base image, with the installed ray.
    assert config["docker"]["image"] == _dockerfile_base()["image"]
    assert f"ray:{ray.__version__}-" in config["docker"]["image"]

    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert "ray start --head --port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_start


# ----------------------------------------------------------------------------------------------- the image


def test_dockerfile_builds_on_the_installed_ray_and_installs_in_two_steps() -> None:
    base = _dockerfile_base()
    assert base["ray"] == ray.__version__
    assert _pin("ray[").endswith(f"=={base['ray']}")
    text = DOCKERFILE.read_text()
    for pin in (_pin("ray["), _pin("torch==")):
        assert pin in text
    assert f"pip install --no-deps {_makefile_var('TF_AGENTS_PKGS')}" in text
    assert f"pip install {_makefile_var('TF_AGENTS_DEPS')}" in text


# ------------------------------------------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_kuberay_manifest_has_what_kuberay_requires(name: str) -> None:
    kind, spec_path = MANIFESTS[name]
    manifest = _load(KUBERAY / name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert DNS_LABEL.match(manifest["metadata"]["name"]), "metadata.name must be a DNS-1123 label"

    spec = _cluster_spec(manifest, spec_path)
    assert spec["rayVersion"] == ray.__version__, "rayVersion must be the ray the image and tests run"

    head = spec["headGroupSpec"]
    groups = [("headGroupSpec", head)]
    workers = spec["workerGroupSpecs"]
    assert isinstance(workers, list) and workers
    group_names = [group["groupName"] for group in workers]
    assert len(set(group_names)) == len(group_names), "groupName must be unique"
    for index, group in enumerate(workers):
        where = f"workerGroupSpecs[{index}]"
        assert DNS_LABEL.match(group["groupName"]), f"{where}.groupName"
        replicas, low, high = group["replicas"], group.get("minReplicas", 0), group["maxReplicas"]
        assert all(isinstance(value, int) for value in (replicas, low, high)), where
        assert 0 <= low <= replicas <= high, f"{where}: needs minReplicas <= replicas <= maxReplicas"
        groups.append((where, group))

    for where, group in groups:
        # Optional in the CRD from KubeRay 1.4, required before; its values are strings.
        params = group["rayStartParams"]
        assert isinstance(params, dict), f"{where}.rayStartParams"
        assert all(isinstance(value, str) for value in params.values()), f"{where}.rayStartParams: strings"
        for container in _pod_containers(group, where):
            assert DNS_LABEL.match(container["name"]), f"{where}: container name {container['name']!r}"
            assert container["image"], f"{where}: container image"


def test_kuberay_images_are_the_dockerfiles_build() -> None:
    base = _dockerfile_base()
    version = _pyproject()["project"]["version"]
    images = set()
    for name, (_, spec_path) in MANIFESTS.items():
        spec = _cluster_spec(_load(KUBERAY / name), spec_path)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            images.update(container["image"] for container in _pod_containers(group, name))
    assert len(images) == 1, f"one image for every pod, got {sorted(images)}"
    image = images.pop()
    tag = IMAGE_TAG.match(image)
    assert tag, f"{image}: expected <repo>:<recbandits version>-ray<ray version><base suffix>"
    assert tag["ray"] == base["ray"] == ray.__version__, f"{image} vs the Dockerfile's {base['image']}"
    assert tag["suffix"] == base["suffix"]
    assert tag["version"] == version, f"{image}: recbandits is {version}"
    assert f"-t {image} " in DOCKERFILE.read_text(), "the Dockerfile's build command makes this tag"


def test_rayjob_runs_recbandits() -> None:
    spec = _load(KUBERAY / "rayjob-sweep.yaml")["spec"]
    assert spec["entrypoint"].startswith("recbandits "), "the entrypoint is a recbandits command"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec.get("ttlSecondsAfterFinished", 0), int)


def test_rayservice_serve_config_is_a_valid_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = _load(KUBERAY / "rayservice.yaml")["spec"]
    assert isinstance(spec["serveConfigV2"], str), "serveConfigV2 is YAML inside a string"
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    validate = getattr(ServeDeploySchema, "model_validate", None) or ServeDeploySchema.parse_obj
    validate(serve_config)

    applications = serve_config["applications"]
    assert applications
    route_prefixes = [application["route_prefix"] for application in applications]
    assert len(set(route_prefixes)) == len(route_prefixes)
    for application in applications:
        assert application["route_prefix"].startswith("/")
        module, _, attribute = application["import_path"].partition(":")
        assert module.startswith("recbandits.") and attribute, application["import_path"]
        assert application["deployments"], "deployments list"


def test_rayservice_import_path_resolves_once_the_serve_app_exists() -> None:
    from ray import serve

    serve_config = yaml.safe_load(_load(KUBERAY / "rayservice.yaml")["spec"]["serveConfigV2"])
    pending = []
    for application in serve_config["applications"]:
        module_name, _, attribute = application["import_path"].partition(":")
        if importlib.util.find_spec(module_name) is None:
            pending.append(module_name)
            continue
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute, None)), application["import_path"]
        # Serve refuses config overrides for deployments the application does not have.
        defined = {value.name for value in vars(module).values() if isinstance(value, serve.Deployment)}
        if defined:
            configured = {deployment["name"] for deployment in application["deployments"]}
            unknown = sorted(configured - defined)
            assert not unknown, f"{unknown} are not deployments of {module_name}"
    if pending:
        pytest.skip(f"not written yet: {', '.join(pending)}")


# ------------------------------------------------------------------------------------- command lines, docs


def _recbandits_command_lines() -> list[tuple[str, list[str]]]:
    """Every `recbandits ...` command line in the manifests and in docs/cluster.md's code blocks."""
    entrypoint = _load(KUBERAY / "rayjob-sweep.yaml")["spec"]["entrypoint"]
    found = [("rayjob-sweep.yaml entrypoint", shlex.split(entrypoint))]
    blocks = re.findall(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", CLUSTER_DOC.read_text(), re.M | re.S)
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        for index, token in enumerate(tokens):
            if token == "recbandits" and (index == 0 or tokens[index - 1] == "--"):
                found.append((f"docs/cluster.md: {line.strip()}", tokens[index:]))
            elif token.startswith("recbandits "):
                found.append((f"docs/cluster.md: {line.strip()}", shlex.split(token)))
    return found


def _command_line_problem(argv: list[str]) -> tuple[str | None, str | None]:
    """(pending, error) for one `recbandits ...` command line: the subcommand missing from the CLI, or why the
    CLI rejects the arguments. Typer ships its own copy of click, so groups and errors are told apart by what
    they have, not by click's classes."""
    import typer

    from recbandits.cli import app

    command, args, path = typer.main.get_command(app), argv[1:], ["recbandits"]
    while hasattr(command, "commands") and args and not args[0].startswith("-"):
        sub = command.commands.get(args[0])
        if sub is None:
            return " ".join([*path, args[0]]), None
        command, path, args = sub, [*path, args[0]], args[1:]
    if hasattr(command, "commands"):
        return None, "names a command group, not a command"
    try:
        command.make_context(" ".join(path), list(args))
    except Exception as error:  # click's UsageError / BadParameter, from typer's copy of click
        format_message = getattr(error, "format_message", None)
        return None, format_message() if format_message else repr(error)
    return None, None


def test_command_line_checker_catches_unknown_flags() -> None:
    assert _command_line_problem(["recbandits", "demo", "--steps", "10"]) == (None, None)
    assert _command_line_problem(["recbandits", "demo", "--no-such-flag"])[1]
    missing = _command_line_problem(["recbandits", "no-such-command", "--x"])
    assert missing == ("recbandits no-such-command", None)


def test_command_lines_parse_with_the_recbandits_cli() -> None:
    commands = _recbandits_command_lines()
    assert len(commands) > 1
    errors, pending = [], set()
    for where, argv in commands:
        assert argv[0] == "recbandits", where
        missing, error = _command_line_problem(argv)
        if missing:
            pending.add(missing)
        if error:
            errors.append(f"{where}\n    {error}")
    assert not errors, "\n".join(errors)
    if pending:
        pytest.skip(f"not in the CLI yet: {', '.join(sorted(pending))}")


def test_cluster_doc_names_real_files_and_the_launch_commands() -> None:
    text = CLUSTER_DOC.read_text()
    for path in sorted(set(re.findall(r"(?<![\w/.])((?:deploy|tests|benchmarks)/[\w./-]+\w)", text))):
        assert (REPO_ROOT / path).exists(), f"docs/cluster.md names {path}, which does not exist"
    assert f"ray up {LAUNCHER_CONFIG.relative_to(REPO_ROOT)}" in text
    for name in MANIFESTS:
        assert f"kubectl apply -f deploy/kuberay/{name}" in text
    assert "## Scaling figures" in text
