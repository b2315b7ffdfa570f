"""The deployment files under deploy/ stay true to the code and to the tools that read them.

- The Dockerfile installs with the commands and the constraints file of `make setup` (both parsed,
  so the two cannot drift), from a pinned base image, as a non-root user, with no credential in it.
- deploy/helm/values.yaml validates against the JSON schema of the official chart's
  `dagster-user-deployments` subchart (datalog_platform_tests/reference/), its Kubernetes `$ref`s resolved to
  `{}` offline; the main chart's schema is not stored here, so the parts of the main chart the
  values set are checked for the keys and values that chart reads.
- deploy/dagster.yaml is accepted by Dagster's own instance config schema, and a DagsterInstance
  loaded from it on a fresh PostgreSQL database has the storage, run queue, launcher and daemon
  settings the deployment relies on; the ECS launcher block of deploy/README.md is accepted by
  dagster-aws's EcsRunLauncher.

Real parts: the files themselves, jsonschema/referencing, Dagster's config validation and, for
the instance, the PostgreSQL server named by DATALOG_TEST_POSTGRES_URL (a database of its own,
dropped afterwards; skipped with that reason when the variable is unset).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster_aws.ecs import EcsRunLauncher

from datalog_platform_tests.support.production import (
    DAGSTER_YAML,
    DEPLOY,
    DOCKERFILE,
    HELM_VALUES,
    MAKEFILE,
    REFERENCE,
    WORKSPACE_YAML,
    dagster_database,
    production_dagster_home,
)

USER_DEPLOYMENTS_SCHEMA = REFERENCE / "dagster-user-deployments.values.schema.json"
# The subchart's own defaults (its values.yaml) for the keys its schema requires and this
# repository's values leave to the chart: Helm merges them under ours before it validates.
SUBCHART_DEFAULTS: dict[str, Any] = {
    "global": {"postgresqlSecretName": "", "dagsterHome": "", "serviceAccountName": "", "celeryConfigSecretName": ""},
    "dagsterHome": "/opt/dagster/dagster_home",
    "postgresqlSecretName": "dagster-postgresql-secret",
    "celeryConfigSecretName": "dagster-celery-config-secret",
    "imagePullSecrets": [],
    "serviceAccount": {"create": True, "name": "", "annotations": {}},
}
PARTITION_LIMIT = {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


# ---------------------------------------------------------------------------------------------
# Dockerfile


def make_recipe(target: str) -> list[str]:
    """The shell lines of a Makefile rule whose target line starts with `target:`."""
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def make_variables() -> dict[str, str]:
    """`NAME := value` and `NAME ?= value` assignments of the Makefile."""
    found = {}
    for line in MAKEFILE.read_text().splitlines():
        match = re.fullmatch(r"([A-Z_]+)\s*[:?]?=\s*(.+)", line.strip())
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def expand(text: str, variables: dict[str, str]) -> str:
    """`$(NAME)` replaced by its value until none is left."""
    while True:
        expanded = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], text)
        if expanded == text:
            return text
        text = expanded


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append(pending.strip())
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def docker_run_commands() -> list[list[str]]:
    """Every command of the Dockerfile's RUN instructions (split at &&), as argument lists."""
    commands = []
    for instruction, args in dockerfile_instructions():
        if instruction == "RUN":
            commands += [shlex.split(part) for part in args.split("&&")]
    return commands


def setup_commands_for_image(venv: str) -> list[list[str]]:
    """`make setup`'s commands with the venv at `venv`, as the image must run them: the package
    is installed as it is (not editable) and without the test extra; nothing else differs."""
    variables = {**make_variables(), "VENV": venv}
    commands = []
    for line in make_recipe("$(STAMP)"):
        argv = shlex.split(expand(line, variables))
        if argv[0] == "touch":
            continue
        if "-e" in argv:
            target = argv[argv.index("-e") + 1]
            argv = [a for a in argv if a != "-e"]
            argv[argv.index(target)] = target.split("[", 1)[0]
        commands.append(argv)
    return commands


