"""Every shipped gin file parses; experiment files name real tasks; gin errors are one line."""
from __future__ import annotations

import pathlib

import gin
import pytest
from gin import config_parser

from distill import eval as eval_lib
from distill import gin_bindings, infer, train
from distill.errors import UserError

ENTRY_POINTS = {"train": train.train, "evaluate_checkpoint": eval_lib.evaluate_checkpoint,
                "infer_checkpoint": infer.infer_checkpoint}

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"
ALL_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.gin"))
OURS = [f for f in ALL_FILES if not f.startswith("t5x/")]
T5X = [f for f in ALL_FILES if f.startswith("t5x/")]
DATASETS = ("svamp", "cqa", "esnli", "anli1")
METHODS = {"standard_gt": "label_gt", "standard_llm": "label_llm",
           "step_by_step_gt": "step_by_step_gt", "step_by_step_llm": "step_by_step_llm"}


def parse_gin(files: list[str], bindings: list[str]) -> None:
    """What an entry point does: its library function registered, then the files and bindings."""
    gin_bindings.parse_gin(files, bindings, entry_points=ENTRY_POINTS)


def test_every_gin_file_is_covered():
    assert len(OURS) >= 40 and len(T5X) == 5
    for dataset in DATASETS:
        for method in METHODS:
            assert f"experiments/{dataset}/{method}.gin" in OURS
            assert f"experiments/{dataset}/{method}_tiny.gin" in OURS


@pytest.mark.parametrize("gin_file", OURS)
def test_gin_file_parses(gin_file):
    parse_gin([gin_file], [])
    assert gin.config_str().strip()


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_experiment_binds_the_method(dataset, method):
    parse_gin([f"experiments/{dataset}/{method}_tiny.gin"], ["MODEL_DIR = 'unused'"])
    assert gin.query_parameter("%DATASET") == dataset
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == f"{dataset}_{METHODS[method]}"
    assert gin.query_parameter("%ALPHA") == (1.0 if method.startswith("standard") else 0.5)
    config = gin_bindings.T5Config()  # tiny overlay: T5 v1.1 tiny, trained from scratch
    assert (config.d_model, config.d_ff, config.num_encoder_layers, config.vocab_size) == (256, 1024, 4, 4000)
    assert gin.query_parameter("%INITIAL_CHECKPOINT_PATH") is None
    gin_bindings.check_required_macros()  # everything but MODEL_DIR is set by the files

    parse_gin([f"experiments/{dataset}/{method}.gin"], [])
    config = gin_bindings.T5Config()  # the paper's setting: T5 v1.1 base, AdamW 5e-5, 10k steps
    assert (config.d_model, config.num_encoder_layers, config.vocab_size) == (768, 12, 32128)
    assert gin.query_parameter("%LEARNING_RATE") == 5e-5 and gin.query_parameter("%TRAIN_STEPS") == 10000
    assert gin.query_parameter("%PACK") is False
    with pytest.raises(UserError, match="MODEL_DIR.*INITIAL_CHECKPOINT_PATH|INITIAL_CHECKPOINT_PATH.*MODEL_DIR"):
        gin_bindings.check_required_macros()


def test_large_model_file_overrides_the_experiment_size():
    parse_gin(["experiments/cqa/step_by_step_gt.gin", "models/t5_1_1_large.gin"], [])
    config = gin_bindings.T5Config()
    assert (config.d_model, config.num_encoder_layers, config.d_ff) == (1024, 24, 2816)


def test_run_files_list_their_required_macros():
    for name, required in (("train", ["MODEL_DIR", "DATASET", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS",
                                      "TRAIN_STEPS"]),
                           ("eval", ["CHECKPOINT_PATH"]), ("infer", ["CHECKPOINT_PATH"])):
        text = (CONFIGS / "runs" / f"{name}.gin").read_text()
        header = text.split("\n\n")[0] + text.split("\n\n")[1]
        for macro in required:
            assert macro in header and f"{macro} = %gin.REQUIRED" in text


class _Placeholder(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
        return ("@", scoped_configurable_name)

    def macro(self, macro_name):
        return ("%", macro_name)


def _statements(path: pathlib.Path):
    with path.open() as f:
        return list(config_parser.ConfigParser(f, _Placeholder()))


def test_t5x_configs_are_well_formed_and_name_registered_tasks():
    """T5X is not installed here: parse the text and check the names, not the bindings."""
    import distill.tasks as tasks

    registered = {f"{d}_{t.suffix}" for d in DATASETS for t in tasks.task_configs()}
    registered |= {f"{d}_{m.suffix}" for d in DATASETS for m in tasks.MIXTURES}
    names = {}
    for gin_file in T5X:
        for statement in _statements(CONFIGS / gin_file):
            if isinstance(statement, config_parser.BindingStatement) and statement.selector == "MIXTURE_OR_TASK_NAME":
                names[gin_file] = statement.value
            if isinstance(statement, config_parser.IncludeStatement):
                included = statement.filename
                assert included.startswith("t5x/configs/") or (CONFIGS / included).is_file(), included
    assert set(names) == {f"t5x/{d}.gin" for d in DATASETS}
    assert set(names.values()) <= registered
    common = {s.selector: s.value for s in _statements(CONFIGS / "t5x/finetune_distill.gin")
              if isinstance(s, config_parser.BindingStatement) and not s.arg_name}
    assert common["MIXTURE_OR_TASK_MODULE"] == "distill.registered_tasks" and common["USE_CACHED_TASKS"] is False


@pytest.mark.parametrize("files, bindings, message", [
    (["experiments/nope.gin"], [], "gin file experiments/nope.gin not found"),
    (["experiments/svamp/step_by_step_gt_tiny.gin"], ["T5Config.d_modle = 3"], "doesn't have a parameter named"),
    (["experiments/svamp/step_by_step_gt_tiny.gin"], ["BATCH_SIZE = (8"], "gin binding 'BATCH_SIZE = (8'"),
    (["experiments/svamp/step_by_step_gt_tiny.gin"], ["train.model_config = @T6Config()"], "T6Config"),
])
def test_gin_errors_are_one_clear_line(files, bindings, message):
    with pytest.raises(UserError) as info:
        parse_gin(files, bindings)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_gin_shorthand_flags():
    assert gin_bindings.rewrite_gin_args(["--gin.MODEL_DIR='x'", "--gin_file=a.gin"]) == [
        "--gin_bindings=MODEL_DIR = 'x'", "--gin_file=a.gin"]
    with pytest.raises(UserError, match="no value"):
        gin_bindings.rewrite_gin_args(["--gin.TRAIN_STEPS"])


@pytest.mark.parametrize("binding, message", [
    ("--gin.TRAIN_STEPS='many'", "total_steps='many' must be an integer"),
    ("--gin.LEARNING_RATE='fast'", "learning_rate='fast' must be a number"),
    ("--gin.T5Config.num_encoder_layers=100000000", "num_encoder_layers = 100000000 must be an integer from 1 to 256"),
])
def test_bad_gin_values_are_one_line_before_anything_runs(tmp_path, capsys, binding, message):
    from distill import cli

    argv = ["train", "--gin_file=experiments/svamp/step_by_step_gt_tiny.gin",
            f"--gin.MODEL_DIR='{tmp_path / 'run'}'", binding]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "run").exists()
