"""The real training loop on planted data: it learns, it resumes exactly, it reports protocols."""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from onepiece_jax.train.loop import (
    NonFiniteError,
    evaluate_split,
    evaluate_workdir,
    make_job,
    restore_state,
    train_and_evaluate,
)
from tests.train.conftest import tiny_config


def _params(workdir, step):
    mgr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "extra"))
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]


def test_training_on_planted_chains_beats_chance_by_far(planted_build, tmp_path):
    cfg = tiny_config(str(planted_build))
    out = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    test = out["results"]
    assert test["split"] == "test" and "history excluded" in test["protocol"]
    chance = 10 / 150
    assert test["metrics"]["HR@10"] > 3 * chance, test["metrics"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"]["NDCG@10"] == test["metrics"]["NDCG@10"]
    assert len(out["history"]) == cfg.train.epochs


def test_preempted_and_resumed_run_equals_uninterrupted(planted_build, tmp_path):
    cfg = tiny_config(str(planted_build))
    cfg.train.epochs = 2
    whole = train_and_evaluate(cfg, tmp_path / "whole", progress=False)
    steps = whole["history"][-1]["step"]
    cut = train_and_evaluate(cfg, tmp_path / "cut", progress=False, preempt_at_step=steps // 2 + 1)
    assert cut["preempted"]
    resumed = train_and_evaluate(cfg, tmp_path / "cut", progress=False)
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]]
    a, b = _params(tmp_path / "whole", steps), _params(tmp_path / "cut", steps)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    assert max(diffs) <= 1e-6
    assert resumed["results"]["metrics"] == whole["results"]["metrics"]


def test_a_moving_average_of_the_parameters_is_validated_evaluated_exported_and_resumed(
        planted_build, tmp_path):
    """With ``train.ema_decay`` the average, not the trained parameters, is what validation,
    ``onepiece eval`` and export read; it survives preemption like the rest of the state."""
    from onepiece_jax.train.checkpoint import Checkpoints
    from onepiece_jax.train.step import eval_params

    cfg = tiny_config(str(planted_build))
    cfg.train.update(epochs=2, ema_decay=0.9)
    whole = train_and_evaluate(cfg, tmp_path / "whole", progress=False)
    steps = whole["history"][-1]["step"]
    train_and_evaluate(cfg, tmp_path / "cut", progress=False, preempt_at_step=steps // 2 + 1)
    resumed = train_and_evaluate(cfg, tmp_path / "cut", progress=False)
    assert resumed["results"]["metrics"] == whole["results"]["metrics"]
    job = make_job(cfg, tmp_path / "whole")
    arrays = job.data.load_split("test")
    state, _ = restore_state(job, arrays, "best")
    averaged = eval_params(state)
    apart = jax.tree.leaves(jax.tree.map(lambda a, p: float(np.max(np.abs(a - p))), averaged,
                                         state.params))
    assert max(apart) > 1e-4  # the average is not the trained parameters
    cut_state, _ = restore_state(make_job(cfg, tmp_path / "cut"), arrays, "best")
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), averaged,
                                         eval_params(cut_state)))
    assert max(diffs) <= 1e-6
    assert whole["results"]["metrics"] == evaluate_split(job, averaged, arrays, "test")["metrics"]
    ckpts = Checkpoints(tmp_path / "whole", 2)
    exported, _, _ = ckpts.restore_params("best")
    ckpts.close()
    jax.tree.map(lambda e, a: np.testing.assert_array_equal(e, np.asarray(a)), exported, averaged)


