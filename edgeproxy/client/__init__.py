"""The client side: encrypt before upload, decrypt after download, thumbnails, media facts."""

from .media import DownloadResult, MediaClient, cdn_rewrite

__all__ = ["DownloadResult", "MediaClient", "cdn_rewrite"]
