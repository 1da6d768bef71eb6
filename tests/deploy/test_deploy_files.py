"""The deployment files (deploy/): schema-valid, and consistent with the code they run.

Nothing here runs a container engine, so the files are checked offline, at schema level:

- deploy/compose.yaml against the Compose Specification's JSON schema, vendored next to
  this file as compose-spec.json (Apache-2.0, from the compose-spec/compose-spec
  repository, schema/compose-spec.json at commit a08f8d51631b7127ddac3d2c65537db429d0f1d0,
  the file's last change when copied on 2026-12-03; licence and notice in
  compose-spec.LICENSE);
- deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas that the kubernetes-validate
  package bundles (strict: unknown fields are errors), for the oldest and newest
  Kubernetes versions it knows;

then against the project itself: every CTX_* variable is a real settings field, the roles
are real CLI commands, the API's probes and ports match CTX_API__PORT, and secrets come
only from the env file or the Secret, never inline.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ctxpipe.app.cli import main as cli_main
from ctxpipe.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")

SERVERS = ("kafka", "redis", "s3", "qdrant")
# Placeholder marker every secret value in the committed files must carry.
PLACEHOLDER = "CHANGE-ME"
# Variable names that hold a credential, whoever reads them (ctxpipe or a server).
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|API_KEY|ACCESS_KEY_ID|CREDENTIAL|IDENTITY|TOKEN|TENANT_KEYS|CLI_AUTH)$")
# ${VAR}, ${VAR:-default}, ${VAR:?error}...; $$ is an escaped dollar, not interpolation.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")


# -- what the code defines ---------------------------------------------------------------

def _setting_fields() -> dict[str, str]:
    """CTX_<GROUP>__<FIELD> -> the field's type, for every settings field."""
    fields: dict[str, str] = {}
    for group_name, group in Settings.model_fields.items():
        model = group.annotation
        assert isinstance(model, type)
        for name, field in model.model_fields.items():
            fields[f"CTX_{group_name.upper()}__{name.upper()}"] = repr(field.annotation)
    return fields


SETTINGS = _setting_fields()
# ctxpipe's own secrets: every SecretStr field (tenant_keys holds SecretStr values), and the
# Anthropic SDK's variable (read by the token counter).
CTXPIPE_SECRETS = {name for name, kind in SETTINGS.items() if "SecretStr" in kind} | {"ANTHROPIC_API_KEY"}


def _is_secret(name: str) -> bool:
    return name in CTXPIPE_SECRETS or bool(SECRET_NAME.search(name))


def _check_setting_names(names: Any, where: str) -> None:
    unknown = sorted(n for n in names if n.startswith("CTX_") and n not in SETTINGS)
    assert not unknown, f"{where}: not settings fields (ctxpipe/core/settings.py): {unknown}"


def test_the_secret_list_is_the_real_one() -> None:
    # Guards the secret checks below against a renamed field silently dropping out.
    assert {"CTX_REDIS__PASSWORD", "CTX_S3__ACCESS_KEY_ID", "CTX_S3__SECRET_ACCESS_KEY",
            "CTX_QDRANT__API_KEY", "CTX_API__TENANT_KEYS", "CTX_SUMMARIZER__API_KEY"} <= CTXPIPE_SECRETS
    assert "CTX_API__PORT" not in CTXPIPE_SECRETS


# -- the files ---------------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _ctxpipe_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("ctxpipe")}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document (what Compose interpolates; comments
    are not in it)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: not KEY=VALUE: {line!r}"
        values[key] = value
    return values


def _k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # kustomize's own config, not a Kubernetes object
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def _k8s(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in _k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


# -- schemas -----------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The schema says draft-07 (under an https URL jsonschema does not map by itself).
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)


def test_compose_schema_rejects_a_broken_file() -> None:
    # The validator is live: the same file with one wrong field fails.
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = _compose()
    broken["services"]["api-1"]["depends_on"] = {"kafka": {"condition": "service_healty"}}
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


K8S_VERSIONS = sorted({kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version()})


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    docs = list(_k8s_docs())
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "ConfigMap", "Secret"}
    errors = []
    for filename, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{filename} {doc['kind']}/{doc['metadata']['name']} "
                          f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_k8s_schema_rejects_a_broken_manifest() -> None:
    worker = _k8s("Deployment", "ctxpipe-worker")
    worker["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, kubernetes_validate.latest_version(), strict=True)
    misspelled = _k8s("Deployment", "ctxpipe-api")
    _container(misspelled)["readinesProbe"] = _container(misspelled).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelled, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    # Placeholders never go live through `kubectl apply -k`.
    assert "secret.example.yaml" not in kustomization["resources"]


# -- roles and the image -------------------------------------------------------------------

def _cli_has_command(command: str, capsys: pytest.CaptureFixture[str]) -> bool:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])  # argparse: help exits 0, an unknown command 2
    capsys.readouterr()
    return exit_info.value.code == 0


