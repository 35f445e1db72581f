"""kopf handlers; importing this package registers them (`kopf run -m greenserve.handlers`)."""

from greenserve.handlers import cache, modelservice, startup

__all__ = ["cache", "modelservice", "startup"]
