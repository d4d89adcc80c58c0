"""Tree search with soft-value backups over scales, after Diffusion Tree Sampling (Jain et al., arXiv 2506.20701).

DTS keeps a tree over the denoising chain: each node stores a soft value v(x_t) = (1/lam) log E[exp(lam r(x_0))],
estimated from every rollout that passed through it by the soft Bellman backup

    v(node) = (1/lam) log mean_{c in children(node)} exp(lam v(c))        v(leaf) = its reward

and it selects the next rollout by descending from the root, picking a child with probability
proportional to exp(lam v(c)) (DTS, which targets p(x) exp(lam r(x))) or the best child (DTS*, greedy search).

Here the chain is the scales and a rollout is a row. The engine only runs rows forward, so the tree is
the rows' shared prefixes: after each `tree_scales` decision every live row becomes a node, child of its
ancestor's node at the previous decision. Rows branched by a decision are siblings: they continue the same prefix
with their own random streams, so each is one prior sample of that node's continuation. A node's estimate from its
own rollout is its preview reward at its scale, which the engine has already decoded. Rows pruned earlier stay
in the tree as leaves with the reward they had, so a prefix whose samples mostly went bad keeps a low value: DTS's
"every rollout counts". Each decision then:

  1. adds the live rows as leaves, with value r_i - mean_j r_j (rewards of this scale, in the declared score units
     the engine hands every strategy). Centring removes the offset between one scale's previews and another's
     (coarse previews are blurrier and score differently), which would otherwise bias the backup of any node
     whose pruned children were scored at coarser scales than its live ones. Within one scale it changes nothing;
  2. backs the values up to the root by the soft backup above (lam = 0: the plain mean, its limit);
  3. descends from the root with the next batch of m rows: each node's rows go to its children that have live
     rows below them, m_c ~ Multinomial(m_node, softmax(lam v(c))) (DTS), or all to the best child (`greedy`,
     DTS*). The rows that reach a leaf are its children at the next scale.

Without pruned leaves the descent telescopes: P(row i) = exp(lam r_i) / exp(lam v(root)) * prod over its
ancestors of 1 / (their number of children), so a prefix that earlier decisions duplicated k times weighs
as one prior sample, not k: duplicates do not compound the way they do under plain resampling (`importance`).

What does not carry over: DTS adds rollouts one at a time, each revising the values for the next, and can
return to any node; here all m rows of a decision descend on the same values, and a pruned prefix can
never be reopened (its KV caches are gone). So this is the selection and backup of DTS applied once per
scale, not the anytime algorithm. The highest final reward wins, as for every reward-guided strategy here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.base import (
    RNG_RESAMPLE,
    Decision,
    GroupState,
    Observation,
    PlannedStrategy,
    SearchPlan,
    argmax_reward,
    children_counts,
    group_rng,
    jsonable,
)
from search.potentials import check_potential, effective_sample_size, normalize_log_weights
from search.registry import register_strategy
from search.schedule import check_scales, default_decisions, option_list

ROOT = -1  # parent id of the nodes of the first decision


def log_mean_exp(values: np.ndarray, lam: float) -> float:
    """(1/lam) log mean exp(lam v): the soft backup of one node's children (float64, -inf allowed, no NaN).

    -inf children (NaN rewards, failed subtrees) count in the mean with weight 0; any +inf child makes it +inf.
    lam = 0 gives the plain mean, the limit as lam -> 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("log_mean_exp: a node with children needs at least one child value")
    if np.isposinf(v).any():
        return math.inf
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return -math.inf
    if lam == 0:
        return float(v.mean())  # -inf if any child is -inf: the mean of a sample holding a failure
    top = float(finite.max())
    return top + math.log(float(np.exp(lam * (finite - top)).sum()) / v.size) / lam


