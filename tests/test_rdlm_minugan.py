"""RDLM and MiNuGAN: their networks' shapes, the point-label training data, and each recipe end to end at smoke size."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import synthetic_fields  # noqa: E402
from mitoqp.training.fpn import GLBFPN  # noqa: E402
from mitoqp.training.minugan_net import build_discriminator, build_generator  # noqa: E402
from mitoqp.training.pointmap import CropSource, dihedral_pair, embedded_fields, point_targets  # noqa: E402


@pytest.mark.parametrize("glb", [True, False])
def test_glb_fpn_maps_at_stride_4_and_every_encoder_phase_reaches_the_output(glb):
    model = GLBFPN((8, 8, 16, 16, 24), k=8, m=8, glb=glb).eval()
    assert model(torch.zeros(2, 3, 96, 64)).shape == (2, 1, 24, 16)
    x = torch.rand(1, 3, 64, 64) * 255
    model.train()
    model.logit_maps(x).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []  # the vault, every gain layer and every phase take part
    assert hasattr(model, "vault") == glb


def test_rdlm_focal_loss_is_the_papers_eq7():
    from mitoqp.training.rdlm import rdlm_focal_loss

    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    p = torch.sigmoid(logits)
    eq7 = -0.5 * target * (1 - p) ** 0.5 * torch.log(p) - 0.5 * (1 - target) * p ** 0.5 * torch.log(1 - p)
    expected = (eq7 * weight).sum() / 1.0  # one counted positive
    assert torch.allclose(rdlm_focal_loss(logits, target, weight), expected, atol=1e-6)


def test_generator_gives_two_maps_at_stride_2_and_three_critics_judge_the_pair():
    g = build_generator({"ngf": 4, "global_blocks": 2, "local_blocks": 1}).eval()
    x = torch.rand(2, 3, 64, 96) * 255
    masks, maps = g.masks(x), g(x)
    assert masks.shape == (2, 2, 64, 96) and masks.abs().max() <= 1
    assert maps.shape == (2, 2, 32, 48) and 0 <= maps.min() and maps.max() <= 1
    d = build_discriminator({"ndf": 8})
    verdicts = d(torch.cat([x / 127.5 - 1, masks], 1))
    assert len(verdicts) == 3 and all(v[-1].shape[1] == 1 for v in verdicts)
    assert verdicts[0][-1].shape[-1] > verdicts[2][-1].shape[-1]


def test_logit_score_averages_before_the_sigmoid_and_keeps_the_weights():
    torch.manual_seed(0)
    tanh = build_generator({"ngf": 4, "global_blocks": 2, "local_blocks": 1}).eval()
    logit = build_generator({"ngf": 4, "global_blocks": 2, "local_blocks": 1, "score": "logit"}).eval()
    with torch.no_grad():
        tanh.g2_up[-1].weight.mul_(200)  # confident outputs: the tanh saturates, as a trained generator's does
    logit.load_state_dict(tanh.state_dict())  # the same weights: only the peak score differs
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        z = 2 * tanh.pre_tanh(x)
        assert torch.allclose((tanh.masks(x) + 1) / 2, torch.sigmoid(z), atol=1e-6)  # pixelwise the same
        expected = torch.sigmoid(torch.nn.functional.avg_pool2d(z, 17, 2, 8, count_include_pad=False))
        assert torch.allclose(logit(x), expected, atol=1e-6)
        assert not torch.allclose(logit(x), tanh(x), atol=1e-2)  # the box average differs
    with pytest.raises(ValueError, match="unknown MiNuGAN score"):
        build_generator({"score": "mean"})


def test_point_targets_mark_figures_and_leave_the_ring_uncounted():
    figs = [np.array([[10.0, 10.0]]), np.zeros((0, 2))]
    target, weight = point_targets(figs, 32, 4, positive_px=4, ignore_px=8)
    assert target.shape == (2, 8, 8)
    assert target[0, 2, 2] == 1 and target[0].sum() >= 1 and target[1].sum() == 0
    assert weight[0, 2, 3] in (0, 1) and weight[0, 7, 7] == 1 and weight[1].min() == 1
    ring = (target[0] == 0) & (weight[0] == 0)
    assert ring.any()  # positions between 4 and 8 px are not counted


def test_dihedral_pair_moves_images_and_maps_together():
    img = np.zeros((1, 8, 8, 3), np.uint8)
    img[0, 0, 4:8] = 255  # the top-right quarter's first row
    m = np.zeros((1, 2, 2), np.float32)
    m[0, 0, 1] = 1  # the top-right output pixel
    for seed in range(8):
        out, (mo,) = dihedral_pair(img, [m], np.random.default_rng(seed))
        ys, xs = np.nonzero(out[0, :, :, 0])
        assert mo[0, int(ys.mean() // 4), int(xs.mean() // 4)] == 1


def test_composed_crops_hold_their_figure_anywhere_not_in_the_middle(tmp_path):
    fields = synthetic_fields(tmp_path, 8, "train", 0)
    negatives = np.full((4, 112, 112, 3), 200, np.uint8)
    src = CropSource.build(fields)
    src.negatives = negatives
    crops, figures = src.draw(96, 200, 0.25, np.random.default_rng(0))
    assert crops.shape == (200, 96, 96, 3)
    assert sum(len(f) == 0 for f in figures) == 50  # the slide share holds no figure
    pos = np.concatenate([f for f in figures if len(f)])
    assert len(pos) == 150 and pos.min() >= 0 and pos.max() < 96
    assert pos[:, 0].std() > 15  # spread over the crop, not centred (a centred figure has std ~0)
    for c, f in zip(crops, figures):
        if len(f):
            x, y = np.rint(f[0]).astype(int)
            assert c[y, x].sum() < 3 * 200  # the figure's dark pixels are at its label


def test_embedded_fields_keep_labels_on_their_pixels(tmp_path):
    fields = synthetic_fields(tmp_path, 3, "validation", 1)
    src = CropSource.build(fields)
    out = embedded_fields(fields, src, 192, np.random.default_rng(0))
    for f, e in zip(fields, out):
        assert e.image().shape == (192, 192, 3)
        x, y = np.rint(e.figures[0]).astype(int)
        fx, fy = np.rint(f.figures[0]).astype(int)
        assert (e.image()[y, x] == f.image()[fy, fx]).all()


def test_pseudo_masks_put_the_figure_in_the_mitosis_class_and_other_nuclei_in_the_nuclei_class(tmp_path):
    from mitoqp.training.minugan import label_masks

    fields = synthetic_fields(tmp_path, 2, "train", 0)
    crops = np.stack([f.image() for f in fields])
    masks = label_masks(crops, [f.figures for f in fields])
    assert masks.shape == (2, 2, 128, 128)
    assert masks[:, 0, 64, 64].all()  # the figure
    assert (masks[:, 0] * masks[:, 1]).sum() == 0  # exclusive classes
    assert masks[:, 1].sum() > 0  # the pale nuclei
    assert masks[:, 0].sum() < 2 * np.pi * (6 / 0.25) ** 2  # cut to a 6-um disc per figure


@pytest.mark.parametrize("decay, kept", [(0.0, 4.0), (0.5, 3.125)])
def test_fit_dense_judges_and_keeps_the_moving_average_of_the_weights(tmp_path, monkeypatch, decay, kept):
    from mitoqp.training import pointmap

    model = torch.nn.Linear(1, 1, bias=False)
    judged = []

    def fake_localisation(m, *args):
        judged.append(float(m.weight))
        return {"mean_recall": float(m.weight), "hpf_f1": 0.0, "recall": 0.0, "fp_per_mm2": 0.0, "threshold": 0.5}

    class Source:
        def draw(self, size, batch, share, rng, glass_share=0.0):
            return None, None

    def step(crops, figures, rng, gen):  # the weights after step k are k: the average is 1, 1.5, 2.25, 3.125
        with torch.no_grad():
            model.weight.add_(1.0)
        return 0.0

    monkeypatch.setattr(pointmap, "localisation", fake_localisation)
    with torch.no_grad():
        model.weight.fill_(0.0)
    t_cfg = {"epochs": 1, "epoch_samples": 4, "batch": 1, "ema_decay": decay}
    best, state = pointmap.fit_dense(model, step, Source(), [], t_cfg, 8, "t", tmp_path, lambda *_: None, 7.5, 8.0,
                                     [torch.optim.Adam(model.parameters())])
    assert judged == [kept] and float(state["weight"]) == kept and float(model.weight) == kept


@pytest.mark.parametrize("method", ["rdlm", "minugan"])
def test_recipe_trains_exports_and_runs_as_a_dense_model(tmp_path, method):
    from PIL import Image

    from mitoqp.cli import main
    from mitoqp.export.onnx_export import export_model
    from mitoqp.patches import extract_patches
    from mitoqp.runtime.model import load_model
    from mitoqp.training.train import DENSE_TRAINERS

    tr, va = synthetic_fields(tmp_path, 12, "train", 0), synthetic_fields(tmp_path, 4, "validation", 1)
    model = ({"crop": 64, "widths": [8, 8, 16, 16, 16], "k": 8, "m": 8} if method == "rdlm"
             else {"crop": 64, "ngf": 4, "global_blocks": 2, "local_blocks": 1, "ndf": 8})
    cfg = {"method": method, "model": model, "dense": {"tile": 512, "context_probe": 256},
           "train": {"epochs": 1, "epoch_samples": 16, "batch": 8, "threads": 1, "lr": 0.01}}
    best = DENSE_TRAINERS[method]()(cfg, tr, va, tmp_path / "run", lambda m: None)
    assert 0 <= best["mean_recall"] <= 1
    patches = np.concatenate([extract_patches(f.image(), f.figures, 512) for f in va[:2]])
    config = export_model(tmp_path / "run" / "best.pt", tmp_path / "model", patches, {"id": f"{method}-smoke"})
    assert config["kind"] == "dense" and config["method"] == method and config["parity"]["decisions_differ"] == 0
    assert config["outputs"] == (["mitosis"] if method == "rdlm" else ["mitosis", "nuclei"])
    assert 0 < config["dense"]["context_px"] < 256
    Image.fromarray(np.hstack([va[0].image(), va[1].image()])).save(tmp_path / "field.png")
    assert main(["run", "-q", str(tmp_path / "field.png"), "-o", str(tmp_path / "out"), "--model",
                 str(tmp_path / "model"), "--mpp", "0.25"]) == 0
    rec = json.loads((tmp_path / "out" / "field.result.json").read_text())
    assert rec["status"] == "ok"
    ort, pt = load_model(tmp_path / "model"), load_model(tmp_path / "model", backend="torch")
    x = patches[:1]
    assert np.abs(ort.backend.predict(x) - pt.backend.predict(x)).max() < 1e-4


def test_centre_cue_check_catches_a_model_that_scores_the_middle_of_the_tissue(tmp_path):
    from mitoqp.training.pointmap import centre_cue_check

    class MiddleOfTissue(torch.nn.Module):
        """Scores how much tissue lies around a place (a wide Gaussian): its maximum is the tissue's middle."""
        stride = 4

        def forward(self, x):
            tissue = torch.nn.functional.avg_pool2d((x.mean(1, keepdim=True) < 235).float(), 4)
            g = torch.exp(-torch.arange(-20, 21, dtype=torch.float32) ** 2 / (2 * 10.0 ** 2))
            kernel = (g[:, None] * g[None, :])[None, None]
            return torch.nn.functional.conv2d(tissue, kernel / kernel.sum(), padding=20)

    class DarkestNucleus(torch.nn.Module):
        """Scores hematoxylin darkness in a small window: looks at the figure itself."""
        stride = 4

        def forward(self, x):
            dark = torch.nn.functional.avg_pool2d((255 - x.mean(1, keepdim=True)) / 255, 4)
            return torch.nn.functional.avg_pool2d(dark, 3, 1, 1) ** 2

    fields = synthetic_fields(tmp_path, 12, "validation", 1)
    src = CropSource.build(fields)
    src.negatives = np.full((2, 112, 112, 3), (200, 150, 200), np.uint8)  # pale tissue, no nuclei
    cue = centre_cue_check(MiddleOfTissue(), fields, src, 7.5, 0.5)
    assert cue["figures"] == 12
    assert cue["plain"]["top_of_map"] == 1.0 and cue["pasted"]["top_of_map"] <= 0.5
    honest = centre_cue_check(DarkestNucleus(), fields, src, 7.5, 0.5)
    assert honest["plain"]["top_of_map"] == honest["pasted"]["top_of_map"] == 1.0


