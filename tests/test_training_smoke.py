"""Fast checks for the darkroom-mini training package (world, evaluator, smoke training)."""
from __future__ import annotations

import math
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training import world  # noqa: E402
from training import evaluate as ev  # noqa: E402


def test_world_covers_vocabulary_and_aspects():
    rng = random.Random(0)
    seen_shapes, seen_colours, seen_aspects, seen_sizes = set(), set(), set(), set()
    for _ in range(300):
        cap, spec, scene = world.sample_t2i(rng)
        assert cap and isinstance(cap, str)
        assert 1 <= len(scene.objects) <= 4
        img = world.render(scene)
        assert img.size == world.ASPECTS[scene.aspect]
        seen_aspects.add(scene.aspect)
        for o in scene.objects:
            seen_shapes.add(o.shape)
            seen_colours.add(o.colour)
            seen_sizes.add(o.size)
    assert len(seen_shapes) >= 6 and len(seen_colours) >= 8 and len(seen_sizes) == 2
    assert seen_aspects == set(world.ASPECTS)
    for kind in world.EDIT_KINDS:
        instr, src, tgt, spec = world.sample_edit(rng, kind)
        s, t = world.render_pair(src, tgt)
        assert s.size == t.size and instr
        assert np.abs(np.asarray(s, np.int16) - np.asarray(t, np.int16)).max() > 0


def test_heldout_split_is_disjoint_from_training():
    rng = random.Random(1)
    for _ in range(200):
        _, spec, _ = world.sample_t2i(rng, "train")
        assert not world.is_heldout(spec)
    sets = world.eval_sets(n_per_cat=3, n_edits_per_kind=1)
    assert all(world.is_heldout(spec) for _, spec, _ in sets["heldout"])


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(phrase.lower()) + r"(?![\w-])", text.lower()) is not None


def test_paraphrase_wordings_not_in_training_vocab():
    tables = world.WORD_TABLES.values()
    train_words = {w for tbl in tables for v in tbl.values() for w in v["train"]}
    train_words |= {w for tbl in world.EXTRA_WORDS.values() for ws in tbl.values() for w in ws}
    para_words = {w for tbl in tables for v in tbl.values() for w in v["para"]}
    assert not (train_words & para_words)
    # every key of every table has its extra words (a missing one would be a KeyError mid-training)
    assert {k: set(v) for k, v in world.EXTRA_WORDS.items()} == {
        world._EXTRA_OF[id(t)]: set(t) for t in tables}


def test_rich_training_captions_never_use_paraphrase_wordings(monkeypatch):
    """The 'rich' training captions (training captions since run 7) add synonyms and frames; none of
    the paraphrase set's words or frames may leak in, or the paraphrase score would stop measuring
    unseen wordings. They do use the extra words, and the evaluation sets keep the core ones."""
    monkeypatch.setattr(world, "RICH_P", 0.5)  # render_chunk sets it per chunk; pin it here
    rng = random.Random(3)
    caps = [world.sample_t2i(rng, "train", mode="rich", layout="canonical")[0] for _ in range(1500)]
    caps += [world.sample_edit(rng, mode="rich")[0] for _ in range(500)]
    leaks = [(m, c) for c in caps for m in world.PARA_MARKERS if _has_phrase(c, m)]
    assert not leaks, leaks[:5]
    # the paraphrase set does use its markers (so the check above can fail)
    para = world.eval_sets(n_per_cat=4, n_edits_per_kind=1)["paraphrase"]
    assert sum(any(_has_phrase(c, m) for m in world.PARA_MARKERS) for c, _, _ in para) == len(para)
    extra = {w for tbl in world.EXTRA_WORDS.values() for ws in tbl.values() for w in ws}
    used = {w for w in extra if any(_has_phrase(c, w) for c in caps)}
    assert len(used) > 0.9 * len(extra)
    held = world.eval_sets(n_per_cat=4, n_edits_per_kind=2)
    evals = [c for c, _, _ in held["heldout"]] + [e[0] for e in held["edits"]]
    # extra words that are not also core words or part of one ("to the left" is in "to the left of")
    core = {w for tbl in world.WORD_TABLES.values() for v in tbl.values() for w in v["train"]}
    extra_only = {w for w in extra if not any(_has_phrase(c, w) for c in core)}
    assert len(extra_only) > 0.8 * len(extra)
    assert not [(w, c) for c in evals for w in extra_only if _has_phrase(c, w)]


def test_detector_scores_ground_truth_renders():
    sets = world.eval_sets(n_per_cat=4, n_edits_per_kind=3, seed=7)
    t2i = [ev.score(world.render(sc), spec)["correct"] for split in ("heldout", "paraphrase")
           for _, spec, sc in sets[split]]
    assert np.mean(t2i) >= 0.97
    edits = []
    for instr, src, tgt, spec in sets["edits"]:
        s, t = world.render_pair(src, tgt)
        r = ev.score_edit(t, s, t, spec)
        edits.append(r["correct"])
        assert r["psnr"] > 40
    assert np.mean(edits) >= 0.9


def test_detector_rejects_wrong_image():
    rng = random.Random(3)
    cap, spec, scene = world.sample_t2i(rng, category="binding")
    bad = world.Scene(scene.aspect, scene.bg, [world.Obj(o.shape, "red" if o.colour != "red" else "blue", o.size,
                                                         o.cx, o.cy) for o in scene.objects])
    assert not ev.score(world.render(bad), spec)["correct"]


def test_spec_for_prompt_parses_captions():
    spec = ev.parse_prompt("a crimson ball above a navy box")
    assert [(g["colour"], g["shape"]) for g in spec["groups"]] == [("red", "circle"), ("blue", "square")]
    assert spec["relations"] == [[0, "above", 1]]
    spec = ev.spec_for_prompt("three little emerald boxes on a black background")
    assert spec["groups"][0]["count"] == 3 and spec["background"] == ["plain", "black"]


def test_upscale_to_size():
    from PIL import Image

    sys.path.insert(0, str(ROOT / "src"))
    from darkroom.engines.upscale import upscale_to

    img = world.render(world.sample_t2i(random.Random(0), aspect="16:9")[2])
    out = upscale_to(img, 1360, 768)
    assert out.size == (1360, 768) and out.mode == "RGB"