def test_eval_every_steps_validates_across_epoch_ends_and_resumes_exactly(planted_build,
                                                                           tmp_path):
    """Validation every 7 steps of 20-step epochs; a preemption at an epoch end that is not a
    validation step (20) resumes into the next epoch without validating there."""
    cfg = tiny_config(str(planted_build))
    cfg.train.update(epochs=2, eval_every_steps=7)
    whole = train_and_evaluate(cfg, tmp_path / "whole", progress=False)
    assert [h["step"] for h in whole["history"]] == [7, 14, 21, 28, 35, 40]
    assert [h["epoch"] for h in whole["history"]] == [0.35, 0.7, 1.05, 1.4, 1.75, 2]
    cut = train_and_evaluate(cfg, tmp_path / "cut", progress=False, preempt_at_step=20)
    assert cut["preempted"]
    resumed = train_and_evaluate(cfg, tmp_path / "cut", progress=False)
    assert [h["step"] for h in resumed["history"]] == [7, 14, 21, 28, 35, 40]
    a, b = _params(tmp_path / "whole", 40), _params(tmp_path / "cut", 40)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    assert max(diffs) <= 1e-6
    assert [h["value"] for h in resumed["history"]] == [h["value"] for h in whole["history"]]


@pytest.mark.parametrize("overrides, message", [
    # NaN on the last step of epoch 1, a validation step: it stops before validating or saving
    ({"debug_nan_at_step": 20},
     r"step 20: non-finite grad_norm, loss \(config.train.nonfinite_policy=.stop.\)"),
    # skipped mid-epoch, between two logged steps: the step that reaches the limit is named
    ({"debug_nan_at_step": 5, "debug_nan_steps": 4, "nonfinite_policy": "skip",
      "max_nonfinite_in_a_row": 3}, "step 7: non-finite grad_norm, loss; 3 non-finite steps"),
])
def test_nonfinite_steps_are_caught_when_checked_a_step_late(planted_build, tmp_path, overrides,
                                                            message):
    """Steps are logged every 1000 here, so each step's finiteness is read only after the next
    step is dispatched; the step named and what is saved must not change with that."""
    cfg = tiny_config(str(planted_build))
    cfg.train.update(epochs=2, **overrides)
    with pytest.raises(NonFiniteError, match=message):
        train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_eval_command_reads_any_checkpoint(planted_build, tmp_path):
    cfg = tiny_config(str(planted_build))
    cfg.train.epochs = 1
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    val = evaluate_workdir(tmp_path / "run", split="validation", checkpoint="latest")
    assert val["split"] == "validation" and "validation" in val["protocol"]
    assert set(val["metrics"]) >= {"HR@10", "NDCG@10", "HR@50", "NDCG@200", "MRR"}
    both = evaluate_workdir(tmp_path / "run", split="validation", checkpoint="latest",
                            exclude_history=False)
    assert "history included" in both["protocol"]
    # ranking the history too can only push the target down (or leave it)
    assert both["metrics"]["MRR"] <= val["metrics"]["MRR"] + 1e-9
    assert (tmp_path / "run" / "results" / "validation-history-included.json").is_file()
    assert (tmp_path / "run" / "results" / "validation-history-excluded.json").is_file()


def test_eval_max_examples_scores_the_same_subset_every_time_and_says_so(planted_build,
                                                                       tmp_path):
    cfg = tiny_config(str(planted_build))
    cfg.train.update(epochs=1, max_steps=3)
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    job = make_job(cfg, tmp_path / "run")
    arrays = job.data.load_split("validation")
    params = restore_state(job, arrays, "latest")[0].params
    whole = evaluate_split(job, params, arrays, "validation")
    job.config.eval.max_examples = 40
    first, second = (evaluate_split(job, params, arrays, "validation") for _ in range(2))
    assert first == second and first["metrics"]["count"] == 40
    n = int(whole["metrics"]["count"])
    assert n > 40 and first["protocol"] == f"{whole['protocol']} | 40 of {n} examples (fixed " \
        "random subset)"


