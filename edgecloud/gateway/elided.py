"""A marker type for image data URIs that `parse_body` checked on the raw bytes and left out
of the parse (gateway/request.py).

Its own module because request.py is compiled (edgecloud/compiled.py), and mypyc cannot compile
a subclass of `str`."""


class ElidedURL(str):
    """The start of an image data URI whose payload was left out of the parse.

    Only parse_body makes these (orjson never returns a str subclass)."""

    __slots__ = ()
