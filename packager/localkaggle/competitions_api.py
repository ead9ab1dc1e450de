"""competitions.CompetitionApiService: file and code submissions, the submission list, data files.

A file submission is uploaded (StartSubmissionUpload, PUT) and scored at CreateSubmission. A code submission
names a kernel version and an output file: scored at once when that version is COMPLETE, else PENDING until
its session ends (the scheduler calls `score_pending`). Code competitions take code submissions only, from
versions with the internet off, as Kaggle's do.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from kagglesdk.competitions.types.competition_api_service import (
    ApiCompetition, ApiCreateCodeSubmissionRequest, ApiCreateCodeSubmissionResponse, ApiCreateSubmissionRequest,
    ApiCreateSubmissionResponse, ApiDataFile, ApiDownloadDataFileRequest, ApiGetSubmissionLimitsRequest,
    ApiGetSubmissionRequest, ApiListCompetitionsRequest, ApiListCompetitionsResponse, ApiListDataFilesRequest,
    ApiListDataFilesResponse, ApiListSubmissionsRequest, ApiListSubmissionsResponse,
    ApiStartSubmissionUploadRequest, ApiStartSubmissionUploadResponse, ApiSubmission, ApiSubmissionLimits)
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from packager.localkaggle.datasets_api import upload_url
from packager.localkaggle.rpc import (BASE_URL, ApiError, Call, Redirect, file_url, next_token, not_found,
                                      page_bounds, rpc)
from packager.localkaggle.scoring import Score, SubmissionError, metric, score_submission
from packager.localkaggle.store import Store, list_files, parse_iso

SERVICE = "competitions.CompetitionApiService"
DAILY_LIMIT = 100  # reported by GetSubmissionLimits, not enforced


def competition_or_404(call: Call, slug: str) -> dict:
    info = call.store.competition(slug or "")
    if info is None:
        raise not_found(f"competition {slug}")
    return info


def score_into(store: Store, record: dict, data: bytes | None, problem: str | None = None) -> dict:
    """Score `data` against the competition's solution and store the outcome on the submission record."""
    competition = store.competition(record["competition"])
    if problem is None and competition is None:
        problem = "the competition no longer exists"
    if problem is None:
        try:
            score: Score = score_submission(data or b"", Path(competition["solution"]), competition.get("metric"))
        except SubmissionError as err:
            problem = str(err)
    if problem is not None:
        return store.update_submission(record["competition"], record["ref"], status="ERROR",
                                       error_description=problem)
    return store.update_submission(record["competition"], record["ref"], status="COMPLETE",
                                   public_score=Score.text(score.public), private_score=Score.text(score.private))


# --------------------------------------------------------------------------------------------- file submissions

def _file_submissions_allowed(competition: dict) -> None:
    if competition.get("code"):
        raise ApiError(400, f"{competition['slug']} is a code competition: submit a notebook's output with "
                            "`kaggle competitions submit -k OWNER/SLUG -v N -f FILE`")


@rpc(SERVICE, "StartSubmissionUpload", ApiStartSubmissionUploadRequest)
def start_submission_upload(req: ApiStartSubmissionUploadRequest, call: Call) -> ApiStartSubmissionUploadResponse:
    _file_submissions_allowed(competition_or_404(call, req.competition_name))
    token = call.store.new_upload(call.username, "submission", req.file_name, req.content_length,
                                  competition=req.competition_name)
    response = ApiStartSubmissionUploadResponse()
    response.token, response.create_url = token, upload_url(token)
    return response


