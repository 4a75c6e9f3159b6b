"""Configuration: every bad value stops the program with a message naming the variable."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from pydantic import SecretStr

from operator_engine import config as config_module
from operator_engine.render import TEMPLATE_FILES

from .conftest import KNOWN_ADDRESS, KNOWN_KEY, SAMPLE, clean_environ, run_cli

NUMERIC = ["nCPU", "nGPU", "ramGB", "diskGB", "priceMinute", "maxJobs", "maxJobDuration", "STORAGE_EXPIRY"]


@pytest.mark.parametrize("variable", NUMERIC)
@pytest.mark.parametrize("bad", ["abc", "-1", "1e999x", ""])
def test_bad_numeric_variable_stops_check_config_naming_it(variable, bad):
    if bad == "":  # empty means unset: the default applies
        assert run_cli("check-config", env=clean_environ(**{variable: bad})).returncode == 0
        return
    result = run_cli("check-config", env=clean_environ(**{variable: bad}))
    assert result.returncode == 78
    assert f"{variable}=" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("variable", NUMERIC)
def test_bad_numeric_variable_also_stops_render(variable):
    result = run_cli("render", str(SAMPLE), env=clean_environ(**{variable: "lots"}))
    assert result.returncode == 78
    assert variable in result.stderr and result.stdout == ""


def test_zero_cpus_is_rejected_with_allowed_range():
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({"nCPU": "0"})
    assert caught.value.problems == ["nCPU='0': must be an integer >= 1"]


def test_all_bad_variables_are_reported_together():
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({"nCPU": "x", "maxJobs": "0", "PULL_POLICY": "Sometimes", "IPFS_TYPE": "x"})
    assert [p.split("=")[0] for p in caught.value.problems] == ["nCPU", "maxJobs", "IPFS_TYPE", "PULL_POLICY"]


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PULL_POLICY", "Sometimes"),
        ("IPFS_TYPE", "PINATA"),
        ("LOG_LEVEL", "LOUD"),
        ("DEBUG_NO_CLEANUP", "maybe"),
        ("NOTIFY_START_URL", "ftp://x"),
        ("NODE_SELECTOR", "a b"),
        ("SERVICE_ACCOUNT", "Bad_Name"),
        ("FILTERING_CONTAINER", "img\nname"),
        ("IPFS_EXPIRY_TIME", "tomorrow"),
        ("TEMPLATES_DIR", "/nonexistent"),
        ("OPERATOR_NAMESPACE", "UPPER"),
        ("LOG_CFG", "/nonexistent.yaml"),
        ("LOG_FORMAT", "yaml"),
    ],
)
def test_bad_text_variable_names_the_variable_and_the_allowed_values(variable, value):
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({variable: value})
    assert caught.value.problems[0].startswith(f"{variable}=")
    assert "must" in caught.value.problems[0]


def test_malformed_private_key_is_named_but_never_shown():
    result = run_cli("check-config", env=clean_environ(OPERATOR_PRIVATE_KEY="0xdeadbeef-secret-material"))
    assert result.returncode == 78
    assert "OPERATOR_PRIVATE_KEY" in result.stderr
    assert "deadbeef" not in result.stderr


def test_out_of_range_private_key_is_rejected_without_showing_it():
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({"OPERATOR_PRIVATE_KEY": "f" * 64})
    assert "OPERATOR_PRIVATE_KEY" in str(caught.value) and "ffff" not in str(caught.value)


def test_check_config_prints_the_environment_with_the_consumer_address():
    env = clean_environ(
        OPERATOR_PRIVATE_KEY=KNOWN_KEY,
        nCPU="4",
        nGPU="1",
        gpuType="A100",
        ramGB="8",
        diskGB="20",
        priceMinute="0.5",
        description="GPU box",
        maxJobs="3",
        maxJobDuration="600",
        STORAGE_EXPIRY="24",
        cpuType="AMD EPYC",
    )
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "id": "ocean-compute",
        "cpuNumber": 4,
        "cpuType": "AMD EPYC",
        "gpuNumber": 1,
        "gpuType": "A100",
        "ramGB": 8,
        "diskGB": 20,
        "priceMin": 0.5,
        "desc": "GPU box",
        "currentJobs": 0,
        "maxJobs": 3,
        "consumerAddress": KNOWN_ADDRESS,
        "storageExpiry": 24,
        "maxJobDuration": 600,
    }
    assert KNOWN_KEY[2:] not in result.stdout + result.stderr


def test_check_config_without_a_key_has_no_consumer_address():
    result = run_cli("check-config")
    assert json.loads(result.stdout)["consumerAddress"] is None


def test_defaults_are_those_documented():
    cfg = config_module.load({})
    assert (cfg.nCPU, cfg.nGPU, cfg.ramGB, cfg.diskGB, cfg.maxJobs, cfg.maxJobDuration) == (1, 0, 1, 1, 5, 3600)
    assert cfg.SERVICE_ACCOUNT == "default" and cfg.IPFS_TYPE == "CLIENT" and cfg.DEBUG_NO_CLEANUP is False
    assert cfg.upload_target is None


def test_repr_hides_secret_values():
    cfg = config_module.load({"AWS_SECRET_ACCESS_KEY": "very-secret", "OPERATOR_PRIVATE_KEY": KNOWN_KEY})
    assert "very-secret" not in repr(cfg) and KNOWN_KEY[2:] not in repr(cfg)


def test_ipfs_wins_over_s3_as_upload_target():
    assert config_module.load({"IPFS_OUTPUT": "ipfs:5001", "AWS_BUCKET_OUTPUT": "b"}).upload_target == "ipfs"
    assert config_module.load({"AWS_BUCKET_OUTPUT": "b"}).upload_target == "s3"


def test_missing_template_in_templates_dir_is_listed(tmp_path):
    shutil.copytree(config_module.PACKAGED_TEMPLATES_DIR, tmp_path / "t")
    (tmp_path / "t" / "job-publish.yaml.j2").unlink()
    (tmp_path / "t" / "pvc.yaml.j2").unlink()
    result = run_cli("check-config", env=clean_environ(TEMPLATES_DIR=str(tmp_path / "t")))
    assert result.returncode == 78
    assert "TEMPLATES_DIR" in result.stderr and "pvc.yaml.j2, job-publish.yaml.j2" in result.stderr


def test_template_printing_a_value_without_the_safe_filter_is_refused(tmp_path):
    shutil.copytree(config_module.PACKAGED_TEMPLATES_DIR, tmp_path / "t")
    path = tmp_path / "t" / "configmap.yaml.j2"
    path.write_text(path.read_text().replace("{{ names.configmap | j }}", "{{ names.configmap }}"))
    result = run_cli("render", str(SAMPLE), env=clean_environ(TEMPLATES_DIR=str(tmp_path / "t")))
    assert result.returncode == 78
    assert "configmap.yaml.j2 prints {{ names.configmap }} without the '| j' filter" in result.stderr


def test_customized_templates_are_used(tmp_path):
    shutil.copytree(config_module.PACKAGED_TEMPLATES_DIR, tmp_path / "t")
    path = tmp_path / "t" / "pvc.yaml.j2"
    path.write_text(path.read_text().replace('accessModes: ["ReadWriteOnce"]', 'accessModes: ["ReadWriteMany"]'))
    result = run_cli("render", str(SAMPLE), env=clean_environ(TEMPLATES_DIR=str(tmp_path / "t")))
    assert result.returncode == 0
    assert result.stdout.count("ReadWriteMany") == 2


def test_every_packaged_template_is_required():
    assert sorted(p.name for p in config_module.PACKAGED_TEMPLATES_DIR.iterdir()) == sorted(TEMPLATE_FILES)


@pytest.mark.parametrize("bad", ["abc", "-1", "65536", "9100.5"])
def test_bad_metrics_port_stops_check_config_naming_it(bad):
    result = run_cli("check-config", env=clean_environ(METRICS_PORT=bad))
    assert result.returncode == 78
    assert f"METRICS_PORT={bad!r}: must be an integer >= 0 and <= 65535" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_metrics_port_defaults_to_9100_and_0_turns_it_off():
    assert config_module.load({}).METRICS_PORT == 9100
    assert config_module.load({"METRICS_PORT": "0"}).METRICS_PORT == 0


def test_secret_variables_are_kept_as_secret_strings():
    cfg = config_module.load({"OPERATOR_PRIVATE_KEY": KNOWN_KEY[2:], "AWS_SECRET_ACCESS_KEY": "very-secret"})
    secrets = {v.name for v in config_module.VARIABLES if v.secret}
    assert secrets == {
        "OPERATOR_PRIVATE_KEY",
        "IPFS_API_KEY",
        "IPFS_API_CLIENT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert isinstance(cfg.AWS_SECRET_ACCESS_KEY, SecretStr) and str(cfg.AWS_SECRET_ACCESS_KEY) == "**********"
    assert cfg.AWS_SECRET_ACCESS_KEY.get_secret_value() == "very-secret"
    assert cfg.OPERATOR_PRIVATE_KEY is not None
    assert cfg.OPERATOR_PRIVATE_KEY.get_secret_value() == KNOWN_KEY  # normalized with its 0x prefix
    assert cfg.consumer_address == KNOWN_ADDRESS


def test_a_bad_secret_is_named_but_its_value_never_shown():
    with pytest.raises(config_module.ConfigError) as caught:
        config_module.load({"IPFS_API_KEY": "line-one\nsecret-line-two", "nCPU": "x"})
    assert caught.value.problems == ["nCPU='x': must be an integer >= 1", "IPFS_API_KEY: must be a single line"]
    assert "secret-line-two" not in str(caught.value)


def test_a_blank_value_means_unset():
    cfg = config_module.load({"nCPU": "   ", "OPERATOR_NAMESPACE": "\t", "LOG_FORMAT": " "})
    assert (cfg.nCPU, cfg.OPERATOR_NAMESPACE, cfg.LOG_FORMAT) == (1, "ocean-compute", None)


def test_a_given_mapping_is_the_whole_environment_and_without_one_the_process_environment_is_read(monkeypatch):
    monkeypatch.setenv("nCPU", "7")
    monkeypatch.setenv("NCPU", "9")  # names are case-sensitive: not nCPU
    assert config_module.load({}).nCPU == 1
    assert config_module.load().nCPU == 7
    monkeypatch.setenv("maxJobs", "many")
    with pytest.raises(config_module.ConfigError, match=r"^invalid configuration: maxJobs='many': must be"):
        config_module.load()


def test_the_configuration_builds_on_no_renderer():
    """Rendering builds on the configuration, never the reverse, not even through an import inside a function.

    The templates are checked by `render.load_checked_config`, which the operator, the
    command line and the demo call: operator_engine/config.py itself imports no renderer.
    """
    tree = ast.parse(Path(config_module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert "operator_engine.facts" in imported  # the walk sees config's imports
    assert "operator_engine.render" not in imported, sorted(imported)
