"""OnePiece retrieval on MovieLens-100K (leave-one-out, full-catalogue ranking).

Curriculum (issue "Training and evaluation", sequential public data): step 1 learns "the items of
the next W interactions" (broad), step 2 "the exact next item" (precise, served). Anchors: the
global top items per rating level over the 7 days before the example's day. With 1,682 items the
whole catalogue serves as U2I/BCE negatives (temperature 1), which made the first epoch reach
validation NDCG@10 0.068 instead of 0.022 with 35 sampled + in-batch negatives (η = 0.07).

    onepiece train --config configs/ml100k_onepiece.py --workdir runs/ml100k_onepiece \
        --config.dataset.path=data/ml-100k
"""

from onepiece_jax.config import base_config


def get_config():
    c = base_config()
    c.dataset.name = "ml100k"
    c.mode = "retrieval"
    c.tasks = ("window", "next")
    c.context.ih_max_len = 50
    c.context.pa_groups = ("rated5", "rated>=4", "watched")
    c.context.pa_group_size = 10
    c.context.pool_window = 5
    c.model.reasoning_steps = 2
    c.model.dropout = 0.2
    # lecun_normal dense kernels (docs/results/movielens.md): over seeds 0-2 test
    # NDCG@10 0.1001 ± 0.0053 against 0.0892 ± 0.0011 at N(0, 0.02²), and higher validation
    c.model.dense_init = "lecun_normal"
    c.loss.eta = 1.0
    c.loss.negatives.update(uniform=0, popular=0, same_category=0, in_batch=False, catalogue=True)
    # learning rate 4e-3 with 50 warm-up steps (docs/results/movielens.md): selected on validation
    # NDCG@10, which is higher in every seed (0.1226 / 0.1216 / 0.1207 against 0.1145 / 0.1109 /
    # 0.1090 at 1e-3 with 200); test NDCG@10 over seeds 0-2 at 5 epochs 0.1099 ± 0.0027 against
    # 0.1001 ± 0.0053
    c.train.learning_rate = 4e-3
    c.train.warmup_steps = 50
    # 5 epochs, the recipe of the 3-seed figures: 10 (the cosine over 10) moved best validation
    # NDCG@10 by +0.0009 / +0.0059 on seeds 0-1, below one figure's standard error, so
    # validation cannot tell them apart and the cheaper schedule stays (session 34)
    c.train.epochs = 5
    c.train.early_stop_patience = 5
    return c
