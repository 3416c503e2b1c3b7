"""Every logger writes what it is given and its own reader reads it back; a whole run sends the same
healing losses to each that report.json holds; what is logged comes from the steps' plain values."""

import json
import time

import pytest

from conftest import SHRUNK, needs_fmnist, run_in_process
from starfish_cli.cli.checks import check_group_choices
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.stages.resolvers import overrides_suffix
from starfish_cli.tracking import LOGGERS, MetricLoggers, eval_metrics, flatten, heal_losses, sparsity_metrics
from starfish_cli.tracking.csv_logger import read_metrics

LOSSES = [0.5, 0.25, 0.125]


def log_a_run(logger):
    logger.log_params({"model.name": "vit_fmnist", "healer.lr": 0.001})
    logger.log_metrics({"sparsity/prunable": 0.75})
    for step, metrics in heal_losses(LOSSES):
        logger.log_metrics(metrics, step)
    logger.close()


def test_what_is_logged_comes_from_the_steps_values():
    assert sparsity_metrics({"prunable": 0.5, "overall": 0.4, "per_layer": {"blocks.0.fc1": 0.5}}) == {
        "sparsity/blocks.0.fc1": 0.5, "sparsity/prunable": 0.5, "sparsity/overall": 0.4}
    assert heal_losses([0.3, 0.2]) == [(1, {"heal/loss": 0.3}), (2, {"heal/loss": 0.2})]
    assert eval_metrics({"dense": {"top1": 90.0, "top5": 99.0, "agreement": 100.0, "alignment": [1.0]},
                         "healed": {"perplexity": 12.5}}) == {
        "eval/dense/top1": 90.0, "eval/dense/top5": 99.0, "eval/dense/agreement": 100.0,
        "eval/healed/perplexity": 12.5}
    assert flatten({"model": {"name": "x", "kwargs": {"a": 1}}, "seed": 0, "tags": [1, 2]}) == {
        "model.name": "x", "model.kwargs.a": 1, "seed": 0, "tags": [1, 2]}


def test_csv_logger_writes_rows_at_close(tmp_path):
    logger = LOGGERS.build({"name": "csv"}, run_dir=tmp_path)
    logger.log_metrics({"a": 1.0})
    assert not (tmp_path / "metrics.csv").exists()  # nothing partial while the run goes on
    log_a_run(logger)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert rows[0] == (None, "a", 1.0)
    assert [(step, value) for step, name, value in rows if name == "heal/loss"] == list(enumerate(LOSSES, 1))
    assert logger.written() == [tmp_path / "metrics.csv"]


def test_csv_logger_of_a_failed_run_writes_nothing(tmp_path):
    logger = LOGGERS.build({"name": "csv"}, run_dir=tmp_path)
    logger.log_metrics({"a": 1.0}, 1)
    logger.close(failed=True)
    assert not (tmp_path / "metrics.csv").exists() and logger.written() == []


def tensorboard_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_tensorboard_logger_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    logger = LOGGERS.build({"name": "tensorboard"}, run_dir=tmp_path)
    log_a_run(logger)
    losses = tensorboard_scalars(tmp_path / "tensorboard", "heal/loss")
    assert [step for step, _ in losses] == [1, 2, 3]
    assert [value for _, value in losses] == pytest.approx(LOSSES, abs=1e-6)
    assert logger.written() and all(path.parent == tmp_path / "tensorboard" for path in logger.written())


