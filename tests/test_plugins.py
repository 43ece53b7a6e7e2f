"""Extensions without forking: the README's out-of-tree decoder trains, tests, exports and predicts from the CLI
(its runs rebuild with no flag); installed entry points and SEGLAB_PLUGINS load basenets, decoders and
datasets in a fresh process, also for `seglab.build_model`; a plugin that cannot be imported is one line."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import seglab.cli
from seglab.models import DECODERS

ROOT = Path(__file__).parents[1]
TINY = shlex.split(
    "--basenet resnet10t --pretrained none --iters 1 --batch-size 2 --crop 32 "
    "--dataset-options length=4 size=32 --workers 0 --eval-every 0 --device cpu"
)


def readme_module() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- example: add-your-own-decoder -->\n```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """A folder on sys.path holding the README's my_decoders.py; the registry and sys.modules are restored."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "my_decoders.py").write_text(readme_module())
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(DECODERS, "_entries", dict(DECODERS._entries))
    monkeypatch.delitem(sys.modules, "my_decoders", raising=False)
    return folder


def forget_plugin(monkeypatch) -> None:
    """Make the next command import my_decoders afresh, as a new process would."""
    monkeypatch.delitem(DECODERS._entries, "tinyfpn")
    monkeypatch.delitem(sys.modules, "my_decoders")


def test_readme_decoder_plugin_runs_through_train_test_export_and_predict(plugin_folder, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    assert (
        seglab.cli.main(
            [
                *["train", "--plugins", "my_decoders", "--decoder", "tinyfpn", "--decoder-options", "width=16"],
                *TINY,
                *["--runs-root"],
                str(runs),
                *["--run-name", "mine"],
            ]
        )
        == 0
    )
    run = runs / "mine"
    runargs = yaml.safe_load((run / "runargs.yaml").read_text())
    assert runargs["plugins"] == ["my_decoders"] and runargs["decoder"] == "tinyfpn"
    forget_plugin(monkeypatch)
    assert seglab.cli.main(["test", str(run), "--bootstrap", "20", "--workers", "0"]) == 0
    summary = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    assert summary["model"]["decoder"] == "tinyfpn" and summary["num_images"] == 4
    forget_plugin(monkeypatch)
    assert seglab.cli.main(["export", str(run)]) == 0
    exported = json.loads((run / "export" / "export.json").read_text())
    assert exported["decoder"] == "tinyfpn" and json.loads(exported["plugins"]) == ["my_decoders"]
    assert all(check["max_abs_diff"] <= 1e-3 for check in exported["checks"])
    forget_plugin(monkeypatch)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photo)
    assert seglab.cli.main(["predict", str(run), str(photo), "--out", str(tmp_path / "pred")]) == 0
    assert np.array(Image.open(tmp_path / "pred" / "labels" / "photo.png")).shape == (40, 50)
    # Without the module on the path, the run names the plugin it needs, in one line.
    forget_plugin(monkeypatch)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(plugin_folder)])
    capsys.readouterr()
    assert seglab.cli.main(["test", str(run), "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"seglab test: error: plugin module 'my_decoders' (named by the config of {run}/checkpoints/"
        "last.pt) cannot be imported (No module named 'my_decoders'): install it, or put its folder on "
        "PYTHONPATH"
    )


def test_models_lists_a_plugin_decoder_and_unknown_modules_are_one_line(plugin_folder, capsys):
    assert (
        seglab.cli.main(
            shlex.split("models --plugins my_decoders --basenets mobilenet_v2 --decoders tinyfpn --size 64")
        )
        == 0
    )
    assert "| mobilenet_v2 | tinyfpn |" in capsys.readouterr().out
    assert seglab.cli.main(["models", "--plugins", "no_such_plugin", "--list"]) == 1
    assert capsys.readouterr().err.strip() == (
        "seglab models: error: plugin module 'no_such_plugin' cannot be imported (No module named "
        "'no_such_plugin'): install it, or put its folder on PYTHONPATH"
    )


PLUGIN_PACKAGE = '''
"""An installed plugin: a basenet, a decoder and a dataset."""
from torch import nn

from seglab.data.base import DATASETS
from seglab.data.synthetic import Synthetic
from seglab.models import DECODERS
from seglab.models.basenets import register, timm_spec
from seglab.models.meta import Decoder

register(timm_spec("plugin_resnet", "resnet10t", "ResNet10-T, registered by a plugin"))


@DATASETS.register("plugin_shapes")
class PluginShapes(Synthetic):
    """The embedded shapes under a plugin's name."""


@DECODERS.register("plugin_head")
class PluginHead(Decoder):
    name = "plugin_head"

    def __init__(self, basenet, num_classes):
        super().__init__(basenet, num_classes)
        self.score = nn.Conv2d(self.taps[32].channels, num_classes, 1)

    def decode_deepest(self, x):
        return self.score(x)
'''


def test_entry_points_and_seglab_plugins_load_in_a_fresh_process(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "seglab_demo_plugin.py").write_text(textwrap.dedent(PLUGIN_PACKAGE))
    dist = site / "seglab_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: seglab-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[seglab.plugins]\ndemo = seglab_demo_plugin\n")
    (site / "env_plugin.py").write_text(
        "from seglab.models import DECODERS\nDECODERS.register('env_head')(DECODERS['plugin_head'])\n"
    )
    script = textwrap.dedent("""
        import seglab
        from seglab.cli import main
        model = seglab.build_model("plugin_resnet", "plugin_head", 3)   # a name no registry knows loads plugins
        print("built", type(model.decoder).__name__, model.basenet.timm_name)
        main(["models", "--list"])
        main(["data", "list"])
    """)
    env = {**os.environ, "PYTHONPATH": str(site), "SEGLAB_PLUGINS": "env_plugin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "built PluginHead resnet10t" in lines
    assert "plugin_resnet" in next(line for line in lines if line.startswith("basenets:"))
    decoders = next(line for line in lines if line.startswith("decoders:"))
    assert "plugin_head" in decoders and "env_head" in decoders
    assert any(line.startswith("plugin_shapes") for line in lines)
