"""`gradflow models` as a user runs it: a subprocess, its output and exit codes."""

import io
import subprocess
import sys

import pandas as pd


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradflow", *args], capture_output=True, text=True, timeout=300
    )


def test_models_table_lists_the_zoo_with_exact_counts():
    result = run("models", "--csv")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout)).set_index("name")
    assert table.loc["resnet56", "params"] == 853_018
    assert table.loc["plain56", "params"] == 853_018
    assert table.loc["resnet56", "blocks"] == 27
    assert table.loc["resnet152", "params"] == 60_192_808
    assert abs(table.loc["resnet34", "GMACs"] - 3.6) / 3.6 < 0.05
    assert set(table["family"]) == {"cifar", "cifar-preact", "imagenet"}


def test_models_pretty_table_and_unknown_family_exit_code():
    pretty = run("models", "--family", "imagenet")
    assert pretty.returncode == 0 and "resnet101" in pretty.stdout and "44,549,160" in pretty.stdout
    bad = run("models", "--family", "nope")
    assert bad.returncode == 2
    assert "no models in family" in bad.stderr and "Traceback" not in bad.stderr
