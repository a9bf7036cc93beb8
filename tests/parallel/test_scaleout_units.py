"""Scale-out pieces that need no simulated devices: sharding rules, vocabulary padding, config
and ``jax.distributed`` settings validation, per-process batch rows and the record reader."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from onepiece_jax.config import ConfigError, base_config, validate
from onepiece_jax.data.loader import BatchIterator, BuiltDataset, pad_batch
from onepiece_jax.model.onepiece import OnePiece
from onepiece_jax.parallel import distributed
from onepiece_jax.parallel.mesh import make_mesh, process_rows, put_batch
from onepiece_jax.parallel.rules import (
    ShardingRules,
    pad_catalog,
    path_str,
    shard_bytes,
    tree_shardings,
    vocab_multiple,
)
from onepiece_jax.train.step import make_optimizer, split_batch
from tests.model.conftest import tiny_batch, tiny_catalog
from tests.model.conftest import tiny_config as tiny_model_config
from tests.train.conftest import planted_build  # noqa: F401  (session fixture, reused)

TABLE = "params/embedder/tables/item_item_id/embedding"
ADAM_MU = "opt_state/1/0/mu/embedder/tables/item_item_id/embedding"


# --------------------------------------------------------------------------- rules
def test_a_table_and_its_adam_moments_share_one_rule():
    rules = ShardingRules()
    assert rules.spec(TABLE, 2) == PartitionSpec(("model",), None)
    assert rules.spec(ADAM_MU, 2) == PartitionSpec(("model",), None)
    assert rules.spec("params/embedder/item_tower/Dense_0/kernel", 2) == PartitionSpec()
    assert rules.spec("opt_state/1/0/count", 0) == PartitionSpec()
    over_data = ShardingRules(table_axes=("data", "model"))
    assert over_data.spec(TABLE, 2) == PartitionSpec(("data", "model"), None)


def test_the_parameters_moving_average_is_sharded_like_its_table():
    cfg = base_config().train
    cfg.ema_decay = 0.99
    params = {"embedder": {"tables": {"item_item_id": {"embedding": jnp.zeros((8, 4))}}}}
    state = make_optimizer(cfg, 10).init(params)
    specs = {path_str(p): ShardingRules().spec(path_str(p), np.ndim(leaf))
             for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    averaged = [spec for path, spec in specs.items() if "averaged_params" in path]
    assert averaged == [PartitionSpec(("model",), None)], specs


def test_rules_come_from_the_config():
    cfg = base_config()
    assert ShardingRules.from_config(cfg).table_axes == ("model",)
    cfg.mesh.shard_tables_over_data = True
    assert ShardingRules.from_config(cfg).table_axes == ("data", "model")


def test_a_rule_of_the_wrong_rank_and_an_uneven_table_are_named():
    with pytest.raises(ValueError, match="rank 3"):
        ShardingRules().spec(TABLE, 3)
    mesh = AbstractMesh((2, 4), ("data", "model"))
    tree = {"embedder": {"tables": {"item_item_id": {
        "embedding": jax.ShapeDtypeStruct((151, 8), jnp.float32)}}}}
    with pytest.raises(ValueError, match=r"embedder/tables/item_item_id/embedding has 151 rows.*"
                                         r"config\.mesh\.vocab_multiple"):
        tree_shardings(tree, mesh, ShardingRules())
    tree["embedder"]["tables"]["item_item_id"]["embedding"] = jax.ShapeDtypeStruct((152, 8),
                                                                                   jnp.float32)
    sharding = jax.tree.leaves(tree_shardings(tree, mesh, ShardingRules()))[0]
    assert sharding.spec == PartitionSpec(("model",), None)


def test_path_str_joins_dict_attribute_and_index_keys():
    tree = {"a": [{"b": 1}], "c": 2}
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["a/0/b", "c"]


def test_vocab_multiple_is_automatic_or_a_multiple_of_the_table_shards():
    assert vocab_multiple(0, 8) == 8 and vocab_multiple(0, 1) == 1
    assert vocab_multiple(1024, 8) == 1024
    with pytest.raises(ValueError, match=r"config\.mesh\.vocab_multiple=12 .* 8 devices"):
        vocab_multiple(12, 8)
    with pytest.raises(ValueError, match=r"config\.mesh\.vocab_multiple=-1"):
        vocab_multiple(-1, 8)


def test_catalog_rows_are_padded_with_no_value():
    catalog = {"item": {"item_id": np.arange(11, dtype=np.int32)[:, None]}, "query": {}}
    padded = pad_catalog(catalog, 4)
    assert set(padded) == {"item"}  # entities without tables are dropped, as before
    table = padded["item"]["item_id"]
    assert table.shape == (12, 1) and table[11, 0] == 0
    np.testing.assert_array_equal(table[:11], catalog["item"]["item_id"])
    assert pad_catalog(catalog, 1)["item"]["item_id"] is catalog["item"]["item_id"]


def test_padded_tables_start_as_the_unpadded_ones_and_give_the_same_outputs():
    """Padding rows are zero and the real rows are drawn exactly as without padding, so a model
    on any mesh starts from the same values (and trains the same, see test_sharded_training)."""
    batch, catalog = tiny_batch("retrieval"), tiny_catalog()
    outputs, tables = [], []
    for multiple in (1, 8):
        model = OnePiece(tiny_model_config(vocab_multiple=multiple, dropout=0.0))
        padded = {e: {k: jnp.asarray(v) for k, v in t.items()}
                  for e, t in pad_catalog(jax.device_get(catalog), multiple).items()}
        # jitted: eager Flax runs op by op, which is slow on a small CPU
        init = jax.jit(functools.partial(model.init, train=False))
        apply = jax.jit(functools.partial(model.apply, train=False))
        variables = init(jax.random.key(0), batch, padded)
        outputs.append(apply(variables, batch, padded)["user_vectors"])
        tables.append(variables["params"]["embedder"]["tables"])
    for name, entry in tables[0].items():
        plain, padded = np.asarray(entry["embedding"]), np.asarray(tables[1][name]["embedding"])
        assert padded.shape[0] % 8 == 0 and padded.shape[0] >= plain.shape[0], name
        np.testing.assert_array_equal(padded[:plain.shape[0]], plain)
        assert not padded[plain.shape[0]:].any(), name
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_shard_bytes_of_a_replicated_tree_is_its_size():
    x = jnp.zeros((10, 4), jnp.float32)
    assert shard_bytes({"x": x}) == (160, 160)


# --------------------------------------------------------------------------- config and mesh
@pytest.mark.parametrize("shape", [(3,), (-1, -1), (0, 2), (2, -3)])
def test_a_bad_mesh_shape_is_a_config_error_naming_the_key(shape):
    cfg = base_config()
    cfg.mesh.shape = shape
    with pytest.raises(ConfigError, match=r"config\.mesh\.shape"):
        validate(cfg)


def test_a_negative_vocab_multiple_is_a_config_error():
    cfg = base_config()
    cfg.mesh.vocab_multiple = -8
    with pytest.raises(ConfigError, match=r"config\.mesh\.vocab_multiple=-8"):
        validate(cfg)


def test_make_mesh_takes_the_remaining_devices_on_either_axis():
    n = jax.device_count()
    assert dict(make_mesh(-1, 1).shape) == {"data": n, "model": 1}
    assert dict(make_mesh(1, -1).shape) == {"data": 1, "model": n}
    with pytest.raises(ValueError, match=r"config\.mesh\.shape=\(-1, -1\)"):
        make_mesh(-1, -1)


# --------------------------------------------------------------------------- distributed
class _Dist(dict):
    """``config.distributed`` stand-in (``ConfigDict`` has the same ``get``)."""


def test_distributed_is_off_unless_enabled(monkeypatch):
    monkeypatch.delenv("ONEPIECE_DISTRIBUTED", raising=False)
    assert distributed.settings(_Dist()) is None
    assert distributed.settings(base_config().distributed) is None
    monkeypatch.setenv("ONEPIECE_DISTRIBUTED", "0")
    assert distributed.settings(_Dist(enabled=True)) is None


def test_explicit_distributed_settings(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "ONEPIECE_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    got = distributed.settings(_Dist(enabled=True, coordinator_address="10.0.0.1:1234",
                                     num_processes=4, process_id=3, local_device_ids="0,1"))
    assert got == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                   "local_device_ids": [0, 1], "initialization_timeout": 300}
    # nothing given: JAX's cluster auto-detection (SLURM, Open MPI, TPU VMs)
    assert distributed.settings(_Dist(enabled=True)) == {"initialization_timeout": 300}


def test_distributed_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("ONEPIECE_DISTRIBUTED", "1")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:9999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    got = distributed.settings(_Dist())
    assert (got["coordinator_address"], got["num_processes"], got["process_id"]) == \
        ("127.0.0.1:9999", 2, 1)
    # the config wins over the environment
    assert distributed.settings(_Dist(process_id=0))["process_id"] == 0


@pytest.mark.parametrize("fields,match", [
    ({"coordinator_address": "nohost"}, r"coordinator_address='nohost'.*host:port"),
    ({"coordinator_address": "h:1", "num_processes": 0}, r"num_processes=0"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, r"process_id=2"),
    ({"num_processes": 2, "process_id": 0}, r"need config\.distributed\.coordinator_address"),
])
def test_inconsistent_distributed_settings_name_the_key(monkeypatch, fields, match):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "ONEPIECE_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=match):
        distributed.settings(_Dist(enabled=True, **fields))


def test_one_process_feeds_every_row_and_reads_back_everything():
    mesh = make_mesh(-1, 1)
    assert process_rows(mesh, 8) == slice(0, 8)
    batch = {"x": np.arange(16, dtype=np.int32).reshape(8, 2)}
    put = put_batch(batch, mesh)
    np.testing.assert_array_equal(distributed.to_host(put["x"]), batch["x"])
    assert distributed.is_primary()
    distributed.barrier("no-op with one process")


# --------------------------------------------------------------------------- per-process data
def _split_iterators(arrays, rows_of, **kw):
    return [BatchIterator(arrays, 64, rows=rows, **kw) for rows in rows_of]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_slices_of_every_batch_add_up_to_the_global_batch(planted_build,  # noqa: F811
                                                                 drop_remainder):
    data = BuiltDataset.open(planted_build)
    arrays = data.load_split("validation")  # 120 rows: a padded last batch without drop
    kw = dict(shuffle=True, seed=3, drop_remainder=drop_remainder)
    whole = list(BatchIterator(arrays, 64, **kw))
    parts = _split_iterators(arrays, [slice(0, 32), slice(32, 64)], **kw)
    records = _split_iterators(data.records("validation", varlen_width=arrays["exclude"].shape[1]),
                               [slice(0, 32), slice(32, 64)], **kw)
    assert len(whole) == (1 if drop_remainder else 2)
    for i, batch in enumerate(whole):
        for split in (parts, records):
            halves = [next(it) for it in split]
            for key, value in batch.items():
                np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), value,
                                              err_msg=f"batch {i} {key}")


def test_record_split_decodes_only_the_rows_asked_for(planted_build):  # noqa: F811
    data = BuiltDataset.open(planted_build)
    arrays = data.load_split("train")
    split = data.records("train")
    assert len(split) == arrays["user"].shape[0]
    idx = np.array([5, 0, 17])
    got = split.take(idx)
    assert set(got) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(got[key], arrays[key][idx], err_msg=key)
    empty = pad_batch(split.take(np.zeros(0, np.int64)), 4)
    assert not empty["example_mask"].any() and empty["ih_item"].shape == (4, 8)


def test_split_batch_for_pmap_needs_an_even_split():
    assert split_batch({"x": np.zeros((8, 3))}, 4)["x"].shape == (4, 2, 3)
    with pytest.raises(ValueError, match="6 rows .* 4 devices"):
        split_batch({"x": np.zeros((6, 3))}, 4)
