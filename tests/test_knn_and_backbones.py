import pytest
import torch
import torch.nn.functional as F

from stopgrad.backbones import build_backbone
from stopgrad.evaluate.knn import embed, knn_classify
from stopgrad.heads import HEAD_PRESETS, mlp, predictor, projector


def brute_force_knn(bank, labels, queries, k, t, classes):
    preds = []
    for q in queries:
        sims = [(float(q @ b), int(y)) for b, y in zip(bank, labels)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * classes
        for s, y in sims[:k]:
            votes[y] += torch.exp(torch.tensor(s / t)).item()
        preds.append(max(range(classes), key=lambda c: votes[c]))
    return preds


@pytest.mark.parametrize("k", [1, 5, 200])
def test_weighted_knn_matches_a_brute_force_loop(k):
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    labels = torch.randint(0, 4, (60,), generator=g)
    queries = F.normalize(torch.randn(25, 8, generator=g), dim=1)
    ours = knn_classify(bank, labels, queries, k=k, temperature=0.1, num_classes=4, chunk=7)
    assert ours.tolist() == brute_force_knn(bank, labels, queries, min(k, 60), 0.1, 4)


def test_k1_is_the_nearest_neighbour():
    bank = torch.eye(3)
    labels = torch.tensor([2, 0, 1])
    queries = F.normalize(torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0]]), dim=1)
    assert knn_classify(bank, labels, queries, k=1).tolist() == [2, 1]


def test_embedding_leaves_the_backbone_untouched_and_in_its_mode():
    net = build_backbone("small-cnn", 1, 4)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    f = embed(net, x, [0.5], [0.5], batch_size=4)
    assert f.shape == (10, 128) and torch.allclose(f.norm(dim=1), torch.ones(10))
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics included


@pytest.mark.parametrize("name,channels,size,dim", [("small-cnn", 3, 16, 1024), ("resnet18-cifar", 1, 16, 512),
                                                    ("resnet50", 3, 32, 2048)])
def test_backbones_follow_input_channels(name, channels, size, dim):
    net = build_backbone(name, channels).eval()
    assert net.feature_dim == dim
    with torch.no_grad():
        assert net(torch.randn(2, channels, size, size)).shape == (2, dim)


def test_resnet18_cifar_state_loads_into_torchvision_resnet18():
    import torchvision
    ours = build_backbone("resnet18-cifar", 3)
    tv = torchvision.models.resnet18(weights=None)
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.maxpool, tv.fc = torch.nn.Identity(), torch.nn.Identity()
    tv.load_state_dict(ours.state_dict())


def test_heads_follow_the_recipes():
    cifar = HEAD_PRESETS["cifar"]
    proj = projector(512, cifar["projector"])
    pred = predictor(2048, cifar["predictor"])
    linears = [m for m in proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048)]
    assert isinstance(proj[-1], torch.nn.BatchNorm1d)
    assert [(m.in_features, m.out_features) for m in pred if isinstance(m, torch.nn.Linear)] == [(2048, 512), (512, 2048)]
    assert not isinstance(pred[-1], torch.nn.BatchNorm1d)
    imagenet = projector(2048, HEAD_PRESETS["imagenet"]["projector"])
    assert len([m for m in imagenet if isinstance(m, torch.nn.Linear)]) == 3
    with pytest.raises(ValueError):
        mlp([4])
