"""Bundle releases through the MLflow Model Registry.

``publish`` logs a release zip (Model Zoo layout: one top folder with ``configs/metadata.json``) as an
artifact of the run that trained the weights, or of a new ``<name>-release-<version>`` run when that
run is not on this tracking server, and registers it as one model version per release (the same zip,
by sha256, is never registered twice). The model version's source is ``runs:/<run_id>/<path>/<zip>``,
the zip file itself; its tags hold ``bundle_name``, ``bundle_version``, ``sha256``, ``file_name``,
``training_run``, ``training_run_found`` and the caller's metrics and tags.

``fetch`` resolves a version (number, alias or ``"latest"``), downloads the zip into a temporary folder
beside the target, checks its sha256 against the version's tag and only then moves it into place.

A server that does not answer fails within seconds: the first call gives up after 5 s without retries,
the others after 30 s and 2 retries (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``..._MAX_RETRIES`` /
``..._BACKOFF_FACTOR`` set by the user win there); the settings hold only during these calls.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mriae.errors import InputError, MissingFileError
from mriae.files import sha256_file

__all__ = ["publish", "fetch", "RESERVED_TAGS"]

logger = logging.getLogger(__name__)

# model version tags that publish writes itself; the caller's metrics and tags may not use these keys
RESERVED_TAGS = ("bundle_name", "bundle_version", "sha256", "file_name", "training_run", "training_run_found")
_HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
_ALIAS = re.compile(r"[\w\-]{1,255}")


# ------------------------------------------------------------------------------------ the server
@contextmanager
def _http(timeout: int, retries: int, force: bool = False) -> Iterator[None]:
    """MLflow's HTTP settings for the calls inside (read by MLflow at each request), restored after;
    without ``force`` the user's own settings win."""
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    for key, value in zip(_HTTP_ENV, (timeout, retries, 1)):
        if force or saved[key] is None:
            os.environ[key] = str(value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reason(exc: BaseException) -> str:
    """The useful part of an MLflow / requests error, on one line."""
    text = " ".join(str(exc).split())
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m:
        return m.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    text = re.sub(r"^[A-Z_]+: ", "", text)  # RESOURCE_DOES_NOT_EXIST: ...
    return text[:300] + ("..." if len(text) > 300 else "")


def _tracking_uri(tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from mriae.train.tracking import default_tracking_uri

    return default_tracking_uri()


def _connect(tracking_uri: str | None):
    """An ``MlflowClient`` for the tracking server (also the registry) that has answered once."""
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(tracking_uri)
    if uri.startswith("file:") or "://" not in uri:
        raise InputError(f"{uri}: not an MLflow tracking URI (give http://host:port or sqlite:///path/mlflow.db)")
    with _http(timeout=5, retries=0, force=True):
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
            client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - whatever stops the first call: the store is not usable
            raise InputError(f"{uri}: MLflow tracking server not reachable ({_reason(e)})") from None
    return client, uri


@contextmanager
def _server_errors(uri: str, what: str) -> Iterator[None]:
    """MLflow and HTTP failures (the server gone, refused, broken) as one-line ``InputError``."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as e:
        raise InputError(f"{uri}: {what} failed ({_reason(e)})") from None


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _quoted(value: str, what: str) -> str:
    """``value`` for an MLflow filter string (single quotes; names holding one are refused)."""
    if "'" in value:
        raise InputError(f"{what} {value!r}: a quote (') cannot be searched for in MLflow")
    return f"'{value}'"


# ------------------------------------------------------------------------------------ the zip
def _read_bundle(zip_path: str | Path) -> tuple[Path, str, dict]:
    """The zip's path, its top folder and its ``configs/metadata.json``; refuses anything else."""
    path = Path(zip_path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: a folder, not a bundle zip")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n and not n.startswith("__MACOSX/")]
            tops = sorted({n.split("/", 1)[0] for n in names})
            meta_name = f"{tops[0]}/configs/metadata.json" if len(tops) == 1 else None
            if meta_name is None or meta_name not in names:
                raise InputError(
                    f"{path}: not a bundle zip (expected one top folder holding configs/metadata.json, "
                    f"found {', '.join(tops[:5]) or 'nothing'}{', ...' if len(tops) > 5 else ''})"
                )
            raw = z.read(meta_name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise InputError(f"{path}: not a zip file ({e})") from None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise InputError(f"{path}: {meta_name} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not str(meta.get("version") or "").strip():
        raise InputError(f"{path}: {meta_name} has no version")
    return path, tops[0], meta


def _version_tags(
    name: str, version: str, sha: str, file_name: str, metrics: Mapping | None, tags: Mapping | None
) -> dict[str, str]:
    out = {"bundle_name": name, "bundle_version": version, "sha256": sha, "file_name": file_name}
    for kind, items in (("metric", metrics or {}), ("tag", tags or {})):
        for key, value in items.items():
            key = str(key)
            if key in RESERVED_TAGS:
                raise InputError(
                    f"{kind} {key!r}: the name is reserved for publish's own tags ({', '.join(RESERVED_TAGS)})"
                )
            if key in out:
                raise InputError(f"{kind} {key!r}: given both as a metric and as a tag")
            if kind == "metric":
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise InputError(f"metric {key!r}: {value!r} is not a number") from None
            out[key] = value if isinstance(value, str) else str(value)
    return out


def _check_alias(alias: str) -> None:
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InputError(
            f"alias {alias!r}: not usable in MLflow (letters, digits, '_' and '-' only; "
            "'latest' and 'v<number>' are reserved)"
        )


# ------------------------------------------------------------------------------------ publish
def _ensure_registered_model(client, name: str, description: str | None) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as e2:  # made meanwhile by another publish
            if _error_code(e2) != "RESOURCE_ALREADY_EXISTS":
                raise


def _find_training_run(client, run_name: str):
    """The active run named ``run_name`` in any experiment (the newest when several), or None."""
    from mlflow.entities import ViewType

    ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    found = []
    for i in range(0, len(ids), 100):
        found += client.search_runs(
            ids[i : i + 100], f"tags.`mlflow.runName` = {_quoted(run_name, 'training run')}",
            order_by=["attributes.start_time DESC"], max_results=10,
        )
    if len(found) > 1:
        found.sort(key=lambda r: r.info.start_time or 0, reverse=True)
        logger.warning(
            "%d runs are named %s; the release goes to the newest (%s)", len(found), run_name, found[0].info.run_id
        )
    return found[0] if found else None


def _release_experiment(client, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, as MONAI's MLFlowHandler keeps them
        from monai.utils import path_to_uri

        location = path_to_uri(Path(uri[len("sqlite:///") :]).parent / "mlruns")
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as e:
        if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _find_by_sha(client, model_name: str, sha: str):
    hits = client.search_model_versions(
        f"name = {_quoted(model_name, 'model')} and tags.sha256 = '{sha}'", max_results=10
    )
    return min(hits, key=lambda mv: int(mv.version)) if hits else None


def _artifact_uri(client, mv) -> str:
    m = re.fullmatch(r"runs:/([^/]+)/(.+)", mv.source or "")
    if not m:
        return mv.source
    return client.get_run(m.group(1)).info.artifact_uri.rstrip("/") + "/" + m.group(2)


def publish(
    zip_path: str | Path,
    *,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    training_run: str | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    alias: str | None = None,
) -> dict:
    """Log the release zip ``zip_path`` to MLflow and register it as a version of ``model_name``
    (default: the bundle's name). ``training_run`` is the MLflow run name of the training (from the
    weights' side file): the zip goes into that run when this server has it, else into a new run
    ``<name>-release-<version>`` of the experiment ``<name>`` (a warning says so). ``metrics`` and
    ``tags`` (the data plan, e.g. ``plan.spacing``) become tags of the model version; ``alias`` (e.g.
    ``production``) is pointed at it. The same zip (sha256) published again returns its existing
    version (the alias still moves). Returns ``model_name``, ``version`` (int), ``run_id``,
    ``artifact_uri`` (of the zip), ``sha256`` and ``training_run_found``."""
    path, top, meta = _read_bundle(zip_path)
    bundle_name = str(meta.get("name") or top)
    bundle_version = str(meta["version"]).strip()
    name = model_name or bundle_name
    if alias is not None:
        _check_alias(alias)
    sha = sha256_file(path)
    version_tags = _version_tags(bundle_name, bundle_version, sha, path.name, metrics, tags)
    changelog = meta.get("changelog")
    notes = changelog.get(bundle_version) if isinstance(changelog, Mapping) else None
    client, uri = _connect(tracking_uri)

    with _http(timeout=30, retries=2), _server_errors(uri, f"publishing {path.name} as {name}"):
        _ensure_registered_model(client, name, meta.get("description"))
        mv = _find_by_sha(client, name, sha)
        if mv is not None:
            logger.info("%s (sha256 %s) is already version %s of %s", path.name, sha[:12], mv.version, name)
            found = mv.tags.get("training_run_found") == "true"
            run_id, artifact_uri = mv.run_id, _artifact_uri(client, mv)
        else:
            run = _find_training_run(client, training_run) if training_run else None
            found = run is not None
            if run is None:
                exp_id = _release_experiment(client, uri, bundle_name)
                run_tags = {"mriae.training_run_found": "false"}
                if training_run:
                    run_tags["mriae.training_run"] = training_run
                run = client.create_run(exp_id, run_name=f"{bundle_name}-release-{bundle_version}", tags=run_tags)
                logger.warning(
                    "training run %s is not on %s (weights trained elsewhere?); %s goes into the new run %s (%s)",
                    training_run or "(not given)", uri, path.name, run.info.run_name, run.info.run_id,
                )
            run_id = run.info.run_id
            artifact_path = "release/" + re.sub(r"[^\w.\-]", "_", f"{bundle_version}-{sha[:12]}")
            status = "FAILED"
            try:
                client.log_artifact(run_id, str(path), artifact_path)
                status = "FINISHED"
            finally:
                if not found:
                    client.set_terminated(run_id, status)
            version_tags["training_run"] = training_run or ""
            version_tags["training_run_found"] = "true" if found else "false"
            artifact_uri = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}/{path.name}"
            mv = client.create_model_version(
                name, source=f"runs:/{run_id}/{artifact_path}/{path.name}", run_id=run_id,
                tags=version_tags, description=notes if isinstance(notes, str) else None,
            )
            logger.info("registered %s as version %s of %s (run %s)", path.name, mv.version, name, run_id)
        if alias is not None:
            client.set_registered_model_alias(name, alias, mv.version)
    return {"model_name": name, "version": int(mv.version), "run_id": run_id, "artifact_uri": artifact_uri,
            "sha256": sha, "training_run_found": found}


# ------------------------------------------------------------------------------------ fetch
def _resolve_version(client, name: str, version: str | int | None, alias: str | None):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"model {name!r}: not in the registry") from None
        raise
    spec = str(alias if alias is not None else "latest" if version is None else version).strip()
    if spec.lower() == "latest":
        hits = client.search_model_versions(
            f"name = {_quoted(name, 'model')}", max_results=1, order_by=["version_number DESC"]
        )
        if not hits:
            raise InputError(f"model {name!r}: has no versions")
        return hits[0]
    try:
        if alias is None and spec.isdigit():
            return client.get_model_version(name, spec)
        return client.get_model_version_by_alias(name, spec)
    except MlflowException as e:
        if _error_code(e) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    aliases = client.get_registered_model(name).aliases or {}
    known = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
    what = "version" if alias is None and spec.isdigit() else "alias"
    raise InputError(f"model {name!r}: no {what} {spec!r} (aliases: {known}; or a version number, or 'latest')")


def fetch(
    model_name: str,
    version: str | int | None = None,
    *,
    alias: str | None = None,
    tracking_uri: str | None = None,
    out_dir: str | Path = ".",
) -> Path:
    """Download the release zip of ``model_name`` into ``out_dir`` and return its path. ``version``:
    a number, an alias or ``"latest"`` (the highest version; also when neither it nor ``alias`` is
    given). The zip is downloaded into a temporary folder beside the target and moved into place only
    when its sha256 matches the version's tag; otherwise nothing is left behind."""
    import mlflow

    if version is not None and alias is not None:
        raise InputError(f"model {model_name!r}: give a version or an alias, not both")
    client, uri = _connect(tracking_uri)
    out = Path(out_dir)
    with _http(timeout=30, retries=2), _server_errors(uri, f"fetching {model_name}"):
        mv = _resolve_version(client, model_name, version, alias)
        label = f"model {model_name!r} version {mv.version}"
        sha, file_name = mv.tags.get("sha256"), Path(mv.tags.get("file_name") or "").name
        if not sha or not file_name:
            raise InputError(f"{label}: no sha256 / file_name tag (not a bundle release published by mriae)")
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: not a folder")
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{file_name}.tmp-", dir=out))
        try:
            got = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(model_name, mv.version),
                dst_path=str(tmp), tracking_uri=uri,
            ))
            if got.is_dir():  # a source that names the folder holding the zip
                got = next(iter(sorted(got.rglob(file_name))), got / file_name)
            if not got.is_file():
                raise InputError(f"{label}: the download holds no {file_name}")
            digest = sha256_file(got)
            if digest != sha:
                raise InputError(
                    f"{label}: the downloaded {file_name} has sha256 {digest[:16]}..., the registry records "
                    f"{sha[:16]}... (damaged or replaced artifact); nothing written"
                )
            dest = out / file_name
            os.replace(got, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("fetched %s into %s", label, dest)
    return dest
