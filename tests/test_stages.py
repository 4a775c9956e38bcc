"""dvc.yaml against the code: each stage is one hop (stages/X.py calls its library function) and lists
exactly the library modules it runs as deps, derived here from the import graph."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "colorizer"


def module_file(module: str) -> Path:
    """`training.train` -> src/colorizer/training/train.py; a package -> its __init__.py."""
    path = LIBRARY.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def colorizer_imports(path: Path) -> set[str]:
    """The colorizer modules a file imports anywhere (top level or inside functions: both run), as
    dotted names below colorizer (`training.train`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "colorizer":
            package = node.module.partition(".")[2]
            if package:
                found.add(package)
            # from colorizer.training import train as training: a module, not a name in a module
            prefix = f"{package}." if package else ""
            found |= {prefix + a.name for a in node.names if module_file(prefix + a.name).is_file()}
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.startswith("colorizer.")}
    return found


def modules_run_by(script: Path) -> set[str]:
    """Every library file reachable from a stage script (the transitive import closure), with the
    __init__.py of every package on the way (importing colorizer.data.lab runs colorizer/__init__.py
    and colorizer/data/__init__.py first)."""
    todo, seen = list(colorizer_imports(script)), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(colorizer_imports(module_file(module)))
    files = {module_file(module) for module in seen}
    for module in seen:
        parts = module.split(".")
        files |= {LIBRARY.joinpath(*parts[:depth], "__init__.py") for depth in range(len(parts))}
    return {str(file.relative_to(ROOT)) for file in files}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_lists_exactly_the_library_modules_it_imports():
    for name, stage in stages().items():
        script = re.search(r"(?:python|torchrun)\b.*?(stages/\S+\.py)", stage["cmd"]).group(1)
        listed = {dep for dep in stage["deps"] if isinstance(dep, str)}
        assert script in listed, f"{name}: its script {script} is not a dep"
        expected = modules_run_by(ROOT / script)
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
        "def f():\n    from colorizer.training import train as training\n    import colorizer.data.lab\n"
    )
    assert colorizer_imports(sample) == {"config", "training", "training.train", "data.lab"}


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


def test_training_runs_no_inference_or_serving_code():
    """An edit to inference or serving code re-runs `register` (and the stages that colorize), never
    `train`: neither train's deps nor the resume fingerprint's code hold a module of colorize/ or
    serving/, so a resumable checkpoint is not thrown away for it."""
    from colorizer.training.resume import training_code_files

    train_deps = [dep for dep in stages()["train"]["deps"] if dep.startswith("src/")]
    assert train_deps and not [
        dep for dep in train_deps if dep.startswith(("src/colorizer/colorize/", "src/colorizer/serving/"))
    ]
    fingerprinted = {path.resolve().relative_to(LIBRARY).parts[0] for path in training_code_files()}
    assert fingerprinted == {"training"}


def test_the_library_imports_in_layers():
    """Shared ground (the top-level modules but cli), then data/, training/, colorize/, serving/, and
    cli on top: no module imports one of a higher layer (so there are no circles between them)."""
    layers = {"": 0, "data": 1, "training": 2, "colorize": 3, "serving": 4, "cli": 5}

    def layer(module: str) -> int:
        package = module.split(".")[0] if "." in module else ("cli" if module in ("cli", "__main__") else "")
        return layers[package]

    upward = []
    for path in LIBRARY.rglob("*.py"):
        module = ".".join(path.relative_to(LIBRARY).with_suffix("").parts).removesuffix(".__init__")
        for imported in colorizer_imports(path):
            if imported in layers and "." not in imported and imported != "cli":
                continue  # a package's __init__ (a docstring): below everything
            if layer(imported) > layer(module):
                upward.append(f"{module} -> {imported}")
    assert not upward, upward
