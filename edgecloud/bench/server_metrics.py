"""What the server says about image time: the node's image counters on its `/metrics`, or
the `timings` of each answer.

An edgecloud vision node counts the images it read and the engine time they took (encode and
the prefill of their embeddings) as Prometheus counters, and puts each request's own in its
answer (`timings.images_n`, `timings.images_ms`). The bench reads both counters before and after
each level: the difference is the server's own mean image time for that level. Where there are
no counters to read (a gateway in front of the node) it sums the answers' timings instead. A
server with neither (llama-server, a hosted API) gives None, and the results say so.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from edgecloud.bench.results import RequestRecord
from edgecloud.metric_catalogue import NODE_IMAGE_SECONDS, NODE_IMAGES

ImageCounters = tuple[float, float]  # images read, seconds spent on them


def parse_image_counters(text: str) -> ImageCounters | None:
    """Both counters from a Prometheus text page, or None when either is missing."""
    found: dict[str, float] = {}
    wanted = {NODE_IMAGES.name, NODE_IMAGE_SECONDS.name}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        if name in wanted:
            try:
                found[name] = float(rest.split()[0])
            except (IndexError, ValueError):
                return None
    if len(found) != len(wanted):
        return None
    return found[NODE_IMAGES.name], found[NODE_IMAGE_SECONDS.name]


def metrics_url(api_root: str) -> str:
    """`http://host:port/v1` -> `http://host:port/metrics` (the node serves it at the root)."""
    root = api_root.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/metrics"


async def read_image_counters(client: httpx.AsyncClient, api_root: str) -> ImageCounters | None:
    """The node's image counters now; None when the target does not publish them."""
    try:
        resp = await client.get(metrics_url(api_root), timeout=5.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    return parse_image_counters(resp.text)


def image_ms_per_image(
    before: ImageCounters | None, after: ImageCounters | None
) -> tuple[int, float | None]:
    """Images read between two readings and their mean time in ms (None: nothing to say)."""
    if before is None or after is None:
        return 0, None
    images = int(round(after[0] - before[0]))
    if images <= 0:
        return 0, None
    return images, (after[1] - before[1]) / images * 1000.0


def images_from_timings(records: Iterable[RequestRecord]) -> tuple[int | None, float | None]:
    """Images read and their mean time in ms, from the `timings` the server put in each answer
    (None, None: no answer said)."""
    images, ms = 0, 0.0
    for rec in records:
        if rec.ok and rec.server_images:
            images += rec.server_images
            ms += rec.server_image_ms or 0.0
    if not images:
        return None, None
    return images, ms / images
