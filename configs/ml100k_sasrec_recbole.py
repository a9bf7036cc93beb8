"""SASRec on MovieLens-100K exactly as RecBole 1.2.1 runs it, for checking the in-framework
SASRec against RecBole's published recipe (issue "Training and evaluation").

Same examples as RecBole (its event order: every training, validation and test example, history
and target, checked equal against RecBole's own data preparation), RecBole's layer (post-norm,
no dropout inside the FFN, dropout 0.5 on attention weights, every table from N(0, 0.02),
positions numbered from the oldest item) and its trainer (Adam at a constant 1e-3, batch 2048, no
clipping, early stopping after 10 epochs without a better validation NDCG@10, history included
in validation as in RecBole); at most 25 epochs, where RecBole's default is 300.
``configs/ml100k_sasrec.py`` is the project's own recipe.

    onepiece train --config configs/ml100k_sasrec_recbole.py --workdir runs/ml100k_sasrec_recbole \
        --config.dataset.path=data/ml-100k
    onepiece eval --workdir runs/ml100k_sasrec_recbole --exclude-history   # HSTU's protocol
"""

from onepiece_jax.config import base_config, use_baseline


def get_config():
    c = base_config()
    c.dataset.name = "ml100k"
    c.dataset.time_precision = "recbole"
    c = use_baseline(c, "sasrec")
    c.model.update(norm="post", ffn_inner_dropout=False, attention_dropout=0.5,
                   embed_init_std=0.02, ih_positions="from_oldest")
    c.train.update(batch_size=2048, schedule="constant", clip_norm=0.0, epochs=25,
                   early_stop_patience=10)
    c.eval.exclude_history = False
    return c
