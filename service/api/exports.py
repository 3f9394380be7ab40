"""GET /v1/organisations/{id}/export: everything stored about one organisation (GDPR Art. 15 and 20), as one JSON
document. It holds personal data (contact fields) and the tenant's job rows, so it needs the ``admin`` scope."""
from __future__ import annotations

from flask import Blueprint, g

from models.enums import EntityKind
from models.errors import NotFoundError
from models.times import iso, utcnow
from service.api import engine

bp = Blueprint("exports", __name__, url_prefix="/v1/organisations")


@bp.get("/<entity_id>/export")
def export(entity_id):
    data = engine().store.export_organisation(entity_id)
    if data is None:
        raise NotFoundError(EntityKind.organisations, entity_id)
    # An id is letters, digits and "._:-" (models/schemas.py ID_PATTERN): safe in a quoted file name.
    headers = {"Content-Disposition": f'attachment; filename="organisation-{entity_id.replace(":", "_")}.json"'}
    return {"tenant": g.tenant, "exported_at": iso(utcnow()), **data}, 200, headers
