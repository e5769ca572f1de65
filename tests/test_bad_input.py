"""User mistakes: one clear message naming the key or name, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import pytest


@pytest.fixture
def run_bad(cli, tmp_path):
    results = tmp_path / "results"

    def run(config_text: str | None, *args: str, suite: str = "tiny"):
        argv = ["run", "--suite", suite, "--results-dir", str(results)]
        if config_text is not None:
            config = tmp_path / "bench.toml"
            config.write_text(config_text, encoding="utf-8")
            argv += ["--config", str(config)]
        code, out, err = cli(*argv, *args)
        assert code == 2, (out, err)
        assert "Traceback" not in err and "Error:" in err
        assert not results.exists(), "a failed command must not create the results store"
        return " ".join(err.split())  # rich wraps long lines

    return run


def _valid(npz) -> str:
    return f"""
[suites.tiny]
datasets = [{{ name = "medmnist_npz", path = "{npz}" }}]
backbones = ["mobilenetv2_100"]
n_trials = 1
confirm = false
[suites.tiny.params]
strategy = "freeze_to"
k = 2
lr = 0.01
epochs = 1
"""


def test_malformed_toml_names_file_and_line(run_bad):
    err = run_bad("[suites.tiny\ndatasets = 3\n")
    assert "bench.toml" in err and "invalid TOML" in err and "line 1" in err


def test_unknown_suite_lists_suites(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz), suite="nope")
    assert "no suite named 'nope'" in err and "tiny" in err


def test_mistyped_key_is_named(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace("n_trials", "n_trails"))
    assert "suites.tiny.n_trails: unknown key" in err and "n_trials" in err


def test_unknown_parameter_is_named(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace("lr = 0.01", "lr = 0.01\nlearning_rate = 0.1"))
    assert "suites.tiny.params.learning_rate: unknown parameter" in err and "head_lr_mult" in err


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("lr = 0.01", 'lr = "fast"', "suites.tiny.params.lr: must be a learning rate > 0, got 'fast'"),
        ("lr = 0.01", "lr = -1", "suites.tiny.params.lr: must be a learning rate > 0"),
        ("lr = 0.01", "lr = { low = 0.1, high = 0.01 }", "low (0.1) is greater than high (0.01)"),
        ("epochs = 1", "weight_decay = { low = 0.0, high = 0.1, log = true }", "params.weight_decay.low: must be > 0 for a log range"),
        ("epochs = 1", "epochs = 1.5", "suites.tiny.params.epochs: must be an integer >= 1"),
        ("epochs = 1", 'optimizer = "rmsprop"', "suites.tiny.params.optimizer: must be 'sgd' or 'adam'"),
        ("epochs = 1", 'bn_policy = "off"', "suites.tiny.params.bn_policy"),
        ("n_trials = 1", "n_trials = 0", "suites.tiny.n_trials: must be an integer >= 1"),
        ("n_trials = 1", 'n_trials = 1\nmetric = "kappa"', "suites.tiny.metric: must be one of accuracy"),
        ("n_trials = 1", "n_trials = 1\nstartup_trials = 0", "suites.tiny.startup_trials: must be an integer >= 1"),
        ("n_trials = 1", 'n_trials = 1\nsampler = "random"\nstartup_trials = 4',
         "suites.tiny.startup_trials: applies to the tpe sampler only (this suite's sampler is 'random'): remove it"),
        ("lr = 0.01", "lr = []", "an empty list offers nothing to search"),
        ("epochs = 1", 'device = "gpu"', "suites.tiny.params.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ("epochs = 1", 'amp = "half"', "suites.tiny.params.amp: must be 'auto', 'off', 'bf16' or 'fp16'"),
        ("epochs = 1", 'channels_last = "yes"', "suites.tiny.params.channels_last: must be true or false"),
        ("epochs = 1", 'amp = "fp16"\ndevice = "cpu"', "suites.tiny.params: amp = 'fp16' needs a GPU"),
        ("epochs = 1", 'head_init = "lp"', "suites.tiny.params.head_init: must be 'random' or 'linear_probe', got 'lp'"),
        ("epochs = 1", 'head = ["linear", "mlp"]\nhead_init = "linear_probe"',
         "suites.tiny.params.head_init: 'linear_probe' fits a linear head first; it cannot start the 'mlp' head"),
    ],
)
def test_bad_values_are_named(run_bad, tiny_npz, old, new, expected):
    assert expected in run_bad(_valid(tiny_npz).replace(old, new))


def test_unknown_strategy_suggests(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('strategy = "freeze_to"', 'strategy = ["full", "freez_to"]'))
    assert "params.strategy" in err and "Unknown strategy: 'freez_to'" in err and "Did you mean: freeze_to" in err


def test_unknown_dataset_lists_installed(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('name = "medmnist_npz"', 'name = "breastmnis"'))
    assert "Unknown dataset: 'breastmnis'" in err and "breastmnist" in err and "medmnist_npz" in err


def test_unknown_dataset_option(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace("path =", "pth ="))
    assert "dataset 'medmnist_npz' has no option 'pth'" in err and "path" in err


def test_unknown_backbone(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('"mobilenetv2_100"', '"mobilenet_v9"'))
    assert "Unknown backbone: 'mobilenet_v9'" in err and "freezebench list backbones" in err


def test_missing_dataset_file(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace(str(tiny_npz), "/nowhere/x.npz"))
    assert "MedMNIST file not found: /nowhere/x.npz" in err


def test_missing_weights_file(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('"mobilenetv2_100"', '{ name = "mobilenetv2_100", weights = "w.safetensors" }'))
    assert "weights file for 'mobilenetv2_100' not found" in err and "w.safetensors" in err


def test_unit_index_out_of_range_names_units(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace("k = 2", "k = [2, 9]"))
    assert "suites.tiny.params.k: 9 is not a unit index for backbone 'mobilenetv2_100'" in err
    assert "conv_stem+bn1" in err and "blocks.6.0+conv_head+bn2" in err


def test_a_choice_outside_a_strategys_choices_is_named(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('strategy = "freeze_to"', 'strategy = ["freeze_to", "lora"]')
                  .replace("k = 2", 'k = 2\ntargets = ["pointwise", "everything"]'))
    assert "suites.tiny.params.targets: 'everything' is not a choice of strategy 'lora''s targets" in err
    assert "'pointwise', 'conv', 'all'" in err


def test_missing_config_file(run_bad):
    err = run_bad(None, "--config", "/nowhere/bench.toml")
    assert "Config file not found: /nowhere/bench.toml" in err


def test_required_keys(run_bad, tiny_npz):
    err = run_bad(_valid(tiny_npz).replace('backbones = ["mobilenetv2_100"]', ""))
    assert "suites.tiny.backbones: is required" in err


def test_leaderboard_without_results(cli, tmp_path):
    code, _, err = cli("leaderboard", "--dataset", "x", "--results-dir", str(tmp_path / "none"))
    assert code == 2 and "No results store" in err and not (tmp_path / "none").exists()


def test_click_usage_errors_exit_2(cli):
    code, _, err = cli("list", "gadgets")
    assert code == 2 and "gadgets" in err


def test_every_trial_parameter_is_validated_by_the_config():
    import dataclasses

    from freezebench.records import PARAMS as CORE_PARAMS
    from freezebench.engine.trial import TrialConfig

    fields = {f.name for f in dataclasses.fields(TrialConfig)} - {"metric", "strategy_params"}
    assert set(CORE_PARAMS) == fields


def test_asking_for_a_missing_gpu_is_named(run_bad, tiny_npz):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    err = run_bad(_valid(tiny_npz).replace("epochs = 1", 'epochs = 1\ndevice = "cuda"'))
    assert "suites.tiny.params: device = 'cuda', but this machine has no CUDA GPU" in err and "'auto' or 'cpu'" in err


def test_every_trial_parameter_is_documented():
    from freezebench.records import PARAMS as CORE_PARAMS

    from .conftest import ROOT

    text = (ROOT / "docs" / "configuration.md").read_text()
    assert [name for name in CORE_PARAMS if f"| `{name}` |" not in text] == []


def test_a_config_saved_with_a_byte_order_mark_is_read_and_one_saved_as_utf16_is_named(tmp_path, tiny_npz):
    """Windows editors save UTF-8 with a byte-order mark, which tomllib reads as an "Invalid statement" at
    line 1; and Notepad's "Unicode" is UTF-16."""
    from freezebench import plugins
    from freezebench.errors import UserError
    from freezebench.suite.config import load_config

    declared = {p.name: e.name for e in plugins.strategies().entries() for p in e.obj.params}
    text = _valid(tiny_npz).replace("n_trials = 1", "n_trials = 3")
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_config(bom, declared).suite("tiny").n_trials == 3
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text(text, encoding="utf-16")
    with pytest.raises(UserError, match=r"utf16.toml: saved as UTF-16 .* Save it again as UTF-8"):
        load_config(utf16, declared)
