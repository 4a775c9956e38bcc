"""dvc.yaml against the code: each stage is one hop (stages/X.py calls its library function) and lists
exactly the library modules it runs as deps, derived here from the import graph."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "colorizer"


def colorizer_imports(path: Path) -> set[str]:
    """The colorizer modules a file imports anywhere (top level or inside functions: both run)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "colorizer":
            if node.module == "colorizer":  # from colorizer import train as training
                found |= {alias.name for alias in node.names if (LIBRARY / f"{alias.name}.py").is_file()}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("colorizer.")}
    return found


def modules_run_by(script: Path) -> set[str]:
    """Every library module reachable from a stage script (the transitive import closure)."""
    todo, seen = list(colorizer_imports(script)), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(colorizer_imports(LIBRARY / f"{module}.py"))
    seen.add("__init__")  # importing colorizer.x runs colorizer/__init__.py first
    return seen


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_lists_exactly_the_library_modules_it_imports():
    for name, stage in stages().items():
        script = re.search(r"(?:python|torchrun)\b.*?(stages/\S+\.py)", stage["cmd"]).group(1)
        listed = {dep for dep in stage["deps"] if isinstance(dep, str)}
        assert script in listed, f"{name}: its script {script} is not a dep"
        expected = {f"src/colorizer/{module}.py" for module in modules_run_by(ROOT / script)}
        listed_library = {dep for dep in listed if dep.startswith("src/")}
        assert listed_library == expected, (
            f"dvc.yaml stage {name}: missing {sorted(expected - listed_library)}, "
            f"not imported {sorted(listed_library - expected)}"
        )


def test_each_stage_script_is_named_after_its_stage_and_function():
    for name, stage in stages().items():
        script = ROOT / re.search(r"(?:python|torchrun)\b.*?(stages/\S+\.py)", stage["cmd"]).group(1)
        assert script.stem == name
        tree = ast.parse(script.read_text())
        functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
        assert functions == [name], f"{script.name} should define one function, {name}()"
        assert re.search(rf"stage_main\({name}(, distributed=True)?\)", script.read_text())


def test_the_import_graph_reader_sees_lazy_and_aliased_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text(
        "from colorizer.config import load_params\n"
        "def f():\n    from colorizer import train as training\n    import colorizer.lab\n"
    )
    assert colorizer_imports(sample) == {"config", "train", "lab"}


def test_a_typo_in_params_stops_the_train_stage_with_one_line(tmp_path):
    """One rank trains in the stage's own process: a bad key is the one-line message, with none of
    torchrun's report of a failed child around it."""
    import subprocess
    import sys

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["epoch"] = params["train"].pop("epochs")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    flags = ["--shards", "s", "--model", "m", "--state", "st", "--plots", "p.csv", "--samples", "s.png"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py"), *flags, "--metrics", "m.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "colorizer train: params.yaml: train.epoch: unknown key (check the spelling against params.yaml's "
        "documented keys)"
    ]
