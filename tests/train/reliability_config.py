"""Config file for the `onepiece train` subprocesses of test_reliability.py.

The tiny planted config (tests/train/conftest.py) for 2 epochs of 20 steps, with a log line per
step so a test can follow (and count) the steps on stdout. The built dataset comes on the
command line: ``--config.dataset.build_dir=DIR``. Needs the repository root on ``PYTHONPATH``.
"""

from tests.train.conftest import tiny_config


def get_config():
    c = tiny_config("")
    c.train.epochs = 2
    c.train.log_every_steps = 1
    return c
