"""Loaded by the schemathesis run in test_openapi (SCHEMATHESIS_HOOKS): the tus PATCH body type
is plain bytes, which schemathesis only knows as application/octet-stream."""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
