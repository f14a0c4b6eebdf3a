"""`calibration.loss_kind=kway_guarded`: the layer search's loss is the k-way loss where the caption NLL is no
worse than the pivot's, and worse than the pivot's everywhere else - so the search keeps both below its pivot."""
import torch

from pivotmerge.pipeline.merge import guarded_loss
from pivotmerge.pivotmerge_method.alm import LayerSearch


def _counted(fn):
    calls = []

    def wrapped(state):
        calls.append(1)
        return fn(state)
    wrapped.calls = calls
    return wrapped


def test_a_state_worse_on_the_guard_loses_to_the_reference_whatever_its_objective():
    reference = {"w": torch.tensor(0.0)}
    objective = _counted(lambda s: 1.0 - float(s["w"]))        # prefers large w
    guard = lambda s: float(s["w"]) ** 2 - 0.25 if float(s["w"]) > 0.5 else 0.0   # noqa: E731  worse past 0.5
    loss = guarded_loss(objective, guard, reference)
    assert loss(reference) == 1.0
    assert abs(loss({"w": torch.tensor(0.4)}) - 0.6) < 1e-6      # guard no worse: the objective itself
    far = loss({"w": torch.tensor(0.9)})                         # objective 0.1, guard 0.56 above the reference's
    assert far > loss(reference) and abs(far - (1.0 + 0.9 ** 2 - 0.25)) < 1e-6
    assert len(objective.calls) == 4 + 1                         # 4 losses + the reference's limit, once


def test_the_layer_search_on_a_guarded_loss_stays_no_worse_than_the_pivot_on_both():
    """Two layers; the objective wants both at full weight, the guard forbids layer b above a quarter. The
    unguarded search takes full weight everywhere; the guarded one keeps layer a at full weight and b low."""
    pivot = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(2, 2)}
    delta = {"a.weight": torch.ones(2, 2), "b.weight": torch.ones(2, 2)}
    layers = {"a": ["a.weight"], "b": ["b.weight"]}

    def objective(state):
        return float(((state["a.weight"] - 1) ** 2).sum() + ((state["b.weight"] - 1) ** 2).sum())

    def guard(state):
        return float(torch.relu(state["b.weight"].mean() - 0.25))

    free, _ = LayerSearch(pivot, layers, delta, 1.0, 0.0, 1.0, objective, "test").descend()
    assert free == {"a": 1.0, "b": 1.0}
    weights, record = LayerSearch(pivot, layers, delta, 1.0, 0.0, 1.0, guarded_loss(objective, guard, pivot),
                                  "test").descend()
    assert weights["a"] == 1.0 and 0.0 < weights["b"] <= 0.25
    assert record["merged_loss"] < record["pivot_loss"]


def _per_row_objective(rows_of):
    """A k-way-like loss from per-row values: the mean over sources of each source's mean, with .per_row."""
    def per_row(state):
        return [torch.tensor(r, dtype=torch.float64) for r in rows_of[state["name"]]]

    def objective(state):
        rows = per_row(state)
        return float(sum(r.mean() for r in rows) / len(rows))
    objective.per_row = per_row
    return objective


def test_a_gain_within_the_rows_noise_is_not_taken_for_one():
    """guard_se: `noisy` is better on average by 0.005 but half its rows are worse; `steady` is better on every
    row. With a margin of 2 standard errors only `steady` beats the reference; with 0, both do."""
    import pytest

    from pivotmerge.errors import ConfigError
    from pivotmerge.pipeline.merge import gain_over_noise

    rows_of = {"pivot": [[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]],
               "noisy": [[0.7, 1.3, 0.7, 1.26], [0.5, 0.5, 0.5, 0.5]],
               "steady": [[0.9, 0.9, 0.9, 0.9], [0.45, 0.45, 0.45, 0.45]]}
    objective = _per_row_objective(rows_of)
    guard = lambda s: 0.0   # noqa: E731  never binding here
    states = {name: {"name": name} for name in rows_of}
    gain, se = gain_over_noise(objective.per_row(states["pivot"]), objective.per_row(states["noisy"]))
    assert gain == pytest.approx(0.005) and se > gain / 2   # 0.01 on the first source, averaged with 0
    plain = guarded_loss(objective, guard, states["pivot"])
    margin = guarded_loss(objective, guard, states["pivot"], noise_se=2.0)
    assert plain(states["noisy"]) < plain(states["pivot"]) and plain(states["steady"]) < plain(states["pivot"])
    assert margin(states["pivot"]) == pytest.approx(plain(states["pivot"]))
    assert margin(states["noisy"]) > margin(states["pivot"])           # not beyond 2 standard errors
    assert margin(states["steady"]) == pytest.approx(objective(states["steady"]))   # beyond them: its own loss
    with pytest.raises(ConfigError, match="per-row"):
        guarded_loss(lambda s: 0.0, guard, states["pivot"], noise_se=1.0)
