"""predict writes every prediction, with its index and input, to the run folder its checkpoint came from."""

import pytest
import torch

from batchsize_lit import LinearRegressor, RegressionDataModule
from batchsize_lit.__main__ import main

from fork.predicting import DictPredictor, SineToPredict
from helpers import CONFIGS, QUIET, read_csv

ARGS = ["--config", str(CONFIGS / "b16.yaml"), *QUIET]
FORK = ["--data=fork.predicting.SineToPredict", *QUIET, "--early_stopping.monitor=val/loss", "--trainer.max_epochs=1"]


def test_predictions_are_the_model_s_on_the_test_inputs_in_the_checkpoint_s_run(workdir, capsys):
    main(["fit", *ARGS, "--trainer.max_epochs=2"])
    run = workdir / "lightning_logs/b16/version_0"
    capsys.readouterr()
    main(["predict", *ARGS, "--ckpt_path=best"])
    printed = capsys.readouterr().out.splitlines()[-1]
    assert printed == "100 predictions written to lightning_logs/b16/version_0/predictions.csv"
    rows = read_csv(run / "predictions.csv")
    assert list(rows[0]) == ["index", "x", "prediction"]
    data = RegressionDataModule(batch_size=16)
    data.setup()
    x = data.test_set.tensors[0]  # predict runs over the test split, in order
    model = LinearRegressor.load_from_checkpoint(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    assert [int(row["index"]) for row in rows] == list(range(len(x)))
    assert torch.tensor([float(row["x"]) for row in rows]) == pytest.approx(x.flatten())
    expected = model(x).flatten().detach()
    assert torch.tensor([float(row["prediction"]) for row in rows]) == pytest.approx(expected, rel=1e-6)
    main(["predict", *ARGS, "--ckpt_path=best"])  # a second predict keeps the first's file
    assert capsys.readouterr().out.splitlines()[-1].endswith("lightning_logs/b16/version_0/predictions-v1.csv")
    assert read_csv(run / "predictions-v1.csv") == rows
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no new run folder


def test_predict_with_the_initial_weights_writes_beside_the_runs_and_makes_no_run_folder(workdir, capsys):
    main(["predict", *ARGS])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "100 predictions written to lightning_logs/b16/initial_weights/predictions.csv"
    )
    assert [p.name for p in (workdir / "lightning_logs/b16").iterdir()] == ["initial_weights"]


def test_a_checkpoint_kept_outside_a_run_gets_its_predictions_beside_it(workdir, capsys):
    main(["fit", *ARGS, "--trainer.max_epochs=1"])
    (workdir / "kept").mkdir()
    (workdir / "lightning_logs/b16/version_0/checkpoints/last.ckpt").rename(workdir / "kept/model.ckpt")
    main(["predict", *ARGS, "--ckpt_path=kept/model.ckpt"])
    assert capsys.readouterr().out.splitlines()[-1] == "100 predictions written to kept/predictions.csv"


def test_a_fork_s_other_outputs_are_saved_with_torch_save(workdir, capsys):
    fork = [*FORK, "--model=fork.predicting.DictPredictor"]
    main(["fit", *fork])
    run = workdir / "lightning_logs/default/version_0"
    capsys.readouterr()
    main(["predict", *fork, "--ckpt_path=last"])
    data = SineToPredict()
    data.setup("predict")
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{len(data.val_set)} predictions written to lightning_logs/default/version_0/predictions.pt"
    )
    saved = torch.load(run / "predictions.pt", weights_only=True)  # as trainer.predict returns them: one per batch
    assert len(saved) == len(data.val_dataloader()) and set(saved[0]) == {"x", "y"}
    model = DictPredictor.load_from_checkpoint(run / "checkpoints/last.ckpt", weights_only=True)
    assert torch.equal(torch.cat([batch["x"] for batch in saved]), torch.cat([x for x, _ in data.val_dataloader()]))
    for batch in saved:
        assert torch.allclose(batch["y"], model(batch["x"]), atol=1e-6)


def test_a_predict_step_that_returns_nothing_writes_nothing(workdir, capsys):
    fork = [*FORK, "--model=fork.predicting.SilentPredictor"]
    main(["predict", *fork])
    assert capsys.readouterr().out.splitlines()[-1] == "predict_step returned nothing: no predictions written"
    assert not (workdir / "lightning_logs").exists()
