"""The calls a remote store makes on S3 (through s3fs) and GCS (through gcsfs): conditional puts and
deletes, versioned gets, listings, batched existence. Every method takes a full key (bucket/prefix
included, see `key`) and returns plain values; a lost precondition is a None/False, never an error.

Both clients are used unmodified, over their own authenticated sessions: `_call_s3` (s3fs) and
`_call` (gcsfs) accept the conditional parameters of each service's API.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import datetime
from typing import Protocol
from urllib.parse import quote

from .bucket import Entry, Versioned

HEADS_AT_MOST = 16  # up to this many names are checked with concurrent HEADs, more by listing their folders
CONCURRENCY = 32


class ObjectApi(Protocol):
    def key(self, path: str) -> str:
        """The object key of a store path (the store's prefix in front)."""

    def get(self, key: str) -> Versioned | None: ...

    def put(self, key: str, data: bytes, if_absent: bool = False, if_match: str | None = None) -> str | None:
        """The new version's token, or None when the precondition failed."""

    def delete(self, key: str, if_match: str | None = None) -> bool: ...

    def head(self, key: str) -> int | None: ...

    def exists_many(self, keys: list[str]) -> set[str]: ...

    def list(self, prefix: str) -> dict[str, Entry]: ...

    def now(self) -> float:
        """The service's clock (a response's Date header)."""

    def stale_uploads(self, prefix: str, older_than: float) -> list[tuple[str, str]]: ...

    def abort_uploads(self, uploads: list[tuple[str, str]]) -> int: ...


def _date(headers) -> float:
    value = headers.get("date") or headers.get("Date") if headers else None
    return email.utils.parsedate_to_datetime(value).timestamp() if value else time.time()


def _status(exc: BaseException) -> int:
    """The HTTP status behind an s3fs error (it keeps botocore's ClientError as the cause)."""
    cause = exc if hasattr(exc, "response") else exc.__cause__
    response = getattr(cause, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class _Async:
    """A bucket under `root` ("bucket/prefix") through an fsspec client, whose coroutines run
    from plain threads on the client's own event loop. Subclasses speak one service's API."""

    def __init__(self, fs, root: str):
        self.fs = fs
        self.bucket, _, self.prefix = root.partition("/")
        self.prefix = self.prefix.strip("/")

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def get(self, key: str) -> Versioned | None:
        return self._sync(self._get(key))

    def _sync(self, coro):
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)

    async def _bounded(self, coros):
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(c):
            async with gate:
                return await c

        return await asyncio.gather(*(one(c) for c in coros))

    def exists_many(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        if len(keys) <= HEADS_AT_MOST:
            sizes = self._sync(self._bounded([self._head(k) for k in keys]))
            return {k for k, size in zip(keys, sizes) if size is not None}
        folders = sorted({k.rsplit("/", 1)[0] + "/" for k in keys})  # objects/<2 hex>/: at most 256
        listed = self._sync(self._bounded([self._list(f) for f in folders]))
        present = set().union(*(set(found) for found in listed))
        return {k for k in keys if k in present}

    def head(self, key: str) -> int | None:
        return self._sync(self._head(key))

    def list(self, prefix: str) -> dict[str, Entry]:
        return self._sync(self._list(prefix))


class S3Api(_Async):
    async def _get(self, key):
        try:
            r = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return None
        try:
            data = await r["Body"].read()
        finally:
            r["Body"].close()
        etag = r["ETag"]
        return Versioned(data, lambda: etag, r["LastModified"].timestamp(), _date(r["ResponseMetadata"].get("HTTPHeaders")))

    def put(self, key: str, data: bytes, if_absent: bool = False, if_match: str | None = None) -> str | None:
        condition = {"IfNoneMatch": "*"} if if_absent else {"IfMatch": if_match} if if_match else {}
        try:
            if if_absent and len(data) >= 2 * 50 * 2**20:  # large: s3fs's multipart upload, the condition checked on completion
                out = self._sync(self.fs._pipe_file(f"{self.bucket}/{key}", data, mode="create"))
            else:
                out = self._sync(self.fs._call_s3("put_object", Bucket=self.bucket, Key=key, Body=data, **condition))
        except (FileExistsError, FileNotFoundError):
            return None  # 412 If-None-Match, or 404: If-Match on a key that is gone
        except OSError as exc:
            if _status(exc) in (409, 412):  # 412 If-Match; 409: a concurrent conditional write (AWS)
                return None
            raise
        return (out or {}).get("ETag") or "?"

    def delete(self, key: str, if_match: str | None = None) -> bool:
        try:
            self._sync(self.fs._call_s3("delete_object", Bucket=self.bucket, Key=key, **({"IfMatch": if_match} if if_match else {})))
            return True
        except (FileNotFoundError, FileExistsError):
            return False
        except OSError as exc:
            if _status(exc) in (404, 409, 412):
                return False
            raise

    async def _head(self, key):
        try:
            r = await self.fs._call_s3("head_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError:  # only a 404: a 403 raises, and is never read as absent
            return None
        return int(r["ContentLength"])

    async def _list(self, prefix):
        found, token = {}, None
        while True:
            page = await self.fs._call_s3("list_objects_v2", Bucket=self.bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
            for item in page.get("Contents", []):
                found[item["Key"]] = Entry(int(item["Size"]), item["LastModified"].timestamp())
            token = page.get("NextContinuationToken")
            if not token:
                return found

    def now(self) -> float:
        r = self._sync(self.fs._call_s3("head_bucket", Bucket=self.bucket))
        return _date(r["ResponseMetadata"].get("HTTPHeaders"))

    def stale_uploads(self, prefix: str, older_than: float) -> list[tuple[str, str]]:
        r = self._sync(self.fs._call_s3("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix))
        limit = self.now() - older_than
        return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", []) if u["Initiated"].timestamp() < limit]

    def abort_uploads(self, uploads: list[tuple[str, str]]) -> int:
        for key, upload in uploads:
            self._sync(self.fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload))
        return len(uploads)


class GcsApi(_Async):
    """GCS's JSON API through gcsfs's authenticated `_call` (extra keywords become query parameters)."""

    async def _get(self, key):
        try:
            meta = await self.fs._call("GET", "b/{}/o/{}", self.bucket, key, json_out=True)
            headers, data = await self.fs._call("GET", "b/{}/o/{}", self.bucket, key, alt="media", generation=meta["generation"])
        except FileNotFoundError:
            return None
        generation = str(meta["generation"])
        return Versioned(data, lambda: generation, _rfc3339(meta["updated"]), _date(headers))

    def put(self, key: str, data: bytes, if_absent: bool = False, if_match: str | None = None) -> str | None:
        condition = {"ifGenerationMatch": "0"} if if_absent else {"ifGenerationMatch": if_match} if if_match else {}
        url = f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
        try:
            out = self._sync(self.fs._call("POST", url, uploadType="media", name=key, data=data, json_out=True,
                                           headers={"Content-Type": "application/octet-stream"}, **condition))
        except (FileExistsError, FileNotFoundError):  # gcsfs turns every 412 into FileExistsError
            return None
        return str(out["generation"])

    def delete(self, key: str, if_match: str | None = None) -> bool:
        try:
            self._sync(self.fs._call("DELETE", "b/{}/o/{}", self.bucket, key, **({"ifGenerationMatch": if_match} if if_match else {})))
            return True
        except (FileNotFoundError, FileExistsError):
            return False

    async def _head(self, key):
        try:
            meta = await self.fs._call("GET", "b/{}/o/{}", self.bucket, key, json_out=True)
        except FileNotFoundError:
            return None
        return int(meta.get("size", 0))

    async def _list(self, prefix):
        found, token = {}, None
        while True:
            page = await self.fs._call("GET", "b/{}/o", self.bucket, prefix=prefix, pageToken=token, maxResults=5000, json_out=True)
            for item in page.get("items", []):
                found[item["name"]] = Entry(int(item.get("size", 0)), _rfc3339(item["updated"]))
            token = page.get("nextPageToken")
            if not token:
                return found

    def now(self) -> float:
        headers, _ = self._sync(self.fs._call("GET", "b/{}/o", self.bucket, prefix=self.key(""), maxResults=1))
        return _date(headers)

    def stale_uploads(self, prefix: str, older_than: float) -> list[tuple[str, str]]:
        return []  # an unfinished resumable upload expires by itself after a week

    def abort_uploads(self, uploads: list[tuple[str, str]]) -> int:
        return 0


def _rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def s3_api(url: str) -> S3Api:
    import s3fs  # noqa: F401  (lazily: only s3:// stores need it; ImportError names the extra)
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    return S3Api(fs, root)


def gcs_api(url: str) -> GcsApi:
    import gcsfs.core  # lazily: only gs:// stores need it

    # gcsfs.core's client: the package's default class first probes each bucket's layout over gRPC;
    # credentials come from google-auth's default chain, an emulator from $STORAGE_EMULATOR_HOST
    return GcsApi(gcsfs.core.GCSFileSystem(), url.split("://", 1)[1])
