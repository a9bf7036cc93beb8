"""ReaRec baseline on MovieLens-100K: the SASRec recipe plus single-token (M=1) latent reasoning
for K=2 steps with reasoning position embeddings, one next-item task on the last step.

    onepiece train --config configs/ml100k_rearec.py --workdir runs/ml100k_rearec \
        --config.dataset.path=data/ml-100k
"""

from onepiece_jax.config import base_config, use_baseline


def get_config():
    c = base_config()
    c.dataset.name = "ml100k"
    c.train.epochs = 40
    return use_baseline(c, "rearec")
