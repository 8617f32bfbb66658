"""The HTTP routes, one APIRouter per area; `create_app` includes them in this order (the
order of the OpenAPI paths)."""

from . import chat, images, models, page

ROUTERS = (chat.router, images.router, models.router, page.router)
