"""The Ray Serve application: a FastAPI ingress (``Recommender``) and, with ``learning=learner``, a ``Learner``.

``learning=in_process``: one ``Recommender`` replica owns the ``BanditCore`` (log, joins, versions) and learns
before each scoring batch: the policy it serves is the one it updates.

``learning=learner``: ``num_replicas`` stateless ``Recommender`` replicas score with a copy of the policy; the
``Learner`` deployment owns the ``BanditCore``, logs their decisions and the rewards, learns every
``update_interval_s`` and publishes each new version; every replica long-polls it (``wait_for_version``) and
swaps the new statistics in without restarting.

Scoring goes through ``serve.batch``: concurrent rank requests are scored as one batch and logged with one
group commit.
"""


import asyncio
import gc
import hmac
import inspect
import logging
import os
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from recbandits.algos.candidates import Decision, LinearCandidatePolicy
from recbandits.serve.config import ServeArgs, ServeConfig, config_from_args
from recbandits.serve.core import BanditCore
from recbandits.serve.eventlog import LogWriteError, dumps
from recbandits.serve.learner import Learner, joined, raise_if_rejected, reward_item, single_threaded_math
from recbandits.serve.limits import error_response_bytes
from recbandits.serve.schemas import (
    ErrorResponse,
    PromoteRequest,
    RankJob,
    RankRequest,
    RankResponse,
    Rejection,
    RequestValidator,
    RewardBatchRequest,
    RewardBatchResponse,
    RewardRequest,
    RewardResponse,
    RollbackRequest,
    error_body,
    load_item_titles,
    rejection_body,
)
from recbandits.serve.state import read_admin_token

logger = logging.getLogger("recbandits.serve")

DESCRIPTION = """Contextual-bandit recommendation with online learning.

* `POST /v1/rank`: choose and rank candidate actions for a context; log the decision (`event_id`).
* `POST /v1/reward`: the reward of a decision (a slate: its clicked positions or one reward per slot), joined
  within the join window.
* `GET /healthz`: readiness.
* Admin API (`Authorization: Bearer <token>`, the token in `--admin-token-file`, default `STATE_DIR/admin.token`):
  `GET /v1/policy`, `GET /v1/policy/versions`, `GET /v1/policy/versions/{v}[/state]`, `POST /v1/policy/rollback`,
  `POST /v1/policy/promote` (the promotion gate: a checkpoint evaluated on the recent log, served if better),
  `GET /v1/policy/promotions`.

Every error has `message` naming the field (`field: what is wrong`) and FastAPI-style `detail` (`loc`, `msg`,
`type`). Bodies are JSON (`Content-Type: application/json`, else 415) of at most `max_body_bytes` (else 413).
Under overload a replica answers 503 with `Retry-After` at once (Ray Serve's admission control).
"""

ERRORS = {422: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
          415: {"model": ErrorResponse}, 413: {"model": ErrorResponse}}
ADMIN_ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}}

# FastAPI's own OpenTelemetry hooks check the global providers on every request; Ray Serve records the request
# metrics and traces, so they are off.
api = FastAPI(title="recbandits serving", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None,
              telemetry={"tracing": False, "metrics": False, "logs": False})
BODY_MODELS = (RankRequest, RewardRequest, RewardBatchRequest, RollbackRequest, PromoteRequest)
DOCS_ASSETS = "/docs-assets"


def _mount_docs() -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle`` package, served by the service itself (FastAPI's
    default page loads it from a CDN and is blank offline). FastAPI's documented self-hosting recipe."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    api.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{api.title} - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


_mount_docs()


def _openapi() -> dict[str, Any]:
    """FastAPI's schema, plus the request bodies the endpoints validate themselves (see ``_parse``)."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi


def _body(model) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body of ``model``."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


JSON_TYPE = "application/json"
# A UTF-16 high surrogate escape not followed by a low one, or a low one without a high one before it.
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|"
                             rb"(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


async def _parse(request: Request, model):
    """Validate the body with pydantic's JSON parser (NaN and Infinity are parsed, then refused per field)."""
    content_type = request.headers.get("content-type", "")
    media_type, _, parameters = content_type.partition(";")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"') if parameters.strip() else "utf-8"
    if media_type.strip().lower() != JSON_TYPE or charset not in ("utf-8", "utf8"):
        what = f"{content_type!r} is not supported" if content_type else "missing"
        raise Rejection(415, "content-type", f"{what}: send {JSON_TYPE} (UTF-8)", "unsupported_media_type",
                        location="header")
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = [{**item, "loc": ("body", *item["loc"])} for item in error.errors(include_url=False)]
        for item in errors:
            lone = _LONE_SURROGATE.search(body) if item["type"] == "json_invalid" else None
            if lone is not None:  # jiter calls it "unexpected end of hex escape"
                item["ctx"] = {"error": f"{lone.group().decode()} at byte {lone.start()} is a lone UTF-16 "
                               "surrogate, not a character"}
        raise RequestValidationError(errors) from None


