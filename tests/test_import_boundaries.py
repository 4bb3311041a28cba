"""Import boundaries from DESIGN.md, each checked in a fresh interpreter."""

import subprocess
import sys

import pytest

STAGE_PACKAGES = ["ingest", "curation", "sharding", "partners"]
ALL_PACKAGES = ["alliance", "partners", "ingest", "curation", "sharding", "pipelines", "training"]


def modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return {name.split(".")[0] for name in result.stdout.split()}


def package_modules(package: str) -> list[str]:
    """Every module of the package, so the test covers what each module imports at top level."""
    import pkgutil
    import importlib.util

    spec = importlib.util.find_spec(package)
    names = [package]
    for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{package}."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", STAGE_PACKAGES)
def test_stage_packages_import_neither_beam_nor_torch(package):
    modules = [m for m in package_modules(package) if not m.endswith("__main__")]
    loaded = modules_after_import("; ".join(f"import {m}" for m in modules))
    assert "apache_beam" not in loaded, f"importing {package} pulled in apache_beam"
    assert "torch" not in loaded, f"importing {package} pulled in torch"


def test_kernel_imports_no_other_package():
    modules = [m for m in package_modules("alliance") if not m.startswith("alliance.migrations.")]
    loaded = modules_after_import("; ".join(f"import {m}" for m in modules))
    others = set(ALL_PACKAGES) - {"alliance"}
    assert not (loaded & others), f"the kernel imported {sorted(loaded & others)}"
    assert "apache_beam" not in loaded and "torch" not in loaded


def test_cli_help_stays_light():
    loaded = modules_after_import("import alliance.cli.main")
    assert not (loaded & {"apache_beam", "torch", "av", "great_expectations", "fastapi"})
