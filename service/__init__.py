"""The Flask service. ``create_app()`` is the factory gunicorn and the tests call."""
from __future__ import annotations

from flask import Flask

from matcher.engine import Engine
from models.enums import EntityKind
from service import auth
from service.config import Settings, flask_config
from service.errors import register_error_handlers
from service.logging_setup import configure_logging


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    """Build the app. The engine's model and indexes load on first use (gunicorn loads them per worker)."""
    settings = settings or (engine.settings if engine is not None else Settings.from_env())
    auth.check_bind(settings, [settings.host])
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config.update(flask_config(settings))
    app.json.sort_keys = False
    app.extensions["matcher.settings"] = settings
    app.extensions["matcher.engine"] = engine or Engine(settings).open()

    from service import console
    from service.api import consortia, entities, exports, health, jobs, keys, match, reject_unstorable_path, unsubscribe

    app.register_blueprint(entities.make_blueprint(EntityKind.organisations))
    app.register_blueprint(entities.make_blueprint(EntityKind.challenges))
    app.register_blueprint(match.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(unsubscribe.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(consortia.bp)
    app.register_blueprint(keys.bp)
    app.register_blueprint(exports.bp)
    console.init_app(app)  # the web console under /console/ (it signs its users in itself)
    auth.init_app(app)
    app.before_request(reject_unstorable_path)  # after auth's check: a bad key is 401 whatever the path
    register_error_handlers(app)
    return app
