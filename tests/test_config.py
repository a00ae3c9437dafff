"""The composed config: the tutorial by default, overridable per group, and bad input refused before any work."""

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from mlflow import MlflowClient

from conftest import EXPERIMENT, run_cli
from pipeline.config import CheckpointPolicy
from pipeline.errors import ConfigError
from pipeline.validation import validate


def test_default_is_the_tutorial(make_cfg):
    settings = validate(make_cfg())

    assert (settings.data.name, settings.data.target, settings.data.arguments["train_size"], settings.data.arguments["test_size"]) == ("mnist", "pipeline.datasets.Mnist", 1000, 1000)
    assert (settings.model.target, settings.model.arguments) == ("pipeline.architectures.mlp", {"hidden_units": 512, "dropout": 0.2})
    assert (settings.training.loss, settings.training.from_logits, settings.imports) == ("sparse_categorical_crossentropy", True, [])
    assert (settings.training.epochs, settings.training.batch_size, settings.training.optimizer.name) == (10, 32, "adam")
    assert settings.checkpoint.policy is CheckpointPolicy.every_epoch and settings.checkpoint.weights_only
    assert list(settings.save) == ["keras"]
    assert settings.callbacks.early_stopping is None and settings.callbacks.tensorboard is None


def test_groups_are_overridable(make_cfg):
    settings = validate(make_cfg("model=cnn", "checkpoint=every_n_epochs", "checkpoint.every=5", "save=[h5,keras,savedmodel]", "callbacks=[tensorboard,lr_schedule]"))

    assert settings.model.short_name == "cnn" and settings.model.arguments["conv_filters"] == [16, 32]
    assert (settings.checkpoint.policy, settings.checkpoint.every, settings.checkpoint.save_initial) == (CheckpointPolicy.every_n_epochs, 5, True)
    assert list(settings.save) == ["h5", "keras", "savedmodel"]  # the order given is the order saved
    assert settings.callbacks.tensorboard.histogram_freq == 1 and settings.callbacks.lr_schedule.factor == 0.5
    assert settings.callbacks.early_stopping is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint.every=-1", "checkpoint.every must be at least 1 (got -1)"),
        ("training.batch_size=0", "training.batch_size must be at least 1 (got 0)"),
        ("save=[]", "save must name at least one format: keras, h5, savedmodel, weights, tf_checkpoint, onnx, litert, openvino"),
        ("model.dropout=1.5", "model._target_=pipeline.architectures.mlp could not build a model for inputs of shape (28, 28, 1): model.dropout must be in [0, 1) (got 1.5)"),
        ("model=cnn data=npz data.path=PATH", "model._target_=pipeline.architectures.cnn could not build a model for inputs of shape (6,): cnn needs (height, width, channels) images"),
        ("+model.width=3", "model.width: pipeline.architectures.mlp takes no argument 'width'; it takes: hidden_units, dropout"),
        ("training.loss=nope_loss", "training.loss='nope_loss' is not a Keras loss class: BinaryCrossentropy,"),
        ("training.loss=mean_squared_error", "training.loss='mean_squared_error' takes no from_logits"),
        ("save=[onnx] save.onnx.quantize=dynamic", "save.onnx.quantize: quantization applies only to litert"),
        ("verify.max_accuracy_drop=2", "verify.max_accuracy_drop is a fraction of the test set, in [0, 1] (got 2.0)"),
        ("imports=[nowhere.layers]", "imports=nowhere.layers: no module named 'nowhere'; is its folder on PYTHONPATH?"),
        ("training.optimizer.name=adamm", "training.optimizer.name='adamm' is not a Keras optimizer: adadelta"),
        ("model=custom model._target_=nope.missing", "model._target_=nope.missing: no module named 'nope'; is its folder on PYTHONPATH?"),
        ("model=custom", "model._target_ is not set: give it on the command line, e.g. model._target_=..."),
        ("training.steps_per_execution=0", "training.steps_per_execution must be at least 1 (got 0)"),
        ("checkpoint=every_n_batches training.steps_per_execution=4", "checkpoint=every_n_batches writes at exact steps, between Keras's calls, but training.steps_per_execution=4"),
        ("checkpoint.keep.best=0", "checkpoint.keep.best must be at least 1, or null for no such policy (got 0)"),
    ],
)
def test_bad_values_are_refused(override, message, make_cfg, tmp_path):
    np.savez(tmp_path / "table.npz", x_train=np.zeros((4, 6)), y_train=np.arange(4), x_test=np.zeros((2, 6)), y_test=np.arange(2))
    with pytest.raises(ConfigError) as error:
        validate(make_cfg(*override.replace("PATH", str(tmp_path / "table.npz")).split()))
    assert message in str(error.value)


