"""The README's examples run: its Python blocks are executed on a small trained model,
and every ``basinscope`` command line in its shell blocks is parsed by the real parser
(so a renamed function, module or flag cannot stay in the documentation)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

import basinscope as bs
from basinscope.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    text = README.read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _namespace(tmp_path: Path) -> dict:
    """What the README's library block assumes: a trained model and its data, other
    minima, a run directory with a trajectory, and two surfaces to draw side by side."""
    from basinscope.training import TrainConfig, load_config_data, train

    cfg = TrainConfig(
        dataset="digits",
        model_kwargs={"widths": [16]},
        train_size=300,
        epochs=30,
        batch_size=32,
        lr=0.2,
        snapshot_every=10,
    )
    runs = [train(cfg, out_dir=tmp_path / "runs" / "a", progress=False)]
    runs += [train(cfg.__class__(**{**cfg.to_dict(), "seed": s}), progress=False) for s in (1, 2)]
    data = load_config_data(cfg)
    model = runs[0].model
    obj = bs.Objective(model, torch.nn.CrossEntropyLoss(), (data.x_train, data.y_train))
    d = bs.random_directions(obj, 2, seed=1)
    surf_a, surf_b = (bs.plane(obj, d[0], d[1], steps=5, span=(-s, s)) for s in (0.5, 1.0))
    return {
        "model": model,
        "X": data.x_train,
        "y": data.y_train,
        "X_test": data.x_test,
        "y_test": data.y_test,
        "loss_fn": torch.nn.CrossEntropyLoss(),
        "other_model": runs[1].model,
        "m100": runs[0].model,
        "m10": runs[1].model,
        "m1": runs[2].model,
        "surf_a": surf_a,
        "surf_b": surf_b,
        "net": _mlp(4, 2, 0),  # the policy examples' networks
        "other_policy": _mlp(4, 2, 1),
    }


def _mlp(n_in: int, n_out: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 32), torch.nn.Tanh(), torch.nn.Linear(32, n_out)
    )


def test_the_library_examples_run(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert blocks, "the README has no Python example"
    namespace = _namespace(tmp_path)
    monkeypatch.chdir(tmp_path)  # "runs/a", "surface.h5", figures land here
    # the torchrun example joins a process group from the environment: here, of one rank
    for key, value in _one_rank_group().items():
        monkeypatch.setenv(key, value)
    before = {k: v.state_dict() for k, v in namespace.items() if isinstance(v, torch.nn.Module)}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    assert bs.Surface.load(tmp_path / "plane.h5").complete  # written by "rank 0"
    # what the examples claim: a resumable surface file, figures, a finite volume
    assert bs.Surface.load(tmp_path / "surface.h5").complete
    assert (tmp_path / "contour.png").stat().st_size > 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert namespace["vol"].log_volume > -float("inf")
    for name, state in before.items():  # the user's models are untouched
        after = namespace[name].state_dict()
        assert all(torch.equal(state[k], after[k]) for k in state), name


def _one_rank_group() -> dict[str, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}


def _command_lines() -> list[str]:
    """Every ``basinscope ...`` line of the shell blocks, also after ``torchrun ... -m``."""
    lines = []
    for block in _blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("torchrun ") or part.startswith("srun torchrun "):
                    assert " -m basinscope " in part, part
                    part = "basinscope " + part.split(" -m basinscope ", 1)[1]
                if part.startswith("basinscope "):
                    lines.append(part)
    return lines


@pytest.mark.parametrize("line", _command_lines())
def test_every_documented_command_line_parses(line):
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_the_readme_documents_the_commands():
    assert len(_command_lines()) >= 20
    assert {shlex.split(line)[1] for line in _command_lines()} >= {
        "run", "train", "surface", "sharpness", "hessian", "volume", "path", "report", "plot",
    }  # fmt: skip