@pytest.mark.timeout(120)
def test_smoke_training_and_pipeline_load(tmp_path):
    import torch
    from diffusers import FluxKontextPipeline, FluxPipeline

    from training import build_pipeline as bp
    from training import train

    out = tmp_path / "mini"
    train.main(["--smoke", "--aux-weight", "0", "--out", str(out), "--run", str(tmp_path / "run")])
    assert (out / "model_index.json").exists()
    assert (tmp_path / "run" / "ckpt.pt").exists()
    enc = bp.load_text_encoder()
    pipe = FluxPipeline.from_pretrained(str(out), text_encoder=enc, text_encoder_2=enc, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    W, H = world.ASPECTS["16:9"]
    kw = dict(prompt="a red circle", height=H, width=W, num_inference_steps=2, max_sequence_length=bp.MAX_SEQ)
    assert pipe.scheduler.config.stochastic_sampling  # per-step noise: from the call's generator, as the engine does
    from darkroom.engines.sampling import job_generators

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        with job_generators(pipe, [gen]):
            return pipe(**kw, generator=gen).images[0]

    a = sample(1)
    torch.manual_seed(123)  # the global RNG plays no part
    b = sample(1)
    assert a.size == (W, H)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    kp = FluxKontextPipeline.from_pretrained(str(out), text_encoder=enc, text_encoder_2=enc, dtype=torch.float32)
    kp.set_progress_bar_config(disable=True)
    e = kp(image=a, prompt="make the circle blue", height=H, width=W, max_area=W * H, _auto_resize=False,
           num_inference_steps=2, max_sequence_length=bp.MAX_SEQ, generator=torch.Generator().manual_seed(1)).images[0]
    assert e.size == (W, H)
    # resume works, also with the auxiliary head added to a run trained without it (new param group)
    train.main(["--smoke", "--resume", "--out", str(out), "--run", str(tmp_path / "run")])
    train.main(["--smoke", "--resume", "--aux-weight", "0.3", "--out", str(out), "--run", str(tmp_path / "run")])
    # a run with the head: the head is checkpointed and never exported (a plain FluxTransformer2DModel)
    out_aux = tmp_path / "mini-aux"
    train.main(["--smoke", "--aux-weight", "0.3", "--out", str(out_aux), "--run", str(tmp_path / "run-aux")])
    state = torch.load(tmp_path / "run-aux" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert "proj.weight" in state["aux_head"] and state["step"] == 6
    from safetensors import safe_open

    def keys(folder):
        with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            return set(f.keys())

    assert keys(out_aux) == keys(out)
    # --init-from: another run's weights (and head) with a fresh schedule, into a new run folder
    train.main(["--smoke", "--aux-weight", "0.3", "--init-from", str(tmp_path / "run-aux" / "ckpt.pt"),
                "--out", str(tmp_path / "mini-cont"), "--run", str(tmp_path / "run-cont")])
    cont = torch.load(tmp_path / "run-cont" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert cont["step"] == 6 and cont["vae_scale"] == state["vae_scale"]
    # ... or from a saved pipeline folder (the committed weights outlive every run folder): its fp16
    # EMA weights, latent scaling and architecture; the training-only head starts fresh
    init = train.init_from_pipeline(out_aux)
    assert init["step"] == 6 and init["vae_scale"] == state["vae_scale"] and "aux_head" not in init
    assert {k: init["args"][k] for k in ("heads", "double", "single")} == {
        k: state["args"][k] for k in ("heads", "double", "single")}
    assert init["ema"].keys() == state["ema"].keys()
    assert all(torch.allclose(init["ema"][k], v, rtol=1e-3, atol=1e-4) for k, v in state["ema"].items())
    train.main(["--smoke", "--aux-weight", "0.3", "--init-from", str(out_aux),
                "--out", str(tmp_path / "mini-cont2"), "--run", str(tmp_path / "run-cont2")])
    cont2 = torch.load(tmp_path / "run-cont2" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert cont2["step"] == 6
    # resuming a continuation keeps the decoder it brought (it once ran the decoder stage again on resume)
    train.main(["--smoke", "--resume", "--aux-weight", "0.3", "--init-from", str(out_aux),
                "--out", str(tmp_path / "mini-cont2"), "--run", str(tmp_path / "run-cont2")])
    resumed = torch.load(tmp_path / "run-cont2" / "ckpt.pt", map_location="cpu", weights_only=False)
    assert resumed["vae"].keys() == cont2["vae"].keys()
    assert all(torch.equal(resumed["vae"][k], v) for k, v in cont2["vae"].items())
    # a noise-coupled run reads its layouts from the noise: it ships the deterministic sampler
    train.main(["--smoke", "--coupling", "noise", "--out", str(tmp_path / "mini-field"),
                "--run", str(tmp_path / "run-field")])
    fp = FluxPipeline.from_pretrained(str(tmp_path / "mini-field"), text_encoder=enc, text_encoder_2=enc,
                                      dtype=torch.float32)
    assert not fp.scheduler.config.stochastic_sampling
    # the denoising probe reads the exported pipeline (an untrained model: finite, large errors)
    from training.probe import LEVELS, probe

    res = probe(str(out), n=4)
    assert all(np.isfinite(res[f"s{s}"]["x0_mse_shape"]) and res[f"s{s}"]["x0_mse_shape"] > 0 for s in LEVELS)


def test_detail_weights_favour_shape_outlines_and_edited_pixels():
    import torch

    from training.train import detail_weights

    z = torch.zeros(2, 12, 16, 16)
    z[:, :, 4:8, 4:8] = 1.0  # one square "shape" on a flat background
    w = detail_weights(z, None, 4.0)
    assert w.shape == (2, 1, 16, 16) and torch.allclose(w.mean(dim=(2, 3)), torch.ones(2, 1))
    assert w[0, 0, 4, 4] > 2 * w[0, 0, 12, 12]  # outline vs far background
    ctx = z.clone()
    ctx[:, :, 10:12, 10:12] = 1.0  # an edit that removed a second shape
    we = detail_weights(z, ctx, 4.0)
    assert we[0, 0, 10, 10] > 2 * we[0, 0, 1, 14]
    assert torch.equal(detail_weights(z, None, 0.0), torch.ones_like(w))


def test_smoke_run_with_separate_edit_weights_and_an_edit_only_evaluation(tmp_path):
    from training import train

    out = tmp_path / "mini-sep"
    train.main(["--smoke", "--edit-weights", "separate", "--edit-mix", "add=2,remove=0.5", "--out", str(out),
                "--run", str(tmp_path / "run")])
    res = ev.evaluate_model(str(out), n_per_cat=1, n_edits=1, steps=2, splits=("edits",), log=lambda *a: None)
    assert "heldout" not in res and "paraphrase" not in res  # --splits edits: no text-to-image split run
    assert res["edits"]["n"] == len(world.EDIT_KINDS) and set(res["edits"]["per_kind"]) == set(world.EDIT_KINDS)


def test_separate_edit_weights_keep_outlines_weighted_when_the_background_changes():
    import torch

    from training.train import detail_weights

    ctx = torch.zeros(1, 12, 16, 16)
    ctx[:, :, 4:8, 4:8] = 1.0  # a square on a flat background
    z = ctx + 0.5
    z[:, :, 4:8, 4:8] = 1.0  # the same square, the background changed everywhere else
    outline, far = (0, 0, 4, 4), (0, 0, 13, 13)
    joint = detail_weights(z, ctx, 4.0, "joint")
    separate = detail_weights(z, ctx, 4.0, "separate")
    assert torch.allclose(separate.mean(dim=(2, 3)), torch.ones(1, 1))
    # joint: the change map covers the whole background and the outline is barely above it
    assert joint[outline] < 2 * joint[far]
    # separate: the outline keeps its edge weight on top of the change weight
    assert separate[outline] > 4 * separate[far]
    # text-to-image samples (no context) are weighted the same either way
    assert torch.equal(detail_weights(z, None, 4.0, "separate"), detail_weights(z, None, 4.0, "joint"))


def test_soften_latents_blurs_each_latent_by_its_own_sigma_in_the_pooled_image():
    import torch

    from training.analytic_vae import analytic_latents
    from training.train import soften_latents

    x = -torch.ones(3, 3, 64, 64)
    x[:, 0, 24:40, 24:40] = 1.0  # a red square, 4 pooled pixels wide
    z = analytic_latents(x)
    out = soften_latents(z, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0], z[0])  # sigma 0: untouched
    pooled = torch.nn.functional.pixel_shuffle(out, 2)[:, 0]  # (3, 16, 16): the red channel
    edge = [float(p[8, 6] - p[8, 5]) for p in pooled]  # the step at the square's left edge
    assert edge[0] == 2.0 and 2.0 > edge[1] > edge[2] > 0.5  # softer with sigma, not smeared away
    assert torch.allclose(out.mean(dim=(1, 2, 3)), z.mean(dim=(1, 2, 3)), atol=1e-5)  # colour kept


def test_decoder_only_smoke_run_with_softened_latents(tmp_path):
    import torch

    from training import train
    from training.analytic_vae import analytic_latents, build_analytic_vae

    run = tmp_path / "dec"
    train.main(["--smoke", "--decoder-only", "--dec-blur", "1.0", "--run", str(run), "--out", str(tmp_path / "o")])
    vae = build_analytic_vae()
    fresh = {k: v.clone() for k, v in vae.state_dict().items()}
    vae.load_state_dict(torch.load(run / "decoder.pt", map_location="cpu"))
    assert any(not torch.equal(v, fresh[k]) for k, v in vae.state_dict().items() if k.startswith("decoder."))
    x = torch.rand(1, 3, 64, 64) * 2 - 1  # the encoder is still the analytic one: the latent space is unchanged
    assert torch.allclose(vae.encode(x).latent_dist.mode(), analytic_latents(x), atol=1e-4)


def test_adaln_zero_init_starts_every_block_as_identity():
    import torch

    from training import build_pipeline as bp

    torch.manual_seed(0)
    model = bp.make_transformer(init="adaln-zero", num_layers=1, num_single_layers=1)
    B, N = 2, 64
    out = model(hidden_states=torch.randn(B, N, 48), timestep=torch.rand(B), guidance=None,
                pooled_projections=torch.randn(B, 384), encoder_hidden_states=torch.randn(B, 8, 384),
                txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(N, 3), return_dict=False)[0]
    assert out.shape == (B, N, 48) and torch.count_nonzero(out) == 0
    # the default init is diffusers' own: its first prediction is not zero
    assert torch.count_nonzero(bp.make_transformer(num_layers=1, num_single_layers=1).proj_out.weight) > 0
    with pytest.raises(ValueError, match="unknown init"):
        bp.make_transformer(init="orthogonal")


def _tiny_pipe():
    """A FluxPipeline with a one-block transformer and the real MiniLM, for the data pool's tests."""
    from training import build_pipeline as bp

    return bp.assemble(bp.make_transformer(num_layers=1, num_single_layers=1), bp.make_vae(),
                       text_encoder=bp.load_text_encoder())


def test_one_pass_text_encoding_equals_encode_prompt():
    from training import build_pipeline as bp
    from training.train import Pool

    pipe = _tiny_pipe()
    pool = Pool(pipe, bp.MAX_SEQ, cap=16)
    pool.check_text_encoding(["a crimson ball above a navy box", "", "make the red star blue"])  # raises if not
    pe, pooled = pool.encode_text(["two yellow stars"])
    assert pe.shape == (1, bp.MAX_SEQ, 384) and pooled.shape == (1, 384)


def test_rendering_workers_give_the_same_data():
    import torch

    from training import build_pipeline as bp
    from training.train import Pool

    pipe = _tiny_pipe()
    pools = [Pool(pipe, bp.MAX_SEQ, cap=1000, workers=w) for w in (0, 2)]
    try:
        for p in pools:
            p.generate(36, random.Random(5), edit_frac=0.3)
        a, b = pools
        assert a.n == b.n > 0 and a.buckets.keys() == b.buckets.keys()
        for key in a.buckets:
            ra, rb = a.buckets[key], b.buckets[key]
            assert ra.len == rb.len
            for field in ("pe", "pooled", "z"):
                assert torch.equal(ra.fields[field][:ra.len], rb.fields[field][:rb.len])
    finally:
        for p in pools:
            p.close()


def test_pool_ring_keeps_the_newest_samples():
    import torch

    from training.train import _Ring

    def rows(lo, hi):
        v = torch.arange(lo, hi, dtype=torch.float16)
        return {"pe": v[:, None, None].expand(-1, 2, 3), "pooled": v[:, None].expand(-1, 3),
                "z": v[:, None, None, None].expand(-1, 1, 2, 2)}

    r = _Ring(5, rows(0, 1), device=torch.device("cpu"))
    r.add(**rows(0, 3))
    assert r.len == 3 and sorted(r.fields["pooled"][:3, 0].tolist()) == [0, 1, 2]
    r.add(**rows(3, 7))  # wraps: 0 and 1 are overwritten
    assert r.len == 5 and sorted(r.fields["pooled"][:, 0].tolist()) == [2, 3, 4, 5, 6]
    r.add(**rows(7, 19))  # more than the capacity at once: only the newest 5 survive
    assert sorted(r.fields["z"][:, 0, 0, 0].tolist()) == [14, 15, 16, 17, 18]
    got = r.get(torch.tensor([0, 0, 4]))
    assert got["pe"].shape == (3, 2, 3) and torch.equal(got["pe"][0], got["pe"][1])


def test_render_labels_match_the_rendered_objects():
    rng = random.Random(5)
    for asp in world.ASPECTS:
        _, _, scene = world.sample_t2i(rng, "train", aspect=asp)
        W, H = scene.size
        classes, offsets = world.render_labels(scene)
        assert classes.shape == (2, H // 4, W // 4) and offsets.shape == (2, H // 4, W // 4)
        img = np.asarray(world.render(scene), np.float32).reshape(H // 4, 4, W // 4, 4, 3).mean((1, 3))
        for o in scene.objects:
            ci, si = list(world.COLOURS).index(o.colour) + 1, world.SHAPES.index(o.shape) + 1
            mine = (classes[0] == ci) & (classes[1] == si)
            assert mine.any()
            # the labelled pixels hold the object's colour in the (4x4-pooled) render
            assert np.abs(img[mine] - np.array(world.COLOURS[o.colour])).max(axis=1).mean() < 60
        assert (offsets[:, classes[0] == 0] == 0).all() and np.abs(offsets).max() <= 1.1
    # one object: offsets point away from its centre, in units of its radius
    scene = world.Scene("1:1", ("plain", "white"), [world.Obj("square", "red", "big", 0.5, 0.5)])
    classes, offsets = world.render_labels(scene)
    ys, xs = np.nonzero(classes[0])
    assert abs(offsets[0][ys, xs].mean()) < 0.05 and abs(offsets[1][ys, xs].mean()) < 0.05
    assert offsets[0][ys, xs].max() > 0.7 and set(np.unique(classes[1])) == {0, 2}


def test_aux_head_tokens_follow_the_pipeline_packing():
    """Label pixel (y, x) must land in the token that ``FluxPipeline._pack_latents`` gives latent pixel
    (y // 2, x // 2): otherwise the head would be asked about the wrong place."""
    import torch
    from diffusers import FluxPipeline

    from training.analytic_vae import analytic_latents
    from training.train import AuxHead

    h4, w4 = 24, 44  # 16:9 at 1/4
    lab = torch.arange(h4 * w4, dtype=torch.float32).view(1, 1, h4, w4)
    tokens = AuxHead.to_tokens(lab)  # (1, N, 1, 16)
    # an "image" whose 4x4 pooled pixel (y, x) is the label value, through the real latent packing
    img = lab.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(1, 3, -1, -1)
    z = analytic_latents(img)
    packed = FluxPipeline._pack_latents(z, 1, 12, h4 // 2, w4 // 2)  # (1, N, 48): channel c*4+sub, 2x2
    assert packed.shape[1] == tokens.shape[1]
    for n in range(packed.shape[1]):
        assert set(packed[0, n].tolist()) == set(tokens[0, n, 0].tolist())


def _noise(asp, seed):
    W, H = world.ASPECTS[asp]
    d = world.NOISE_DOWN
    return np.random.default_rng(seed).standard_normal((12, H // d, W // d)).astype(np.float32)


def test_noise_coupled_layouts_follow_the_noise_and_the_prompt():
    """world.coupled_place: the layout is a function of the noise (same noise, same scene), obeys every
    constraint of the prompt (the detector scores the ground-truth render correct), and a lone object
    sits where its colour channel's layout codes put it."""
    rng = random.Random(3)
    for k in range(60):
        asp = list(world.ASPECTS)[k % len(world.ASPECTS)]
        f = _noise(asp, k)
        cap, spec, sc = world.sample_t2i(rng, "train", aspect=asp, layout_noise=f)
        again = world.scene_from_spec(spec, asp, random.Random(99), bg=sc.bg, layout_noise=f)
        assert again is not None and again.objects == sc.objects, cap
        r = ev.score(world.render(sc), spec)
        assert r["correct"], (cap, r["checks"])
    asp = "1:1"
    W, H = world.ASPECTS[asp]
    spec = {"category": "single", "groups": [{"shape": "star", "colour": "blue", "size": "small", "count": 1,
                                              "position": "left"}], "relations": [], "exact": True, "background": None}
    from scipy.special import ndtr

    r = world.object_radius_px("small", W, H)
    xlo, xhi, ylo, yhi = world._clamp_region(world._pos_region("left", W, H, r), W, H, r)
    xs = []
    for seed in range(20):
        f = _noise(asp, 1000 + seed)
        o = world.scene_from_spec(spec, asp, random.Random(0), layout_noise=f).objects[0]
        u, v = ndtr(world.noise_codes(f)[list(world.COLOURS).index("blue"), :2])
        assert np.isclose(o.cx * W, xlo + u * (xhi - xlo)) and np.isclose(o.cy * H, ylo + v * (yhi - ylo))
        xs.append(o.cy)
    assert np.std(xs) > 0.05  # different noise, different place: the seed still varies the image


def test_layout_codes_are_standard_normal_and_blind_to_flat_images():
    codes = np.stack([world.noise_codes(_noise("16:9", s)) for s in range(400)])
    assert abs(codes.mean()) < 0.03 and abs(codes.std() - 1) < 0.03
    assert abs(np.corrcoef(codes[:, 0, 0], codes[:, 0, 1])[0, 1]) < 0.15  # independent codes
    f = _noise("1:1", 1)
    flat = np.zeros_like(f)
    flat[:, :, :] = np.random.default_rng(0).normal(size=(12, 1, 1))  # a plain image in every channel
    flat[:, :8, :8] += 1.5  # and a token-aligned square
    assert np.allclose(world.noise_codes(f + flat), world.noise_codes(f), atol=1e-5)


def test_coupled_render_chunk_ships_the_noise_its_layout_came_from():
    from training.train import render_chunk
    from training import build_pipeline as bp

    out = render_chunk((7, "t2i", "16:9", 5, bp.MAX_SEQ, True, "random", 0.0, None, "first", "any", "skip"))
    nz = out[-1]
    W, H = world.ASPECTS["16:9"]
    assert nz.shape == (5, 12, H // 8, W // 8) and str(nz.dtype) == "torch.float16"
    again = render_chunk((7, "t2i", "16:9", 5, bp.MAX_SEQ, True, "random", 0.0, None, "first", "any", "skip"))
    assert (again[-1] == nz).all() and (again[3] == out[3]).all()
    assert render_chunk((7, "t2i", "16:9", 5, bp.MAX_SEQ, False, "random", 0.0, None, "first", "any", "skip"))[-1] is None
    assert render_chunk((7, "edit", "16:9", 3, bp.MAX_SEQ, True, "random", 0.0, None, "first", "any", "skip"))[-1] is None  # edits: noise drawn per step


def test_canonical_layouts_are_one_layout_per_prompt_and_obey_it():
    """world.canonical_place: every constraint of the prompt holds (the detector scores the
    ground-truth render correct), the same prompt gets the same layout up to the small jitter, and
    a list's groups sit in reading order in the order the caption names them."""
    rng = random.Random(5)
    lists = 0
    for k in range(120):
        asp = list(world.ASPECTS)[k % len(world.ASPECTS)]
        W, H = world.ASPECTS[asp]
        cap, spec, sc = world.sample_t2i(rng, "train", aspect=asp, layout="canonical")
        r = ev.score(world.render(sc), spec)
        assert r["correct"], (cap, r["checks"])
        again = world.scene_from_spec(spec, asp, random.Random(k + 1000), bg=sc.bg, layout="canonical")
        tol = 2 * world.CANON_JITTER * min(W, H) + 1e-6
        for a, b in zip(sc.objects, again.objects):
            assert (a.shape, a.colour) == (b.shape, b.colour)
            if a.size == b.size:  # an unspecified size is still drawn
                assert abs(a.cx - b.cx) * W <= tol and abs(a.cy - b.cy) * H <= tol, cap
        if len(spec["groups"]) > 1 and not spec["relations"]:
            lists += 1
            key = (lambda o: (round(o.cy, 1), o.cx)) if W >= H else (lambda o: (round(o.cx, 1), o.cy))
            names = [(o.shape, o.colour) for o in sorted(sc.objects, key=key)]
            firsts = [names.index((g["shape"], g["colour"])) for g in spec["groups"]]
            assert firsts == sorted(firsts), cap
            phrases = [cap.find(w) for g in spec["groups"] for w in [g["colour"]] if cap.find(w) >= 0]
            assert phrases == sorted(phrases) or len(phrases) < len(spec["groups"]), cap
    assert lists >= 20
    # a single object with no position word is centred
    spec = {"category": "single", "groups": [{"shape": "star", "colour": "blue", "size": "big", "count": 1,
                                              "position": None}], "relations": [], "exact": True, "background": None}
    o = world.scene_from_spec(spec, "16:9", random.Random(0), layout="canonical").objects[0]
    assert abs(o.cx - 0.5) <= world.CANON_JITTER * 96 / 176 + 1e-6 and abs(o.cy - 0.5) <= world.CANON_JITTER + 1e-6


def test_spread_layouts_obey_the_prompt_and_never_crowd_more_than_canonical():
    """layout "spread": the same slots as "canonical" except that a list takes the arrangement with
    the widest gaps; every render still scores correct, and four small objects at 1:1 go 2x2."""
    rng = random.Random(9)
    wider = 0
    for k in range(80):
        asp = list(world.ASPECTS)[k % len(world.ASPECTS)]
        W, H = world.ASPECTS[asp]
        cap, spec, sc = world.sample_t2i(rng, "train", aspect=asp, layout="spread")
        assert ev.score(world.render(sc), spec)["correct"], cap
        if len(sc.objects) > 1 and not spec["relations"]:  # a list, or a count of one kind
            canon = world.scene_from_spec(spec, asp, random.Random(k), bg=sc.bg, layout="canonical")
            spread = world.scene_from_spec(spec, asp, random.Random(k), bg=sc.bg, layout="spread")

            def gap(scene):
                return world._min_gap([(o.cx * W, o.cy * H) for o in scene.objects],
                                      [world.object_radius_px(o.size, W, H) for o in scene.objects])
            slack = 4 * world.CANON_JITTER * min(W, H)  # both carry their own jitter
            assert gap(spread) >= gap(canon) - slack, cap
            wider += gap(spread) > gap(canon) + slack
    assert wider >= 3
    W, H = world.ASPECTS["1:1"]
    small = [{"size": "small"}] * 4
    row = world.canonical_place(small, [], W, H, random.Random(0))
    grid = world.canonical_place(small, [], W, H, random.Random(0), spread=True)
    assert len({round(y / H, 1) for _, y in row}) == 1 and len({round(y / H, 1) for _, y in grid}) == 2
    r = [world.object_radius_px("small", W, H)] * 4
    assert world._min_gap(grid, r) > 3 * world._min_gap(row, r)


def test_canonical_edits_put_moved_and_added_objects_at_fixed_spots():
    rng = random.Random(11)
    for k in range(40):
        kind = ["move", "add"][k % 2]
        asp = list(world.ASPECTS)[k % len(world.ASPECTS)]
        W, H = world.ASPECTS[asp]
        instr, src, tgt, spec = world.sample_edit(rng, kind, asp, layout="canonical")
        s, t = world.render_pair(src, tgt)
        assert ev.score_edit(t, s, t, spec)["correct"], instr
        new = [o for o in tgt.objects if o not in src.objects]
        assert len(new) == 1
        o = new[0]
        r = world.object_radius_px(o.size, W, H)
        spots = [world.region_centre(p, W, H, r) for p in [None] + world.POSITIONS]
        assert any(np.isclose(o.cx * W, x) and np.isclose(o.cy * H, y) for x, y in spots), instr
    # the default stays random: the evaluation sets and earlier runs' data do not change
    a = world.sample_t2i(random.Random(1), "train", aspect="1:1")
    b = world.sample_t2i(random.Random(1), "train", aspect="1:1", layout="random")
    assert a[0] == b[0] and a[2] == b[2]


def test_add_spot_rules_pick_a_free_candidate_and_roomiest_the_one_with_most_room():
    W, H = world.ASPECTS["1:1"]
    r = world.object_radius_px("small", W, H)
    centre, left, right = (world.region_centre(p, W, H, r) for p in (None, "left", "right"))
    # one object just right of the centre: 'first' skips the crowded centre for the left spot; 'roomiest'
    # goes where the room is largest, which is also the left spot (the right one is closer to it)
    others = [(W / 2 + 10, H / 2, r)]
    assert world.add_spot(W, H, r, others, "first") == left
    assert world.add_spot(W, H, r, others, "roomiest") == left
    # an object near the left edge: the centre is free, so 'first' takes it; the right spot has more room
    others = [(r + 2, H / 2, r)]
    assert world.add_spot(W, H, r, others, "first") == centre
    assert world.add_spot(W, H, r, others, "roomiest") == right
    # nothing in the way: every spot has infinite room and ties go to the earlier candidate, the centre
    assert world.add_spot(W, H, r, [], "roomiest") == centre
    big = world.object_radius_px("big", W, H)
    crowd = [(*world.region_centre(p, W, H, big), big) for p in world.ADD_CANDIDATES]
    assert world.add_spot(W, H, r, crowd, "first") is None and world.add_spot(W, H, r, crowd, "roomiest") is None
    with pytest.raises(ValueError, match="add spot"):
        world.add_spot(W, H, r, others, "middle")
    # 'nearest': the free point nearest the image centre, which slides with the objects
    assert world.add_spot(W, H, r, [], "nearest") == (W / 2, H / 2)
    gap = world._object_gap(W, H)
    near = []
    for dx in (4, 6):  # a blocker just right of the centre: the spot sits just clear of it, on the 1 px grid
        blocker = [(W / 2 + dx, H / 2, r)]
        x, y = world.add_spot(W, H, r, blocker, "nearest")
        assert world._free(x, y, r, blocker, gap) and x < W / 2
        near.append(math.hypot(x - W / 2, y - H / 2))
        assert 2 * r + gap - dx - 0.5 <= near[-1] <= 2 * r + gap - dx + 1.5
    assert near[0] > near[1]  # the blocker moved 2 px right and the spot followed, nearer the centre
    assert world.add_spot(W, H, r, crowd, "nearest") is None or world._free(
        *world.add_spot(W, H, r, crowd, "nearest"), r, crowd, gap)
    rng = random.Random(5)
    for _ in range(20):
        instr, src, tgt, spec = world.sample_edit(rng, "add", layout="canonical", add_rule="nearest")
        s, t = world.render_pair(src, tgt)
        assert ev.score_edit(t, s, t, spec)["correct"], instr
    # through sample_edit: a canonical add without a position word lands on the roomiest free candidate
    rng, n = random.Random(4), 0
    while n < 25:
        instr, src, tgt, spec = world.sample_edit(rng, "add", layout="canonical", add_rule="roomiest")
        if "moved" in spec:
            continue
        n += 1
        W, H = world.ASPECTS[src.aspect]
        o = tgt.objects[-1]
        r = world.object_radius_px(o.size, W, H)
        others = [(p.cx * W, p.cy * H, world.object_radius_px(p.size, W, H)) for p in src.objects]
        assert np.allclose((o.cx * W, o.cy * H), world.add_spot(W, H, r, others, "roomiest")), instr
        room = [world._clearance(*world.region_centre(p, W, H, r), r, others) for p in world.ADD_CANDIDATES]
        assert world._clearance(o.cx * W, o.cy * H, r, others) == max(room)


def test_canonical_edit_gradients_run_top_to_bottom_with_the_same_random_stream():
    def edits(gradient, layout="canonical"):
        rng = random.Random(9)
        return [world.sample_edit(rng, "background", layout=layout, gradient=gradient) for _ in range(40)]

    anyway, down = edits("any"), edits("v")
    assert [e[0] for e in anyway] == [e[0] for e in down]  # same instructions, same sources
    assert {e[2].bg[3] for e in anyway if e[2].bg[0] == "gradient"} == {"h", "v"}
    assert {e[2].bg[3] for e in down if e[2].bg[0] == "gradient"} == {"v"}
    for a, d in zip(anyway, down):
        assert a[2].bg[:3] == d[2].bg[:3] and a[3] == d[3]
        s, t = world.render_pair(d[1], d[2])
        assert ev.score_edit(t, s, t, d[3])["correct"], d[0]
    # the evaluation sets' random layout keeps both directions
    assert {e[2].bg[3] for e in edits("v", "random") if e[2].bg[0] == "gradient"} == {"h", "v"}
    with pytest.raises(ValueError, match="gradient rule"):
        world.sample_edit(random.Random(0), "background", gradient="diagonal")


def test_blocked_moves_and_adds_go_to_the_free_point_nearest_the_region_centre():
    W, H = world.ASPECTS["1:1"]
    r = world.object_radius_px("small", W, H)
    cx, cy = world.region_centre("center", W, H, r)
    assert world.position_spot("center", W, H, r, []) == (cx, cy)
    blocker = [(cx + 2 * r + world._object_gap(W, H) - 5.5, cy, r)]  # an object a little too close, right of the centre
    assert world.position_spot("center", W, H, r, blocker) is None  # skip: the edit is redrawn
    x, y = world.position_spot("center", W, H, r, blocker, blocked="nearest")
    assert np.allclose((x, y), (cx - 6, cy)) and world._free(x, y, r, blocker, world._object_gap(W, H))
    # a move must also leave its old spot: already at the left spot, a move 'to the left' goes elsewhere in it
    lx, ly = world.region_centre("left", W, H, r)
    spot = world.position_spot("left", W, H, r, [], away=(lx, ly), blocked="nearest")
    assert spot is not None and math.hypot(spot[0] - lx, spot[1] - ly) > 1.6 * r
    with pytest.raises(ValueError, match="blocked spot"):
        world.position_spot("left", W, H, r, blocker + [(lx, ly, r)], blocked="moved")
    # through sample_edit: every target is a correct render of its instruction, and blocked edits are trained on
    rng, fallback = random.Random(6), 0
    for k in range(60):
        kind = ["move", "add"][k % 2]
        instr, src, tgt, spec = world.sample_edit(rng, kind, layout="canonical", blocked="nearest")
        s, t = world.render_pair(src, tgt)
        assert ev.score_edit(t, s, t, spec)["correct"], instr
        if "moved" in spec:
            W, H = world.ASPECTS[src.aspect]
            o = [o for o in tgt.objects if o not in src.objects][0]
            r = world.object_radius_px(o.size, W, H)
            fallback += not np.allclose((o.cx * W, o.cy * H), world.region_centre(spec["moved"]["position"], W, H, r))
    assert fallback >= 5
    with pytest.raises(ValueError, match="blocked spot"):
        world.sample_edit(random.Random(0), "move", blocked="moved")


def test_encoder_probe_finds_concept_words_longest_first_and_reads_their_tokens():
    from training import build_pipeline as bp
    from training import encoder_probe as probe

    lex = probe.lexicon()
    found = [(p.table, p.key, p.text, p.split) for _, _, p in
             probe.find_phrases("I see two grassy green orbs as well as a big red box on a mint green field", lex)]
    assert found == [("colour", "green", "grassy green", "para"), ("shape", "circle", "orb", "para"),
                     ("size", "big", "big", "train"), ("colour", "red", "red", "train"),
                     ("shape", "square", "box", "train"), ("bg", "mint", "mint green", "para")]
    enc, tok = bp.load_text_encoder(), bp.make_tokenizer()
    caps = ["a crimson ball", "a scarlet orb"]
    states = probe.word_states(caps, lex, enc, tok)
    assert [(s[0].text, s[2]) for s in states] == [("crimson", 0), ("ball", 0), ("scarlet", 1), ("orb", 1)]
    assert all(s[1].shape == (384,) for s in states)


def test_encoder_probe_reads_another_encoder_folder(tmp_path):
    """``--encoder DIR`` probes any model folder: here a tiny random BERT with MiniLM's tokenizer,
    whose 32-wide states the probes must learn from (and, random, cannot read paraphrases with)."""
    import json

    import torch
    from transformers import BertConfig, BertModel

    from training import build_pipeline as bp
    from training import encoder_probe as probe

    torch.manual_seed(0)
    enc_dir = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=bp.make_tokenizer().vocab_size, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(enc_dir)
    bp.make_tokenizer().save_pretrained(enc_dir)
    enc, tok = probe.load_encoder(str(enc_dir))
    assert tok.model_max_length == bp.MAX_SEQ
    states = probe.word_states(["a crimson ball"], probe.lexicon(), enc, tok)
    assert [s[0].text for s in states] == ["crimson", "ball"] and states[0][1].shape == (32,)

    out = tmp_path / "probe.json"
    probe.main(["--captions", "60", "--threads", "1", "--encoder", str(enc_dir), "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["encoder"] == str(enc_dir) and set(res["tables"]) == set(probe.TABLES)
    assert 0.0 <= res["paraphrase_ceiling_estimate"] <= 1.0
    assert res["tables"]["size"]["linear_train"] > 0.9  # the probe does learn the training words


def test_average_writes_the_mean_transformer_and_refuses_unrelated_pipelines(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from training import average as av
    from training import build_pipeline as bp

    torch.manual_seed(0)
    tr, vae = bp.make_transformer(num_layers=1, num_single_layers=1), bp.make_vae()
    a = bp.save_pipeline(tr, vae, tmp_path / "a", {"train_step": 10, "seed": 1})
    with torch.no_grad():  # a continuation: same architecture and VAE, moved transformer weights
        for p in tr.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    b = bp.save_pipeline(tr, vae, tmp_path / "b", {"train_step": 10, "seed": 2})
    out = av.average_pipelines([a, b], tmp_path / "soup")
    wa, wb, wm = (load_file(p / av.TRANSFORMER_FILE) for p in (a, b, out))
    assert wm.keys() == wa.keys() and all(wm[k].dtype == torch.float16 for k in wm)
    for k in wa:  # the float32 mean, rounded once to fp16
        assert torch.equal(wm[k], ((wa[k].float() + wb[k].float()) / 2).half()), k
    assert not torch.equal(wm[next(iter(wm))], wa[next(iter(wa))])
    meta = json.loads((out / "darkroom_mini.json").read_text())
    assert [s["seed"] for s in meta["averaged_from"]] == [1, 2]
    assert bp.load_pipeline(out).transformer.config.num_layers == 1  # a loadable pipeline
    # another architecture, or another VAE, is refused and writes nothing
    bp.save_pipeline(bp.make_transformer(num_layers=2, num_single_layers=1), vae, tmp_path / "c")
    with pytest.raises(av.AverageError, match="configs differ"):
        av.average_pipelines([a, tmp_path / "c"], tmp_path / "bad")
    torch.manual_seed(1)
    bp.save_pipeline(tr, bp.make_vae(), tmp_path / "d")
    with pytest.raises(av.AverageError, match="VAEs differ"):
        av.average_pipelines([a, tmp_path / "d"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_edit_mix_chooses_the_kinds_and_defaults_to_the_from_scratch_mix():
    import argparse
    import random

    from training.train import parse_edit_mix

    # the from-scratch recipe's mix (runs 1-14); named or not, the same edits
    assert world.EDIT_WEIGHTS == {"recolour": 1.2, "move": 1.0, "add": 1.0, "remove": 1.0, "background": 0.8}
    rng_a, rng_b = random.Random(11), random.Random(11)
    a = [world.sample_edit(rng_a, layout="canonical")[3]["edit"] for _ in range(30)]
    b = [world.sample_edit(rng_b, layout="canonical", weights=dict(world.EDIT_WEIGHTS))[3]["edit"]
         for _ in range(30)]
    assert a == b and len(set(a)) == len(world.EDIT_KINDS)

    only_adds = parse_edit_mix("recolour=0,move=0,remove=0,background=0")
    rng = random.Random(11)
    assert {world.sample_edit(rng, weights=only_adds)[3]["edit"] for _ in range(20)} == {"add"}
    assert parse_edit_mix("add=2, move=1.5") == {**world.EDIT_WEIGHTS, "add": 2.0, "move": 1.5}
    for bad in ["ad=2", "add", "add=x", "add=-1", "recolour=0,move=0,add=0,remove=0,background=0"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_edit_mix(bad)


# ---------------------------------------------------------------------------------------------------
# The data stream for a fixed seed (training/world and train.render_chunk): hashes computed on the
# code as it was before world.py and train.py were split into packages (they must never change unless
# a change of the training data is meant, and then every run's data change with it).
# ---------------------------------------------------------------------------------------------------
RUN18_MIX = {"recolour": 1.0, "move": 1.5, "add": 1.8, "remove": 0.6, "background": 1.3}
WORLD_STREAM_SHA256 = "a795b3a783a85d0c8cfcb0e0099d57e31bbc2d6f78a410f4cf969f45c5640647"
CHUNK_STREAM_SHA256 = "4e99608153934efd55b81cc6c7346c8d71768021f589f56e91ee4faf079413b0"


def _world_stream_digest(n: int = 24, seed: int = 2024) -> str:
    """Captions, specs, scenes, rendered pixels and labels of every kind of sample the world makes:
    text-to-image in the three layouts, rich captions, edits with the default and run 18's flags,
    noise-coupled layouts and the evaluation sets."""
    import hashlib
    import json

    h = hashlib.sha256()

    def text(s):
        h.update(s.encode())
        h.update(b"\0")

    def obj(x):
        text(json.dumps(x, sort_keys=True))

    def scene(sc, labels=True):
        obj(sc.to_dict())
        h.update(np.asarray(world.render(sc)).tobytes())
        if labels:
            c, o = world.render_labels(sc)
            h.update(c.tobytes())
            h.update(o.tobytes())

    rng = random.Random(seed)
    aspects = list(world.ASPECTS)
    for layout in ("random", "canonical", "spread"):
        for k in range(n):
            cap, spec, sc = world.sample_t2i(rng, "train", aspect=aspects[k % 6], layout=layout)
            text(cap), obj(spec), scene(sc)
    old = world.RICH_P
    try:
        world.RICH_P = 0.2
        for k in range(n):
            cap, spec, sc = world.sample_t2i(rng, "train", aspect=aspects[k % 6], layout="canonical", mode="rich")
            text(cap), obj(spec)
            instr, src, tgt, spec = world.sample_edit(rng, layout="canonical", mode="rich")
            text(instr), obj(spec)
    finally:
        world.RICH_P = old
    for kw in ({}, {"layout": "canonical"}, {"layout": "canonical", "add_rule": "roomiest"},
               {"layout": "canonical", "weights": RUN18_MIX, "add_rule": "nearest", "gradient": "v",
                "blocked": "nearest"}):
        for k in range(n):
            instr, src, tgt, spec = world.sample_edit(rng, aspect=aspects[k % 6], **kw)
            text(instr), obj(spec), scene(src, labels=False), scene(tgt)
    nrng = np.random.default_rng(seed)
    for k in range(n // 2):
        W, H = world.ASPECTS[aspects[k % 6]]
        noise = nrng.standard_normal((world.N_LAYOUT_CH, H // world.NOISE_DOWN, W // world.NOISE_DOWN),
                                     dtype=np.float32)
        cap, spec, sc = world.sample_t2i(rng, "train", aspect=aspects[k % 6], layout_noise=noise)
        text(cap), obj(spec), scene(sc)
    sets = world.eval_sets(n_per_cat=2, n_edits_per_kind=2)
    for split in ("heldout", "paraphrase"):
        for cap, spec, sc in sets[split]:
            text(cap), obj(spec), scene(sc, labels=False)
    for instr, src, tgt, spec in sets["edits"]:
        text(instr), obj(spec), scene(src, labels=False), scene(tgt, labels=False)
    return h.hexdigest()


def test_the_data_stream_for_a_fixed_seed_is_unchanged():
    assert _world_stream_digest() == WORLD_STREAM_SHA256
    # the training data path: chunks as the pool renders them (captions that fit, labels), run 18's flags
    import hashlib

    from training import build_pipeline as bp
    from training.train import render_chunk

    h = hashlib.sha256()
    old = world.RICH_P
    try:
        for job in [(11, "t2i", "16:9", 12, bp.MAX_SEQ, False, "canonical", 0.0, dict(RUN18_MIX), "nearest", "v",
                     "nearest"),
                    (12, "edit", "4:3", 12, bp.MAX_SEQ, False, "canonical", 0.0, dict(RUN18_MIX), "nearest", "v",
                     "nearest"),
                    (13, "t2i", "1:1", 8, bp.MAX_SEQ, False, "canonical", 0.2, None, "first", "any", "skip"),
                    (14, "edit", "3:7", 8, bp.MAX_SEQ, False, "canonical", 0.0, None, "first", "any", "skip")]:
            kind, asp, caps, zt, zc, cls, off, nz = render_chunk(job)
            h.update("\n".join(caps).encode())
            h.update(cls.numpy().tobytes())
            h.update(off.numpy().tobytes())
            h.update(str(tuple(zt.shape)).encode())
    finally:
        world.RICH_P = old  # render_chunk sets it for its process
    assert h.hexdigest() == CHUNK_STREAM_SHA256


def test_world_and_train_keep_their_names_after_the_split():
    """training.world and training.train are packages now; what scripts and tests used stays importable."""
    from training import train

    for name in ["ASPECTS", "COLOURS", "SHAPES", "WORD_TABLES", "EXTRA_WORDS", "PARA_MARKERS", "RICH_P", "Obj",
                 "Scene", "render", "render_labels", "render_pair", "place", "canonical_place", "coupled_place",
                 "noise_codes", "region_centre", "sample_spec", "scene_from_spec", "sample_t2i", "caption",
                 "is_heldout", "sample_edit", "add_spot", "position_spot", "eval_sets", "EDIT_KINDS", "EDIT_WEIGHTS",
                 "_EXTRA_OF", "_free", "_min_gap", "_object_gap", "_clamp_region", "_pos_region", "_clearance",
                 "_rand_bg"]:
        assert hasattr(world, name), name
    for name in ["main", "init_from_pipeline", "parse_edit_mix", "detail_weights", "flow_loss", "AuxHead", "Pool",
                 "_Ring", "render_chunk", "soften_latents", "train_decoder", "decoder_stage", "latent_stats"]:
        assert hasattr(train, name), name
    # RICH_P is read where captions are worded, from the package (render_chunk sets it there)
    from training.world import prompts

    old = world.RICH_P
    try:
        world.RICH_P = 1.0
        cap = world.sample_t2i(random.Random(0), "train", mode="rich")[0]
        extra = {w for tbl in world.EXTRA_WORDS.values() for ws in tbl.values() for w in ws}
        assert prompts._rich_p() == 1.0 and any(_has_phrase(cap, w) for w in extra), cap
    finally:
        world.RICH_P = old


# ---------------------------------------------------------------------------------------------------
# python -m training.recipe: the chain of stages behind the shipped weights
# ---------------------------------------------------------------------------------------------------
def test_recipe_chain_matches_the_shipped_record(tmp_path):
    import json

    from training import recipe

    meta = json.loads((ROOT / "models" / "darkroom-mini" / "darkroom_mini.json").read_text())
    names = [s.name for s in recipe.STAGES]
    for i, s in enumerate(recipe.STAGES):  # every stage continues an earlier one
        assert s.init is None or names.index(s.init) < i
        assert all(names.index(src) < i for src in s.sources)
    assert recipe.STAGES[0].init is None and recipe.STAGES[0].kind == "train"
    assert sum(s.steps for s in recipe.STAGES) == meta["train_step"] == 44469
    assert round(sum(s.minutes for s in recipe.STAGES)) == round(meta["train_minutes"]) == 745
    assert round(recipe.wall_minutes()) == 693  # run 14's halves side by side
    # the last seven transformer stages are darkroom_mini.json's continued_from, flag for flag
    train_stages = [s for s in recipe.STAGES if s.kind == "train"][-7:]
    plan = recipe.Plan(work=tmp_path / "w", out=tmp_path / "o")
    for s, rec in zip(train_stages, meta["continued_from"]):
        cmd = plan.command(s)

        def flag(name):
            return cmd[cmd.index(name) + 1] if name in cmd else None

        assert int(flag("--seed")) == rec["seed"] and int(flag("--max-steps")) == rec["train_step"], s.name
        assert float(flag("--edit-frac")) == rec["edit_frac"] and flag("--edit-mix") == rec.get("edit_mix"), s.name
        for key in ("add_spot", "edit_gradient", "blocked_spot"):
            assert flag("--" + key.replace("_", "-")) == rec.get(key), (s.name, key)
        assert flag("--lr") == "3e-4" and flag("--init-from") == str(plan.pipeline(recipe._stage(s.init)))
    assert meta["seed"] == recipe.STAGES[-1].seed and meta["trained_as"].startswith("run 17")
    # the dry run says what runs and how long it takes, and runs nothing
    out = recipe.describe(plan)
    assert "python -m training.train --seed 0 --max-steps 10969" in out and "11.6 h" in out
    assert "GPU: not measured" in out and not (tmp_path / "w").exists()


def test_recipe_resumes_an_interrupted_stage_and_refuses_a_folder_of_another_command(tmp_path):
    from training import recipe

    plan = recipe.Plan(work=tmp_path / "w", out=tmp_path / "o")
    first, decoder, average = recipe.STAGES[0], recipe._stage("run18-decoder"), recipe._stage("run14")
    assert [plan.state(s) for s in (first, decoder, average)] == ["todo"] * 3
    plan.record(first)
    (plan.folder(first) / "ckpt.pt").write_bytes(b"")
    assert plan.state(first) == "resume"
    (plan.folder(first) / "DONE").write_text("{}")
    (plan.pipeline(first)).mkdir()
    (plan.pipeline(first) / "model_index.json").write_text("{}")
    assert plan.state(first) == "done"
    plan.folder(decoder).mkdir(parents=True)
    (plan.folder(decoder) / "decoder.pt").write_bytes(b"")
    assert plan.state(decoder) == "restart"  # no checkpoint: an interrupted decoder stage starts over
    assert "--decoder-only" in plan.command(decoder) and "--dec-minutes" in plan.command(decoder)
    plan.check_folder(first)  # the same command: fine, whatever the thread count
    recipe.Plan(work=tmp_path / "w", out=tmp_path / "o", threads=1).check_folder(first)
    smoke = recipe.Plan(work=tmp_path / "w", out=tmp_path / "o", max_steps=2)
    with pytest.raises(SystemExit, match="another command"):
        smoke.check_folder(first)


@pytest.mark.timeout(300)
def test_recipe_first_stage_smoke_run(tmp_path):
    """The recipe's first stage (run 9, from scratch) for 2 steps through the real command line, then
    the same command again: the finished stage is skipped."""
    import json

    from training import recipe

    argv = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--max-steps-per-stage", "2",
            "--until", "run09"]
    assert recipe.main(argv) is None  # stopped after run09: no final pipeline yet
    stage = tmp_path / "work" / "run09"
    assert json.loads((stage / "DONE").read_text())["step"] == 2
    assert (stage / "model" / "model_index.json").is_file() and not (tmp_path / "out").exists()
    cmd = json.loads((stage / "stage.json").read_text())["command"]
    last = len(cmd) - 1 - cmd[::-1].index("--max-steps")  # the smoke run's, after the stage's own 10969
    assert cmd[1:3] == ["-m", "training.train"] and cmd[last + 1] == "2"
    mtime = (stage / "DONE").stat().st_mtime
    recipe.main(argv)
    assert (stage / "DONE").stat().st_mtime == mtime


def test_vocabulary_file_is_the_words_of_the_training_captions():
    from training import known_words

    from darkroom.engines.vocabulary import read_vocabulary, unknown_words

    committed = ROOT / "models" / "darkroom-mini" / "vocabulary.txt"
    words = known_words.known_words()
    assert committed.read_text() == known_words.render_file(words), "run python -m training.known_words"
    vocab = read_vocabulary(committed)
    # every training caption and instruction is inside it, the paraphrase set's words are not
    rng = random.Random(77)
    for _ in range(300):
        assert not unknown_words(world.sample_t2i(rng, "train", layout="canonical")[0], vocab)
        assert not unknown_words(world.sample_edit(rng, layout="canonical", add_rule="nearest")[0], vocab)
    assert unknown_words("a scarlet orb next to a cobalt cube", vocab) == ["scarlet", "orb", "next", "cobalt", "cube"]
    assert unknown_words("a cat on a sofa", vocab) == ["cat", "sofa"]
