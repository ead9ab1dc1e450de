"""datasets.DatasetApiService and blobs.BlobApiService: the upload flow and dataset versions.

StartBlobUpload hands out a token and a createUrl (`http://localhost/_kpack/upload/<token>`, PUT by the client
through the same proxy). CreateDataset / CreateDatasetVersion name the tokens; the version is committed only
when every token's bytes are all there, and a retried call with the same tokens answers with what the first
one made instead of making a second version.

A new version is processed before it can be used, as on Kaggle: GetDatasetStatus reports the newest version's
stage until its time (the server's `--dataset-processing-s` plus `--dataset-processing-s-per-mb` per MB
uploaded) is up; meanwhile kernels mount, and downloads give, the newest READY version. deleteOldVersions
deletes the older versions' files once the new one is READY; their numbers stay taken.
"""
from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

from kagglesdk.blobs.types.blob_api_service import (ApiBlobType, ApiStartBlobUploadRequest,
                                                    ApiStartBlobUploadResponse)
from kagglesdk.datasets.types.dataset_api_service import (
    ApiCreateDatasetRequest, ApiCreateDatasetResponse, ApiCreateDatasetVersionByIdRequest,
    ApiCreateDatasetVersionRequest, ApiDataset, ApiDatasetFile, ApiDatasetVersion, ApiDownloadDatasetRequest,
    ApiGetDatasetMetadataRequest, ApiGetDatasetMetadataResponse, ApiGetDatasetRequest, ApiGetDatasetStatusRequest, ApiGetDatasetStatusResponse, ApiListDatasetFilesRequest,
    ApiListDatasetFilesResponse, ApiListDatasetsRequest, ApiListDatasetsResponse)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.datasets.types.dataset_types import DatasetInfo, DatasetSettingsFile, SettingsLicense

from packager.localkaggle.rpc import (BASE_URL, ApiError, Call, Redirect, file_url, next_token, not_found,
                                      page_bounds, rpc)
from packager.localkaggle.store import StoreError, list_files, parse_iso

SERVICE = "datasets.DatasetApiService"


def upload_url(token: str) -> str:
    return f"{BASE_URL}/_kpack/upload/{token}"


def dataset_url(owner: str, slug: str) -> str:
    return f"{BASE_URL}/datasets/{owner}/{slug}"


def _processing(call: Call) -> tuple[float, float]:
    """(seconds, seconds per MB) a new version stays in processing on this server (0, 0: ready at once)."""
    return (float(getattr(call.server, "dataset_processing_s", 0.0)),
            float(getattr(call.server, "dataset_processing_s_per_mb", 0.0)))


@rpc("blobs.BlobApiService", "StartBlobUpload", ApiStartBlobUploadRequest)
def start_blob_upload(req: ApiStartBlobUploadRequest, call: Call) -> ApiStartBlobUploadResponse:
    if req.type not in (ApiBlobType.DATASET, ApiBlobType.MODEL, ApiBlobType.API_BLOB_TYPE_UNSPECIFIED):
        raise ApiError(400, f"blob type {req.type.name} is not supported by the local Kaggle (datasets, models)")
    kind = "model" if req.type == ApiBlobType.MODEL else "dataset"
    token = call.store.new_upload(call.username, kind, req.name, req.content_length,
                                  last_modified=req.last_modified_epoch_seconds)
    response = ApiStartBlobUploadResponse()
    response.token, response.create_url = token, upload_url(token)
    return response


def visible_dataset(call: Call, owner: str, slug: str) -> dict:
    info = call.store.dataset(owner, slug)
    if info is None:
        raise not_found(f"dataset {owner}/{slug}")
    if info.get("isPrivate", True) and owner != call.username:
        raise ApiError(403, f"dataset {owner}/{slug} is private")
    return info


def _tokens(files) -> list[str]:
    tokens = [f.token for f in files or [] if f is not None]
    if any(not t for t in tokens):
        raise ApiError(400, "a file entry has no upload token")
    return tokens


def _created(owner: str, slug: str) -> ApiCreateDatasetResponse:
    response = ApiCreateDatasetResponse()
    response.ref, response.url, response.status = f"{owner}/{slug}", dataset_url(owner, slug), "ok"
    return response


def _failed(message: str) -> ApiCreateDatasetResponse:
    response = ApiCreateDatasetResponse()
    response.status, response.error = "error", message
    return response


