"""Signed-URL checks at a cache node, before any lookup or upstream traffic (seed 004)."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from ..config import Config
from ..errors import HTTPError
from ..signing import BadSignature, DownloadSigner, SignatureExpired, has_download_signature
from . import policy
from .req import Req


class Gate:
    """Refuses unsigned requests for classes that require a signature, and bad signatures."""

    def __init__(self, config: Config) -> None:
        self.classes = config.content_classes
        self.signer = DownloadSigner.from_config(config.download_signing)
        self.signed_classes = frozenset(c.name for c in self.classes if c.require_signature)

    def check(self, req: Req) -> None:
        """Raise 403 unless ``req`` may proceed. Uses the canonical path, so no other spelling
        of a protected path gets around it; a signature that is present must be valid even
        where the class does not require one."""
        params = dict(parse_qsl(req.query, keep_blank_values=True)) if req.query else {}
        if not has_download_signature(params):
            if not self.signed_classes:
                return
            cls = policy.classify(req.path, None, self.classes)
            if cls is not None and cls.require_signature:
                raise HTTPError(403, "signature_required",
                                f"{cls.name} URLs must be signed (exp, kid, sig)")
            return
        try:
            self.signer.verify_download(req.path, params, time.time())
        except SignatureExpired as exc:
            raise HTTPError(403, "signature_expired", str(exc)) from None
        except BadSignature as exc:
            raise HTTPError(403, "bad_signature", str(exc)) from None