def test_roles_are_real_commands_with_two_of_each(capsys: pytest.CaptureFixture[str]) -> None:
    compose_roles = [svc["command"][0] for svc in _ctxpipe_services(_compose()).values()]
    assert sorted(compose_roles) == ["api", "api", "worker", "worker"]
    k8s_roles = {name: _container(_k8s("Deployment", name))["args"][0] for name in ("ctxpipe-worker", "ctxpipe-api")}
    assert k8s_roles == {"ctxpipe-worker": "worker", "ctxpipe-api": "api"}
    for name in ("ctxpipe-worker", "ctxpipe-api"):
        assert _k8s("Deployment", name)["spec"]["replicas"] == 2
    for role in sorted({*compose_roles, *k8s_roles.values(), "serve"}):
        assert _cli_has_command(role, capsys), f"`ctxpipe {role}` is not a command of ctxpipe.app.cli"


def test_the_image_runs_the_ctxpipe_entry_point() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM python:3.11-slim"
    assert 'ENTRYPOINT ["ctxpipe"]' in instructions
    assert re.search(r"^RUN pip install /tmp/ctxpipe-src\b", dockerfile, re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ctxpipe" in scripts  # the entry point pip installs
    _check_setting_names(re.findall(r"\b(CTX_[A-Z0-9_]+)=", dockerfile), "Dockerfile")
    for service in _ctxpipe_services(_compose()).values():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


# -- compose: wiring -----------------------------------------------------------------------

def test_compose_runs_the_scaled_out_stack_on_healthy_servers() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = _environment(services["kafka"])
    # KRaft: the broker is its own controller; no ZooKeeper anywhere.
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not [k for k in kafka_env if "ZOOKEEPER" in k]
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:")
    assert services["redis"]["image"].startswith("redis:")
    for name, service in _ctxpipe_services(compose).items():
        deps = service["depends_on"]
        assert {d: deps[d]["condition"] for d in SERVERS} == dict.fromkeys(SERVERS, "service_healthy"), name
        env = _environment(service)
        # Several processes share the semantic tier: only the Qdrant server allows that.
        assert env["CTX_QDRANT__MODE"] == "server", name
        host, _, port = env["CTX_KAFKA__BOOTSTRAP_SERVERS"].partition(":")
        assert host == "kafka" and port == "9092", name
    # A service_healthy condition waits forever on a service that has no health check.
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] and not services[dep]["healthcheck"].get("disable"), (name, dep)
    # Workers name themselves for static group membership: distinct ids.
    ids = [_environment(s).get("CTX_KAFKA__GROUP_INSTANCE_ID") for s in _ctxpipe_services(compose).values()
           if s["command"] == ["worker"]]
    assert len(set(ids)) == len(ids) == 2 and None not in ids


def test_compose_api_health_check_and_port_follow_ctx_api_port() -> None:
    apis = {n: s for n, s in _ctxpipe_services(_compose()).items() if s["command"] == ["api"]}
    assert len(apis) == 2
    host_ports = []
    for name, service in apis.items():
        env = _environment(service)
        port = env["CTX_API__PORT"]
        assert env["CTX_API__HOST"] == "0.0.0.0", f"{name}: a loopback listener is unreachable from outside"
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/healthz" in probe, name
        (mapping,) = service["ports"]
        *host_side, container_port = mapping.split(":")
        assert container_port == port, name
        host_ports.append(tuple(host_side))
    assert len(set(host_ports)) == 2, "two replicas cannot publish the same host port"


def test_compose_settings_and_secrets() -> None:
    compose = _compose()
    example = _env_file(DEPLOY / "ctxpipe.env.example")
    for name, service in compose["services"].items():
        env = _environment(service)
        _check_setting_names(env, f"compose.yaml {name}")
        for key, value in env.items():
            if _is_secret(key):
                # A credential only ever comes from the env file, by interpolation.
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}: {key} is set inline"
    for name, service in _ctxpipe_services(compose).items():
        assert not [k for k in _environment(service) if _is_secret(k)], f"{name}: secrets belong in the env file"
        (env_file,) = service["env_file"]
        assert (DEPLOY / f"{env_file['path']}.example").is_file(), name
    interpolated = {var for text in _strings(compose) for var in INTERPOLATION.findall(text)}
    _check_setting_names(interpolated, "compose.yaml interpolation")
    assert interpolated <= set(example), f"not in ctxpipe.env.example: {sorted(interpolated - set(example))}"


def test_env_example_holds_placeholders_only() -> None:
    example = _env_file(DEPLOY / "ctxpipe.env.example")
    _check_setting_names(example, "ctxpipe.env.example")
    assert {"CTX_API__TENANT_KEYS", "CTX_REDIS__PASSWORD", "CTX_S3__SECRET_ACCESS_KEY"} <= set(example)
    for key, value in example.items():
        if _is_secret(key):
            assert PLACEHOLDER in value, f"{key}: not a placeholder"
    json.loads(example["CTX_API__TENANT_KEYS"])  # pydantic-settings reads it as JSON
    assert not (DEPLOY / "ctxpipe.env").exists() or "ctxpipe.env" in (DEPLOY / ".gitignore").read_text()