@rpc(SERVICE, "CreateDataset", ApiCreateDatasetRequest)
def create_dataset(req: ApiCreateDatasetRequest, call: Call) -> ApiCreateDatasetResponse:
    owner, slug = req.owner_slug or call.username, req.slug
    if owner != call.username:
        return _failed(f"{call.username} cannot create datasets for {owner}")
    if not slug or not req.title:
        return _failed("a dataset needs a slug and a title")
    meta = {"title": req.title, "licenseName": req.license_name or "unknown", "isPrivate": bool(req.is_private),
            "subtitle": req.subtitle or "", "description": req.description or "",
            "keywords": list(req.category_ids or [])}
    try:
        call.store.create_dataset(call.username, owner, slug, meta, _tokens(req.files), processing=_processing(call))
    except StoreError as err:
        if err.status >= 500:
            raise
        return _failed(err.message)
    return _created(owner, slug)


def _new_version(call: Call, owner: str, slug: str, body) -> ApiCreateDatasetResponse:
    if owner != call.username:
        return _failed(f"{call.username} cannot add versions to {owner}/{slug}")
    if body is None:
        return _failed("the request has no body")
    meta = {"subtitle": body.subtitle, "description": body.description}
    try:
        call.store.create_dataset_version(call.username, owner, slug, _tokens(body.files), body.version_notes,
                                          delete_old=bool(body.delete_old_versions), meta=meta,
                                          processing=_processing(call))
    except StoreError as err:
        if err.status == 404:
            raise ApiError(404, err.message) from None
        return _failed(err.message)
    return _created(owner, slug)


@rpc(SERVICE, "CreateDatasetVersion", ApiCreateDatasetVersionRequest)
def create_dataset_version(req: ApiCreateDatasetVersionRequest, call: Call) -> ApiCreateDatasetResponse:
    return _new_version(call, req.owner_slug, req.dataset_slug, req.body)


@rpc(SERVICE, "CreateDatasetVersionById", ApiCreateDatasetVersionByIdRequest)
def create_dataset_version_by_id(req: ApiCreateDatasetVersionByIdRequest, call: Call) -> ApiCreateDatasetResponse:
    for info in call.store.datasets():
        if info.get("id") == req.id:
            return _new_version(call, info["owner"], info["slug"], req.body)
    raise not_found(f"dataset id {req.id}")


@rpc(SERVICE, "GetDatasetStatus", ApiGetDatasetStatusRequest)
def get_dataset_status(req: ApiGetDatasetStatusRequest, call: Call) -> ApiGetDatasetStatusResponse:
    """The newest version's status: a processing stage, then READY."""
    info = visible_dataset(call, req.owner_slug, req.dataset_slug)
    call.store.reap_old_dataset_versions(info["owner"], info["slug"])
    statuses = call.store.dataset_statuses(info["owner"], info["slug"])
    response = ApiGetDatasetStatusResponse()
    response.status = (DatabundleVersionStatus[statuses[info["versions"][-1]]] if info["versions"]
                       else DatabundleVersionStatus.FAILED)
    return response


def _file_items(call: Call, owner: str, slug: str, version: dict) -> list[ApiDatasetFile]:
    items = []
    for entry in version.get("files", []):
        item = ApiDatasetFile()
        item.ref = item.name = entry["name"]
        item.dataset_ref, item.owner_ref = f"{owner}/{slug}", owner
        item.total_bytes = int(entry["size"])
        item.creation_date = parse_iso(version.get("created"))
        items.append(item)
    return items


def api_dataset(call: Call, info: dict, with_details: bool = False) -> ApiDataset:
    owner, slug = info["owner"], info["slug"]
    latest = call.store.dataset_version(owner, slug) or {}
    out = ApiDataset()
    out.id, out.ref, out.title = info.get("id", 0), f"{owner}/{slug}", info.get("title") or slug
    out.subtitle, out.description = info.get("subtitle") or None, info.get("description") or None
    out.creator_name = out.owner_name = out.owner_ref = owner
    out.url, out.is_private = dataset_url(owner, slug), bool(info.get("isPrivate", True))
    out.license_name = info.get("licenseName")
    out.total_bytes = sum(int(f["size"]) for f in latest.get("files", []))
    out.last_updated = parse_iso(latest.get("created") or info.get("created"))
    if info["versions"]:  # the newest, still processing or not (a guess at Kaggle; kpack copes with either)
        out.current_version_number = info["versions"][-1]
    if with_details:
        statuses = call.store.dataset_statuses(owner, slug)
        for number in info["versions"]:
            version = call.store.dataset_version(owner, slug, number) or {}
            item = ApiDatasetVersion()
            item.version_number, item.creation_date = number, parse_iso(version.get("created"))
            item.version_notes, item.creator_name = version.get("notes") or None, owner
            item.status = statuses.get(number, "READY").lower()
            out.versions.append(item)
        out.files = _file_items(call, owner, slug, latest) if latest else []
    return out


@rpc(SERVICE, "GetDataset", ApiGetDatasetRequest)
def get_dataset(req: ApiGetDatasetRequest, call: Call) -> ApiDataset:
    info = visible_dataset(call, req.owner_slug, req.dataset_slug)
    call.store.reap_old_dataset_versions(info["owner"], info["slug"])
    return api_dataset(call, call.store.dataset(info["owner"], info["slug"]), with_details=True)


