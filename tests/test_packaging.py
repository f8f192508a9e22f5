"""The package as a new user meets it: the README's quick start, ``spatial-attn --help``, and a wheel
installed into a fresh environment that finds the bundled models and the example faces."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from spatial_attn import cli

ROOT = Path(__file__).resolve().parents[1]


def test_quick_start_is_two_commands_and_the_first_installs_the_command():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n+```bash\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    first = commands[0].split("#")[0]
    # an install of this folder (so `spatial-attn` exists afterwards), then the app
    assert re.search(r"pip install (-e )?\.(\[[a-z,]+\])? ", first) and "python app.py" in first


def _every_option(parser):
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            yield parser.prog, action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_option(sub)


def test_help_is_plain_text_and_every_option_says_its_default(capsys):
    parser = cli.build_parser()
    for prog, action in _every_option(parser):
        assert action.help, f"{prog} {action.option_strings} has no help"
        shown = cli.PlainHelp(prog)._get_help_string(action)
        assert "default" in shown, f"{prog} {action.option_strings}: {shown!r}"
    for argv in (
        ["--help"],
        ["serve", "--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["faces", "--help"],
    ):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert "``" not in out and ":class:" not in out and "usage: spatial-attn" in out


def test_faces_writes_faces_and_nothing_else(tmp_path, capsys):
    assert cli.main(["faces", "--out", str(tmp_path / "faces")]) == 0
    printed = capsys.readouterr().out.split()
    written = sorted(str(p) for p in (tmp_path / "faces").iterdir())
    assert sorted(printed) == written and all(p.endswith(".png") for p in written)
    assert [p.name for p in tmp_path.iterdir()] == ["faces"]


def test_missing_checkpoints_say_where_they_were_looked_for(tmp_path, monkeypatch):
    from spatial_attn import resources

    monkeypatch.setenv("SPATIAL_ATTN_CHECKPOINTS", str(tmp_path / "nowhere"))
    message = resources.searched("checkpoints")
    assert str(tmp_path / "nowhere") in message and "SPATIAL_ATTN_CHECKPOINTS" in message
    monkeypatch.delenv("SPATIAL_ATTN_CHECKPOINTS")
    assert resources.locate("checkpoints") == ROOT / "checkpoints"


@pytest.mark.slow
def test_an_installed_wheel_finds_its_models_and_faces_outside_the_checkout(tmp_path):
    source = tmp_path / "src"  # built from a copy: building in place would leave build/ in the checkout
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("spatial_attn", "checkpoints", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)], check=True
    )
    wheel = next(tmp_path.glob("spatial_attn-*.whl"))
    env_dir = tmp_path / "env"  # a fresh environment that borrows this one's torch, gradio ...
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPATIAL_ATTN")}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "text": True, "check": True}
    helped = subprocess.run([env_dir / "bin" / "spatial-attn", "--help"], **run).stdout
    assert "usage: spatial-attn" in helped
    probe = (
        "import spatial_attn, spatial_attn.app.blocks as app\n"
        "print(spatial_attn.__file__)\n"
        "print(spatial_attn.load_model('vit-faces').name, spatial_attn.load_model('judge-faces').name, "
        "len(app.examples()))\n"
    )
    where, loaded = subprocess.run([python, "-c", probe], **run).stdout.splitlines()[-2:]
    assert where.startswith(str(env_dir)) and loaded == "vit-faces judge-faces 10"