# -- Kubernetes: wiring --------------------------------------------------------------------

def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert isinstance(number, int)
    return number


def test_k8s_api_probes_and_service_follow_ctx_api_port() -> None:
    config = _k8s("ConfigMap", "ctxpipe-config")["data"]
    port = int(config["CTX_API__PORT"])
    assert config["CTX_API__HOST"] == "0.0.0.0"
    api = _container(_k8s("Deployment", "ctxpipe-api"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert _port_number(api, get["port"]) == port, probe
    service = _k8s("Service", "ctxpipe-api")
    (service_port,) = service["spec"]["ports"]
    assert _port_number(api, service_port["targetPort"]) == port
    labels = _k8s("Deployment", "ctxpipe-api")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_workers_have_a_probe_on_their_health_port() -> None:
    for name, service in _ctxpipe_services(_compose()).items():
        if service["command"] != ["worker"]:
            continue
        env = _environment(service)
        assert env["CTX_WORKER__HEALTH_HOST"] == "0.0.0.0", name
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{env['CTX_WORKER__HEALTH_PORT']}/healthz" in probe, name
    worker = _container(_k8s("Deployment", "ctxpipe-worker"))
    env = {e["name"]: e.get("value") for e in worker["env"]}
    get = worker["livenessProbe"]["httpGet"]
    assert get["path"] == "/healthz"
    assert _port_number(worker, get["port"]) == int(env["CTX_WORKER__HEALTH_PORT"])
    assert env["CTX_WORKER__HEALTH_HOST"] == "0.0.0.0"


def test_k8s_settings_come_from_the_configmap_and_the_secret() -> None:
    config = _k8s("ConfigMap", "ctxpipe-config")
    secret = _k8s("Secret", "ctxpipe-secrets")
    _check_setting_names(config["data"], "ConfigMap")
    assert config["data"]["CTX_QDRANT__MODE"] == "server"
    assert not [k for k in config["data"] if _is_secret(k)], "secrets in the ConfigMap"
    _check_setting_names(secret["stringData"], "Secret")
    assert not [k for k in secret["stringData"] if not _is_secret(k)], "plain settings belong in the ConfigMap"
    for key, value in secret["stringData"].items():
        assert PLACEHOLDER in value, f"{key}: not a placeholder"
    for name in ("ctxpipe-worker", "ctxpipe-api"):
        container = _container(_k8s("Deployment", name))
        refs = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
        assert refs == {"configMapRef": "ctxpipe-config", "secretRef": "ctxpipe-secrets"}, name
        env = {e["name"]: e for e in container.get("env", [])}
        _check_setting_names(env, name)
        for key, entry in env.items():
            # Inline values are for plain settings; a secret comes from a secretKeyRef.
            assert not (_is_secret(key) and "value" in entry), f"{name}: {key} is set inline"
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) >= {"cpu", "memory"}, f"{name}: {kind}"


# -- the values themselves: what ctxpipe would read ------------------------------------------

def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process started with exactly ``env`` would build (pydantic checks
    every value's type and range: a port that is not a number, an unknown Qdrant mode...)."""
    import os

    for key in list(os.environ):
        if key.startswith("CTX_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_compose_services_build_valid_settings_that_reach_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import urlsplit

    compose = _compose()
    services = compose["services"]
    example = _env_file(DEPLOY / "ctxpipe.env.example")
    kafka_env = _environment(services["kafka"])
    for name, service in _ctxpipe_services(compose).items():
        # Compose gives a container the env file first, then `environment:` over it.
        settings = _settings_from({**example, **_environment(service)}, monkeypatch)
        assert settings.qdrant.mode == "server", name
        assert settings.api.tenant_keys, f"{name}: the example runs the API with tenant keys"
        # Every address names a service of this file, on the port that service listens on.
        assert f"PLAINTEXT://{settings.kafka.bootstrap_servers}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"], name
        for url, service_name, port in (
            (settings.redis.url, "redis", 6379),
            (settings.s3.endpoint_url, "s3", int(_environment(services["s3"])["S3PROXY_ENDPOINT"].rsplit(":", 1)[1])),
            (settings.qdrant.url, "qdrant", 6333),
        ):
            parts = urlsplit(url)
            assert (parts.hostname, parts.port) == (service_name, port), f"{name}: {url}"


def test_k8s_pods_build_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _k8s("ConfigMap", "ctxpipe-config")["data"]
    secret = _k8s("Secret", "ctxpipe-secrets")["stringData"]
    for name in ("ctxpipe-worker", "ctxpipe-api"):
        container = _container(_k8s("Deployment", name))
        # envFrom in order, then env over it; a fieldRef stands in as a pod name.
        inline = {e["name"]: e.get("value", f"{name}-0") for e in container.get("env", [])}
        settings = _settings_from({**config, **secret, **inline}, monkeypatch)
        assert settings.qdrant.mode == "server", name
        assert settings.api.port == _port_number(_container(_k8s("Deployment", "ctxpipe-api")), "http")