@rpc(SERVICE, "CreateSubmission", ApiCreateSubmissionRequest)
def create_submission(req: ApiCreateSubmissionRequest, call: Call) -> ApiCreateSubmissionResponse:
    competition = competition_or_404(call, req.competition_name)
    token = req.blob_file_tokens
    response = ApiCreateSubmissionResponse()
    with call.store.locked():
        for record in call.store.submissions(competition["slug"]):
            if token and record.get("token") == token and record.get("submitted_by") == call.username:
                response.ref, response.message = record["ref"], "Successfully submitted"  # a retried call
                return response
        _file_submissions_allowed(competition)
        upload = call.store.upload(token or "")
        if upload is None or upload.get("user") != call.username or upload.get("kind") != "submission":
            raise ApiError(400, f"unknown submission upload token {token!r}")
        if upload["received"] != upload["length"]:
            raise ApiError(400, f"the upload of {upload['name']} is incomplete ({upload['received']} of "
                                f"{upload['length']} bytes)")
        part = call.store.upload_part(token)
        record = call.store.create_submission(competition["slug"], {
            "token": token, "file_name": upload["name"], "total_bytes": upload["length"],
            "description": req.submission_description or "", "submitted_by": call.username, "status": "PENDING",
            "kind": "file"})
        keep = call.store.submissions_dir(competition["slug"]) / "files" / f"{record['ref']}-{upload['name']}"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), keep)
        call.store.upload_part(token).with_suffix(".json").unlink(missing_ok=True)
    score_into(call.store, record, keep.read_bytes())
    response.ref, response.message = record["ref"], "Successfully submitted"
    return response


# --------------------------------------------------------------------------------------------- code submissions

def _score_code(store: Store, record: dict, version: dict) -> dict:
    status = version.get("status")
    if status in ("QUEUED", "RUNNING", "CANCEL_REQUESTED", "NEW_SCRIPT"):
        return record
    if status != "COMPLETE":
        return score_into(store, record, None, f"the notebook version ended {status}: "
                                               f"{version.get('failure_message') or 'no message'}")
    output = Path(version.get("output_dir") or "/nonexistent")
    path = (output / record["file_name"]).resolve()
    if output.resolve() not in path.parents or not path.is_file():
        return score_into(store, record, None, f"the notebook's output has no file {record['file_name']!r}")
    return score_into(store, record, path.read_bytes())


def score_pending(store: Store, owner: str, slug: str, version: dict) -> None:
    """After a session ends: score the code submissions that were waiting for it."""
    for record in store.submissions():
        if (record.get("kind") == "code" and record.get("status") == "PENDING"
                and record.get("kernel") == f"{owner}/{slug}" and record.get("kernel_version") == version["number"]):
            _score_code(store, record, version)


def score_all_pending(store: Store) -> None:
    """At start-up: code submissions whose session ended while no server was there to score them."""
    for record in store.submissions():
        if record.get("kind") == "code" and record.get("status") == "PENDING":
            owner, slug = record["kernel"].split("/")
            version = store.kernel_version(owner, slug, record["kernel_version"])
            if version:
                _score_code(store, record, version)


@rpc(SERVICE, "CreateCodeSubmission", ApiCreateCodeSubmissionRequest)
def create_code_submission(req: ApiCreateCodeSubmissionRequest, call: Call) -> ApiCreateCodeSubmissionResponse:
    competition = competition_or_404(call, req.competition_name)
    owner, slug = req.kernel_owner or call.username, req.kernel_slug
    if owner != call.username:
        raise ApiError(403, f"{call.username} can only submit their own notebooks (not {owner}/{slug})")
    kernel = call.store.kernel(owner, slug or "")
    if kernel is None:
        raise not_found(f"kernel {owner}/{slug}")
    version = call.store.kernel_version(owner, slug, req.kernel_version or None)
    if version is None:
        raise not_found(f"kernel {owner}/{slug} version {req.kernel_version}")
    if competition.get("code") and version["metadata"].get("enable_internet", True):
        raise ApiError(400, f"{owner}/{slug} version {version['number']} has the internet on; submissions to "
                            f"{competition['slug']} need it off (enable_internet: false)")
    record = call.store.create_submission(competition["slug"], {
        "kind": "code", "kernel": f"{owner}/{slug}", "kernel_version": version["number"],
        "file_name": req.file_name or "submission.csv", "description": req.submission_description or "",
        "submitted_by": call.username, "status": "PENDING"})
    _score_code(call.store, record, call.store.kernel_version(owner, slug, version["number"]))
    response = ApiCreateCodeSubmissionResponse()
    response.ref, response.message = record["ref"], "Your submission was queued for scoring"
    return response


# --------------------------------------------------------------------------------------------- listing