def test_catalogue_negatives_cover_every_item_except_the_positives(planted_build):
    """loss.negatives.catalogue appends all N items once per example, masking the pool's own."""
    import jax.numpy as jnp

    from onepiece_jax.data.loader import BatchIterator, BuiltDataset
    from onepiece_jax.train.objective import Objective, retrieval_pool
    from onepiece_jax.train.step import negative_tables

    cfg = tiny_config(str(planted_build))
    cfg.loss.negatives.update(uniform=0, popular=0, same_category=0, in_batch=False,
                              catalogue=True)
    data = BuiltDataset.open(planted_build)
    batch = next(BatchIterator(data.load_split("train"), 8, shuffle=False, seed=0))
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "time"}
    n = data.spec["num_items"]
    vec, shared, labels, valid = retrieval_pool(
        Objective.from_config(cfg), batch, negative_tables(data.item_count, data.catalog),
        jax.random.key(0), lambda ids: jnp.stack([ids, ids], -1).astype(jnp.float32))
    pool = np.asarray(batch["pool_item"])
    assert vec.shape == (8, pool.shape[1], 2) and valid.shape == (8, pool.shape[1] + n)
    np.testing.assert_array_equal(np.asarray(shared[:, 0]), np.arange(1, n + 1))
    negatives_valid = np.asarray(valid[:, pool.shape[1]:])
    for row in range(8):
        own = set(pool[row][pool[row] > 0])
        assert {i + 1 for i in np.flatnonzero(~negatives_valid[row])} == own
    assert float(labels[:, pool.shape[1]:].sum()) == 0.0


def test_hard_negatives_use_the_category_table_not_the_first_side_feature():
    from onepiece_jax.train.step import negative_tables

    n = 6
    catalog = {"item": {"item_id": np.arange(n + 1)[:, None],
                        "brand": np.array([[0], [9], [9], [9], [8], [8], [8]]),
                        "cate_1": np.array([[0], [1], [2], [1], [2], [1], [2]])}}
    tables = negative_tables(np.ones(n + 1, np.float32), catalog)
    np.testing.assert_array_equal(np.asarray(tables.item_category), [0, 1, 2, 1, 2, 1, 2])


