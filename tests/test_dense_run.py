"""The parts every dense recipe shares: its settings, the epoch record that keeps the best state, the checkpoint's tile check."""

import json

import pytest

torch = pytest.importorskip("torch")

from mitoqp.training.dense_run import record_epoch, save_dense, start_dense  # noqa: E402


def test_start_dense_reads_the_shared_settings_and_makes_the_run_folder(tmp_path):
    threads = torch.get_num_threads()
    try:
        run = start_dense({"match_radius_um": 6.0, "train": {"seed": 3, "threads": 1}, "dense": {"min_distance_um": 5.0}},
                          tmp_path / "run")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its threads
    assert (run.seed, run.radius_um, run.min_distance_um) == (3, 6.0, 5.0)
    assert (tmp_path / "run").is_dir() and run.model == {}


def test_record_epoch_logs_every_epoch_and_keeps_the_state_of_the_best_mean_recall(tmp_path):
    model = torch.nn.Linear(2, 1)
    best, state = {"mean_recall": -1.0}, None
    for epoch, recall in enumerate((0.5, 0.7, 0.6), 1):
        with torch.no_grad():
            model.bias.fill_(float(epoch))
        best, state = record_epoch({"epoch": epoch, "mean_recall": recall}, tmp_path, model, best, state)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert best["epoch"] == 2 and float(state["bias"]) == 2.0  # a copy, not the live weights (now 3)


def test_save_dense_refuses_a_tile_no_wider_than_twice_the_context(tmp_path):
    model = torch.nn.Conv2d(3, 1, 1)
    model.stride = 1
    with pytest.raises(ValueError, match="must exceed twice"):
        save_dense(model, "rdlm", "final", {"dense": {"tile": 64}}, {"threshold": 0.5}, model.state_dict(),
                   tmp_path / "x.pt", context=32)
