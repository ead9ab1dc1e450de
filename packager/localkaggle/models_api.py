"""models.ModelApiService: the calls `kaggle models ...` and kpack make (create a model, an instance of it, new
versions of that instance; get them; list a version's files).

A model is owner/slug; an instance is a (framework, variation) of it; each instance has numbered versions whose
files come from finished uploads (archives unpacked into a folder, as datasets). A kernel mounts one version,
`owner/model/framework/variation/version` (kernels_api.resolve_sources). Versions are ready at once here: the
client has no status call for them (Kaggle may process them first: a guess; kpack waits by version number).
"""
from __future__ import annotations

from kagglesdk.models.types.model_api_service import (
    ApiCreateModelInstanceRequest, ApiCreateModelInstanceVersionRequest, ApiCreateModelRequest,
    ApiCreateModelResponse, ApiGetModelInstanceRequest, ApiGetModelRequest, ApiListModelInstanceVersionFilesRequest,
    ApiListModelInstanceVersionFilesResponse, ApiModel, ApiModelFile, ApiModelInstance)
from kagglesdk.models.types.model_enums import ModelFramework

from packager.localkaggle.rpc import BASE_URL, ApiError, Call, next_token, not_found, page_bounds, rpc
from packager.localkaggle.store import StoreError, parse_iso

SERVICE = "models.ModelApiService"
PREFIX = "MODEL_FRAMEWORK_"


def framework_name(framework) -> str:
    """The framework as model paths and model_sources spell it: PY_TORCH -> pytorch, OTHER -> other; a string
    ('PyTorch', 'py_torch') is normalised the same way."""
    name = framework.name.removeprefix(PREFIX) if isinstance(framework, ModelFramework) else str(framework or "")
    return name.replace("_", "").replace("-", "").lower()


def framework_enum(name: str) -> ModelFramework | None:
    wanted = framework_name(name)
    return next((f for f in ModelFramework if framework_name(f) == wanted and f.value != 0), None)


def model_url(*parts) -> str:
    return f"{BASE_URL}/models/" + "/".join(str(p) for p in parts)


def visible_model(call: Call, owner: str, slug: str) -> dict | None:
    info = call.store.model(owner, slug)
    if info is None or (info.get("isPrivate", True) and owner != call.username):
        return None
    return info


def mountable_version(call: Call, ref: str) -> dict | None:
    """The version a model source names (owner/model/framework/variation[/version]; without a version the newest,
    a guess at Kaggle: the installed client only sends the 5-part form), when the caller may mount it."""
    parts = ref.split("/")
    if len(parts) not in (4, 5) or not all(parts):
        return None
    owner, slug, framework, variation = parts[:4]
    if len(parts) == 5 and not parts[4].isdigit():
        return None
    if visible_model(call, owner, slug) is None:
        return None
    try:
        version = call.store.model_instance_version(owner, slug, framework_name(framework), variation,
                                                    int(parts[4]) if len(parts) == 5 else None)
    except StoreError:
        return None
    return version


def _response(ref: str, url: str, ident: int) -> ApiCreateModelResponse:
    out = ApiCreateModelResponse()
    out.id, out.ref, out.url = ident, ref, url
    return out


def _failed(message: str) -> ApiCreateModelResponse:
    out = ApiCreateModelResponse()
    out.error = message
    return out


def _tokens(files) -> list[str]:
    tokens = [f.token for f in files or [] if f is not None]
    if any(not t for t in tokens):
        raise ApiError(400, "a file entry has no upload token")
    return tokens


@rpc(SERVICE, "CreateModel", ApiCreateModelRequest)
def create_model(req: ApiCreateModelRequest, call: Call) -> ApiCreateModelResponse:
    owner, slug = req.owner_slug or call.username, req.slug
    if owner != call.username:
        return _failed(f"{call.username} cannot create models for {owner}")
    if not slug or not req.title:
        return _failed("a model needs a slug and a title")
    try:
        info = call.store.create_model(owner, slug, {"title": req.title, "subtitle": req.subtitle or "",
                                                     "isPrivate": bool(req.is_private),
                                                     "description": req.description or ""})
    except StoreError as err:
        if err.status >= 500:
            raise
        return _failed(err.message)
    return _response(f"{owner}/{slug}", model_url(owner, slug), info["id"])


def _api_instance(owner: str, slug: str, info: dict) -> ApiModelInstance:
    out = ApiModelInstance()
    out.id, out.slug = info.get("id", 0), info["slug"]
    out.framework = framework_enum(info["framework"]) or ModelFramework.MODEL_FRAMEWORK_OTHER
    out.license_name, out.overview, out.usage = info.get("licenseName") or None, info.get("overview") or None, \
        info.get("usage") or None
    out.url = model_url(owner, slug, info["framework"], info["slug"])
    if info["versions"]:
        out.version_number = info["versions"][-1]
    return out


