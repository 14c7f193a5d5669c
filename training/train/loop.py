"""The training loop: build or load the models (from scratch, ``--resume``, ``--init-from``), draw
batches from the pool, step, keep the EMA, checkpoint and export, then the decoder stage."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from pathlib import Path

import torch

from training import build_pipeline as bp
from training.train.common import log
from training.train.data import Pool
from training.train.decoder import decoder_stage, latent_stats
from training.train.objective import AuxHead, flow_loss


def init_from_pipeline(path: Path) -> dict:
    """An --init-from source made from a saved pipeline (e.g. the shipped models/darkroom-mini, or an
    older commit's, ``git archive <commit> models/darkroom-mini | tar -x -C DIR``) instead of a ckpt.pt.

    Checkpoints stay in the run folder and do not outlive its machine; the committed pipeline does.
    It holds the EMA weights only (fp16), so the training weights start as the EMA's, and the
    training-only semantic head starts fresh (its loss falls back to the run's level in ~300 steps)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    tr = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer").float()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").float()
    meta_file = path / "darkroom_mini.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    sd = tr.state_dict()
    return {"step": int(meta.get("train_step", 0)), "transformer": sd, "ema": sd, "vae": vae.state_dict(),
            "vae_shift": vae.config.shift_factor, "vae_scale": vae.config.scaling_factor,
            "args": {"heads": tr.config.num_attention_heads, "double": tr.config.num_layers,
                     "single": tr.config.num_single_layers}}


def train_stage(args: argparse.Namespace) -> None:
    """Train one stage as the parsed command line says (``training.train.main``)."""
    # OpenMP's wait policy is left to the environment: on an otherwise idle CPU the default
    # (spin, then sleep) was ~20% faster than PASSIVE (727 vs 919 ms per batch of 32, width 192);
    # when other processes share the cores, OMP_WAIT_POLICY=PASSIVE avoids a 4-5x slowdown.
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.batch = 4
        args.refresh_n, args.refresh_every = 24, 3
        args.hours = 0.0
        args.max_steps = 6
    run = Path(args.run or f"training/runs/{'smoke' if args.smoke else 'mini-s%d' % args.seed}")
    run.mkdir(parents=True, exist_ok=True)
    log(f"args {vars(args)}")
    torch.manual_seed(args.seed)
    ckpt_path = run / "ckpt.pt"

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (outside bf16 autocast)
        torch.backends.cudnn.allow_tf32 = True
    enc = bp.load_text_encoder().to(device)
    state = None
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        log(f"resuming from step {state['step']} (elapsed {state['elapsed'] / 60:.1f} min)")

    init = None  # --init-from: another run's weights, this run's optimizer and schedule
    if state is None and args.init_from:
        init = (init_from_pipeline(Path(args.init_from)) if Path(args.init_from).is_dir()
                else torch.load(args.init_from, map_location="cpu", weights_only=False))

    vae = bp.make_vae()
    prev_elapsed = 0.0
    if init is not None:  # the transformer was trained on that run's latent scaling: keep it
        vae.load_state_dict(init["vae"])
        vae.register_to_config(shift_factor=init["vae_shift"], scaling_factor=init["vae_scale"])
    elif state is not None:
        vae.load_state_dict(state["vae"])
        vae.register_to_config(shift_factor=state["vae_shift"], scaling_factor=state["vae_scale"])
        prev_elapsed = state["elapsed"]
    else:
        shift, scale = latent_stats(random.Random(args.seed + 1), 12 if args.smoke else 96)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        log(f"latent shift {shift:.4f} scale {scale:.4f}")
    if args.decoder_only:
        if args.decoder_from:  # continue a decoder trained earlier (the latent space never changes)
            vae.load_state_dict(torch.load(args.decoder_from, map_location="cpu"))
            log(f"decoder continues from {args.decoder_from}")
        decoder_stage(vae, args, save_to=run / "decoder.pt")
        log("decoder done")
        return
    vae.eval().requires_grad_(False)
    if args.decoder_from:  # loaded now so that every export on the way has the finished decoder
        vae.load_state_dict(torch.load(args.decoder_from, map_location="cpu"))
        log(f"decoder loaded from {args.decoder_from}")

    for src in (state, init):  # a resumed or continued run keeps its architecture
        if src is not None and "args" in src:
            for k in ("heads", "double", "single"):
                if k in src["args"]:
                    setattr(args, k, src["args"][k])
            if "aux_head" in src:  # and its head (on the block it was trained on); a weight given here wins
                args.aux_block = src["args"]["aux_block"]
                if args.aux_weight <= 0:
                    args.aux_weight = src["args"]["aux_weight"]
    transformer = bp.make_transformer(init=args.init, num_attention_heads=args.heads, num_layers=args.double,
                                      num_single_layers=args.single)
    pipe = bp.assemble(transformer, vae, text_encoder=enc)
    transformer.to(device)
    ema = copy.deepcopy(transformer).requires_grad_(False)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99),
                            fused=device.type == "cuda")
    # on a CPU a host check per step costs nothing; on a GPU it would stall the host every step
    sync_guard = device.type != "cuda"
    step = 0
    if state is not None and "transformer" in state:
        transformer.load_state_dict(state["transformer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
    if init is not None:
        transformer.load_state_dict(init["transformer"])
        ema.load_state_dict(init["ema"])
        log(f"weights from {args.init_from} (its step {init['step']}); fresh optimizer and schedule")
    aux_head = None
    if args.aux_weight > 0:  # after the EMA copy: the hook and head stay off the exported model
        aux_head = AuxHead(transformer.inner_dim).to(device)
        aux_head.attach(transformer.transformer_blocks[args.aux_block])
        opt.add_param_group({"params": list(aux_head.parameters())})
        for src in (state, init):
            if src is not None and "aux_head" in src:
                aux_head.load_state_dict(src["aux_head"])
    if state is not None and "transformer" in state:  # after the head's param group exists
        sd = state["opt"]
        if len(sd["param_groups"]) < len(opt.param_groups):  # a run without the head resumed with one
            fresh = opt.state_dict()["param_groups"][len(sd["param_groups"]):]
            sd = {"state": sd["state"], "param_groups": sd["param_groups"] + fresh}
        opt.load_state_dict(sd)
    ema_params, train_params = list(ema.parameters()), list(transformer.parameters())
    clip_params = train_params + (list(aux_head.parameters()) if aux_head is not None else [])
    # the EMA's warm-up counts the steps its weights have seen: a run continued with --init-from
    # keeps the loaded EMA instead of restarting at a decay of 0.18 and forgetting it in 10 steps
    ema_step0 = init["step"] if init is not None else 0
    nparams = sum(p.numel() for p in transformer.parameters())
    log(f"transformer params {nparams / 1e6:.2f}M")

    data_rng = random.Random(args.seed * 1000003 + step)
    gen = torch.Generator(device if device.type == "cuda" else "cpu").manual_seed(args.seed * 7919 + step)
    pool = Pool(pipe, bp.MAX_SEQ, args.pool, workers=args.data_workers, device=device,
                coupled=args.coupling == "noise", layout=args.layout, rich_p=args.rich_p,
                edit_mix=args.edit_mix, add_rule=args.add_spot, gradient=args.edit_gradient,
                blocked=args.blocked_spot)
    t0 = time.time()
    init_n = 48 if args.smoke else args.init_pool
    pool.generate(init_n, data_rng, args.edit_frac)
    empty_pe, empty_pooled = pool.empty()
    pool.check_text_encoding(["a crimson ball above a navy box", bp.NEGATIVE_PROMPT, "make the red star blue"])
    log(f"initial pool {pool.n} samples in {time.time() - t0:.1f}s")

    budget = args.hours * 3600 - (0 if args.decoder_from else args.dec_minutes * 60)
    seg_start = time.time()
    last_ckpt = time.time()
    losses = {"t2i": [], "edit": []}
    n_seen = 0
    t_log = time.time()
    data_s = 0.0  # time in pool refreshes since the last progress line (encoding, waiting on workers)

    def elapsed():
        return prev_elapsed + (time.time() - seg_start)

    def save_ckpt(final=False):
        torch.save({"step": step, "elapsed": elapsed(), "transformer": transformer.state_dict(),
                    "ema": ema.state_dict(), "opt": opt.state_dict(), "vae": vae.state_dict(),
                    "vae_shift": vae.config.shift_factor, "vae_scale": vae.config.scaling_factor,
                    "args": vars(args), **({"aux_head": aux_head.state_dict()} if aux_head else {})},
                   str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        exp = run / "export"
        # a noise-coupled model reads its layout from the initial noise: a stochastic sampler would
        # replace that noise at every step, so it ships with the deterministic one
        sched = {"stochastic_sampling": False} if args.coupling == "noise" else None
        bp.save_pipeline(ema, vae, exp, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                         "seed": args.seed}, scheduler=sched)
        log(f"checkpoint step {step} -> {ckpt_path}, export -> {exp}")
        if final:
            bp.save_pipeline(ema, vae, args.out, {"train_step": step, "train_minutes": round(elapsed() / 60, 1),
                                                  "seed": args.seed}, scheduler=sched)
            log(f"final pipeline -> {args.out}")

    transformer.train()
    prof = None  # --profile-steps: a torch.profiler window after 50 steps of warm-up, printed once
    while True:
        if args.profile_steps and step == 50 and prof is None:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            prof = profile(activities=acts)
            prof.__enter__()
        if prof is not None and step == 50 + args.profile_steps:
            prof.__exit__(None, None, None)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            for sort in dict.fromkeys(("self_cpu_time_total", key)):
                log(f"profile of {args.profile_steps} steps by {sort}:\n"
                    + prof.key_averages().table(sort_by=sort, row_limit=18))
            prof = False
        if args.max_steps is not None and step >= args.max_steps:
            break
        if args.max_steps is not None:  # a step budget (A/B runs: equal steps whatever shares the cores)
            frac = step / args.max_steps
        else:
            frac = elapsed() / budget if budget > 0 else 1.0
        if args.max_steps is None and frac >= 1.0:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        kind, pe, pooled, z, ctx, aux = pool.batch(data_rng, args.batch, args.edit_frac)
        aux_keep = None
        if args.cfg_drop > 0:
            # unconditional samples for classifier-free guidance: empty prompt; for edits the
            # unconditional target is the unchanged source image (identity edit)
            drop = (torch.rand(pe.shape[0], generator=gen, device=gen.device) < args.cfg_drop).to(device)
            pe = torch.where(drop[:, None, None], empty_pe[0].float(), pe)
            pooled = torch.where(drop[:, None], empty_pooled[0].float(), pooled)
            if ctx is not None:
                z = torch.where(drop[:, None, None, None], ctx, z)
                # the labels are the target's, and a dropped edit's target is the source. Dropped
                # text-to-image samples keep theirs: like the flow loss, the head then learns the
                # unconditional layout, which is what CFG subtracts
                aux_keep = (~drop).float()
        loss = flow_loss(transformer, pe, pooled, z, ctx, gen, args.train_shift, bf16=args.bf16,
                         edge_weight=args.edge_weight, aux_head=aux_head, aux=aux, aux_keep=aux_keep,
                         aux_weight=args.aux_weight, edit_weights=args.edit_weights)
        opt.zero_grad(set_to_none=True)
        if sync_guard and not torch.isfinite(loss):  # an unattended run must not die (or poison the EMA) on one bad batch
            log(f"step {step}: non-finite loss, batch skipped")
            continue
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        if sync_guard:
            if not torch.isfinite(gnorm):
                log(f"step {step}: non-finite gradient, batch skipped")
                continue
        else:  # same guard without stalling the host on the device: a bad batch's update is zeroed
            ok = torch.isfinite(gnorm)
            for p in clip_params:  # the head's too: a NaN head would poison every later aux loss
                if p.grad is not None:
                    p.grad.copy_(torch.where(ok, p.grad, torch.zeros_like(p.grad)))
        opt.step()
        step += 1
        n_seen += z.shape[0]
        d = min(args.ema, (1 + ema_step0 + step) / (10 + ema_step0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, train_params, 1 - d)
        losses[kind].append(loss.detach())
        if (pool.ready() if args.async_data else step % args.refresh_every == 0):
            t_data = time.time()
            pool.generate(args.refresh_n, data_rng, args.edit_frac)
            data_s += time.time() - t_data
        if step % args.log_every == 0 or args.smoke:
            dt = time.time() - t_log
            lt = torch.stack(losses["t2i"][-50:]).mean().item() if losses["t2i"] else float("nan")
            le = torch.stack(losses["edit"][-50:]).mean().item() if losses["edit"] else float("nan")
            losses = {k: v[-50:] for k, v in losses.items()}
            la = ""
            if aux_head is not None and aux_head.history:
                la = f" aux {torch.stack(aux_head.history[-50:]).mean().item():.4f}"
                aux_head.history = aux_head.history[-50:]
            log(f"step {step} loss_t2i {lt:.4f} loss_edit {le:.4f}{la} lr {lr:.2e} {n_seen / max(dt, 1e-6):.1f} samp/s "
                f"pool {pool.n} gen {pool.generated} data {100 * data_s / max(dt, 1e-6):.0f}% "
                f"elapsed {elapsed() / 60:.1f}m")
            n_seen, t_log, data_s = 0, time.time(), 0.0
        if time.time() - last_ckpt > args.ckpt_min * 60:
            save_ckpt()
            last_ckpt = time.time()
    pool.close()
    # --init-from brought a trained decoder, also when this is a resumed continuation (init is None then: the
    # weights came from the checkpoint, which carries the init run's decoder, so the flag is the only trace)
    continued = bool(args.init_from or (state is not None and state["args"].get("init_from")))
    if not args.decoder_from and not continued and args.dec_minutes > 0:
        decoder_stage(vae, args)
    save_ckpt(final=True)
    (run / "DONE").write_text(json.dumps({"step": step, "elapsed_min": elapsed() / 60}))
    log("done")
