"""names.py: the choices the library accepts, defined once: the CLI's click choices, the
graph builder's strategies and the package version all come from it."""

import ast
import configparser
import importlib
import importlib.metadata
import os

import click
import pytest

import tfue_onnx
from tfue_onnx import cli, graph, names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --option -> the names.* tuple its click.Choice must list (in that order).
CHOICES = {"--method": names.METHODS, "--layout": names.LAYOUTS,
           "--sigma-mode": names.SIGMA_MODES, "--channel-order": names.CHANNEL_ORDERS,
           "--strategy": ("auto",) + names.STRATEGIES, "--provider": names.PROVIDERS}


def _choice_options():
    """(command, option, choices) for every click.Choice option of every tfue command."""
    for name, command in cli.main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
                for opt in param.opts:
                    yield name, opt, tuple(param.type.choices)


def test_the_clis_choices_are_the_names():
    seen = set()
    for command, opt, choices in _choice_options():
        if opt in CHOICES:
            assert choices == CHOICES[opt], (command, opt)
            seen.add(opt)
    assert seen == set(CHOICES)  # every name list is offered somewhere
    run = {opt: choices for command, opt, choices in _choice_options() if command == "run"}
    assert run["--method"] == names.METHODS and run["--strategy"][1:] == names.STRATEGIES


def test_the_graph_builder_takes_the_same_strategies():
    assert graph.STRATEGIES is names.STRATEGIES
    assert graph.GRAPH_STRATEGIES is names.GRAPH_STRATEGIES
    assert names.STRATEGIES == ("looped-suffix", "shared-prefix", "batched", "loop")
    assert set(names.AUTO_METHODS) <= set(names.METHODS)


@pytest.mark.parametrize("method,args,kind", [
    ("noise", {"at": "r1", "sigma": 0.1}, "Noise"), ("dropout", {"at": "r1", "rate": 0.1}, "Dropout"),
    ("mc-dropout", {}, "MCDropout"), ("transform", {}, "Transform"),
    ("ensemble", {"members": ("a.onnx", "b.onnx")}, "Ensemble"), ("entropy", {}, "Entropy")])
def test_every_method_name_makes_its_spec(method, args, kind):
    from tfue_onnx.errors import TfueError
    from tfue_onnx.perturb import make_spec

    assert type(make_spec(method, **args)).__name__ == kind
    if method == names.METHODS[-1]:
        assert [m for m in names.METHODS] == ["noise", "dropout", "mc-dropout", "transform",
                                              "ensemble", "entropy"]
        with pytest.raises(TfueError, match="unknown method 'gauss'") as err:
            make_spec("gauss")
        assert err.value.hint == "use " + ", ".join(names.METHODS[:-1]) + " or entropy"


def test_the_version_is_defined_once():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    attr = parser["metadata"]["version"]
    assert attr == "attr: tfue_onnx.names.VERSION"
    module, _, name = attr.split(": ", 1)[1].rpartition(".")
    assert getattr(importlib.import_module(module), name) == names.VERSION
    assert tfue_onnx.__version__ == names.VERSION
    assert importlib.metadata.version("tfue-onnx") == names.VERSION  # what pip installed


def test_names_imports_nothing():
    tree = ast.parse(open(os.path.join(ROOT, "tfue_onnx", "names.py")).read())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert set(names.__all__) == {k for k in vars(names) if k.isupper()}


def test_the_transform_sets_and_the_hint_keywords_come_from_names():
    from tfue_onnx import errors, session, transforms

    assert tuple(transforms.SETS) == names.TRANSFORM_SETS
    assert session.PROVIDERS is names.PROVIDERS
    for word in names.TRANSFORM_SETS + names.RANK_SCORES + names.PROVIDERS:
        assert word in errors._KEYWORDS
    # A hint naming a choice reads as the Python keyword's value.
    assert errors.python_face("e.g. --by p95") == "e.g. by='p95'"
    assert errors.python_face("e.g. --transforms flips") == "e.g. transforms='flips'"
