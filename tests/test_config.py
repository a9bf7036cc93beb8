"""Config loading: overrides are typed, and bad ones fail before compilation naming the key."""

import re
from pathlib import Path

import pytest

from onepiece_jax.config import ConfigError, base_config, from_stored, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.py"))
ML = Path(__file__).parents[1] / "configs" / "ml100k_onepiece.py"
RANK = Path(__file__).parents[1] / "configs" / "taobao_ranking.py"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_validates(path):
    config = load_config(path)
    assert config.mode in ("retrieval", "ranking")


def test_overrides_are_parsed_with_the_field_type():
    c = load_config(ML, ["--config.model.reasoning_steps=1", "--config.loss.strategy=last_step",
                         "--config.train.learning_rate=0.01", "--config.model.use_pa=false",
                         "--config.eval.ks=(5,10)", "--config.context.pa_groups=rated5,watched"])
    assert c.model.reasoning_steps == 1 and c.train.learning_rate == 0.01
    assert c.model.use_pa is False and c.eval.ks == (5, 10)
    assert c.context.pa_groups == ("rated5", "watched")


@pytest.mark.parametrize("override, key", [
    ("--config.model.depth=4", "config.model.depth"),
    ("--config.nosuch.x=1", "config.nosuch"),
    ("--config.model.reasoning_steps=two", "config.model.reasoning_steps"),
    ("--config.model.use_pa=maybe", "config.model.use_pa"),
    ("--config.train.batch_size=1.5", "config.train.batch_size"),
    ("--config.model.reasoning_steps=7", "config.model.reasoning_steps=7"),
    ("--config.model.reasoning_steps=3", "config.loss.strategy='progressive'"),
    ("--config.train.eval_every_steps=-5", "config.train.eval_every_steps=-5"),
    ("--config.eval.max_examples=-1", "config.eval.max_examples=-1"),
    ("--config.train.eval_every_epochs=2", "config.train.eval_every_epochs"),
    ("--config.model.dropuot=0.2", "config.model.dropuot: unknown key (did you mean 'dropout'?"),
    ("--config.model.dropout.rate=0.2", "config.model.dropout is a value (0.2), not a section"),
    ("--config.model.history_tokens=embedding", "config.model.history_tokens='embedding'"),
    ("--config.model.history_tokens=summ", "config.model.history_tokens='summ'"),
    ("--config.model.candidate_tokens=shared", "config.model.candidate_tokens='shared'"),
    ("--config.model.num_heads=3", "config.model.d_model=64 is not divisible"),
    ("--config.model.dropout=1.0", "config.model.dropout=1.0: must be in [0, 1)"),
])
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(ML, [override])


def test_a_config_file_setting_a_key_base_config_lacks_is_refused_with_the_closest_key(
        tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from onepiece_jax.config import base_config\n\n\n"
                    "def get_config():\n    c = base_config()\n    c.model.dropuot = 0.3\n"
                    "    return c\n")
    with pytest.raises(ConfigError, match=r"config.model.dropuot: unknown key \(did you mean "
                                          r"'dropout'\?"):
        load_config(path)


def test_every_loss_weight_in_base_config_is_a_loss_term_and_every_term_has_one():
    from onepiece_jax.train.losses import TERMS

    terms = {name for names in TERMS.values() for name in names}
    assert set(base_config().loss.weights.keys()) == terms


def test_impossible_ranking_combination_is_rejected():
    with pytest.raises(ConfigError, match="num_candidates=7 must divide"):
        load_config(RANK, ["--config.context.num_candidates=7"])
    with pytest.raises(ConfigError, match=re.escape("config.model.readout='block' in retrieval")):
        load_config(ML, ["--config.model.use_sd=false"])
    with pytest.raises(ConfigError, match=re.escape("config.model.readout: ranking reads one row")):
        load_config(RANK, ["--config.model.readout=last_token"])
    with pytest.raises(ConfigError, match=re.escape("config.model.reasoning_steps=-1: must be in")):
        load_config(ML, ["--config.model.reasoning_steps=-1"])


def test_a_stored_config_gets_keys_added_since_and_names_keys_no_longer_read():
    saved = load_config(ML).to_dict()
    del saved["train"]["eval_every_steps"]         # a run saved before the key existed
    saved["model"]["attention_heads"] = 4          # a key this version does not have
    saved["eval"]["ks"] = [10, 50]                 # JSON keeps tuples as lists
    with pytest.warns(UserWarning, match=re.escape(
            "W/config.json: config.model.attention_heads: unknown key")):
        config = from_stored(saved, "W/config.json")
    assert config.train.eval_every_steps == base_config().train.eval_every_steps
    assert config.eval.ks == (10, 50)
    assert config.model.reasoning_steps == load_config(ML).model.reasoning_steps


@pytest.mark.parametrize("overrides, message", [
    (["--config.dataset.level_thresholds=4,5"], "give a field with them"),
    (["--config.dataset.level_field=rating", "--config.dataset.level_thresholds=5,4"],
     "give finite, increasing thresholds"),
    (["--config.dataset.level_field=behavior", "--config.dataset.level_tokens=pv,buy",
      "--config.dataset.level_thresholds=4,"], "not both"),
    (["--config.dataset.name=ml100k", "--config.dataset.level_field=rating",
      "--config.dataset.level_thresholds=4,5"], "apply to the 'atomic' reader, not 'ml100k'"),
    (["--config.dataset.name=ml100k", "--config.dataset.item_field=business_id"],
     "item_field apply to the 'atomic' reader"),
    (["--config.dataset.user_field=sku", "--config.dataset.item_field=sku"],
     "give three different column names"),
])
def test_the_atomic_readers_funnel_keys_are_checked_before_anything_runs(overrides, message):
    atomic = Path(__file__).parents[1] / "configs" / "atomic_onepiece.py"
    with pytest.raises(ConfigError, match=message):
        load_config(atomic, overrides)
    funnel = load_config(atomic, ["--config.dataset.level_field=rating",
                                  "--config.dataset.level_thresholds=4,5"])
    assert funnel.dataset.level_thresholds == (4, 5)
    tokens = load_config(atomic, ["--config.dataset.level_field=behavior",
                                  "--config.dataset.level_tokens=pv,cart/fav,buy"])
    assert tokens.dataset.level_tokens == ("pv", "cart/fav", "buy")