@rpc(SERVICE, "ListDatasets", ApiListDatasetsRequest)
def list_datasets(req: ApiListDatasetsRequest, call: Call) -> ApiListDatasetsResponse:
    rows = [info for info in call.store.datasets()
            if (not info.get("isPrivate", True) or info["owner"] == call.username)
            and (not req.user or info["owner"] == req.user)
            and (not req.search or req.search.lower() in (info["slug"] + " " + info.get("title", "")).lower())]
    size = req.page_size or 20
    start = ((req.page or 1) - 1) * size if not req.page_token else page_bounds(req.page_token, size)[0]
    response = ApiListDatasetsResponse()
    response.datasets = [api_dataset(call, info) for info in rows[start:start + size]]
    response.next_page_token = next_token(start, size, len(rows))
    return response


def _version_of(call: Call, owner: str, slug: str, number: int | None) -> dict:
    """A READY version: the one asked for, else the newest READY one."""
    visible_dataset(call, owner, slug)
    statuses = call.store.dataset_statuses(owner, slug)
    if number is None:
        number = max((n for n, status in statuses.items() if status == "READY"), default=None)
        if number is None and statuses:
            raise ApiError(404, f"dataset {owner}/{slug} has no ready version yet (v{max(statuses)} is "
                                f"{statuses[max(statuses)].lower()})")
    elif statuses.get(number, "READY") != "READY":
        raise ApiError(404, f"dataset {owner}/{slug} version {number} is {statuses[number].lower()}")
    version = call.store.dataset_version(owner, slug, number)
    if version is None:
        raise not_found(f"dataset {owner}/{slug} version {number}" if number else f"dataset {owner}/{slug}")
    return version


@rpc(SERVICE, "ListDatasetFiles", ApiListDatasetFilesRequest)
def list_dataset_files(req: ApiListDatasetFilesRequest, call: Call) -> ApiListDatasetFilesResponse:
    version = _version_of(call, req.owner_slug, req.dataset_slug, req.dataset_version_number or None)
    items = _file_items(call, req.owner_slug, req.dataset_slug, version)
    start, size = page_bounds(req.page_token, req.page_size)
    response = ApiListDatasetFilesResponse()
    response.dataset_files = items[start:start + size]
    response.next_page_token = next_token(start, size, len(items)) or None
    return response


def version_zip(files_dir: Path) -> Path:
    """The version's files as one zip, made once (a version never changes) and kept beside it."""
    target = files_dir.parent / "download.zip"
    if not target.exists():
        tmp = target.with_name(f".download.{os.getpid()}.{threading.get_ident()}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, _ in list_files(files_dir):
                zf.write(files_dir / name, name)
        os.replace(tmp, target)
    return target


@rpc(SERVICE, "DownloadDataset", ApiDownloadDatasetRequest)
def download_dataset(req: ApiDownloadDatasetRequest, call: Call) -> Redirect:
    """A 302 to the file (or to the version's zip): the client names what it saves after that URL."""
    owner, slug = req.owner_slug, req.dataset_slug
    version = _version_of(call, owner, slug, req.dataset_version_number or None)
    if req.file_name:
        if req.file_name not in {f["name"] for f in version.get("files", [])}:
            raise not_found(f"file {req.file_name} in {owner}/{slug}")
        return Redirect(file_url("datasets", owner, slug, version["number"], req.file_name))
    return Redirect(file_url("dataset-archives", owner, slug, version["number"], f"{slug}.zip"))


@rpc(SERVICE, "GetDatasetMetadata", ApiGetDatasetMetadataRequest)
def get_dataset_metadata(req: ApiGetDatasetMetadataRequest, call: Call) -> ApiGetDatasetMetadataResponse:
    info = visible_dataset(call, req.owner_slug, req.dataset_slug)
    latest = call.store.dataset_version(req.owner_slug, req.dataset_slug) or {}
    out = DatasetInfo()
    out.dataset_id, out.dataset_slug, out.owner_user = info.get("id", 0), info["slug"], info["owner"]
    out.title, out.subtitle = info.get("title"), info.get("subtitle") or None
    out.description, out.is_private = info.get("description") or None, bool(info.get("isPrivate", True))
    out.keywords = list(info.get("keywords", []))
    license_ = SettingsLicense()
    license_.name = info.get("licenseName") or "unknown"
    out.licenses = [license_]
    for entry in latest.get("files", []):
        item = DatasetSettingsFile()
        item.name, item.total_bytes = entry["name"], int(entry["size"])
        out.data.append(item)
    response = ApiGetDatasetMetadataResponse()
    response.info = out
    return response
