"""The product without its test double: the operator imports and runs without the [dev] extra.

`operator-engine demo` and `dev` need the embedded cluster (KMock and the
other packages of the [dev] extra); without them they say so in one line.
Importing `operator_engine.operator_main` only registers kopf handlers: the
configuration is read and checked by the startup handler (or given in kopf's
memo), so importing it with a bad environment neither exits nor writes
anything nor changes the process's environment, logging or client settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from operator_engine import cli

from .conftest import ROOT, clean_environ

#: Run before the code under test in a child process: every module of the [dev] extra fails to
#: import, as in the production image, which installs requirements.txt without the extra.
HIDE_DEV_EXTRA = textwrap.dedent(
    """
    import sys
    from operator_engine import cli
    HIDDEN = {name.replace("-", "_") for name in cli._dev_extra_requirements()}
    assert "kmock" in HIDDEN, HIDDEN
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Hide())
    for name in [m for m in sys.modules if m.split(".")[0] in HIDDEN]:
        del sys.modules[name]
    """
)


OPERATOR_MODULE = "operator_engine.operator_main"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=clean_environ(**env),
        cwd=ROOT,
        timeout=120,
    )


def test_the_dev_extra_is_kmock_and_what_only_the_embedded_cluster_uses() -> None:
    assert set(cli._dev_extra_requirements()) == {"kmock", "kubernetes", "cryptography"}
    assert cli.missing_dev_extra() == []  # the test environment has it (requirements_dev.txt)


def test_demo_and_dev_without_the_dev_extra_name_it_in_one_line() -> None:
    for command in ("demo", "dev"):
        result = run_python(HIDE_DEV_EXTRA + f"sys.exit(cli.main([{command!r}, '--workdir', '/nonexistent/x']))")
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"operator-engine: {command} needs the [dev] extra (the embedded cluster), which is not installed "
            "(missing: kmock, kubernetes, cryptography): pip install 'operator-engine[dev]'"
        ], result.stderr
        assert result.stdout == ""


def test_the_operator_and_the_other_commands_work_without_the_dev_extra() -> None:
    code = HIDE_DEV_EXTRA + textwrap.dedent(
        """
        import operator_engine.operator_main, operator_engine.engine, operator_engine.kube, operator_engine.leader
        import operator_engine.pods.configure, operator_engine.pods.publish
        sys.exit(cli.main(["check-config"]))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["maxJobs"] == 5


def test_importing_operator_main_with_a_bad_configuration_has_no_side_effect() -> None:
    code = textwrap.dedent(
        """
        import json, logging, os, sys
        from kubernetes_asyncio.client import Configuration
        environ, root_handlers = dict(os.environ), list(logging.getLogger().handlers)
        default_host = Configuration.get_default_copy().host
        import operator_engine.operator_main
        print(json.dumps({
            "environ unchanged": dict(os.environ) == environ,
            "logging unchanged": logging.getLogger().handlers == root_handlers,
            "client default unchanged": Configuration.get_default_copy().host == default_host,
        }))
        """
    )
    result = run_python(code, nCPU="abc", LOG_FORMAT="yaml", KUBECONFIG="/nonexistent/kubeconfig")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == {
        "environ unchanged": True,
        "logging unchanged": True,
        "client default unchanged": True,
    }


def test_the_startup_handler_stops_a_bad_configuration_with_one_line() -> None:
    """What `kopf run -m operator_engine.operator_main` (the image's command) does with it: exit 78."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kopf",
            "run",
            "--standalone",
            "-n",
            "ocean-compute",
            "-m",
            "operator_engine.operator_main",
        ],
        capture_output=True,
        text=True,
        env=clean_environ(nCPU="abc", KUBECONFIG="/nonexistent/kubeconfig"),
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 78, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "operator-engine: configuration error: nCPU='abc': must be an integer >= 1"
    )
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