def _error(status: int, field: str, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    """The one error format, ``{"message": "field: what", "detail": [{"loc", "msg", "type"}]}``, for errors that
    name no request field (the format of ``limits``' answers given in front of the app)."""
    return Response(error_response_bytes(field, message, code), status_code=status, media_type=JSON_TYPE,
                    headers=headers)


def _json(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(error_body(list(error.errors())), status_code=422)


@api.exception_handler(Rejection)
async def _rejection(request: Request, rejection: Rejection) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if rejection.status == 401 else None
    return JSONResponse(rejection_body(rejection), status_code=rejection.status, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    """Unknown paths (404) and methods (405, with Allow) in the service's error format."""
    if error.status_code == 404:
        field, message = "path", f"no endpoint {request.url.path} (see /docs)"
    elif error.status_code == 405:
        field, message = "method", (f"{request.method} is not allowed on {request.url.path} (allowed: "
                                    f"{(error.headers or {}).get('Allow', '?')})")
    else:
        field, message = "request", str(error.detail)
    return _error(error.status_code, field, message, "http_error", headers=error.headers)


@api.exception_handler(LogWriteError)
async def _log_failed(request: Request, error: LogWriteError) -> Response:
    return _error(503, "service", f"unavailable: {error}", "log_failed")


@api.exception_handler(RayError)
async def _learner_unavailable(request: Request, error: RayError) -> Response:
    if isinstance(getattr(error, "cause", None), LogWriteError):  # the learner's log failed: no retry helps
        return await _log_failed(request, error.cause)
    logger.warning("a call to another deployment failed", exc_info=error)
    return _error(503, "service", f"unavailable (retry): {type(error).__name__}", "learner_unavailable",
                  headers={"Retry-After": "1"})


def _signature_once(method):
    """Give a ``serve.batch`` method its signature once: ``serve.batch`` looks it up on every call, and
    ``inspect.signature`` returns a precomputed ``__signature__`` instead of rebuilding it from the code."""
    method.__signature__ = inspect.signature(method)
    return method


LOGGING = {"enable_access_log": False, "log_level": "WARNING"}


async def _rank_route(request: Request) -> Response:
    return await serve.get_replica_context().servable_object.rank(request)


# The hot path as a plain Starlette route, tried before the FastAPI one: Ray Serve's class-based ingress hands
# ``self`` to every FastAPI route through a dependency that FastAPI resolves per request (0.2-0.5 ms of CPU per
# rank request in an in-process harness). The FastAPI route stays: it documents /v1/rank in the OpenAPI schema, and the
# endpoint, its validation and its error handlers are the same. Added before ``@serve.ingress(api)``, which
# freezes a copy of the app.
api.router.routes.insert(0, Route("/v1/rank", _rank_route, methods=["POST"], include_in_schema=False))


# Admission limits (max_ongoing_requests, max_queued_requests) come from the config, in build_app.
@serve.deployment(name="Recommender", health_check_period_s=5.0,
                  graceful_shutdown_timeout_s=10.0)
@serve.ingress(api)
class Recommender:
    """The HTTP API. Owns the BanditCore (in-process learning) or serves copies of the Learner's versions."""

    async def __init__(self, config: dict[str, Any], learner=None):
        single_threaded_math()
        self.config = ServeConfig.from_dict(config)
        self.validator = RequestValidator(self.config)
        self.titles = load_item_titles(self.config.item_titles) if self.config.item_titles else {}
        self._admin_token = read_admin_token(self.config).encode()
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside Serve (local testing)
            self.replica = f"pid{os.getpid()}"
        self._rank_batch.set_max_batch_size(self.config.max_batch_size)
        self._rank_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self._forward.set_max_batch_size(4 * self.config.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.config.sync_wait_s)
        self.learner = learner
        self.core: BanditCore | None = None
        self._poller: asyncio.Task | None = None
        if learner is None:
            self.core = BanditCore(self.config, name=self.replica)
            self.core.start()
            self.policy = self.core.policy
        else:
            published = await learner.published.remote()
            seed = int(self.config.model_config.get("seed", 0)) + (hash(self.replica) % 100_000)
            self.policy = LinearCandidatePolicy(self.config.policy_fields(), published["state"], seed=seed)
            self.served = published["version"]
            self._learner_seen = time.monotonic()
            self._poller = asyncio.get_running_loop().create_task(self._poll_versions())
        # The objects made at start-up (Ray, FastAPI, torch, the policy) live as long as the replica: keep them
        # out of the garbage collector's full passes, which would walk them again and again while requests wait.
        gc.collect()
        gc.freeze()

    # ----------------------------------------------------------------------------------------------

    @property
    def version(self) -> dict[str, Any]:
        return self.core.version if self.core is not None else self.served

    async def _poll_versions(self) -> None:
        """Learner mode: swap in every version the learner publishes (long poll, no restart)."""
        while True:
            try:
                update = await self.learner.wait_for_version.remote(self.served["policy_version"], 5.0)
                self._learner_seen = time.monotonic()
                if update is not None:
                    self.policy.set_state(update["state"])
                    self.served = update["version"]
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the learner restarts: keep serving the last version
                logger.warning("polling the learner failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)

    def check_health(self) -> None:
        if self.core is not None and not self.core.healthy():
            raise RuntimeError(self.core.log_problem())
        if self.core is None and time.monotonic() - self._learner_seen > 60:
            raise RuntimeError("the learner has not answered for 60 s")

    async def __del__(self):
        if self._poller is not None:
            self._poller.cancel()
        if self.core is not None:
            await self.core.close()

    # ----------------------------------------------------------------------------------------------
    # Ranking
    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def _shown(job: RankJob, decision: Decision) -> list[int]:
        """The candidates answered, best first: a slate (``top_k`` may shorten it), or the ranking's top_k."""
        return (decision.slate if decision.slate is not None else decision.order)[: job.top_k]

    def _row(self, job: RankJob, decision: Decision, version: dict[str, Any], event_id: str) -> dict[str, Any]:
        ids = job.candidate_ids
        shown = self._shown(job, decision)
        ranking = [ids[index] for index in shown]
        slate = {}
        if decision.slate is not None:  # what its per-slot feedback teaches (replay.open_event)
            probabilities = decision.slot_probabilities
            slate = {"slate": shown, "slot_probabilities": probabilities[: len(shown)] if probabilities else None}
        return {
            "kind": "decision",
            "event_id": event_id,
            "policy_version": version["policy_version"],
            "watermark": version["watermark"],
            "replica": self.replica,
            "exploration": self.policy.exploration,
            "user_id": job.user_id,
            "context": job.score.context.tolist(),
            "candidates": ids if job.explicit_candidates else None,
            "excluded": job.excluded,
            "action": ids[decision.chosen],
            "model": decision.model,
            "chosen_features": (
                None if job.score.arm_features is None else job.score.arm_features[decision.chosen].tolist()
            ),
            # Every candidate's features (shared shape): what evaluating another policy on this decision needs.
            "candidate_features": None if job.score.arm_features is None else job.score.arm_features.tolist(),
            "ranking": ranking,
            "scores": decision.scores,
            "propensity": None if decision.probabilities is None else decision.probabilities[decision.chosen],
            **slate,
        }

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, max_concurrent_batches=4)
    @_signature_once
    async def _rank_batch(self, jobs: list[RankJob]) -> list[dict[str, Any]]:
        if self.core is not None:
            self.core.learn()
        policy, version = self.policy, self.version
        decisions = policy.decide([job.score for job in jobs])
        rows = [self._row(job, decision, version, job.event_id or uuid.uuid4().hex)
                for job, decision in zip(jobs, decisions, strict=True)]
        if self.core is not None:
            results = await self.core.log_decisions(rows)
        else:
            results = await asyncio.gather(*(self._forward(("decision", row)) for row in rows))
        answers = []
        for job, decision, row, result in zip(jobs, decisions, rows, results, strict=True):
            if "rejection" in result:
                answers.append(result)
                continue
            ids, scores, shown = job.candidate_ids, decision.scores, self._shown(job, decision)
            if decision.slate is not None:
                probabilities = row["slot_probabilities"] or [None] * len(shown)
            else:
                chosen = decision.probabilities or [None] * len(scores)
                probabilities = [chosen[index] for index in shown]
            answers.append({
                "event_id": row["event_id"],
                "action": row["action"],
                "ranking": [{"id": ids[index], "title": self.titles.get(ids[index]), "score": scores[index],
                             "probability": probability}
                            for index, probability in zip(shown, probabilities, strict=True)],
                "policy_version": row["policy_version"],
                "policy_watermark": row["watermark"],
                "exploration": row["exploration"],
            })
        return answers

    @api.post("/v1/rank", response_model=RankResponse, responses=ERRORS, openapi_extra=_body(RankRequest))
    async def rank(self, http: Request) -> Response:
        """Choose an action among the candidates and rank them; the decision is logged before the answer."""
        job = self.validator.rank_job(await _parse(http, RankRequest))
        return _json(raise_if_rejected(await self._rank_batch(job)))

    # ----------------------------------------------------------------------------------------------
    # Rewards
    # ----------------------------------------------------------------------------------------------

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005, max_concurrent_batches=4)
    @_signature_once
    async def _forward(self, items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
        """Learner mode: the decisions and rewards of the last few milliseconds, in one call to the learner."""
        return await self.learner.sync.remote(items)

    @api.post("/v1/reward", response_model=RewardResponse, responses=ERRORS, openapi_extra=_body(RewardRequest))
    async def reward(self, http: Request) -> Response:
        """Join a reward with its decision (404 unknown event, 409 expired or already rewarded)."""
        request = await _parse(http, RewardRequest)
        if self.core is not None:
            result = await self.core.record_reward(*reward_item(request))
        else:
            result = raise_if_rejected(await self._forward(("reward", reward_item(request))))
        return _json(result)

    @api.post("/v1/rewards", response_model=RewardBatchResponse, responses={422: {"model": ErrorResponse}},
              openapi_extra=_body(RewardBatchRequest))
    async def rewards(self, http: Request) -> Response:
        """Several rewards in one request (an event collector's batch): each is joined as by /v1/reward, in order;
        each item has its own outcome (a refused item does not refuse the others)."""
        batch = await _parse(http, RewardBatchRequest)
        items = [reward_item(item) for item in batch.rewards]
        if self.core is not None:
            # Tasks start in order and each joins before its first await: a second reward for an event sees the
            # first; the log writes them all in one group commit.
            results = list(await asyncio.gather(*(joined(self.core, *item) for item in items)))
        else:
            results = list(await asyncio.gather(*(self._forward(("reward", item)) for item in items)))
        answer, rejected = [], 0
        for (event_id, *_), result in zip(items, results, strict=True):
            if "rejection" in result:
                rejected += 1
                error = {key: result["rejection"][key] for key in ("status", "code", "message")}
                answer.append({"event_id": event_id, "status": "rejected", "error": error})
            else:
                answer.append(result)
        return _json({"results": answer, "accepted": len(items) - rejected, "rejected": rejected})

    # ----------------------------------------------------------------------------------------------
    # Policy versions and health
    # ----------------------------------------------------------------------------------------------

    def _authorize(self, http: Request) -> None:
        """The admin API (policy state, versions, rollback) needs the bearer token (constant-time compare)."""
        header = http.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejection(401, "authorization", "the admin API needs `Authorization: Bearer <token>` (the token "
                            "is in the service's --admin-token-file, default STATE_DIR/admin.token)", "unauthorized",
                            location="header")
        if not hmac.compare_digest(token.strip().encode(), self._admin_token):
            raise Rejection(403, "authorization", "this is not the admin token", "forbidden", location="header")

    async def _call(self, method: str, *args):
        """The BanditCore's ``method`` in-process, or the learner deployment's method of that name (a handle
        call; its Rejections travel as dicts)."""
        if self.core is not None:
            result = getattr(self.core, method)(*args)
            return await result if asyncio.iscoroutine(result) else result
        return raise_if_rejected(await getattr(self.learner, method).remote(*args))

    @api.get("/v1/policy", responses=ADMIN_ERRORS)
    async def policy_info(self, http: Request) -> Response:
        """Admin: the current version, its statistics, the service's settings and counters."""
        self._authorize(http)
        info = await self._call("info")
        info.update({
            "learning": self.config.learning,
            "served_by_this_replica": self.version["policy_version"],
            "replica": self.replica,
            "exploration": self.policy.exploration,
            "policy": self.config.policy_fields(),
            "join_window_s": self.config.join_window_s,
            "default_reward": self.config.default_reward,
            "reward_rule": self.config.reward_rule,
        })
        return _json(info)

    @api.get("/v1/policy/versions", responses=ADMIN_ERRORS)
    async def versions(self, http: Request, limit: int = Query(50, ge=1, le=10_000)) -> Response:
        """Admin: the newest versions first (``snapshot``: whether its statistics are on disk)."""
        self._authorize(http)
        return _json({"policy_version": self.version["policy_version"],
                      "versions": await self._call("list_versions", limit)})

    @api.get("/v1/policy/versions/{version}", responses=ADMIN_ERRORS)
    async def version_info(self, http: Request, version: int) -> Response:
        """Admin: one version's row."""
        self._authorize(http)
        return _json(await self._call("version_info", version))

    @api.get("/v1/policy/versions/{version}/state", responses=ADMIN_ERRORS)
    async def version_state(self, http: Request, version: int) -> Response:
        """Admin: the sufficient statistics of a version (nested lists), e.g. to rebuild a frozen copy of it."""
        self._authorize(http)
        state = await self._call("version_state", version)
        return _json({"version": version, "state": {key: value.tolist() for key, value in state.items()}})

    @api.post("/v1/policy/rollback", responses={**ERRORS, **ADMIN_ERRORS}, openapi_extra=_body(RollbackRequest))
    async def rollback(self, http: Request) -> Response:
        """Admin: serve the statistics of an older version again (as a new version; learning continues from it)."""
        self._authorize(http)
        request = await _parse(http, RollbackRequest)
        row = await self._call("rollback", request.version)
        return _json({"policy_version": row["policy_version"], "rolled_back_to": request.version, "version": row})

    @api.post("/v1/policy/promote", responses={**ERRORS, **ADMIN_ERRORS}, openapi_extra=_body(PromoteRequest))
    async def promote(self, http: Request) -> Response:
        """Admin: the promotion gate. The checkpoint is evaluated on the newest rewarded decisions and served as a
        new version only if the lower end of its interval beats what the serving policy earned on them (or
        ``force``); 200 either way (``promoted``, ``message`` with the numbers, ``evaluation``), 422 when
        its model does not fit the service's."""
        self._authorize(http)
        request = await _parse(http, PromoteRequest)
        return _json(await self._call("promote", request.checkpoint, request.estimator, request.window,
                                      request.force, request.samples))

    @api.get("/v1/policy/promotions", responses=ADMIN_ERRORS)
    async def promotions(self, http: Request, limit: int = Query(50, ge=1, le=10_000)) -> Response:
        """Admin: the promotion gate's decisions, newest first."""
        self._authorize(http)
        return _json({"promotions": await self._call("list_promotions", limit)})

    @api.get("/healthz")
    async def healthz(self) -> Response:
        """200 ``ready`` when this replica serves a policy, can log and learns; 503 ``unavailable`` when it cannot
        log (or reach the learner), 503 ``degraded`` when it serves but learning fails or is stuck (``reason``)."""
        try:
            self.check_health()
            if self.core is None and (failure := await self._call("log_problem")) is not None:
                raise RuntimeError(f"learner: {failure}")  # the learner logs for every replica
        except RuntimeError as error:
            return _json({"status": "unavailable", "reason": str(error), "replica": self.replica}, status=503)
        body = {"status": "ready", "replica": self.replica, "learning": self.config.learning,
                "policy_version": self.version["policy_version"]}
        problem = await self._call("learning_problem")
        if problem is not None:
            return _json({**body, "status": "degraded", "reason": problem}, status=503)
        return _json(body)

    @api.get("/", include_in_schema=False)
    async def root(self) -> Response:
        return _json({"service": "recbandits", "docs": "/docs", "openapi": "/openapi.json"})


def build_app(args: ServeArgs):
    """The Serve application, from Serve's typed builder arguments: ``serve run recbandits.serve.app:build_app
    checkpoint=DIR state_dir=DIR`` or a RayService's ``args`` (Serve validates them into ``ServeArgs``, one
    optional field per ServeConfig setting). The state dir is prepared here (first start: service.json and the
    initial policy)."""
    from recbandits.serve.state import prepare_state_dir

    config, explicit = config_from_args(args)
    return service_app(prepare_state_dir(config, explicit))


def service_app(config: ServeConfig):
    """The Serve application of a prepared config (``recbandits serve`` builds it so)."""
    data = config.to_dict()
    actor_options = {"num_cpus": config.replica_num_cpus}
    # Ray Serve's admission control: beyond max_ongoing + max_queued requests a replica answers 503 with
    # Retry-After at once (through the proxy and on its own fast-path port alike).
    ingress = Recommender.options(
        num_replicas=config.num_replicas, ray_actor_options=actor_options, logging_config=LOGGING,
        max_ongoing_requests=config.max_ongoing_requests, max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s))
    if config.learning == "learner":
        return ingress.bind(data, Learner.options(ray_actor_options=actor_options, logging_config=LOGGING).bind(data))
    return ingress.bind(data)
