"""How many threads this process's numerical libraries use: the model (torch), BLAS (numpy) and FAISS.

A gunicorn worker runs one request's work at a time on its core; more threads than cores make the libraries spin
against the other worker (a 10,000 x 384 matrix-vector product took 12 ms on 2 threads of a busy 2-core machine,
0.2 ms on one).
"""
from __future__ import annotations


def limit_threads(count: int) -> None:
    """Keep torch (when loaded), BLAS and FAISS to ``count`` threads each from now on."""
    import sys

    import faiss
    from threadpoolctl import threadpool_limits

    if "torch" in sys.modules:  # the ONNX runtime takes its threads from the encoder's settings, without torch
        sys.modules["torch"].set_num_threads(count)
    threadpool_limits(count)
    faiss.omp_set_num_threads(count)
