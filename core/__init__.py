"""The domain core both the gateway and the workers import (``hookline.core``).

Provider adapters (payload in, canonical events out), the canonical event,
content keys, settings, sources and topic names live here, so the gateway
never imports the workers' package and the workers never import the
gateway's. The Avro codec is its own package next to its schemas
(``hookline.schemas``), imported by both as well.
"""