def soft_values(parent: np.ndarray, own: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Every node's backed-up value and the root's, for a tree given as parent ids (ROOT for the top level).

    Nodes must be numbered parents first (parent[i] < i), as the strategy appends them level by level. A node
    without children keeps `own[i]`; a node with children gets `log_mean_exp` of their values (its own reward is
    then superseded: its children are finer looks at the same prefix). float64 [nodes], float."""
    parent = np.asarray(parent, dtype=np.int64)
    values = np.asarray(own, dtype=np.float64).copy()
    if parent.shape != values.shape or parent.ndim != 1:
        raise ValueError(f"soft_values: parent {parent.shape} and own {values.shape} must be equal 1-D shapes")
    if np.isnan(values).any():
        raise ValueError("soft_values: own values contain NaN; map NaN rewards to -inf first")
    if (parent >= np.arange(len(parent))).any() or (parent < ROOT).any():
        raise ValueError("soft_values: nodes must be numbered parents first (ROOT <= parent[i] < i)")
    children = _children(parent)
    for i in range(len(parent) - 1, -1, -1):  # children are numbered after their parents
        if children[i]:
            values[i] = log_mean_exp(values[children[i]], lam)
    top = children[len(parent)]
    return values, (log_mean_exp(values[top], lam) if top else -math.inf)


def allocate(parent: np.ndarray, values: np.ndarray, leaves: np.ndarray, m: int, lam: float,
             rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Send m rows down the tree from the root to the live `leaves` (node ids); returns (rows per leaf, int64,
    and the probability that one Boltzmann descent ends at each leaf, float64), both aligned with `leaves`.

    At every node the rows split among the children with a live leaf below them: multinomially by
    softmax(lam v(c)) with `rng` (DTS), or all to the highest-valued child (`rng=None`: DTS*; ties to the lower
    node id). The softmax follows `search.potentials.normalize_log_weights` (all -inf: uniform; +inf takes all)."""
    parent = np.asarray(parent, dtype=np.int64)
    leaves = np.asarray(leaves, dtype=np.int64)
    num = len(parent)
    live = np.zeros(num, dtype=bool)
    live[leaves] = True
    for i in range(num - 1, -1, -1):
        if live[i] and parent[i] != ROOT:
            live[parent[i]] = True
    children = _children(parent, live)
    rows = np.zeros(num + 1, dtype=np.int64)  # index num is the root
    prob = np.zeros(num + 1)
    rows[num], prob[num] = m, 1.0
    for node in [num, *range(num)]:  # the root, then parents before children
        kids = children[node]
        if not kids:
            continue
        logw = np.zeros(len(kids)) if lam == 0 else lam * values[kids]
        share = normalize_log_weights(logw)
        prob[kids] = prob[node] * share
        if rows[node] == 0:
            continue
        if rng is None:
            rows[kids[int(np.argmax(share))]] = rows[node]
        else:
            rows[kids] = rng.multinomial(rows[node], share / share.sum())
    return rows[leaves], prob[leaves]


def _children(parent: np.ndarray, keep: np.ndarray | None = None) -> list[list[int]]:
    """children[i] for every node i, and children[len(parent)] for the root; only nodes in `keep` if given."""
    out: list[list[int]] = [[] for _ in range(len(parent) + 1)]
    for i, p in enumerate(parent.tolist()):
        if keep is None or keep[i]:
            out[p if p != ROOT else len(parent)].append(i)
    return out


def default_tree_scales(num_scales: int) -> tuple[int, ...]:
    """Every scale from TTS-VAR's first resampling scale (search.schedule: where the paper trusts preview rewards;
    3 on the testbed, 6 on Infinity 1M) to S-2. Earlier previews rank paths at chance (docs/benchmarks.md,
    bench_scales), so branching on them only duplicates rows by noise. Models too short for the TTS-VAR defaults:
    1..S-2 (scale 0 is a single token), or scale 0 when S = 2."""
    try:
        first = default_decisions(num_scales)[1][0]
    except ValueError:
        first = 1 if num_scales >= 3 else 0
    return tuple(range(first, num_scales - 1))


@dataclass
class DTSState(GroupState):
    node_parent: np.ndarray | None = None  # int64 [nodes] parent node id, ROOT for the first decision's nodes
    node_own: np.ndarray | None = None  # float64 [nodes] centred reward of the node's row at its scale (-inf: NaN)
    row_node: np.ndarray | None = None  # int64 [rows] each live row's node at the last decision (ROOT before)


@register_strategy("dts")
class DTS(PlannedStrategy):
    """Options: `tree_scales` (None: `default_tree_scales`, 3 and 4 on the testbed), `lam` (finite, >= 0; the
    temperature of both the backup and the descent, on rewards in declared score units; 3, chosen on training
    prompts, see docs/search.md), `greedy` (False: DTS,
    sample the descent; True: DTS*, follow the best child).

    n rows at every scale (`search.n`). Called by the engine (`search.base.Strategy`): `decide` after each tree
    scale with the rows' preview rewards, `pick` after the last scale with the final rewards.
    """

    def __init__(self, tree_scales: Sequence[int] | None = None, lam: float = 3.0, greedy: bool = False) -> None:
        self.tree_scales = option_list(tree_scales, "tree_scales")
        _, self.lam = check_potential("value", lam)
        if not isinstance(greedy, bool):
            raise ValueError(f"greedy: {greedy!r} must be true (DTS*, greedy descent) or false (DTS, sampled)")
        self.greedy = greedy

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        default = default_tree_scales(num_scales)
        scales = check_scales(default if self.tree_scales is None else self.tree_scales, num_scales, "tree_scales")
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(scales), scales)

    def init_group(self, prompt_index: int, seed: int) -> DTSState:
        base = super().init_group(prompt_index, seed)
        rows = base.plan.batch_sizes[0]
        return DTSState(base.prompt_index, base.seed, base.plan, base.past_rewards, np.zeros(0, np.int64),
                        np.zeros(0), np.full(rows, ROOT, np.int64))

    def decide(self, state: DTSState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        n, m = obs.num_rows, state.plan.batch_sizes[obs.scale + 1]
        rewards = np.asarray(obs.rewards, dtype=np.float64)
        finite = rewards[np.isfinite(rewards)]
        own = rewards - (finite.mean() if finite.size else 0.0)
        own = np.where(np.isnan(own), -np.inf, own)  # a NaN reward is a failed rollout: weight 0
        first = len(state.node_parent)
        leaves = np.arange(first, first + n, dtype=np.int64)
        node_parent = np.concatenate([state.node_parent, state.row_node])
        node_own = np.concatenate([state.node_own, own])
        values, root_value = soft_values(node_parent, node_own, self.lam)
        rng = None if self.greedy else group_rng(state.seed, obs.scale, RNG_RESAMPLE)
        counts, prob = allocate(node_parent, values, leaves, m, self.lam, rng)
        parents = np.repeat(np.arange(n, dtype=np.int64), counts)
        branch = [values[p] if p != ROOT else root_value for p in state.row_node.tolist()]
        state.node_parent, state.node_own = node_parent, node_own
        state.row_node = leaves[parents]
        state.past_rewards = np.concatenate([state.past_rewards, rewards[:, None]], axis=1)[parents]
        trace = {
            "row_id": jsonable(obs.row_ids),
            "reward": jsonable(rewards),
            "value": jsonable(own),  # the leaf value the tree used: the reward centred on this scale's mean
            "branch_value": jsonable(np.asarray(branch)),  # backed-up value of the row's prefix (last decision)
            "weight": jsonable(prob),  # probability that one descent from the root ends at this row
            "children": children_counts(parents, n),
        }
        info = {"kind": "dts", "lam": self.lam, "greedy": self.greedy, "ess": effective_sample_size(prob),
                "resampled": True, "nodes": len(node_parent), "root_value": jsonable(np.array([root_value]))[0]}
        return Decision(parents, trace, info)

    def pick(self, state: DTSState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))
