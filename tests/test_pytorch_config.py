"""PyTorch models in rule files and options, checked without torch: names, parameters, shapes, and which rules
a model of each framework gets. (tests/test_pytorch.py runs the models.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_lrp.config.model_spec import PythonModel, python_model
from pytest_lrp.config.packaged import PACKAGED_TORCH_RULES, without_example

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_torch_rules_are_the_packaged_suite_with_the_example_defaults():
    example = (ROOT / "examples" / "torch_rules.yaml").read_text()
    assert "torch_cnn.py:cnn" in example
    assert without_example(example) == PACKAGED_TORCH_RULES.read_text()


def test_the_transformers_example_is_the_packaged_suite_on_four_models():
    example = (ROOT / "examples" / "transformers_rules.yaml").read_text()
    assert "transformer_models.py:llama" in example and "transformer_models.py:vit" in example
    assert without_example(example) == PACKAGED_TORCH_RULES.read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models.py:make_net", PythonModel("/base/models.py", "make_net")),
        ("sub/models.py:net", PythonModel("/base/sub/models.py", "net")),
        ("torchvision.models:resnet18", PythonModel("torchvision.models", "resnet18")),
        ("cnn.hdf5", None),
        ("folder/model.keras", None),
        ("models.py:not-a-name", None),
    ],
)
def test_a_model_named_by_code_or_a_file(text, expected):
    assert python_model(text, Path("/base")) == expected


def test_a_python_model_reads_like_a_path_in_ids_and_messages():
    spec = PythonModel("torchvision.models", "resnet18")
    assert (spec.stem, spec.parent.name, str(spec)) == ("resnet18", "torchvision.models", "torchvision.models:resnet18")


RULES = """
defaults:
  models: [nets.py:net]
  input_shape: {shape}
rules:
  - id: one
    analyzer: {analyzer}
    params: {params}
"""


@pytest.mark.parametrize(
    ("analyzer", "params", "shape", "message"),
    [
        (
            "zennit.epsilon_plsu",
            "{}",
            "[3, 8, 8]",
            "unknown analyzer 'zennit.epsilon_plsu' (close matches: zennit.epsilon_plus",
        ),
        ("zennit.rule.epsilon", "{epsilom: 0.1}", "[3, 8, 8]", "does not accept 'epsilom' (did you mean 'epsilon'?)"),
        ("captum.lrp", "{rule: alpha2_beta1}", "[3, 8, 8]", "captum's LRP rule 'alpha2_beta1' is not one of"),
        ("zennit.epsilon_plus", "{canonizers: SequentialMergeBatchNorm}", "[3, 8, 8]", "'canonizers' is a list"),
        ("zennit.epsilon_plus", "{}", "[3, 0, 8]", "key 'input_shape': expected one sample's shape"),
        ("zennit.rule.zbox", "{low: 0.0}", "[3, 8, 8]", "needs the input's bounds as numbers: high"),
    ],
)
def test_a_wrong_torch_rule_is_one_line_at_collection(pytester, analyzer, params, shape, message):
    pytester.makefile(".yaml", rules=RULES.format(analyzer=analyzer, params=params, shape=shape))
    result = pytester.runpytest("--collect-only")
    errors = [line for line in result.outlines + result.errlines if message in line]
    assert len(errors) == 1, result.outlines + result.errlines
    assert "rules.yaml" in errors[0]


def test_a_rule_file_without_rules_for_the_models_framework_says_so(pytester):
    # One rule file may hold both frameworks' rules; a PyTorch model next to a Keras-only rules.yaml would get
    # no test at all, in silence: one line says so, and how to get the PyTorch suite.
    pytester.makefile(".yaml", rules="rules:\n  - id: z\n    analyzer: lrp.z\n")
    result = pytester.runpytest("--lrp-model=nets.py:net", "--collect-only")
    result.stdout.fnmatch_lines(
        ["*rules.yaml: no rule for PyTorch models (zennit.* or captum.* analyzers), so nets.py:net would get no test*"]
    )


def test_each_model_gets_the_rules_of_its_framework(pytester):
    pytester.makefile(
        ".yaml",
        rules="""
        defaults:
          models: [nets.py:net, model.h5]
        rules:
          - id: z
            analyzer: lrp.z
          - id: zennit
            analyzer: zennit.epsilon_plus
        """,
    )
    result = pytester.runpytest("--collect-only", "-q")
    ids = [line.split("::")[-1] for line in result.outlines if "::" in line]
    assert "conservation[net-zennit]" in ids and "conservation[model-z]" in ids
    assert "conservation[net-z]" not in ids and "conservation[model-zennit]" not in ids


def test_a_pytorch_model_without_torch_installed_is_one_line(pytester, monkeypatch):
    # Where torch, zennit or captum is missing (the py311 environment has none of them; elsewhere the finder
    # is made to miss zennit), the run stops with one line per missing library, before any test.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zennit" else real(name, *a))
    pytester.makepyfile(nets="def net():\n    raise AssertionError('never called')\n")
    result = pytester.runpytest_inprocess("--lrp-model=nets.py:net", "--lrp-input-shape=4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert any("PyTorch models need zennit, which this Python environment does not have" in e for e in errors), errors
    assert "Traceback" not in "\n".join(result.errlines + result.outlines)