def api_submission(record: dict) -> ApiSubmission:
    out = ApiSubmission()
    out.ref, out.date = record["ref"], parse_iso(record["date"])
    out.description, out.file_name = record.get("description") or None, record.get("file_name")
    out.total_bytes = record.get("total_bytes")
    out.status = SubmissionStatus[record.get("status", "PENDING")]
    out.public_score, out.private_score = record.get("public_score"), record.get("private_score")
    out.error_description = record.get("error_description")
    out.submitted_by = out.team_name = record.get("submitted_by")
    out.url = f"{BASE_URL}/competitions/{record['competition']}/submissions#{record['ref']}"
    return out


@rpc(SERVICE, "ListSubmissions", ApiListSubmissionsRequest)
def list_submissions(req: ApiListSubmissionsRequest, call: Call) -> ApiListSubmissionsResponse:
    competition = competition_or_404(call, req.competition_name)
    rows = [r for r in call.store.submissions(competition["slug"]) if r.get("submitted_by") == call.username]
    rows.reverse()  # newest first
    size = req.page_size or 20
    if req.page_token:
        start = page_bounds(req.page_token, size)[0]
    else:
        start = ((req.page or 1) - 1) * size
    response = ApiListSubmissionsResponse()
    response.submissions = [api_submission(r) for r in rows[start:start + size]]
    response.next_page_token = next_token(start, size, len(rows))
    return response


@rpc(SERVICE, "GetSubmission", ApiGetSubmissionRequest)
def get_submission(req: ApiGetSubmissionRequest, call: Call) -> ApiSubmission:
    record = call.store.submission(req.ref)
    if record is None or record.get("submitted_by") != call.username:
        raise not_found(f"submission {req.ref}")
    return api_submission(record)


@rpc(SERVICE, "GetSubmissionLimits", ApiGetSubmissionLimitsRequest)
def get_submission_limits(req: ApiGetSubmissionLimitsRequest, call: Call) -> ApiSubmissionLimits:
    competition = competition_or_404(call, req.competition_name)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    mine = [r for r in call.store.submissions(competition["slug"]) if r.get("submitted_by") == call.username]
    response = ApiSubmissionLimits()
    response.num_total = len(mine)
    response.num_today = sum(1 for r in mine if r["date"].startswith(today))
    response.num_allowed_now = max(0, DAILY_LIMIT - response.num_today)
    return response


@rpc(SERVICE, "ListCompetitions", ApiListCompetitionsRequest)
def list_competitions(req: ApiListCompetitionsRequest, call: Call) -> ApiListCompetitionsResponse:
    rows = [c for c in call.store.competitions()
            if not req.search or req.search.lower() in (c["slug"] + " " + c.get("title", "")).lower()]
    response = ApiListCompetitionsResponse()
    for info in rows:
        item = ApiCompetition()
        item.id, item.ref, item.title = info.get("id", 0), f"{BASE_URL}/competitions/{info['slug']}", info["title"]
        item.url = item.ref
        item.enabled_date = parse_iso(info.get("created"))
        item.is_kernels_submissions_only = bool(info.get("code"))
        item.evaluation_metric = metric(info.get("metric")).title
        response.competitions.append(item)
    return response


@rpc(SERVICE, "ListDataFiles", ApiListDataFilesRequest)
def list_data_files(req: ApiListDataFilesRequest, call: Call) -> ApiListDataFilesResponse:
    competition = competition_or_404(call, req.competition_name)
    files = list_files(Path(competition["data_dir"]))
    start, size = page_bounds(req.page_token, req.page_size)
    response = ApiListDataFilesResponse()
    for name, nbytes in files[start:start + size]:
        item = ApiDataFile()
        item.ref = item.name = name
        item.total_bytes = nbytes
        item.creation_date = parse_iso(competition.get("created"))
        response.files.append(item)
    response.next_page_token = next_token(start, size, len(files)) or None
    return response


@rpc(SERVICE, "DownloadDataFile", ApiDownloadDataFileRequest)
def download_data_file(req: ApiDownloadDataFileRequest, call: Call) -> Redirect:
    competition = competition_or_404(call, req.competition_name)
    if req.file_name not in {name for name, _ in list_files(Path(competition["data_dir"]))}:
        raise not_found(f"file {req.file_name} of competition {competition['slug']}")
    return Redirect(file_url("competitions", competition["slug"], req.file_name))