@rpc(SERVICE, "GetModel", ApiGetModelRequest)
def get_model(req: ApiGetModelRequest, call: Call) -> ApiModel:
    info = visible_model(call, req.owner_slug, req.model_slug)
    if info is None:
        raise not_found(f"model {req.owner_slug}/{req.model_slug}")
    out = ApiModel()
    out.id, out.ref, out.slug, out.title = info["id"], f"{info['owner']}/{info['slug']}", info["slug"], info["title"]
    out.subtitle, out.description = info.get("subtitle") or None, info.get("description") or None
    out.is_private, out.author, out.url = bool(info.get("isPrivate", True)), info["owner"], \
        model_url(info["owner"], info["slug"])
    out.publish_time = parse_iso(info.get("created"))
    out.instances = [_api_instance(info["owner"], info["slug"], i)
                     for i in call.store.model_instances(info["owner"], info["slug"])]
    return out


def _instance(call: Call, owner: str, slug: str, framework, instance: str) -> dict:
    if visible_model(call, owner, slug) is None:
        raise not_found(f"model {owner}/{slug}")
    info = call.store.model_instance(owner, slug, framework_name(framework), instance)
    if info is None:
        raise not_found(f"model instance {owner}/{slug}/{framework_name(framework)}/{instance}")
    return info


@rpc(SERVICE, "GetModelInstance", ApiGetModelInstanceRequest)
def get_model_instance(req: ApiGetModelInstanceRequest, call: Call) -> ApiModelInstance:
    return _api_instance(req.owner_slug, req.model_slug,
                         _instance(call, req.owner_slug, req.model_slug, req.framework, req.instance_slug))


def _new_version(call: Call, owner: str, slug: str, framework, instance: str, files, notes: str | None,
                 meta: dict | None) -> ApiCreateModelResponse:
    if owner != call.username:
        return _failed(f"{call.username} cannot add instances or versions to {owner}/{slug}")
    name = framework_name(framework)
    if not name or framework_enum(name) is None:
        return _failed(f"unknown framework {framework!r}")
    try:
        version, _ = call.store.create_model_instance_version(call.username, owner, slug, name, instance,
                                                              _tokens(files), notes, meta)
    except StoreError as err:
        if err.status >= 500:
            raise
        return _failed(err.message)
    return _response(f"{owner}/{slug}/{name}/{instance}", model_url(owner, slug, name, instance, version["number"]),
                     version["id"])


@rpc(SERVICE, "CreateModelInstance", ApiCreateModelInstanceRequest)
def create_model_instance(req: ApiCreateModelInstanceRequest, call: Call) -> ApiCreateModelResponse:
    body = req.body
    if body is None or not body.instance_slug:
        return _failed("a model instance needs an instanceSlug")
    if not body.license_name:
        return _failed("a model instance needs a licenseName")
    meta = {"licenseName": body.license_name, "overview": body.overview or "", "usage": body.usage or ""}
    return _new_version(call, req.owner_slug, req.model_slug, body.framework, body.instance_slug, body.files,
                        "Initial version", meta)


@rpc(SERVICE, "CreateModelInstanceVersion", ApiCreateModelInstanceVersionRequest)
def create_model_instance_version(req: ApiCreateModelInstanceVersionRequest, call: Call) -> ApiCreateModelResponse:
    _instance(call, req.owner_slug, req.model_slug, req.framework, req.instance_slug)  # 404 when unknown
    body = req.body
    return _new_version(call, req.owner_slug, req.model_slug, req.framework, req.instance_slug,
                        body.files if body else [], body.version_notes if body else None, None)


@rpc(SERVICE, "ListModelInstanceVersionFiles", ApiListModelInstanceVersionFilesRequest)
def list_model_instance_version_files(req: ApiListModelInstanceVersionFilesRequest,
                                      call: Call) -> ApiListModelInstanceVersionFilesResponse:
    _instance(call, req.owner_slug, req.model_slug, req.framework, req.instance_slug)
    version = call.store.model_instance_version(req.owner_slug, req.model_slug, framework_name(req.framework),
                                                req.instance_slug, req.version_number or None)
    if version is None:
        raise not_found(f"version {req.version_number} of {req.owner_slug}/{req.model_slug}")
    items = []
    for entry in version.get("files", []):
        item = ApiModelFile()
        item.name, item.size, item.creation_date = entry["name"], int(entry["size"]), parse_iso(version["created"])
        items.append(item)
    start, size = page_bounds(req.page_token, req.page_size)
    out = ApiListModelInstanceVersionFilesResponse()
    out.files, out.next_page_token = items[start:start + size], next_token(start, size, len(items))
    return out
