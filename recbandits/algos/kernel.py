"""The linear-bandit kernel: statistics, posterior, scores, choices and the probability of each candidate.

One implementation of the math, used by the RLlib module (``LinearBanditModule``, batches of env observations),
the candidate-set policy of serving and evaluation (``candidates.LinearCandidatePolicy``, requests and logged
decisions). Everything is a torch tensor on the CPU; the statistics and the posterior are float64.

Statistics of the rows (x_t, r_t) a model learned from, and the posterior they define:

    D = sum_t x_t x_t^T,   b = sum_t r_t x_t,   y2 = sum_t r_t^2,   n = #rows
    A = lambda_ I + D,     theta = A^-1 b

Features of candidate k: ``disjoint`` (one model per arm) the context x, scored by arm k's model; ``shared``
(one model) ``candidate_features(x, a_k)`` = [x, a_k] and, with ``interaction``, the outer product x (x) a_k.

| exploration | score of candidate k (features f_k) | probability of candidate k |
|---|---|---|
| ``ucb`` | theta.f_k + alpha sqrt(f_k^T A^-1 f_k) | 1/#ties on the argmax set, else 0 |
| ``greedy`` | theta.f_k | as ucb |
| ``eps_greedy`` | theta.f_k; a uniform candidate with probability epsilon | epsilon/n + (1 - epsilon)/#ties on argmax |
| ``thompson`` | theta~.f_k, theta~ ~ N(theta, v^2 A^-1) per decision (and arm model) | no closed form: None |
| ``random`` | a uniform draw | 1/n |

Ties are exact equalities of scores; a chosen candidate is uniform among them, so the probabilities are those of
the choices actually made.

A slate (``slate_size`` slots, best first) is the top of the scores, ties in uniform random order; epsilon-greedy
shows a uniformly random ordering instead with probability epsilon. The probability that slot j shows the
candidate it shows (``slot_probabilities``): for ucb and greedy 1/m when the candidate is one of m tied ones
whose block of the sorted scores covers slot j (else 0), for eps_greedy epsilon/n + (1 - epsilon) times that,
for random 1/n, for thompson None. A slate's feedback (``slate_feedback``) is learned slot by slot, as the
ranking env reveals it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

UNIT_ROUNDOFF = 2.0**-53  # float64


def max_learnable_norm_sq(lambda_: float, feature_dim: int) -> float:
    """The largest squared norm ||x||^2 of a feature row that a model can learn from in float64.

    Adding x x^T to the statistics rounds each entry by up to u |x_i x_j| (u = 2^-53), a perturbation of A of
    spectral norm <= feature_dim * u * ||x||^2. Up to lambda_ / 2 it leaves every eigenvalue of the stored A at
    >= lambda_ / 2, so the posterior in every other direction survives the row. A larger row (a context of 1e8
    where the others are ~1) would swamp lambda_ by rounding alone: the serving policy quarantines it instead.
    """
    return lambda_ / (2.0 * feature_dim * UNIT_ROUNDOFF)


# --------------------------------------------------------------------------------------------------
# Features and statistics
# --------------------------------------------------------------------------------------------------


def candidate_features(global_features: torch.Tensor, arm_features: torch.Tensor, interaction: bool) -> torch.Tensor:
    """Shared model: features [..., K, D] of every candidate from global [..., g] and per-arm [..., K, p]."""
    repeated = global_features.unsqueeze(-2).expand(*arm_features.shape[:-1], global_features.shape[-1])
    parts = [repeated, arm_features]
    if interaction:
        parts.append((repeated.unsqueeze(-1) * arm_features.unsqueeze(-2)).flatten(-2))
    return torch.cat(parts, dim=-1)


def kron_positions(global_dim: int, arm_dim: int, feature_dim: int) -> torch.Tensor:
    """Where each coordinate of ``candidate_features``' rows [g, a, g (x) a] (interaction) or [g, a] sits in the
    Kronecker product [1, g] (x) [1, a] (index i * (p + 1) + j for the i-th of [1, g] and the j-th of [1, a])."""
    width = arm_dim + 1
    users = torch.arange(1, global_dim + 1) * width  # g_i * 1
    arms = torch.arange(1, arm_dim + 1)  # 1 * a_j
    parts = [users, arms]
    if feature_dim == global_dim + arm_dim + global_dim * arm_dim:
        parts.append((users.unsqueeze(1) + arms.unsqueeze(0)).flatten())  # g_i * a_j, i-major as in the features
    elif feature_dim != global_dim + arm_dim:
        raise ValueError(f"features of dimension {feature_dim} are not candidate_features of g={global_dim}, "
                         f"p={arm_dim}")
    return torch.cat(parts)


def grouped_gram(features: torch.Tensor, models: torch.Tensor, num_models: int) -> torch.Tensor:
    """sum of x x^T per model [M, d, d], as one batched product of the rows grouped by model.

    Grouping keeps the working set at the size of the features; summing per-row outer products would write an
    [N, d*d] temporary that spills out of the core's cache and slows every other runner on the machine.
    """
    if num_models == 1:
        return (features.T @ features).unsqueeze(0)
    counts = torch.bincount(models, minlength=num_models)
    order = torch.argsort(models, stable=True)
    grouped_models = models[order]
    position = torch.arange(len(models)) - (torch.cumsum(counts, 0) - counts)[grouped_models]
    padded = torch.zeros(num_models, int(counts.max()) if len(models) else 0, features.shape[1], dtype=torch.float64)
    padded[grouped_models, position] = features[order]
    return padded.transpose(1, 2) @ padded


def sufficient_statistics(features: torch.Tensor, models: torch.Tensor, rewards: torch.Tensor, num_models: int,
                          new: torch.Tensor | None = None, previous: torch.Tensor | None = None):
    """(D, b, y2, n) increments [M, d, d], [M, d], [M], [M] of rows ``features`` [N, d] for ``models`` [N].

    Every row is a new observation unless ``new`` [N] (bool) says otherwise: a row that is not adds a further
    reward r to an observation whose reward so far is ``previous`` [N]: b += r x, y2 += (previous + r)^2 -
    previous^2, and D and n stay.
    """
    dim = features.shape[1]
    response = torch.zeros(num_models, dim, dtype=torch.float64).index_add_(0, models, features * rewards.unsqueeze(1))
    if new is None:
        gram_rows, gram_models, squares = features, models, rewards * rewards
    else:
        gram_rows, gram_models = features[new], models[new]
        squares = rewards * rewards + 2.0 * torch.where(new, 0.0, previous) * rewards
    precision = grouped_gram(gram_rows, gram_models, num_models)
    response_square = torch.zeros(num_models, dtype=torch.float64).index_add_(0, models, squares)
    counts = torch.bincount(gram_models, minlength=num_models).to(torch.float64)
    return precision, response, response_square, counts


def row_statistics(contexts: np.ndarray, arm_features: np.ndarray | None, models: np.ndarray, rewards: np.ndarray,
                   num_models: int, interaction: bool, chunk_rows: int = 8_192):
    """``sufficient_statistics`` of learning rows given as numpy: contexts [N, g], the learned candidates'
    features [N, p] (shared shape; None: disjoint, the context is the feature vector), models [N], rewards [N].
    Computed ``chunk_rows`` rows at a time: with interaction features a row is a D-vector, memory chunk_rows x D."""
    totals = None
    for start in range(0, max(len(rewards), 1), chunk_rows):
        part = slice(start, start + chunk_rows)
        features = torch.from_numpy(np.ascontiguousarray(contexts[part], dtype=np.float64))
        if arm_features is not None:
            chosen = torch.from_numpy(np.ascontiguousarray(arm_features[part], dtype=np.float64)).unsqueeze(1)
            features = candidate_features(features, chosen, interaction)[:, 0]
        statistics = sufficient_statistics(features, torch.from_numpy(np.asarray(models[part], dtype=np.int64)),
                                           torch.from_numpy(np.asarray(rewards[part], dtype=np.float64)), num_models)
        totals = statistics if totals is None else tuple(a + b for a, b in zip(totals, statistics, strict=True))
    return totals


# --------------------------------------------------------------------------------------------------
# Posterior
# --------------------------------------------------------------------------------------------------


def covariance_factor(covariance: torch.Tensor) -> torch.Tensor:
    """L with L L^T = A^-1 per model, for sampling theta~ = theta + v L z.

    Cholesky where it succeeds; a model whose A^-1 rounding left not positive-definite gets the symmetric square
    root of its eigendecomposition (eigenvalues clipped at 0), which has the same L L^T.
    """
    factor, info = torch.linalg.cholesky_ex(covariance)
    failed = (info != 0).nonzero().flatten()
    if len(failed):
        symmetric = 0.5 * (covariance[failed] + covariance[failed].transpose(-1, -2))
        eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
        factor[failed] = (
            (eigenvectors * eigenvalues.clamp_min(0.0).sqrt().unsqueeze(-2)) @ eigenvectors.transpose(-1, -2)
        )
    return factor


@dataclass(eq=False)
class Posterior:
    """theta, A^-1 and the noise scale v of every model, derived from its statistics (``from_statistics``).

    ``width_dtype``: the precision of the disjoint shape's UCB widths x^T A_k^-1 x. float32 where widths only
    rank arms and their product dominates the cost (simulation); float64 where scores are reported (serving).
    """

    shape: str  # "disjoint" or "shared"
    theta: torch.Tensor  # [M, D]
    covariance: torch.Tensor  # [M, D, D]
    noise_scale: torch.Tensor  # [M]
    ill_conditioned: int  # models whose A needed the eigendecomposition fallback
    width_dtype: torch.dtype = torch.float64
    # Shared shape: (global dim g, per-arm dim p, interaction) of ``candidate_features``' rows, which lets the
    # widths of interaction features use their structure (``candidate_variance``); None: general feature rows.
    layout: tuple[int, int, bool] | None = None
    _factor: torch.Tensor | None = field(default=None, repr=False)
    _stacked: torch.Tensor | None = field(default=None, repr=False)
    _kron_covariance: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_statistics(cls, shape: str, data_precision, data_response, response_square, counts, *,
                        lambda_: float, posterior_scale: float | None, noise_prior: float,
                        width_dtype: torch.dtype = torch.float64) -> Posterior:
        """The posterior of statistics (D, b, y2, n).

        A = lambda_ I + D with D positive semi-definite, so every eigenvalue of A is >= lambda_. Where rounding
        makes the stored A not positive-definite for Cholesky (statistics spanning more than ~1/eps in scale,
        e.g. one context of 1e8 next to contexts of 1), that model's A is factored by its eigendecomposition with
        the eigenvalues clipped at lambda_: the posterior stays finite and positive-definite for any finite
        statistics.

        v is ``posterior_scale`` when given; otherwise from a normal-inverse-gamma prior IG(a0, b0) on the noise
        variance, a0 = b0 = ``noise_prior``: v^2 = b_n / a_n = (b0 + (y2 - b^T theta) / 2) / (a0 + n / 2), the
        reciprocal of the posterior mean of the noise precision.
        """
        dim = data_precision.shape[-1]
        eye = torch.eye(dim, dtype=torch.float64)
        precision = data_precision + lambda_ * eye
        cholesky, info = torch.linalg.cholesky_ex(precision)
        failed = (info != 0).nonzero().flatten()
        if len(failed):
            cholesky[failed] = eye  # a placeholder, overwritten below (a failed factor may be singular)
        covariance = torch.cholesky_inverse(cholesky)
        theta = torch.cholesky_solve(data_response.unsqueeze(-1), cholesky).squeeze(-1)
        if len(failed):
            symmetric = 0.5 * (precision[failed] + precision[failed].transpose(-1, -2))
            eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
            inverse = eigenvectors * eigenvalues.clamp_min(lambda_).reciprocal().unsqueeze(-2)
            covariance[failed] = inverse @ eigenvectors.transpose(-1, -2)
            theta[failed] = (covariance[failed] @ data_response[failed].unsqueeze(-1)).squeeze(-1)
        if posterior_scale is not None:
            noise_scale = torch.full((len(counts),), float(posterior_scale), dtype=torch.float64)
        else:
            # y2 - b^T theta: the ridge fit's residual sum of squares plus lambda |theta|^2 (>= 0 up to rounding).
            residual = (response_square - (data_response * theta).sum(-1)).clamp_min(0.0)
            noise_scale = torch.sqrt((noise_prior + 0.5 * residual) / (noise_prior + 0.5 * counts))
        return cls(shape, theta, covariance, noise_scale, len(failed), width_dtype)

    @property
    def num_models(self) -> int:
        return self.theta.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.theta.shape[1]

    @property
    def factor(self) -> torch.Tensor:
        """L L^T = A^-1 per model, computed when Thompson sampling first needs it."""
        if self._factor is None:
            self._factor = covariance_factor(self.covariance)
        return self._factor

    def mean_scores(self, features: torch.Tensor) -> torch.Tensor:
        """theta.f: disjoint contexts [B, d] -> [B, K] (arm k by its model); shared rows [B, C, D] -> [B, C]."""
        if self.shape == "disjoint":
            return features @ self.theta.T
        return features @ self.theta[0]

    def variance(self, features: torch.Tensor) -> torch.Tensor:
        """f^T A^-1 f of every (row, candidate), shaped as ``mean_scores``."""
        if self.shape == "shared":
            if self.layout is not None and self.layout[2] and features.dim() == 3 and features.shape[1] > 1:
                return self.candidate_variance(features)
            return ((features @ self.covariance[0]) * features).sum(-1)
        if self._stacked is None:
            # Every arm's A_k^-1 side by side [d, K*d]: x^T A_k^-1 for every k is one matrix product.
            self._stacked = self.covariance.transpose(0, 1).reshape(self.feature_dim, -1).to(self.width_dtype)
        contexts = features.to(self.width_dtype)
        projected = (contexts @ self._stacked).view(len(contexts), self.num_models, self.feature_dim)
        # In place: a second [B, K, d] temporary costs 4x the time (fresh pages from the allocator).
        return projected.mul_(contexts.unsqueeze(1)).sum(-1).to(torch.float64)

    def candidate_variance(self, features: torch.Tensor) -> torch.Tensor:
        """The shared shape's f^T A^-1 f for rows [B, C, D] of ``candidate_features`` (``layout``), by structure.

        A row's features are f = [g, a, g (x) a] (or [g, a]): the Kronecker product of g~ = [1, g] and a~ = [1, a]
        without its constant coordinate. With A^-1 laid out on that product (M~, zero on the constant), f^T A^-1 f
        = a~^T N(g) a~ where N(g) = sum_ij g~_i g~_j M~[i, :, j, :] is built once per row ((g+1)^2 (p+1)^2
        flops, about D^2) and each candidate then costs (p+1)^2 flops, where the dense product costs D^2 per
        candidate.
        """
        global_dim, arm_dim, _ = self.layout
        rows, _, dim = features.shape
        if self._kron_covariance is None:
            positions = kron_positions(global_dim, arm_dim, dim)
            size = (global_dim + 1) * (arm_dim + 1)
            embedded = torch.zeros(size, size, dtype=torch.float64)
            embedded[positions.unsqueeze(1), positions.unsqueeze(0)] = self.covariance[0]
            # M^[(i, j), (a, c)] = M~[(i, a), (j, c)]: N(g) is then one product with the outer product g~ g~^T.
            self._kron_covariance = (embedded.view(global_dim + 1, arm_dim + 1, global_dim + 1, arm_dim + 1)
                                     .permute(0, 2, 1, 3).reshape((global_dim + 1) ** 2, (arm_dim + 1) ** 2))
        ones = torch.ones(rows, 1, dtype=torch.float64)
        users = torch.cat([ones, features[:, 0, :global_dim]], dim=1)  # g~ [B, g+1]: g repeats over candidates
        arms = torch.cat([ones.unsqueeze(1).expand(rows, features.shape[1], 1),
                          features[:, :, global_dim:global_dim + arm_dim]], dim=2)  # a~ [B, C, p+1]
        outer = (users.unsqueeze(2) * users.unsqueeze(1)).view(rows, -1)  # g~ g~^T [B, (g+1)^2]
        user_matrix = (outer @ self._kron_covariance).view(rows, arm_dim + 1, arm_dim + 1)  # N(g) [B, p+1, p+1]
        return ((arms @ user_matrix) * arms).sum(-1)

    def sampled_scores(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Thompson sampling: one theta~ ~ N(theta, v^2 A^-1) per decision (and model), scored on every candidate."""
        batch = features.shape[0]
        normal = torch.randn(batch, self.num_models, self.feature_dim, dtype=torch.float64, generator=generator)
        scale = self.noise_scale.view(1, -1, 1)
        sampled = self.theta.unsqueeze(0) + scale * torch.einsum("mij,bmj->bmi", self.factor, normal)
        if self.shape == "disjoint":
            return (sampled * features.unsqueeze(1)).sum(-1)  # [B, K]: arm k scored with its own theta~
        return torch.einsum("bkd,bd->bk", features, sampled[:, 0])

    def scores(self, features: torch.Tensor, exploration: str, alpha: float, generator: torch.Generator,
               num_candidates: int) -> torch.Tensor:
        """Score of every (row, candidate) under an exploration rule; the action is the argmax (or top-k)."""
        if exploration == "ucb":
            scores = self.mean_scores(features)
            return scores + alpha * self.variance(features).clamp_min(0.0).sqrt() if alpha > 0 else scores
        if exploration == "thompson":
            return self.sampled_scores(features, generator)
        if exploration == "random":
            return torch.rand(features.shape[0], num_candidates, dtype=torch.float64, generator=generator)
        return self.mean_scores(features)  # greedy, eps_greedy


