"""gunicorn settings, from the same MATCHER_* environment as everything else.

    gunicorn -c service/gunicorn_conf.py "service:create_app()"

The app is preloaded: the master imports it and loads the model once (no encode() before the fork: that
hangs the workers). Each worker then limits torch, BLAS and FAISS to MATCHER_TORCH_THREADS threads, drops the master's
database connections, warms the model up and loads its indexes before it takes requests.

The workers are service.http_edge.EdgeWorker: MATCHER_THREADS request threads each, fed only whole requests
(slow clients hold no thread), and gunicorn's own refusals answered in the API's JSON error shape.
"""
from matcher import cpu, places
from matcher.settings import Settings
from service import auth, ratelimit

_settings = Settings.from_env()
ratelimit.share()  # before the app is preloaded and the workers fork: one set of rate-limit buckets for all

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
worker_class = "service.http_edge.EdgeWorker"
threads = _settings.threads
timeout = _settings.timeout
graceful_timeout = 30
preload_app = True
control_socket_disable = True  # gunicorn 27 would open ~/.gunicorn/gunicorn.ctl
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level
access_log_format = '%(h)s pid=%(p)s "%(r)s" %(s)s %(b)s %(M)sms'


def _engine(app):
    return app.extensions["matcher.engine"]


def on_starting(server):
    auth.check_bind(_settings, server.cfg.bind)  # MATCHER_AUTH=off: loopback only, whatever -b says


def when_ready(server):
    # Load (never run) the model in the master so the workers share its pages; the gazetteer too (seconds to read).
    _engine(server.app.wsgi()).encoder.dim  # noqa: B018 (loads it)
    places.gazetteer()
    if _settings.job_runner:  # batch jobs run in their own process, outside the request workers
        import subprocess
        import sys

        server.job_worker = subprocess.Popen([sys.executable, "-m", "matcher", "worker"])
        server.log.info("job worker started: pid %s", server.job_worker.pid)


def on_exit(server):
    worker = getattr(server, "job_worker", None)
    if worker is not None and worker.poll() is None:
        worker.terminate()  # it hands its current job back to the queue
        try:
            worker.wait(timeout=30)
        except Exception:
            worker.kill()


def post_fork(server, worker):
    _engine(worker.app.wsgi()).store.dispose()


def post_worker_init(worker):
    cpu.limit_threads(_settings.torch_threads)
    engine = _engine(worker.wsgi)
    engine.encoder.encode(["warm-up"])
    for tenant_engine in engine.all_tenants():
        tenant_engine.load_indexes()
    worker.log.info("worker %s ready: %s", worker.pid, engine.status_all()["indexed"])