def test_the_image_installs_with_the_commands_and_constraints_of_make_setup() -> None:
    run = docker_run_commands()
    venv_made = [c for c in run if c[1:3] == ["-m", "venv"]]
    assert len(venv_made) == 1, run
    venv = venv_made[0][3]
    expected = setup_commands_for_image(venv)
    assert [c for c in run if c in expected] == expected, f"the image's RUN commands {run} lack {expected}"
    installs = [c for c in run if "install" in c and "pip" in Path(c[0]).name]
    assert installs == [c for c in expected if "install" in c], installs
    assert any("-c" in c and c[c.index("-c") + 1] == "constraints.txt" for c in installs), installs
    # the constraints file and the package are in the image before the install reads them
    instructions = dockerfile_instructions()
    install_at = max(i for i, (instruction, args) in enumerate(instructions) if "pip install" in args)
    copied = {
        source
        for instruction, args in instructions[:install_at]
        if instruction == "COPY"
        for source in args.split()[:-1]
    }
    assert {"pyproject.toml", "constraints.txt", "datalog_platform"} <= copied, copied


def test_the_image_has_a_pinned_base_a_non_root_user_a_health_check_and_dagster_home() -> None:
    instructions = dockerfile_instructions()
    bases = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(bases) == 1, bases
    image = bases[0].split()[0]
    pinned_tag = re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image.split("@")[0])
    assert pinned_tag or "@sha256:" in image, f"base image {image} is neither an exact tag nor a digest"
    users = [args.strip() for instruction, args in instructions if instruction == "USER"]
    assert users, "the image has no USER: it would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    envs = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert re.search(r"\bDAGSTER_HOME=/\S+", envs), envs
    health = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and '"grpc-health-check"' in health[0] and '"4000"' in health[0], health
    command = json.loads([args for instruction, args in instructions if instruction == "CMD"][-1])
    assert command[:3] == ["dagster", "code-server", "start"], command
    assert command[command.index("-m") + 1] == "datalog_platform.definitions"
    assert command[command.index("-p") + 1] == "4000"


def test_the_image_bakes_in_no_credentials() -> None:
    text = DOCKERFILE.read_text()
    assert "AWS_" not in text
    assert not re.search(r"(password|passwd|token|secret)\w*\s*[=:]\s*\S", text, re.IGNORECASE)
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password in it"
    names = re.findall(r"^\s*(?:ARG|ENV)\s+(.+)$", text, re.MULTILINE)
    assert not [n for n in names if re.search(r"PASSWORD|TOKEN|SECRET|_KEY", n, re.IGNORECASE)], names


# ---------------------------------------------------------------------------------------------
# Helm values


def remote_refs(node: Any) -> list[str]:
    """Every `$ref` of a schema that points outside it (http:// or https://)."""
    if isinstance(node, dict):
        own = [node["$ref"]] if str(node.get("$ref", "")).startswith(("http://", "https://")) else []
        return own + [ref for value in node.values() for ref in remote_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in remote_refs(value)]
    return []


def offline_registry(schema: dict[str, Any]) -> referencing.Registry:
    """A registry that answers the schema's remote `$ref`s (the Kubernetes definitions) offline: each
    document holds `{}` (any value) at every JSON pointer the schema points to in it."""
    documents: dict[str, dict[str, Any]] = {}
    for ref in remote_refs(schema):
        uri, _, pointer = ref.partition("#")
        node = documents.setdefault(uri, {})
        for part in [p for p in pointer.split("/") if p]:
            node = node.setdefault(part, {})

    def retrieve(uri: str) -> referencing.Resource:
        return referencing.Resource.from_contents(documents[uri], default_specification=referencing.jsonschema.DRAFT7)

    return referencing.Registry(retrieve=retrieve)


def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def validate_user_deployments(section: dict[str, Any]) -> None:
    schema = json.loads(USER_DEPLOYMENTS_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema, registry=offline_registry(schema)).validate({**SUBCHART_DEFAULTS, **section})


