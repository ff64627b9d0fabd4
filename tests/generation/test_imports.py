"""Imports run one way: the generation app never imports queueadmin.

queueadmin builds on generation (its console, statistics and live settings
join each service through generation.runtime.registry.on_service_start), so
an import the other way would tie the chat to the console. Checked on the
source, so that an import inside a function, which only runs later, is
caught too. The same kind of check on the source: the request record is
built in one place (issue #10).
"""

import ast
from pathlib import Path

GENERATION = Path(__file__).resolve().parents[2] / "generation"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_generation_never_imports_queueadmin():
    offenders = [
        f"{path.relative_to(GENERATION.parent)}:{line} imports {module}"
        for path in sorted(GENERATION.rglob("*.py"))
        for line, module in imported_modules(path)
        if module == "queueadmin" or module.startswith("queueadmin.")
    ]
    assert offenders == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from queueadmin.control import attach\n    import queueadmin.stats\n")
    assert imported_modules(sample) == [(2, "queueadmin.control"), (3, "queueadmin.stats")]


def record_builders(path: Path) -> list[int]:
    """Lines of the file that call RequestRecord(...) itself (by name or as
    an attribute), rather than RequestRecord.of."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "RequestRecord"
    ]


def test_the_request_record_is_built_in_one_place():
    """Issue #10: every request record comes from RequestRecord.of, so that
    a finished and an interrupted request are recorded alike."""
    records = GENERATION / "runtime" / "types" / "records.py"
    offenders = [
        f"{path.relative_to(GENERATION.parent)}:{line}"
        for app in (GENERATION, GENERATION.parent / "queueadmin")
        for path in sorted(app.rglob("*.py"))
        if path != records
        for line in record_builders(path)
    ]
    assert offenders == []


def test_the_record_check_sees_direct_construction(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from generation.runtime import types\n"
        "a = RequestRecord(request_id='x')\n"
        "b = types.RequestRecord(request_id='y')\n"
        "c = RequestRecord.of(request, worker='w')\n"
    )
    assert record_builders(sample) == [2, 3]
