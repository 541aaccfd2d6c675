"""The heads' one training loop and best-weights keeper: step counts, the lr schedule it is handed, early stops,
copies that later epochs cannot change."""

import torch
import torch.nn as nn

from medscale.eval.heads import BestWeights, fit


def test_fit_takes_one_step_a_batch_at_the_lr_it_is_given_and_stops_when_told():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    seen, lrs, epochs = [], [], []

    def loss(rows, step):
        seen.append(rows.tolist())
        lrs.append(optimizer.param_groups[0]["lr"])
        return nn.functional.mse_loss(model(x[rows]), y[rows])

    steps = fit(model, optimizer, 10, 4, 5, torch.Generator().manual_seed(0), loss, lr_at=lambda s: 0.1 * s,
                before_epoch=epochs.append, after_epoch=lambda e: e == 2, min_rows=3)
    assert epochs == [0, 1, 2] and steps == 3 * 2  # batches of 4, 4 and 2 rows: the last one is skipped
    assert lrs == [0.1 * s for s in range(6)]
    for epoch in range(3):  # each epoch a permutation: every row once, but for the 2 rows of the skipped batch
        rows = seen[2 * epoch] + seen[2 * epoch + 1]
        assert len(rows) == len(set(rows)) == 8


def test_the_best_weights_are_a_copy_and_patience_counts_epochs_without_one():
    model = nn.Linear(2, 1)
    best = BestWeights(patience=2)
    assert not best.update(model, 0.5, extra="t=0.5")
    kept = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # a later epoch changes the live weights in place
    assert not best.update(model, 0.4) and best.update(model, 0.5)  # equal is not better: 2 epochs without
    best.restore(model)
    assert torch.equal(model.weight, kept) and (best.score, best.extra) == (0.5, "t=0.5")
