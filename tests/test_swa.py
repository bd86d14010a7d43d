"""steel_seg.train.swa: the equal average of the last N epochs' weights, BatchNorm statistics recomputed."""

from __future__ import annotations

import torch
from torch import nn

from steel_seg.train.swa import WeightAverage


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def test_the_average_is_the_mean_of_the_window_epochs_weights():
    net = small_net()
    average = WeightAverage(net, epochs=2, total=4)
    seen = []
    for epoch in range(1, 5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(float(epoch))
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        assert average.update(net, epoch) == (epoch >= 3)
    assert average.count == 2
    for name, value in average.module.named_parameters():
        torch.testing.assert_close(value, (seen[2][name] + seen[3][name]) / 2)


def test_finish_recomputes_batchnorm_statistics_on_the_given_batches():
    net = small_net()
    average = WeightAverage(net, epochs=1, total=1)
    average.update(net, 1)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 1, 8, 8, generator=g) * 3 + 2 for _ in range(3)]
    model = average.finish(iter(batches))
    assert not model.training
    conv, bn = model[0], model[1]
    with torch.no_grad():
        features = conv(torch.cat(batches))
    torch.testing.assert_close(bn.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3


def test_the_average_survives_a_checkpoint():
    net = small_net()
    average = WeightAverage(net, epochs=2, total=2)
    average.update(net, 1)
    again = WeightAverage(small_net(), epochs=2, total=2)
    again.load_state_dict(average.state_dict())
    assert again.count == 1
    for a, b in zip(again.module.parameters(), average.module.parameters(), strict=True):
        assert torch.equal(a, b)