def test_resuming_accepts_a_model_key_added_since_with_its_default_and_names_real_changes(
        tmp_path):
    """A workdir whose config.json predates a model key (e.g. ``embed_init_std``) resumes when
    the key keeps its default; a changed field is refused, named with both values."""
    from onepiece_jax.config import ConfigError, base_config
    from onepiece_jax.train.loop import _save_config

    config = base_config()
    _save_config(config, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["model"]["embed_init_std"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    _save_config(config, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["embed_init_std"] == 0.0
    config.model.embed_init_std = 0.02
    with pytest.raises(ConfigError, match=r"model\.embed_init_std: 0\.0 -> 0\.02"):
        _save_config(config, tmp_path)


def test_resuming_refuses_changed_data_loss_or_batch_size_and_accepts_a_longer_schedule(
        tmp_path):
    """The data and loss define what the checkpoint was trained on and for, the batch size what
    its iterator position counts, so each changed is refused even with the build elsewhere; more
    epochs is how a run is extended."""
    from flax import traverse_util

    from onepiece_jax.config import ConfigError, apply_overrides, base_config
    from onepiece_jax.train.loop import _save_config

    config = base_config()
    _save_config(config, tmp_path)
    stored = traverse_util.flatten_dict(config.to_dict(), sep=".")
    longer = base_config()
    longer.train.epochs = int(config.train.epochs) + 5
    longer.train.early_stop_patience = 1
    longer.dataset.build_dir = str(tmp_path / "elsewhere")
    _save_config(longer, tmp_path)
    for key, value in [("loss.negatives.uniform", 3), ("loss.eta", 0.5),
                       ("train.batch_size", 64), ("context.pa_group_size", 3),
                       ("dataset.name", "beauty"), ("seed", 7)]:
        changed = base_config()
        apply_overrides(changed, [f"--config.{key}={value}"])
        with pytest.raises(ConfigError,
                           match=re.escape(f"{key}: {stored[key]!r} -> {value!r}")):
            _save_config(changed, tmp_path)
    # a moving average of the parameters is optimizer state: switching it on is refused, while
    # its decay may change once it is on
    averaged = base_config()
    averaged.train.ema_decay = 0.99
    with pytest.raises(ConfigError, match=re.escape("train.ema_decay > 0: False -> True")):
        _save_config(averaged, tmp_path)
    (tmp_path / "averaged").mkdir()
    _save_config(averaged, tmp_path / "averaged")
    averaged.train.ema_decay = 0.999
    _save_config(averaged, tmp_path / "averaged")


def _dataset(folder: Path, text: str = "1 2 3\n") -> str:
    folder.mkdir(parents=True)
    (folder / "u.data").write_text(text)
    return str(folder)


def test_resuming_accepts_the_same_files_at_another_dataset_path_and_refuses_other_files(
        tmp_path):
    """A resumed job may find its data elsewhere (staged to a node's disk, another working
    directory): the same files are accepted, by the old path's files while they exist, else by
    the content recorded in the build's stamp; other files, or no evidence, are refused."""
    from onepiece_jax.config import ConfigError, base_config
    from onepiece_jax.files import content_id
    from onepiece_jax.train.loop import DATA_CONTENT, STAMP, _save_config

    workdir = tmp_path / "run"
    workdir.mkdir()
    config = base_config()
    config.dataset.path = _dataset(tmp_path / "a")
    _save_config(config, workdir)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    config.dataset.path = str(tmp_path / "b")
    _save_config(config, workdir)  # the old path still holds the same files
    assert json.loads((workdir / "config.json").read_text())["dataset"]["path"] == (
        config.dataset.path)
    shutil.move(tmp_path / "b", tmp_path / "c")
    config.dataset.path = str(tmp_path / "c")
    with pytest.raises(ConfigError, match=re.escape(f"dataset.path: '{tmp_path / 'b'}' -> '")):
        _save_config(config, workdir)  # b is gone and nothing recorded what it held
    (workdir / "data").mkdir()
    (workdir / "data" / STAMP).write_text(json.dumps({DATA_CONTENT: content_id(tmp_path / "c")}))
    _save_config(config, workdir)  # the build's stamp vouches for c
    config.dataset.path = _dataset(tmp_path / "d", "4 5 6\n")
    with pytest.raises(ConfigError, match="dataset.path: .* -> .*same files"):
        _save_config(config, workdir)


def test_a_build_is_reused_from_the_same_files_at_a_new_path_and_refused_for_others(
        tmp_path, monkeypatch):
    from onepiece_jax.config import ConfigError
    from onepiece_jax.train import loop

    calls = []
    monkeypatch.setattr(loop, "build", lambda log, ctx, out: calls.append(out))
    monkeypatch.setattr(loop, "read_log", lambda config: object())
    config = tiny_config(str(tmp_path / "build"))
    config.dataset.path = _dataset(tmp_path / "a")
    loop.ensure_built(config, tmp_path)
    stamp = json.loads((tmp_path / "build" / loop.STAMP).read_text())
    assert stamp[loop.DATA_CONTENT].startswith("sha256:")
    shutil.move(tmp_path / "a", tmp_path / "b")
    config.dataset.path = str(tmp_path / "b")
    loop.ensure_built(config, tmp_path)
    assert len(calls) == 1
    assert json.loads((tmp_path / "build" / loop.STAMP).read_text()) == {
        **stamp, "dataset": {**stamp["dataset"], "path": config.dataset.path}}
    config.dataset.path = _dataset(tmp_path / "c", "7 8\n")
    with pytest.raises(ConfigError, match=f"built from {tmp_path / 'b'} .* holds other files"):
        loop.ensure_built(config, tmp_path)
    config.dataset.path = str(tmp_path / "b")
    config.context.pa_group_size = 3
    with pytest.raises(ConfigError, match="different config.dataset/context/tasks"):
        loop.ensure_built(config, tmp_path)


def test_runs_started_together_on_one_build_directory_build_it_once(tmp_path, monkeypatch):
    """``onepiece experiment --jobs`` starts runs that share a build: the first builds under a
    lock while the others wait, then find the stamp and read it."""
    import threading
    import time

    from onepiece_jax.train import loop

    calls = []

    def slow_build(log, ctx, out):
        calls.append(out)
        time.sleep(0.5)  # long enough for the other thread to reach the stamp check unlocked

    monkeypatch.setattr(loop, "build", slow_build)
    config = tiny_config(str(tmp_path / "build"))
    threads = [threading.Thread(target=loop.ensure_built, args=(config, tmp_path),
                                kwargs={"log": object()}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and (tmp_path / "build" / "build_key.json").is_file()
