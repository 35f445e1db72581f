"""Writes a tiny real SavedModel for the tests: run as ``python make_savedmodel.py <model_base_path>``.

Version 1 under the base path, like TF Serving expects. Signatures:

* ``serving_default``: input ``x`` float32 [None, 1] -> output ``y = 2x + 1``;
* ``two``: inputs ``a``, ``b`` float32 [None] -> outputs ``sum = a + b`` and ``prod = a * b``.

Run in a subprocess so the pytest process never imports TensorFlow (seconds of import time).
"""

from __future__ import annotations

import os
import sys


def main(base: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    class Affine(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": 2.0 * x + 1.0}

        pair = [tf.TensorSpec([None], tf.float32, name="a"), tf.TensorSpec([None], tf.float32, name="b")]

        @tf.function(input_signature=pair)  # type: ignore[untyped-decorator]
        def two(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"sum": a + b, "prod": a * b}

    module = Affine()
    tf.saved_model.save(
        module, os.path.join(base, "1"), signatures={"serving_default": module.serve, "two": module.two}
    )


if __name__ == "__main__":
    main(sys.argv[1])
