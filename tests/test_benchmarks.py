"""``qgf bench``: dispatch to ``benchmarks.<name>`` modules, and the guidance table."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from benchmarks import cli
from core.cli import main as qgf_main


def _fake(name: str, calls: list, quick: bool = True) -> types.ModuleType:
    module = types.ModuleType(f"benchmarks.{name}")
    module.HELP = f"fake {name}"

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=1)
        if quick:
            parser.add_argument("--quick", action="store_true")

    def run(args: argparse.Namespace) -> int:
        calls.append((name, vars(args)))
        return 0

    module.add_arguments, module.run = add_arguments, run
    return module


@pytest.fixture
def fakes(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "benchmarks.fake_a", _fake("fake_a", calls))
    monkeypatch.setitem(sys.modules, "benchmarks.fake_b", _fake("fake_b", calls, quick=False))
    monkeypatch.setattr(cli, "BENCHMARKS", ("fake_a", "missing", "fake_b"))
    monkeypatch.setattr(cli, "available", lambda named=True: ["fake_a", "fake_b"])

    def in_process(name: str, options: list[str]) -> int:  # the fakes live in this process
        parser, module = cli._parser(name)
        return int(module.run(parser.parse_args(options)) or 0)

    monkeypatch.setattr(cli, "run_apart", in_process)
    return calls


def _bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qgf bench")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_bench_runs_the_named_benchmark_with_its_options(fakes):
    assert _bench(["fake_a", "--n", "3", "--quick"]) == 0
    assert fakes == [("fake_a", {"n": 3, "quick": True})]


def test_bench_without_a_name_runs_every_one_and_passes_quick_where_known(fakes, capsys):
    assert _bench(["--quick"]) == 0
    assert fakes == [("fake_a", {"n": 1, "quick": True}), ("fake_b", {"n": 1})]
    assert "== qgf bench fake_a" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # options without a benchmark name are refused
        _bench(["--n", "2"])


def test_the_soak_runs_only_when_named():
    assert "soak" in cli.available() and "soak" not in cli.available(named=False)


def test_each_benchmark_of_a_full_run_gets_a_process_of_its_own(capfd):
    assert cli.run_apart("guidance", ["--help"]) == 0
    assert "qgf bench guidance" in capfd.readouterr().out


def test_available_lists_existing_modules_in_order():
    names = cli.available()
    assert names[0] == "guidance"
    assert all(n in cli.BENCHMARKS + cli.NAMED_ONLY for n in names)


def test_qgf_bench_guidance_prints_the_table(capsys):
    argv = ["bench", "guidance", "--quick", "--batches", "1", "--estimators", "qgf"]
    assert qgf_main([*argv, "--best-of", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    # Table rows: label, ms, x unguided (wall), x unguided (CPU), MFLOP per action.
    lines = {row[0]: row for row in map(str.split, out.splitlines()) if len(row) == 5}
    for label in ("unguided", "qgf", "none+best_of_2", "qgf+best_of_2"):
        assert float(lines[label][1]) > 0 and float(lines[label][-1]) > 0
    assert float(lines["unguided"][2]) == 1.0
    assert float(lines["qgf+best_of_2"][-1]) == pytest.approx(2 * float(lines["qgf"][-1]))
    assert "qgf at batch 1:" in out


@pytest.mark.slow
def test_bench_sweep_spreads_cells_across_simulated_nodes(tmp_path):
    import ray

    from benchmarks import sweep

    assert not ray.is_initialized()  # the run must build and join its own cluster
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    args = parser.parse_args(["--episodes", "1", "--max-episode-steps", "2", "--nodes", "2"])
    nodes, seconds = sweep._multi_node(args, tmp_path)
    assert sum(nodes.values()) == 4 and len(nodes) == 2 and seconds > 0
    assert not ray.is_initialized()
