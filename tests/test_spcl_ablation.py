"""`stopgrad reproduce spcl-ablation`: the smoke budget trains every configuration of SPCL's Table 2."""
import json

import yaml

from stopgrad.reproduce import spcl_ablation


def test_spcl_ablation_smoke_trains_every_configuration(run_cli, tmp_path):
    out_dir = tmp_path / "spcl"
    code, out, err = run_cli("reproduce", "spcl-ablation", "--budget", "smoke", "--seeds", "1", "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "results.json").read_text())
    configs = record["configurations"]
    assert [c["label"] for c in configs] == [c[0] for c in spcl_ablation.CONFIGURATIONS] and len(configs) == 9
    for c in configs:
        run = c["runs"][0]
        assert 0 < run["knn_top1"] <= 1 and -1 <= run["tp_similarity"] <= 1 and -1 <= run["fn_similarity"] <= 1
        if c["method"] == "simclr":
            assert run["cluster_seconds"] is None and c["weights"] is None
        elif c["targets"] == "labels":  # the ground-truth row: no clustering
            assert run["cluster_seconds"] == 0.0
        else:
            assert run["cluster_seconds"] >= 0 and 0 <= run["cluster_nmi"] <= 1
    cfg = yaml.safe_load((out_dir / "runs" / "spcl-1-0.1-1-seed0" / "config.yaml").read_text())["config"]
    assert cfg["method"] == "spcl" and cfg["spcl_weights"] == [1.0, 0.1, 1.0]
    gt = yaml.safe_load((out_dir / "runs" / "spcl-1-1-gt-seed0" / "config.yaml").read_text())["config"]
    assert gt["spcl_targets"] == "labels"
    md = (out_dir / "results.md").read_text()
    assert "| configuration | λ_c (contrastive) | λ_m (metric) | λ_p (prototype) | kNN top-1, k = 20 (%) |" in md
    assert "| SPCL (1, 1, GT) | 1 | 1 | GT |" in md and "| SimCLR | ✓ | ✗ | ✗ |" in md
    assert (out_dir / "spcl_ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
