"""广播 Broadcasts: the list (static/js/broadcasts.js), the compose page (compose.js with targets.js: text with
the server's spoken preview, an uploaded file fitted to the box limit, or a CAP import; the exact boxes
before sending) and one broadcast with a live row per box (broadcast.js)."""

from typing import Any

from county.web.pages import N_, Page


async def _review(request: Any, _user: Any) -> dict[str, Any]:
    """Whether daily / drill broadcasts wait for a reviewer (the compose page says so before sending)."""
    review = request.app.state.config.review
    return {"review_daily": bool(review.daily), "review_drill": bool(getattr(review, "drill", False))}


PAGES = [
    Page("/broadcasts", "broadcasts", "broadcasts.html", N_("Broadcasts"), "broadcasts", "broadcasts.read",
         "broadcasts.js"),
    Page("/broadcasts/new", "compose", "compose.html", N_("New broadcast"), "broadcasts", "broadcast.create",
         "compose.js", context=_review),
    Page("/broadcasts/{id}", "broadcast", "broadcast.html", N_("Broadcast"), "broadcasts", "broadcasts.read",
         "broadcast.js", context=_review),
]