def mlflow_losses(output_root, experiment="default"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{output_root.resolve() / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "heal/loss")
    return runs[0], [(metric.step, metric.value) for metric in sorted(history, key=lambda m: m.step)]


def test_mlflow_logger_writes_a_local_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = LOGGERS.build({"name": "mlflow"}, run_dir=tmp_path / "outputs" / "a", output_root=tmp_path / "outputs",
                           run_label="default/a", experiment_choice=None)
    log_a_run(logger)
    run, losses = mlflow_losses(tmp_path / "outputs")
    assert losses == list(enumerate(LOSSES, 1))
    assert run.info.run_name == "default/a" and run.info.status == "FINISHED"
    assert run.data.params["healer.lr"] == "0.001"


def wandb_records(run_dir) -> list:
    """The records of the one offline run under `run_dir`/wandb, read from its `.wandb` file: wandb's
    transaction log, in LevelDB's log format (a 7-byte file header, then 32 KiB blocks of chunks, each with a
    7-byte header: checksum, length, type 1 full / 2 first / 3 middle / 4 last), each record a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a header is padding
            offset += 32768 - offset % 32768
            continue
        length, kind = int.from_bytes(data[offset + 4:offset + 6], "little"), data[offset + 6]
        if offset + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_logger_writes_an_offline_run(tmp_path):
    pytest.importorskip("wandb")
    logger = LOGGERS.build({"name": "wandb"}, run_dir=tmp_path, run_label="a")
    log_a_run(logger)
    assert logger.written() and all(tmp_path / "wandb" in path.parents for path in logger.written())
    records, deadline = {}, time.monotonic() + 60
    while "exit" not in records and time.monotonic() < deadline:  # wandb's service may still be writing the file
        time.sleep(0.2)
        records = {}
        for record in wandb_records(tmp_path):
            records.setdefault(record.WhichOneof("record_type"), []).append(record)
    assert {"run", "config", "history", "exit"} <= set(records), sorted(records)
    history = [(row.history.step.num, {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                       for item in row.history.item}) for row in records["history"]]
    logged = [(step, {k: v for k, v in row.items() if not k.startswith("_")}) for step, row in history]
    assert logged == [(0, {"sparsity/prunable": 0.75}), *((step, {"heal/loss": loss}) for step, loss in
                                                          enumerate(LOSSES, 1))]
    params = {item.key: json.loads(item.value_json) for row in records["config"] for item in row.config.update}
    assert params == {"model.name": "vit_fmnist", "healer.lr": 0.001}
    assert records["run"][0].run.display_name == "a" and records["exit"][0].exit.exit_code == 0


def test_loggers_group_fans_out_and_unknown_keys_fail(tmp_path):
    group = MetricLoggers.build({"csv": {"name": "csv"}, "other": {"name": "csv", "filename": "b.csv"}},
                                run_dir=tmp_path, output_root=tmp_path)
    log_a_run(group)
    group.close()  # a second close does nothing
    assert read_metrics(tmp_path / "metrics.csv") == read_metrics(tmp_path / "b.csv")
    with pytest.raises(StarfishError, match="logger 'csv' has no option 'fliename'"):
        MetricLoggers.build({"csv": {"name": "csv", "fliename": "x.csv"}}, run_dir=tmp_path)


@pytest.mark.parametrize("override", ["logger=csv", "logger=[csv,tensorboard]", "logger=null", "logger=csv,mlflow"])
def test_logger_choices_pass_and_unknown_ones_fail_in_one_line(override):
    check_group_choices([override], [])
    with pytest.raises(StarfishError, match="unknown logger 'nope': choose one of csv, mlflow, tensorboard, wandb"):
        check_group_choices(["logger=[csv,nope]" if "[" in override else "logger=nope"], [])


def test_logger_choices_leave_the_run_folder_alone():
    assert overrides_suffix("heal", ["logger=[csv,tensorboard]", "logger.mlflow.run_name=x"]) == ""


@needs_fmnist
@pytest.mark.slow
def test_run_logs_the_same_healing_losses_to_every_logger(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run_in_process("run", *SHRUNK, "logger=[csv,tensorboard,mlflow]", "hydra.run.dir=out", cwd=tmp_path)
    expected = json.loads((tmp_path / "out" / "report.json").read_text())["healing"]["loss_history"]
    assert expected
    steps = list(range(1, len(expected) + 1))
    rows = [(step, value) for step, name, value in read_metrics(tmp_path / "out" / "metrics.csv") if name == "heal/loss"]
    board = tensorboard_scalars(tmp_path / "out" / "tensorboard", "heal/loss")
    run, flow = mlflow_losses(tmp_path / "outputs")
    for logged in (rows, board, flow):
        assert [step for step, _ in logged] == steps
        assert [value for _, value in logged] == pytest.approx(expected, abs=1e-6)
    assert run.info.run_name == "out" or run.info.run_name.endswith("out")
    assert any(name == "eval/healed/top1" for _, name, _ in read_metrics(tmp_path / "out" / "metrics.csv"))