def test_a_share_of_composed_crops_lies_on_glass(tmp_path):
    from mitoqp.patches import PAD_VALUE

    src = CropSource.build(synthetic_fields(tmp_path, 4, "train", 0))
    src.negatives = np.full((2, 112, 112, 3), 200, np.uint8)
    crops, figures = src.draw(96, 400, 0.0, np.random.default_rng(0), glass_share=0.3)
    corners = crops[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # the four corners: background unless a rectangle covers them
    on_glass = (corners == PAD_VALUE).all(axis=2).any(axis=1)
    assert 0.2 < on_glass.mean() < 0.4 and all(len(f) for f in figures)


def test_tissue_on_glass_does_not_say_a_figure_is_there(tmp_path):
    """Slide crops lie on glass as often as field crops: were only fields put on glass, glass would mean a figure."""
    from mitoqp.patches import PAD_VALUE

    src = CropSource.build(synthetic_fields(tmp_path, 4, "train", 0))
    src.negatives = np.full((2, 112, 112, 3), 200, np.uint8)
    crops, figures = src.draw(96, 800, 0.5, np.random.default_rng(1), glass_share=0.3)
    on_glass = (crops[:, [0, 0, -1, -1], [0, -1, 0, -1]] == PAD_VALUE).all(axis=2).any(axis=1)
    has_figure = np.array([len(f) > 0 for f in figures])
    assert has_figure[:400].all() and not has_figure[400:].any()
    assert 0.2 < on_glass[:400].mean() < 0.4 and 0.2 < on_glass[400:].mean() < 0.4
    slide_glass = crops[400:][on_glass[400:]]
    assert ((slide_glass == 200).all(axis=3).sum(axis=(1, 2)) >= 40 * 40).all()  # a tissue rectangle on each
    plain, _ = src.draw(96, 400, 0.5, np.random.default_rng(1), glass_share=0.0)
    assert not (plain == PAD_VALUE).all(axis=3).any()  # no glass unless asked
