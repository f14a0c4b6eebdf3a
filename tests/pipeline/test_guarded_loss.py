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
