"""service/gunicorn_conf.py for the crash tests, plus one test hook in each request worker.

While the file named by CRASH_TEST_PAUSE_FILE exists, an entity write stops inside its transaction (every row
and change-log entry written, not yet committed), creates the file CRASH_TEST_MARKER_FILE and sleeps, so the
test can kill -9 the service at exactly that point.
"""
import os
import time

from service.gunicorn_conf import *  # noqa: F401,F403  the production settings and hooks
from service.gunicorn_conf import post_worker_init as _production_post_worker_init


def post_worker_init(worker):
    _production_post_worker_init(worker)
    pause, marker = os.environ.get("CRASH_TEST_PAUSE_FILE"), os.environ.get("CRASH_TEST_MARKER_FILE")
    if not (pause and marker):
        return
    store = worker.wsgi.extensions["matcher.engine"].store
    upsert = store.upsert

    def paused(then):  # after the write's own hook (an idempotency record), if any
        def on_write(conn, kind, docs):
            if then is not None:
                then(conn, kind, docs)
            if os.path.exists(pause):
                with open(marker, "w") as fh:
                    fh.write(f"{os.getpid()} {kind.value} {len(docs)}")
                time.sleep(600)

        return on_write

    store.upsert = lambda kind, items, on_write=None, **kwargs: upsert(kind, items, on_write=paused(on_write), **kwargs)
