"""kernels.KernelsApiService: push (SaveKernel), status, output, pull (GetKernel), list, cancel."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from kagglesdk.kernels.types.kernels_api_service import (
    ApiCancelKernelSessionRequest, ApiCancelKernelSessionResponse, ApiGetKernelRequest, ApiGetKernelResponse,
    ApiGetKernelSessionStatusRequest, ApiGetKernelSessionStatusResponse, ApiKernelBlob, ApiKernelMetadata,
    ApiKernelSessionOutputFile, ApiListKernelSessionOutputRequest, ApiListKernelSessionOutputResponse,
    ApiListKernelsRequest, ApiListKernelsResponse, ApiSaveKernelRequest, ApiSaveKernelResponse)
from kagglesdk.kernels.types.kernels_enums import KernelExecutionType, KernelWorkerStatus

from packager import shapes
from packager.localkaggle import quota
from packager.localkaggle.rpc import ApiError, Call, file_url, next_token, not_found, page_bounds, rpc
from packager.localkaggle.pages import page_path
from packager.localkaggle.runner import read_log
from packager.localkaggle.store import NAME_RE, TERMINAL, list_files, parse_iso

SERVICE = "kernels.KernelsApiService"
MAX_SESSION_S = 12 * 3600


def kernel_url(call: Call, owner: str, slug: str) -> str:
    """The kernel's page as this server serves it (pages.py), which a browser opens, as kaggle.com's url is."""
    return call.server.page_base + page_path(owner, slug)


def parse_version_label(label: str | None) -> int | None:
    """'v3' -> 3 (Kaggle's form); None or '' -> None (the latest)."""
    if not label:
        return None
    match = re.fullmatch(r"[vV](\d+)", label.strip())
    if not match:
        raise ApiError(404, f"version label {label!r} not found (version labels look like 'v3')")
    return int(match.group(1))


def visible_kernel(call: Call, owner: str, slug: str) -> dict:
    info = call.store.kernel(owner, slug)
    if info is None:
        raise not_found(f"kernel {owner}/{slug}")
    latest = call.store.kernel_version(owner, slug)
    private = (latest or {}).get("metadata", {}).get("is_private", True)
    if private and owner != call.username:
        raise ApiError(403, f"Permission 'kernels.get' was denied: {owner}/{slug} is private")
    return info


def find_version(call: Call, owner: str, slug: str, number: int | None) -> dict:
    visible_kernel(call, owner, slug)
    version = call.store.kernel_version(owner, slug, number)
    if version is None:
        raise not_found(f"kernel {owner}/{slug} version {number}" if number else f"a version of {owner}/{slug}")
    return version


# --------------------------------------------------------------------------------------------- push

def notebook_to_script(text: str) -> str:
    """The code cells of an .ipynb, in order; IPython magics and shell lines are commented out."""
    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        raise ApiError(400, "the notebook is not valid JSON") from None
    parts = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        lines = [f"# {line}" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _split_ref(ref: str) -> tuple[str, str, int | None] | None:
    """'owner/slug', 'owner/slug/N' or 'owner/slug/versions/N' -> (owner, slug, N or None)."""
    parts = [p for p in (ref or "").strip().split("/")]
    if len(parts) == 4 and parts[2] == "versions":
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) not in (2, 3) or not all(NAME_RE.match(p) for p in parts[:2]):
        return None
    if len(parts) == 3 and not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None


def resolve_sources(call: Call, req: ApiSaveKernelRequest, response: ApiSaveKernelResponse) -> list[dict]:
    """The mounts of a new version (dataset versions pinned now); what cannot be found goes to invalid*."""
    mounts: list[dict] = []
    for ref in req.dataset_data_sources or []:
        parsed = _split_ref(ref)
        info = call.store.dataset(parsed[0], parsed[1]) if parsed else None
        if info and info.get("isPrivate", True) and parsed[0] != call.username:
            info = None
        # Only a READY version mounts: unpinned, the newest ready one, so a version still processing leaves the
        # previous in place (a guess at Kaggle); none ready, or a pinned one processing or deleted: invalid.
        ready = call.store.ready_dataset_versions(parsed[0], parsed[1]) if info else []
        number = (parsed[2] or (ready[-1] if ready else None)) if info else None
        if number not in ready:
            response.invalid_dataset_sources.append(ref)
            continue
        mounts.append({"kind": "dataset", "owner": parsed[0], "slug": parsed[1], "version": number})
    for slug in req.competition_data_sources or []:
        if not call.store.competition(slug):
            response.invalid_competition_sources.append(slug)
            continue
        mounts.append({"kind": "competition", "owner": None, "slug": slug, "version": None})
    for ref in req.kernel_data_sources or []:
        parsed = _split_ref(ref)
        version = None
        if parsed and call.store.kernel(parsed[0], parsed[1]):
            try:
                visible_kernel(call, parsed[0], parsed[1])
                if parsed[2]:
                    version = call.store.kernel_version(parsed[0], parsed[1], parsed[2])
                    version = version if version and version.get("status") == "COMPLETE" else None
                elif getattr(call.server, "strict_kernel_sources", True):
                    # Kaggle mounts a source kernel's newest version, and only when that one is COMPLETE
                    version = call.store.kernel_version(parsed[0], parsed[1])
                    version = version if version and version.get("status") == "COMPLETE" else None
                else:  # the lenient switch: the newest COMPLETE version
                    version = call.store.latest_complete_version(parsed[0], parsed[1])
            except ApiError:
                version = None
        if version is None:
            response.invalid_kernel_sources.append(ref)
            continue
        mounts.append({"kind": "notebook", "owner": parsed[0], "slug": parsed[1], "version": version["number"]})
    for ref in req.model_data_sources or []:
        from packager.localkaggle.models_api import mountable_version

        version = mountable_version(call, ref)
        if version is None:
            response.invalid_model_sources.append(ref)
            continue
        owner, model, framework, variation = ref.split("/")[:4]
        framework = framework.lower()
        # slug is the path below the owner: input/models/<owner>/<slug> and, legacy, input/<slug>
        mounts.append({"kind": "model", "owner": owner, "slug": f"{model}/{framework}/{variation}/{version['number']}",
                       "version": version["number"], "model": model, "framework": framework, "variation": variation})
    return mounts


def session_class(metadata: dict) -> str:
    """'GPU' or 'CPU': which concurrent-session cap a version counts against. TPU sessions count as GPU ones
    (an accelerator; Kaggle's TPU cap is not documented: a guess)."""
    shape = (metadata.get("machine_shape") or "").strip()
    accelerated = metadata.get("enable_gpu") or metadata.get("enable_tpu") or shape.startswith(("Nvidia", "Tpu"))
    return "GPU" if accelerated else "CPU"


def over_session_cap(call: Call, owner: str, metadata: dict) -> str | None:
    """Kaggle's refusal when the owner already holds the cap's number of sessions of this class, else None.
    Kaggle refuses (no version is made); it does not queue."""
    kind = session_class(metadata)
    cap = (getattr(call.server, "session_caps", None) or {}).get(kind)
    if not cap:
        return None
    held = sum(1 for v in call.store.active_sessions(owner) if session_class(v.get("metadata", {})) == kind)
    return f"Maximum batch {kind} session count of {cap} reached." if held >= cap else None


LENIENT_SHAPES_ENV = "KPACK_LOCAL_LENIENT_SHAPES"  # =1: any machineShape runs, with no per-shape session limit


def machine_shape(call: Call, req: ApiSaveKernelRequest, timeout: int | None) -> tuple[dict, int | None, str | None]:
    """Kaggle's machine-shape rule: (what to record on the version, the session timeout to run with, a refusal).

    An unknown machineShape is refused (the text is a guess: Kaggle's own was not seen); a retired one
    (NvidiaTeslaP100) runs as its successor (T4 x2). A session may run at most its shape's limit (12 h GPU/CPU,
    9 h TPU): a longer sessionTimeoutSeconds is capped to it, not refused (a guess: the limit is Kaggle's
    either way, and a session simply ends there)."""
    asked = shapes.from_request(req.machine_shape, bool(req.enable_gpu), bool(req.enable_tpu))
    if os.environ.get(LENIENT_SHAPES_ENV) == "1":
        return {"machine_shape_effective": asked}, timeout, None
    if shapes.known(asked) is None:
        valid = ", ".join(n for n in shapes.names() if n != shapes.CPU)
        return {}, timeout, f"Invalid machine shape '{asked}'. Valid values: {valid} (or no accelerator)."
    runs = shapes.effective(asked)
    limit_s = int(runs.limit_hours * 3600)
    record = {"machine_shape_effective": runs.name}
    if timeout is not None and timeout > limit_s:
        record["session_timeout_requested"] = timeout
        timeout = limit_s
    elif timeout is None and getattr(call.server, "session_limit_s", 0) > limit_s:
        timeout = limit_s  # the server's default limit is longer than this shape's
    return record, timeout, None


@rpc(SERVICE, "SaveKernel", ApiSaveKernelRequest)
def save_kernel(req: ApiSaveKernelRequest, call: Call) -> ApiSaveKernelResponse:
    """A new version of the kernel (made when new), queued to run. Bad input: `error`, and no version."""
    response = ApiSaveKernelResponse()
    if req.slug:
        parts = req.slug.strip().split("/")
        if len(parts) != 2 or not all(NAME_RE.match(p) for p in parts):
            response.error = f"invalid kernel id {req.slug!r}: use 'owner/kernel-slug'"
            return response
        owner, slug = parts
    elif req.id:
        info = call.store.kernel_by_id(req.id)
        if info is None:
            response.error = f"no kernel with id {req.id}"
            return response
        owner, slug = info["owner"], info["slug"]
    else:
        response.error = "the kernel metadata needs an id ('owner/kernel-slug')"
        return response
    if owner != call.username:
        raise ApiError(403, f"{call.username} cannot push to {owner}/{slug}: kernels are pushed by their owner")
    if not req.text or not req.text.strip():
        response.error = "the code file is empty"
        return response
    language = (req.language or "python").lower()
    kernel_type = (req.kernel_type or "script").lower()
    if language != "python":
        response.error = f"language {language!r} is not supported by the local Kaggle (python only)"
        return response
    if kernel_type not in ("script", "notebook"):
        response.error = f"kernel type {kernel_type!r}: use 'script' or 'notebook'"
        return response
    try:
        script = notebook_to_script(req.text) if kernel_type == "notebook" else req.text
    except ApiError as err:
        response.error = err.message
        return response
    timeout = req._session_timeout_seconds  # the getters turn an absent optional into 0 / False
    if timeout is not None and timeout <= 0:
        response.error = "sessionTimeoutSeconds must be positive"
        return response
    shape, timeout, refused = machine_shape(call, req, timeout)
    if refused:
        response.error = refused
        return response
    mounts = resolve_sources(call, req, response)
    quick = req.kernel_execution_type == KernelExecutionType.QUICK_SAVE
    metadata = {
        "title": req.new_title or slug, "language": language, "kernel_type": kernel_type,
        "is_private": True if req._is_private is None else bool(req._is_private),
        "enable_gpu": bool(req.enable_gpu), "enable_tpu": bool(req.enable_tpu),
        "enable_internet": True if req._enable_internet is None else bool(req._enable_internet),
        "dataset_data_sources": [m for m in req.dataset_data_sources or []
                                 if m not in response.invalid_dataset_sources],
        "competition_data_sources": [m for m in req.competition_data_sources or []
                                     if m not in response.invalid_competition_sources],
        "kernel_data_sources": [m for m in req.kernel_data_sources or []
                                if m not in response.invalid_kernel_sources],
        "model_data_sources": [m for m in req.model_data_sources or []
                               if m not in response.invalid_model_sources],
        "category_ids": list(req.category_ids or []), "machine_shape": req.machine_shape or None,
        "docker_image": req.docker_image or None, "docker_image_pinning_type": req.docker_image_pinning_type or None,
    }
    source_name = "source.ipynb" if kernel_type == "notebook" else "source.py"
    with call.store.locked():  # count and make the version together: two pushes at once cannot both pass
        refused = None if quick else over_session_cap(call, owner, metadata) or quota.exhausted(call, owner, metadata)
        if refused:
            response.error = refused
            response.invalid_dataset_sources, response.invalid_competition_sources = [], []
            response.invalid_kernel_sources, response.invalid_model_sources = [], []
            return response
        version = call.store.create_kernel_version(
            owner, slug, metadata["title"], source_name, req.text, script,
            {"metadata": metadata, "mounts": mounts, "session_timeout_seconds": timeout, **shape,
             "status": "NEW_SCRIPT" if quick else "QUEUED", "failure_message": "", "pushed_by": call.username})
    if not quick:
        call.server.scheduler.submit(owner, slug, version["number"])
    info = call.store.kernel(owner, slug)
    response.ref = f"/code/{owner}/{slug}"
    response.url = kernel_url(call, owner, slug)
    response.version_number = version["number"]
    response.kernel_id = info["id"]
    return response


# --------------------------------------------------------------------------------------------- status, output

@rpc(SERVICE, "GetKernelSessionStatus", ApiGetKernelSessionStatusRequest)
def get_status(req: ApiGetKernelSessionStatusRequest, call: Call) -> ApiGetKernelSessionStatusResponse:
    version = find_version(call, req.user_name, req.kernel_slug, parse_version_label(req.version_label))
    response = ApiGetKernelSessionStatusResponse()
    response.status = KernelWorkerStatus[version["status"]]
    if version.get("failure_message"):
        response.failure_message = version["failure_message"]
    return response


def output_url(owner: str, slug: str, number: int, name: str) -> str:
    return file_url("kernels", owner, slug, number, name)


@rpc(SERVICE, "ListKernelSessionOutput", ApiListKernelSessionOutputRequest)
def list_output(req: ApiListKernelSessionOutputRequest, call: Call) -> ApiListKernelSessionOutputResponse:
    owner, slug = req.user_name, req.kernel_slug
    version = find_version(call, owner, slug, parse_version_label(req.version_label))
    ended = version["status"] in TERMINAL and version.get("output_dir")
    files = list_files(Path(version["output_dir"])) if ended else []
    start, size = page_bounds(req.page_token, req.page_size)
    response = ApiListKernelSessionOutputResponse()
    for name, _ in files[start:start + size]:
        item = ApiKernelSessionOutputFile()
        item.file_name, item.url = name, output_url(owner, slug, version["number"], name)
        response.files.append(item)
    response.next_page_token = next_token(start, size, len(files)) or None
    log_path = Path(version.get("log_path") or Path(version["dir"]) / "run" / "kernel.log")
    if log_path.is_file():  # a running session's log so far; its files only once it has ended
        response.log = read_log(log_path)
    return response


# --------------------------------------------------------------------------------------------- pull, list

def kernel_metadata(call: Call, info: dict, version: dict | None) -> ApiKernelMetadata:
    meta = (version or {}).get("metadata", {})
    out = ApiKernelMetadata()
    out.id, out.ref, out.slug = info["id"], f"{info['owner']}/{info['slug']}", info["slug"]
    out.title, out.author = info.get("title") or info["slug"], info["owner"]
    out.language, out.kernel_type = meta.get("language", "python"), meta.get("kernel_type", "script")
    out.is_private = meta.get("is_private", True)
    out.enable_gpu, out.enable_tpu = meta.get("enable_gpu", False), meta.get("enable_tpu", False)
    out.enable_internet = meta.get("enable_internet", True)
    out.category_ids = list(meta.get("category_ids", []))
    out.dataset_data_sources = list(meta.get("dataset_data_sources", []))
    out.kernel_data_sources = list(meta.get("kernel_data_sources", []))
    out.competition_data_sources = list(meta.get("competition_data_sources", []))
    out.model_data_sources = list(meta.get("model_data_sources", []))
    out.machine_shape, out.docker_image = meta.get("machine_shape"), meta.get("docker_image")
    if version:
        out.current_version_number = version["number"]
        out.last_run_time = parse_iso(version.get("started") or version.get("created"))
    return out


@rpc(SERVICE, "GetKernel", ApiGetKernelRequest)
def get_kernel(req: ApiGetKernelRequest, call: Call) -> ApiGetKernelResponse:
    slug, number = req.kernel_slug, parse_version_label(req.version_label)
    if "/" in slug:  # `kernels pull owner/slug/N` sends 'slug/N'
        slug, _, tail = slug.partition("/")
        if not tail.isdigit():
            raise not_found(f"kernel {req.user_name}/{req.kernel_slug}")
        number = int(tail)
    info = visible_kernel(call, req.user_name, slug)
    version = find_version(call, req.user_name, slug, number)
    response = ApiGetKernelResponse()
    response.metadata = kernel_metadata(call, info, version)
    blob = ApiKernelBlob()
    blob.source = (Path(version["dir"]) / version["source_file"]).read_text()
    blob.language, blob.kernel_type = version["metadata"]["language"], version["metadata"]["kernel_type"]
    blob.slug = slug
    response.blob = blob
    return response


@rpc(SERVICE, "ListKernels", ApiListKernelsRequest)
def list_kernels(req: ApiListKernelsRequest, call: Call) -> ApiListKernelsResponse:
    rows = []
    for info in call.store.kernels():
        version = call.store.kernel_version(info["owner"], info["slug"])
        meta = (version or {}).get("metadata", {})
        if meta.get("is_private", True) and info["owner"] != call.username:
            continue
        if req.user and info["owner"] != req.user:
            continue
        if req.search and req.search.lower() not in (info["slug"] + " " + info.get("title", "")).lower():
            continue
        if req.competition and req.competition not in meta.get("competition_data_sources", []):
            continue
        if req.dataset and req.dataset not in meta.get("dataset_data_sources", []):
            continue
        if req.parent_kernel and req.parent_kernel not in meta.get("kernel_data_sources", []):
            continue
        rows.append(kernel_metadata(call, info, version))
    rows.sort(key=lambda m: m.last_run_time or parse_iso("1970-01-01T00:00:00.000Z"), reverse=True)
    size = req.page_size or 20
    start = ((req.page or 1) - 1) * size if not req.page_token else page_bounds(req.page_token, size)[0]
    response = ApiListKernelsResponse()
    response.kernels = rows[start:start + size]
    response.next_page_token = next_token(start, size, len(rows))
    return response


@rpc(SERVICE, "CancelKernelSession", ApiCancelKernelSessionRequest)
def cancel_session(req: ApiCancelKernelSessionRequest, call: Call) -> ApiCancelKernelSessionResponse:
    response = ApiCancelKernelSessionResponse()
    for owner, slug, version in call.store.all_kernel_versions():
        if version.get("session_id") == req.kernel_session_id:
            if owner != call.username:
                raise ApiError(403, f"{call.username} cannot cancel {owner}/{slug}")
            if not call.server.scheduler.cancel(owner, slug, version["number"]):
                response.error_message = f"session {req.kernel_session_id} has already ended"
            return response
    raise not_found(f"kernel session {req.kernel_session_id}")