# --------------------------------------------------------------------------------------------------
# Choices and their probabilities
# --------------------------------------------------------------------------------------------------


def choose(scores: torch.Tensor, exploration: str, epsilon: float, generator: torch.Generator,
           slate_size: int = 0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Actions [B] (or slates [B, slate_size], best first) from scores [B, C].

    The argmax is uniform among exactly tied candidates; epsilon-greedy then replaces a row's action with a
    uniformly random candidate with probability epsilon. ``valid`` [B, C] marks the real candidates of rows
    padded to one width (their other scores are -inf).
    """
    tie_break = torch.rand(scores.shape, dtype=torch.float64, generator=generator)
    if slate_size:
        # Scores are compared first; the random key only orders exact ties (cold start, equal widths).
        keys = scores + tie_break * 1e-9 * (1.0 + scores.abs())
        if valid is not None:  # padding (-inf) must stay last: -inf + inf would be NaN, which topk ranks first
            keys = keys.masked_fill(~valid, -torch.inf)
        actions = keys.topk(slate_size, dim=-1).indices
    else:
        best = scores.max(-1, keepdim=True).values
        actions = torch.where(scores == best, tie_break, -1.0).argmax(-1)
    if exploration == "eps_greedy" and epsilon > 0:
        explore = torch.rand(scores.shape[0], generator=generator) < epsilon
        if explore.any():
            random_keys = torch.rand(int(explore.sum()), scores.shape[1], generator=generator)
            if valid is not None:
                random_keys = torch.where(valid[explore], random_keys, -1.0)
            if slate_size:
                actions[explore] = random_keys.topk(slate_size, dim=-1).indices
            else:
                actions[explore] = random_keys.argmax(-1)
    return actions


def action_probabilities(scores: torch.Tensor, exploration: str, epsilon: float,
                         valid: torch.Tensor | None = None) -> torch.Tensor | None:
    """The probability [B, C] that ``choose`` picks each candidate (single action), or None for Thompson sampling.

    Exact for ucb and greedy (1/#ties on the argmax set), eps_greedy (epsilon/n + (1 - epsilon)/#ties) and random
    (1/n); n counts the ``valid`` candidates of each row.
    """
    if exploration == "thompson":
        return None
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    count = valid.sum(-1, keepdim=True).to(torch.float64)
    uniform = valid.to(torch.float64) / count
    if exploration == "random":
        return uniform
    ties = (scores == scores.max(-1, keepdim=True).values).to(torch.float64)
    greedy = ties / ties.sum(-1, keepdim=True)
    if exploration == "eps_greedy":
        return (1.0 - epsilon) * greedy + epsilon * uniform
    return greedy


def slot_probabilities(scores: torch.Tensor, slates: torch.Tensor, exploration: str, epsilon: float,
                       valid: torch.Tensor | None = None) -> torch.Tensor | None:
    """The probability [B, S] that ``choose(..., slate_size=S)`` shows in slot j the candidate ``slates[:, j]``.

    See the module docstring for the rule; n counts the ``valid`` candidates of each row. None for Thompson
    sampling (no closed form).
    """
    if exploration == "thompson":
        return None
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    count = valid.sum(-1, keepdim=True).to(torch.float64)
    uniform = (1.0 / count).expand(slates.shape)
    if exploration == "random":
        return uniform.clone()
    shown = scores.gather(1, slates)  # [B, S]
    real = scores.masked_fill(~valid, -torch.inf).unsqueeze(1)  # [B, 1, C]
    above = (real > shown.unsqueeze(-1)).sum(-1)  # candidates sorted before the shown one
    tied = (real == shown.unsqueeze(-1)).sum(-1)  # the shown one and its exact ties
    slot = torch.arange(slates.shape[1]).unsqueeze(0)
    greedy = torch.where((above <= slot) & (slot < above + tied), 1.0 / tied.to(torch.float64), 0.0)
    if exploration == "eps_greedy":
        return (1.0 - epsilon) * greedy + epsilon * uniform
    return greedy


def slate_feedback(num_slots: int, clicked_position: torch.Tensor | None = None,
                   slot_rewards: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(observed [N, S] bool, target [N, S] float64): which slots of N slates a reward teaches, and what.

    Cascading feedback (``clicked_position`` [N], -1 for no click) reveals the slots down to the click, all of
    them when nothing was clicked: those above it were examined and skipped (0), the clicked one is 1, those
    below are unknown. A score vector (``slot_rewards`` [N, S]) reveals every slot's reward.
    """
    if slot_rewards is not None:
        targets = torch.as_tensor(slot_rewards, dtype=torch.float64)
        return torch.ones_like(targets, dtype=torch.bool), targets
    position = torch.as_tensor(clicked_position, dtype=torch.int64)
    last_seen = torch.where(position >= 0, position, torch.full_like(position, num_slots - 1))
    slots = torch.arange(num_slots).unsqueeze(0)
    observed = slots <= last_seen.unsqueeze(1)
    return observed, (slots == position.unsqueeze(1)).to(torch.float64)
