"""Request and response models of the HTTP API, and the checks that need the service's feature spec.

Pydantic checks the shape of a request (types, finite numbers, lengths; FastAPI answers 422 naming the field);
``RequestValidator`` then checks it against the policy (context dimension, known arms, per-arm features,
duplicates, size) and turns it into a ``CandidateSet``, or raises a ``Rejection`` naming the field. Nothing reaches
the model before both passed.

Ids (event, candidate, user) are strings; integer ids are accepted and used as their decimal string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from recbandits.algos.candidates import CandidateSet
from recbandits.logs.features import read_feature_table
from recbandits.ope.estimators import ESTIMATORS
from recbandits.serve.config import ServeConfig

HARD_MAX_ITEMS = 100_000  # a schema-level bound; the configured max_candidates is checked after


def _as_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a string or an integer")
    text = str(value)
    if not 1 <= len(text) <= 256:
        raise ValueError("must have 1 to 256 characters")
    return text


Id = Annotated[str, BeforeValidator(_as_id)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
MAX_ABS_VALUE = 1e9  # features and rewards beyond this would overflow the statistics (x x^T, r^2) or the scores
Number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


class Rejection(Exception):
    """A request the service refuses, with its HTTP status and the field at fault."""

    def __init__(self, status: int, field: str, message: str, code: str = "rejected", location: str = "body"):
        super().__init__(message)
        self.status, self.field, self.message, self.code = status, field, message, code
        self.location = location  # where the field is: body, path, query or header

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "field": self.field, "message": self.message, "code": self.code,
                "location": self.location}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rejection:
        return cls(data["status"], data["field"], data["message"], data["code"], data.get("location", "body"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Strict):
    id: Id = Field(description="Action id (an arm id for the disjoint policy).")
    features: list[Number] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="Per-arm features (shared policy only; arm_dim values)."
    )


class RankRequest(_Strict):
    event_id: EventId | None = Field(None, description="Id of this decision; generated when left out.")
    context: list[Number] | None = Field(
        None, max_length=HARD_MAX_ITEMS, description="The user's feature vector (context_dim finite numbers)."
    )
    user_id: Id | None = Field(None, description="A user of the service's user table, instead of `context`.")
    candidates: list[Candidate] | None = Field(
        None, min_length=1, max_length=HARD_MAX_ITEMS,
        description="Candidate actions: objects {id, features?} or bare ids. Disjoint policy: default all arms.",
    )
    excluded: list[Id] = Field(default_factory=list, max_length=HARD_MAX_ITEMS, description="Ids never chosen.")
    top_k: int | None = Field(None, strict=True, ge=1, description="Length of the returned ranking (default all).")

    @field_validator("candidates", mode="before")
    @classmethod
    def _bare_ids(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [item if isinstance(item, dict) else {"id": item} for item in value]
        return value


class RankedItem(BaseModel):
    id: str
    title: str | None = Field(None, description="The item's title, where the service knows it (item_titles).")
    score: float
    probability: float | None = Field(None, description="Probability that the policy chooses it (null: unknown); "
                                      "a ranking policy's slate: that this slot shows it.")


class RankResponse(BaseModel):
    event_id: str
    action: str = Field(description="The chosen action (first of the ranking).")
    ranking: list[RankedItem]
    policy_version: int
    policy_watermark: int = Field(description="Log seq of the last reward the deciding policy has learned from.")
    exploration: str


MAX_SLOTS = 1000  # a schema-level bound on a slate's feedback; the event's own slate is checked after


class RewardRequest(_Strict):
    event_id: EventId
    reward: Number | None = Field(None, description="The decision's reward (a single-action policy).")
    clicks: list[Annotated[int, Field(strict=True)]] | None = Field(
        None, max_length=MAX_SLOTS, description="A slate's feedback: the clicked positions (0: the top slot; [] for "
        "none). Cascade rule: the slots down to the first click are learned (0 above it, 1 at it).")
    slot_rewards: list[Number] | None = Field(
        None, max_length=MAX_SLOTS, description="A slate's feedback: one reward per slot, every slot learned.")
    reward_id: EventId | None = Field(
        None, description="Idempotency key: a retried reward with the same id is acknowledged once."
    )

    @model_validator(mode="after")
    def _one_feedback(self) -> RewardRequest:
        given = [name for name in ("reward", "clicks", "slot_rewards") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of reward, clicks (a slate's clicked positions) or slot_rewards, "
                             f"not {' and '.join(given) if given else 'none'}")
        return self


class RewardResponse(BaseModel):
    event_id: str
    status: str = Field(description="joined (first reward), added (rule sum), duplicate (same reward_id again)")
    reward_total: float
    reward_count: int
    seq: int | None = Field(description="Log seq of the reward: a decision with policy_watermark >= seq includes it.")


MAX_REWARD_BATCH = 1000


class RewardBatchRequest(_Strict):
    rewards: list[RewardRequest] = Field(min_length=1, max_length=MAX_REWARD_BATCH,
                                         description="Rewards of several events, joined one by one in order.")


class RewardItemError(BaseModel):
    status: int = Field(description="What POST /v1/reward would have answered: 404, 409")
    code: str
    message: str


class RewardBatchItem(BaseModel):
    event_id: str
    status: str = Field(description="joined, added, duplicate, or rejected (see error)")
    reward_total: float | None = None
    reward_count: int | None = None
    seq: int | None = None
    error: RewardItemError | None = None


class RewardBatchResponse(BaseModel):
    results: list[RewardBatchItem]
    accepted: int
    rejected: int


class RollbackRequest(_Strict):
    version: int = Field(strict=True, ge=1)


class PromoteRequest(_Strict):
    """A candidate for the promotion gate (``recbandits.serve.promotion``)."""

    checkpoint: str = Field(min_length=1, max_length=4096, description="The checkpoint directory (a `recbandits "
                            "simulate` or `train` output) as the service's machine sees it.")
    estimator: Literal[ESTIMATORS] = "dr"
    window: int = Field(10_000, strict=True, ge=100, le=1_000_000,
                        description="The newest rewarded decisions of the log evaluated on.")
    force: bool = Field(False, strict=True, description="Promote whatever the evaluation says.")
    samples: int = Field(200, strict=True, ge=10, le=10_000,
                         description="Thompson sampling: decisions sampled per row for its probabilities.")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    message: str = Field(description="`field: what is wrong`, for each error")
    detail: list[ErrorItem]


# --------------------------------------------------------------------------------------------------
# Error formatting
# --------------------------------------------------------------------------------------------------


def field_path(loc: tuple | list) -> str:
    """('body', 'candidates', 0, 'id') -> 'candidates[0].id'."""
    parts = list(loc)
    if parts and parts[0] in ("body", "path", "query", "header"):
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or part in ("str", "int")):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text or "body"


def error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    detail = []
    for error in errors:
        loc = list(error.get("loc", ("body",)))
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "json_invalid":
            loc = ["body"]
            reason = (error.get("ctx") or {}).get("error")
            message = f"malformed JSON ({reason})" if reason else message.replace("Invalid JSON", "malformed JSON")
        elif error.get("type") == "model_type" and loc == ["body"]:
            message = "the body must be a JSON object"
        detail.append({"loc": loc, "msg": message, "type": str(error.get("type", "value_error"))})
    return {"message": "; ".join(f"{field_path(item['loc'])}: {item['msg']}" for item in detail), "detail": detail}


def rejection_body(rejection: Rejection) -> dict[str, Any]:
    loc = [rejection.location, *_split_field(rejection.field)]
    return {"message": f"{rejection.field}: {rejection.message}",
            "detail": [{"loc": loc, "msg": rejection.message, "type": rejection.code}]}


def _split_field(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in path.replace("]", "").split("."):
        name, *indices = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(index) for index in indices)
    return parts


# --------------------------------------------------------------------------------------------------
# Validation against the policy
# --------------------------------------------------------------------------------------------------


def load_user_table(path: str | Path, context_dim: int) -> dict[str, np.ndarray]:
    """user id -> features, from a .npz (``ids``, ``features``) or a .csv (id column, then the features)."""
    path = Path(path)
    if path.suffix == ".npz":
        ids, features, _ = read_feature_table(path)
    else:
        import pandas as pd

        frame = pd.read_csv(path)
        ids, features = frame.iloc[:, 0].to_numpy(), frame.iloc[:, 1:].to_numpy(dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != context_dim:
        raise ValueError(f"user table {path}: features of shape {features.shape}, expected (users, {context_dim})")
    if not np.isfinite(features).all():
        raise ValueError(f"user table {path} has non-finite features")
    return {str(user): features[row] for row, user in enumerate(ids.tolist())}


def load_item_titles(path: str | Path) -> dict[str, str]:
    """item id -> title, from a .json object or a .csv (id column, then the title column)."""
    path = Path(path)
    if path.suffix == ".json":
        titles = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(titles, dict):
            raise ValueError(f"item titles {path}: expected a JSON object {{id: title}}")
    else:
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if frame.shape[1] < 2:
            raise ValueError(f"item titles {path}: expected two columns (id, title), found {frame.shape[1]}")
        titles = dict(zip(frame.iloc[:, 0], frame.iloc[:, 1], strict=True))
    return {str(item): str(title) for item, title in titles.items()}


@dataclass
class RankJob:
    """A validated rank request: what to score, and what to log and answer."""

    event_id: str | None
    score: CandidateSet
    candidate_ids: list[str]
    excluded: list[str]
    user_id: str | None
    top_k: int | None
    explicit_candidates: bool = True


class RequestValidator:
    """Checks requests against the service's feature spec (no model involved)."""

    def __init__(self, config: ServeConfig):
        self.shape = config.shape
        self.context_dim = config.context_dim
        self.arm_dim = config.arm_dim
        self.max_candidates = config.max_candidates
        self.arm_ids = config.effective_arm_ids or []
        self.arm_index = {arm: index for index, arm in enumerate(self.arm_ids)}
        self._all_arms = np.arange(len(self.arm_ids))
        self.users = load_user_table(config.user_table, config.context_dim) if config.user_table else None

    def rank_job(self, request: RankRequest) -> RankJob:
        context = self._context(request)
        candidates = request.candidates
        excluded = list(dict.fromkeys(request.excluded))
        if candidates is None:
            if self.shape == "shared":
                raise Rejection(422, "candidates", "required: the shared policy scores candidates by their features",
                                "missing")
            ids = self.arm_ids
            arms = self._all_arms
            arm_features = None
        else:
            if len(candidates) > self.max_candidates:
                raise Rejection(422, "candidates", f"{len(candidates)} candidates exceed max_candidates="
                                f"{self.max_candidates}", "too_many")
            ids = [candidate.id for candidate in candidates]
            seen: dict[str, int] = {}
            for index, candidate_id in enumerate(ids):
                if candidate_id in seen:
                    raise Rejection(422, f"candidates[{index}].id", f"duplicate candidate id {candidate_id!r} (also "
                                    f"candidates[{seen[candidate_id]}])", "duplicate")
                seen[candidate_id] = index
            arms, arm_features = self._candidate_inputs(candidates)
        if excluded:
            drop = set(excluded)
            keep = [index for index, candidate_id in enumerate(ids) if candidate_id not in drop]
            if not keep:
                raise Rejection(422, "excluded", "excludes every candidate", "nothing_left")
            if len(keep) < len(ids):
                ids = [ids[index] for index in keep]
                arms = arms[keep] if arms is not None else None
                arm_features = arm_features[keep] if arm_features is not None else None
        job = CandidateSet(context=context, arms=arms, arm_features=arm_features)
        return RankJob(request.event_id, job, list(ids), excluded, request.user_id, request.top_k,
                       explicit_candidates=candidates is not None)

    def _context(self, request: RankRequest) -> np.ndarray:
        if request.context is not None and request.user_id is not None:
            raise Rejection(422, "user_id", "give either context or user_id, not both", "conflict")
        if request.context is None:
            if request.user_id is None:
                raise Rejection(422, "context", "required (the user's feature vector), or user_id", "missing")
            if self.users is None:
                raise Rejection(422, "user_id", "this service has no user table (start it with --user-table); send "
                                "context", "no_user_table")
            features = self.users.get(request.user_id)
            if features is None:
                raise Rejection(404, "user_id", f"unknown user_id {request.user_id!r}", "unknown_user")
            return features
        if len(request.context) != self.context_dim:
            raise Rejection(422, "context", f"expected {self.context_dim} values, got {len(request.context)}",
                            "wrong_dimension")
        return np.asarray(request.context, dtype=np.float64)

    def _candidate_inputs(self, candidates: list[Candidate]) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.shape == "disjoint":
            arms = np.empty(len(candidates), dtype=np.int64)
            for index, candidate in enumerate(candidates):
                arm = self.arm_index.get(candidate.id)
                if arm is None:
                    shown = ", ".join(self.arm_ids[:10]) + (", ..." if len(self.arm_ids) > 10 else "")
                    raise Rejection(422, f"candidates[{index}].id", f"unknown arm {candidate.id!r} (arms: {shown})",
                                    "unknown_arm")
                if candidate.features is not None:
                    raise Rejection(422, f"candidates[{index}].features", "the disjoint policy takes no per-arm "
                                    "features (one model per arm)", "unexpected")
                arms[index] = arm
            return arms, None
        rows = np.empty((len(candidates), self.arm_dim))
        for index, candidate in enumerate(candidates):
            if candidate.features is None:
                raise Rejection(422, f"candidates[{index}].features", f"required: {self.arm_dim} per-arm features",
                                "missing")
            if len(candidate.features) != self.arm_dim:
                raise Rejection(422, f"candidates[{index}].features", f"expected {self.arm_dim} values, got "
                                f"{len(candidate.features)}", "wrong_dimension")
            rows[index] = candidate.features
        return None, rows