def test_helm_user_deployments_validate_against_the_subchart_schema() -> None:
    assert USER_DEPLOYMENTS_SCHEMA.is_file(), f"the chart's schema is expected at {USER_DEPLOYMENTS_SCHEMA}"
    section = helm_values()["dagster-user-deployments"]
    validate_user_deployments(section)
    (deployment,) = section["deployments"]
    assert deployment["codeServerArgs"] == ["-m", "datalog_platform.definitions"]
    assert "dagsterApiGrpcArgs" not in deployment  # the chart would start `dagster api grpc` instead
    assert deployment["port"] == 4000
    assert {s["name"] for s in deployment["envSecrets"]} == {"datalog-ledger", "datalog-aws"}
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert "DATALOG_LEDGER_URL" not in env and not any(name.startswith("AWS_SECRET") for name in env)
    assert env["DATALOG_RAM_LIMIT"] == "1GB"
    resources = deployment["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "1536Mi"


def test_the_schema_check_catches_what_the_chart_refuses() -> None:
    """The validation above can fail: a deployment without its image, or with a port as text, is refused."""
    section = helm_values()["dagster-user-deployments"]
    (deployment,) = section["deployments"]
    for broken in ({k: v for k, v in deployment.items() if k != "image"}, {**deployment, "port": "4000"}):
        with pytest.raises(jsonschema.ValidationError):
            validate_user_deployments({**section, "deployments": [broken]})


def test_helm_main_chart_sections_use_the_keys_the_chart_reads() -> None:
    """The main chart's schema (helm/dagster/values.schema.json) is not stored here: the values of
    the sections set are checked against the keys and enumerations that schema defines."""
    values = helm_values()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    required = {"imagePullPolicy", "loadInclusterConfig", "envConfigMaps", "envSecrets", "envVars", "volumeMounts"}
    assert required <= set(k8s), sorted(required - set(k8s))
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    queue = coordinator["config"]["queuedRunCoordinator"]
    assert queue["maxConcurrentRuns"] == instance_yaml()["concurrency"]["runs"]["max_concurrent_runs"]
    assert queue["tagConcurrencyLimits"] == [PARTITION_LIMIT]
    assert daemon["sensors"]["useThreads"] is True and daemon["schedules"]["useThreads"] is True
    assert values["telemetry"] == {"enabled": False}
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False


# ---------------------------------------------------------------------------------------------
# The instance


def instance_yaml() -> dict[str, Any]:
    return yaml.safe_load(DAGSTER_YAML.read_text())


def test_dagster_yaml_is_accepted_by_dagsters_instance_config_schema() -> None:
    config, custom_class = dagster_instance_config(str(DAGSTER_YAML.parent))
    assert custom_class is None
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == [PARTITION_LIMIT]
    assert config["sensors"]["use_threads"] is True and config["schedules"]["use_threads"] is True
    assert config["telemetry"] == {"enabled": False}
    assert "://" not in json.dumps(instance_yaml())  # the URL, password included, comes from the environment


def test_workspace_loads_the_code_location_from_the_grpc_server() -> None:
    (entry,) = yaml.safe_load(WORKSPACE_YAML.read_text())["load_from"]
    assert entry == {"grpc_server": {"host": "127.0.0.1", "port": 4000, "location_name": "datalog_platform"}}


def test_an_instance_loaded_from_dagster_yaml_keeps_everything_in_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dagster_database() as url:
        monkeypatch.setenv("DAGSTER_PG_URL", url)
        home = production_dagster_home(tmp_path / "dagster_home")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            storages = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage)}
            assert storages == {"PostgresRunStorage", "PostgresEventLogStorage"}
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            queue = instance.get_concurrency_config().run_queue_config
            assert queue is not None
            assert queue.max_concurrent_runs == instance_yaml()["concurrency"]["runs"]["max_concurrent_runs"] >= 2
            assert queue.tag_concurrency_limits == [PARTITION_LIMIT]
            assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
            assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
            assert instance.get_settings("sensors")["use_threads"] is True
            assert instance.get_settings("schedules")["use_threads"] is True
            assert instance.get_settings("telemetry") == {"enabled": False}


def test_the_ecs_run_launcher_snippet_is_accepted_by_dagster_aws() -> None:
    """The `run_launcher` block deploy/README.md gives for ECS, against EcsRunLauncher's own config schema."""
    snippet = re.search(r"```yaml\n(run_launcher:.*?)```", (DEPLOY / "README.md").read_text(), re.DOTALL)
    assert snippet, "deploy/README.md has no run_launcher snippet"
    launcher = yaml.safe_load(snippet.group(1))["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    result = validate_config(EcsRunLauncher.config_type(), launcher["config"])
    assert result.success, [error.message for error in result.errors or []]
    assert not validate_config(EcsRunLauncher.config_type(), {**launcher["config"], "cpu": 1}).success
