"""How tests are generated and where settings come from."""

from __future__ import annotations

import numpy as np
import pytest

RULES = """
rules:
  - id: z
    analyzer: lrp.z
  - id: flat
    analyzer: lrp.flat
"""

SAMPLE_COUNT_TEST = """
    def test_samples(lrp_inputs, request):
        with open("samples.txt", "w") as f:
            f.write(str(len(lrp_inputs)))
"""


def test_one_test_per_rule_and_model_with_readable_ids(lrp_project, pytester):
    lrp_project.rules(RULES)
    result = pytester.runpytest(
        f"--lrp-model={lrp_project.nobias.path}",
        f"--lrp-model={lrp_project.biased.path}",
        "rules.yaml",
        "--collect-only",
        "-q",
    )
    result.stdout.fnmatch_lines(
        [
            "rules.yaml::conservation[[]nobias-z[]]",
            "rules.yaml::conservation[[]nobias-flat[]]",
            "rules.yaml::conservation[[]biased-z[]]",
            "rules.yaml::conservation[[]biased-flat[]]",
            "rules.yaml::finite[[]nobias-z[]]",
            "rules.yaml::finite[[]biased-flat[]]",
            "8 tests collected*",
        ]
    )


def test_same_model_stem_in_two_folders_gets_distinct_ids(lrp_project, pytester):
    lrp_project.rules(RULES)
    for folder in ("a", "b"):
        (pytester.path / folder).mkdir()
        (pytester.path / folder / "net.h5").write_bytes(lrp_project.nobias.path.read_bytes())
    result = pytester.runpytest("--lrp-model=a/net.h5", "--lrp-model=b/net.h5", "rules.yaml", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*conservation[[]a.net-z[]]", "*conservation[[]b.net-z[]]"], consecutive=False)


def test_without_a_model_the_tests_are_skipped_with_a_reason(lrp_project, pytester):
    lrp_project.rules(RULES)
    result = pytester.runpytest("rules.yaml", "-rs")
    result.assert_outcomes(skipped=4)  # conservation and finite, the default checks, for each rule
    result.stdout.fnmatch_lines(
        ["SKIPPED * no model to explain: pass --lrp-model=PATH, set lrp_model in the ini file*"]
    )


def test_models_from_the_rule_file_relative_to_it(lrp_project, pytester):
    folder = pytester.path / "suite"
    folder.mkdir()
    (folder / "m.h5").write_bytes(lrp_project.nobias.path.read_bytes())
    (folder / "rules.yaml").write_text("defaults:\n  models: [m.h5]\n" + RULES)
    result = pytester.runpytest("suite/rules.yaml", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*suite/rules.yaml::conservation[[]m-z[]] PASSED*"])


def test_collected_from_the_root_even_when_testpaths_points_elsewhere(lrp_project, pytester):
    lrp_project.rules(RULES)
    pytester.makeini("[pytest]\ntestpaths = tests\n")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_other.py").write_text("def test_other():\n    pass\n")
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        ["tests/test_other.py::test_other", "rules.yaml::conservation[[]nobias-z[]]", "*5 tests collected*"],
        consecutive=False,
    )
    only_rules = pytester.runpytest("rules.yaml", f"--lrp-model={lrp_project.nobias.path}", "--collect-only", "-q")
    only_rules.stdout.fnmatch_lines(["*4 tests collected*"])
    assert "test_other" not in only_rules.stdout.str()


def test_lrp_rules_option_and_ini(lrp_project, pytester):
    lrp_project.rules(RULES, name="suite.yaml")
    by_flag = pytester.runpytest(
        f"--lrp-model={lrp_project.nobias.path}", "--lrp-rules=suite.yaml", "--collect-only", "-q"
    )
    by_flag.stdout.fnmatch_lines(["suite.yaml::conservation[[]nobias-z[]]", "*4 tests collected*"])
    pytester.makeini(f"[pytest]\nlrp_rules = suite.yaml\nlrp_model = {lrp_project.nobias.path}\n")
    by_ini = pytester.runpytest("--collect-only", "-q")
    by_ini.stdout.fnmatch_lines(["suite.yaml::conservation[[]nobias-z[]]", "*4 tests collected*"])


def test_command_line_wins_over_ini_over_rule_file(lrp_project, pytester):
    x = np.random.default_rng(0).uniform(size=(10, 5)).astype(np.float32)
    np.save(pytester.path / "ten.npy", x)
    np.savez(pytester.path / "only.npz", whatever=x[:7])
    lrp_project.rules(f"defaults:\n  inputs: ten.npy\n  samples: 9\n  models: [{lrp_project.nobias.path}]\n" + RULES)
    pytester.makepyfile(test_samples=SAMPLE_COUNT_TEST)

    def samples(*args):
        pytester.runpytest("test_samples.py", *args).assert_outcomes(passed=1)
        return int((pytester.path / "samples.txt").read_text())

    assert samples() == 9
    pytester.makeini("[pytest]\nlrp_samples = 4\n")
    assert samples() == 4
    assert samples("--lrp-samples=2") == 2
    assert samples("--lrp-inputs=only.npz") == 4  # the .npz's only array, 4 from the ini
    pytester.makeini("[pytest]\n")
    too_many = pytester.runpytest("test_samples.py", "--lrp-inputs=only.npz")
    assert too_many.ret == pytest.ExitCode.USAGE_ERROR  # one line for the run (tests/test_one_message.py)
    too_many.stderr.fnmatch_lines(["ERROR: *only.npz: 9 samples asked for, but the file holds 7 (the inputs: *"])
    assert "During handling" not in too_many.stdout.str() + too_many.stderr.str()


def test_random_inputs_in_the_model_shape_follow_the_seed(lrp_project, pytester):
    pytester.makepyfile(
        test_seed="""
        import numpy as np
        def test_seed(lrp_inputs, lrp_model):
            assert lrp_inputs.shape == (8, 5) and lrp_inputs.dtype == np.float32
            np.save("x.npy", lrp_inputs)
    """
    )
    model = f"--lrp-model={lrp_project.nobias.path}"
    pytester.runpytest(model, "--lrp-seed=1").assert_outcomes(passed=1)
    first = np.load(pytester.path / "x.npy")
    pytester.runpytest(model, "--lrp-seed=1").assert_outcomes(passed=1)
    assert np.array_equal(first, np.load(pytester.path / "x.npy"))
    pytester.runpytest(model, "--lrp-seed=2").assert_outcomes(passed=1)
    assert not np.array_equal(first, np.load(pytester.path / "x.npy"))


def test_header_says_when_the_inputs_are_random(lrp_project, pytester):
    lrp_project.rules(RULES)
    model = f"--lrp-model={lrp_project.nobias.path}"
    line = "lrp: inputs: {} seeded random inputs (seed {}): pass --lrp-inputs for real ones"
    pytester.runpytest(model, "rules.yaml", "--collect-only").stdout.fnmatch_lines([line.format(8, 0)])
    chosen = pytester.runpytest(model, "rules.yaml", "--collect-only", "--lrp-samples=3", "--lrp-seed=5")
    chosen.stdout.fnmatch_lines([line.format(3, 5)])
    lrp_project.rules("defaults: {samples: 2, seed: 7}\n" + RULES.lstrip())
    pytester.runpytest(model, "rules.yaml", "--collect-only").stdout.fnmatch_lines([line.format(2, 7)])
    # Real inputs, from the command line or the rule file: no such line.
    given = pytester.runpytest(model, "rules.yaml", "--collect-only", f"--lrp-inputs={lrp_project.inputs}")
    given.stdout.fnmatch_lines(["lrp: rules *"])
    assert "lrp: inputs:" not in given.stdout.str()
    lrp_project.rules(f"defaults: {{inputs: {lrp_project.inputs}}}\n" + RULES.lstrip())
    assert "lrp: inputs:" not in pytester.runpytest(model, "rules.yaml", "--collect-only").stdout.str()


def test_markers_are_registered(pytester):
    pytester.makepyfile("import pytest\n@pytest.mark.lrp_rule('lrp.z')\n@pytest.mark.lrp\ndef test_x():\n    pass\n")
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.lrp:*", "@pytest.mark.lrp_rule(analyzer, *,*"], consecutive=False)


def test_header_says_the_softmax_is_stripped(lrp_project, pytester):
    lrp_project.rules(RULES)
    result = pytester.runpytest(f"--lrp-model={lrp_project.nobias.path}", "rules.yaml", "--collect-only")
    result.stdout.fnmatch_lines(["lrp: rules *rules.yaml; a final softmax is stripped automatically*"])