def test_wrong_types_and_unknown_keys_are_refused_at_composition(make_cfg):
    with pytest.raises(ConfigCompositionException, match="checkpoint.every"):
        make_cfg("checkpoint.every=often")
    with pytest.raises(ConfigCompositionException, match="checkpoint.policy"):
        make_cfg("checkpoint.policy=sometimes")
    with pytest.raises(ConfigCompositionException, match="colour"):
        make_cfg("model.colour=red")  # a model's keys are its function's arguments: adding one takes `+`
    with pytest.raises(ConfigError, match="colour"):  # `+` opens the node for writing; the schema still refuses it
        validate(make_cfg("+model.colour=red"))


def test_unknown_choice_names_the_valid_ones(make_cfg):
    with pytest.raises(MissingConfigException) as error:
        make_cfg("model=nope")
    assert all(name in str(error.value) for name in ("cnn", "custom", "mlp", "mobilenet_v3_small", "residual"))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=nope"], "error: model='nope' is not an option; choose from: cnn, custom, mlp, mobilenet_v3_small, residual"),
        (["save=[keras,zip]"], "error: save='zip' is not an option; choose from: h5, keras, litert, onnx, openvino, savedmodel, tf_checkpoint, weights"),
        (["-m", "model=mlp,nope"], "error: model='nope' is not an option; choose from: cnn, custom, mlp, mobilenet_v3_small, residual"),
        (["training.epochz=3"], "error: training.epochz: training has no key 'epochz'; its keys are: epochs, batch_size, optimizer, loss, from_logits, verbose, mixed_precision"),
        (["+colour=red"], "error: colour: the top level has no key 'colour'; its keys are: data, model, imports, checkpoint, save,"),
        (["training.batch_size=abc"], "error: training.batch_size='abc': Value 'abc' of type 'str' could not be converted to Integer"),
        (["checkpoint.policy=sometimes"], "error: checkpoint.policy='sometimes': Invalid value 'sometimes', expected one of [every_epoch, every_n_epochs,"),
        (["checkpoint.every=-1"], "error: checkpoint.every must be at least 1 (got -1)"),
        (["training.batch_size=0"], "error: training.batch_size must be at least 1 (got 0)"),
        (["save=[]"], "error: save must name at least one format: keras, h5, savedmodel, weights, tf_checkpoint"),
        (["hydra.run.dir={tmp}/a_file/run"], "error: cannot write the output folder {tmp}/a_file/run: {tmp}/a_file is a file, not a folder"),
        (["paths.root={tmp}/a_file/outputs"], "error: cannot write the output folder {tmp}/a_file/outputs/runs/"),
        (["paths.root=/proc/x"], "error: cannot write the output folder /proc/x/runs/"),  # root passes access checks there
        (["data.path={tmp}/missing.npz"], "error: data.path: no file at {tmp}/missing.npz"),
        (["model.colour=red"], "error: model.colour: model=mlp has no key 'colour' (its keys: _target_, hidden_units, dropout, init_weights); to pass a new argument to its _target_, write +model.colour=..."),
        (["model=custom", "model._target_=nope.missing"], "error: model._target_=nope.missing: no module named 'nope'; is its folder on PYTHONPATH?"),
    ],
)
def test_cli_refuses_bad_input_in_one_line_before_any_work(overrides, expected, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_cli(*(o.format(tmp=tmp_path) for o in overrides), cwd=tmp_path)

    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [result.stderr.strip().splitlines()[-1]]
    assert result.stderr.strip().splitlines()[-1].startswith(expected.format(tmp=tmp_path)), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert "tensorflow" not in result.stderr.lower()  # refused before TensorFlow was even imported
    assert MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").get_experiment_by_name(EXPERIMENT) is None  # refused before any run
    assert not (tmp_path / "outputs" / "runs").exists()  # and before Hydra made the job's folder
