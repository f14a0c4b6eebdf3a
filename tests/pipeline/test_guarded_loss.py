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
    row. The loss along the way is the same with and without the margin; its end-point test accepts only
    `steady` with a margin of 2 standard errors."""
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
    assert not hasattr(plain, "accepts")
    for state in states.values():
        assert margin(state) == pytest.approx(plain(state))
    assert plain(states["noisy"]) < plain(states["pivot"]) and plain(states["steady"]) < plain(states["pivot"])
    assert not margin.accepts(states["noisy"])                     # not beyond 2 standard errors
    assert margin.accepts.last["gain"] == pytest.approx(0.005)
    assert margin.accepts(states["steady"])                        # beyond them
    with pytest.raises(ConfigError, match="per-row"):
        guarded_loss(lambda s: 0.0, guard, states["pivot"], noise_se=1.0)


def _rows_loss(gain_of, noise: float):
    """Four rows around a pivot's [2, 0, 2, 0]: a state lowers each by gain_of(state), and any state but the pivot
    moves alternate rows up and down by `noise` (a paired spread that does not shrink with the gain)."""
    def per_row(state):
        gain = gain_of(state)
        moved = noise if any(float(v.abs().sum()) > 0 for v in state.values()) else 0.0
        return [torch.tensor([2.0 - gain + moved, -gain - moved, 2.0 - gain + moved, -gain - moved],
                             dtype=torch.float64)]

    def objective(state):
        return float(per_row(state)[0].mean())
    objective.per_row = per_row
    return objective


def test_the_end_point_test_has_the_last_word_on_the_layer_search():
    """The search runs on the guarded loss as without the margin; its end point is then tested against the
    pivot. A gain of 0.15 over rows spread by 0.05 is accepted; one of 0.015 over rows spread by 0.5 is noise:
    the pivot comes back, and the record keeps what was refused."""
    pivot = {"a.weight": torch.zeros(1), "b.weight": torch.zeros(1)}
    delta = {"a.weight": torch.ones(1), "b.weight": torch.ones(1)}
    layers = {"a": ["a.weight"], "b": ["b.weight"]}
    guard = lambda s: 0.0   # noqa: E731  never binding here

    def search(scale: float, noise: float):
        objective = _rows_loss(lambda s: scale * (float(s["a.weight"]) + 0.5 * float(s["b.weight"])), noise)
        return LayerSearch(pivot, layers, delta, 1.0, 0.0, 1.0, guarded_loss(objective, guard, pivot, noise_se=2.0),
                           "test").descend()

    weights, record = search(0.1, 0.05)
    assert weights == {"a": 1.0, "b": 1.0} and "refused" not in record and not record["kept_pivot"]
    weights, record = search(0.01, 0.5)
    assert weights == {"a": 0.0, "b": 0.0} and record["kept_pivot"]
    assert record["refused"]["weights"] == {"a": 1.0, "b": 1.0}
    assert abs(record["refused"]["gain"] - 0.015) < 1e-9 and record["refused"]["se"] > 0.1
    assert record["merged_loss"] == record["pivot_loss"]


def test_the_calibration_losses_are_computed_once_per_distinct_state():
    """memoised_by_state keys on the state's contents (names, dtypes, shapes, bytes), not on the dict object:
    an equal state rebuilt elsewhere is a hit, a change of one value, dtype or name is a miss."""
    from pivotmerge.pipeline.merge import memoised_by_state, state_digest

    counted = _counted(lambda s: float(sum(v.double().sum() for v in s.values())))
    loss = memoised_by_state(counted)
    state = {"fc1.weight": torch.arange(6.0).reshape(2, 3), "fc1.bias": torch.zeros(2)}
    assert loss(state) == loss({k: v.clone() for k, v in state.items()}) == 15.0
    assert len(counted.calls) == 1
    changed = {**state, "fc1.bias": torch.tensor([0.0, 1e-7])}
    renamed = {"fc2.weight" if k == "fc1.weight" else k: v for k, v in state.items()}
    recast = {k: v.double() for k, v in state.items()}
    digests = {state_digest(s) for s in (state, changed, renamed, recast)}
    assert len(digests) == 4
    for other in (changed, renamed, recast):
        loss(other)
    assert len(counted.calls) == 4
    assert state_digest({"b": torch.ones(2, dtype=torch.bfloat16)}) != state_digest({"b": torch.ones(2)})
