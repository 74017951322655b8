"""The layout keeps its promises: DVC stages depend on every module they import, every registered job
has a stage, and the package has no import circles and few import floors."""

from __future__ import annotations

import ast
import functools
import re

import pytest
import yaml
from import_graph import REPO, _type_checking_only, all_modules, closure, imports_of, is_trivial, module_file, \
    targets_in

from pipeline.job import primary_config
from pipeline.registry import JOBS, VISUALIZATIONS

# The deepest stack: command (pipeline/<job>.py) -> job -> subject (the model under study + data) ->
# model sources (which model the config names) -> checkpoint / external models -> architectures ->
# layers (hooks) -> errors. One floor per concept; a new floor needs a new concept, not a detour.
MAX_FLOORS = 8


def stage_files(stage: dict) -> set[str]:
    """Repo files a stage's command executes: the module of ``python -m <module>`` and what it imports."""
    match = re.match(r"python -m ([\w.]+)", stage["cmd"])
    assert match, f"stage command {stage['cmd']!r} is not `python -m <module>`"
    roots = {match.group(1)}
    configs = [file for entry in stage.get("params", []) for file in (entry if isinstance(entry, dict) else [])]
    configs += [d for d in stage.get("deps", []) if d.startswith("conf/")]  # read at run time (conf/attribution)
    for path in (REPO / c for c in configs):
        for file in sorted(path.rglob("*.yaml")) if path.is_dir() else [path]:
            roots |= targets_in(file.read_text())
    files = {module_file(m) for m in closure(roots)}
    return {str(p.relative_to(REPO)) for p in files if not is_trivial(p)}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@functools.cache
def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_every_module_it_imports(name):
    stage = stages()[name]
    missing = sorted(f for f in stage_files(stage) if not covered(f, stage.get("deps", [])))
    assert not missing, (f"dvc.yaml stage {name!r} imports modules it does not list in deps, so editing them "
                         f"would not rerun it: add {missing}")


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_list_no_code_it_does_not_run(name):
    stage = stages()[name]
    code = [d for d in stage.get("deps", []) if d.endswith(".py")]
    extra = sorted(set(code) - stage_files(stage))
    assert not extra, f"dvc.yaml stage {name!r} lists code it never imports (needless reruns): {extra}"


@pytest.mark.parametrize("job", JOBS.values(), ids=list(JOBS))
def test_every_registered_job_has_its_stage(job):
    assert job.name in stages(), f"registered job {job.name!r} has no stage in dvc.yaml"
    stage = stages()[job.name]
    assert stage["cmd"] == job.command
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
    assert set(job.outputs) <= set(outs)
    metrics = [next(iter(m)) if isinstance(m, dict) else m for m in stage.get("metrics", [])]
    assert job.metrics is None or job.metrics in metrics
    assert module_file(f"pipeline.{job.name}"), f"no command module pipeline/{job.name}.py"
    assert module_file(job.module) and primary_config(job.name) == job.config


def test_every_stage_is_a_registered_job():
    assert sorted(stages()) == sorted(JOBS)


def test_report_depends_on_every_visualization():
    deps = stages()["report"]["deps"]
    for job in VISUALIZATIONS:
        assert set(job.outputs) | {job.metrics} <= set(deps), job.name


def test_no_import_circles_and_few_floors():
    modules = all_modules()
    floors: dict[str, int] = {}

    def floor(name: str, path: tuple[str, ...] = ()) -> int:
        assert name not in path, "import circle: " + " -> ".join([*path[path.index(name):], name])
        if name not in floors:
            floors[name] = 1 + max((floor(m, (*path, name)) for m in imports_of(name)), default=0)
        return floors[name]

    highest = max(floor(m) for m in modules)
    tops = [m for m in modules if floors[m] == highest]
    assert highest <= MAX_FLOORS, f"{highest} import floors (at most {MAX_FLOORS}); the top: {tops}"


def test_closure_walker_sees_function_level_imports_and_skips_type_checking(tmp_path):
    tree = ast.parse("import typing\nif typing.TYPE_CHECKING:\n    from pipeline.errors import X\n")
    assert _type_checking_only(tree.body[1])
    assert "pipeline.job" in imports_of("pipeline.model.listing")  # imported inside main()
    assert "pipeline.explain.saliency" in closure({"pipeline.saliency"})
