"""The distribution installs the three import packages and the console script."""

import subprocess
import sys
from importlib.metadata import distribution, packages_distributions


def test_packages_come_from_the_installed_distribution():
    owners = packages_distributions()
    for package in ("fusion", "lm", "hmm"):
        assert set(owners.get(package, ())) == {"asrfuse"}, package
        module = __import__(package)
        assert module.__doc__


def test_console_script_is_declared_and_runs():
    scripts = [ep for ep in distribution("asrfuse").entry_points if ep.group == "console_scripts"]
    assert [(ep.name, ep.value) for ep in scripts] == [("fusion", "fusion.cli:main")]
    out = subprocess.run([sys.executable, "-m", "fusion.cli", "--help"],
                         capture_output=True, text=True, check=True)
    for command in ("decode", "score", "demo"):
        assert command in out.stdout
