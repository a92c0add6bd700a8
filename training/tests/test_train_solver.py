"""Training behaviour on real slices of the bundled case: learning, exact resume, input dropout."""

from __future__ import annotations

import pytest
import torch

from training.collagan_train.solver import Solver, build_input


def _fixed(solver: Solver):
    """Freeze the solver's sampling on its first batch (a fixed batch to fit)."""
    batch = solver.sample()
    solver.sample = lambda: batch
    return batch


def _direct_l1(solver: Solver, batch) -> float:
    images, target, available, *_ = batch
    with torch.no_grad():
        fake = solver.G(build_input(images, available, target))
    return float((fake - images[torch.arange(len(target)), target][:, None]).abs().mean())


def test_l1_steps_lower_the_loss_on_a_fixed_batch(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("method=l1", "steps=25"), sample_slices, None)
    batch = _fixed(solver)
    before = _direct_l1(solver, batch)
    for _ in range(25):
        solver.train_step()
    assert _direct_l1(solver, batch) < 0.6 * before


def test_collagan_steps_lower_the_cycle_loss(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("clsf_warmup_steps=0", "input_dropout_max_extra=0"), sample_slices, None)
    _fixed(solver)
    first = [solver.train_step() for _ in range(3)]
    for _ in range(30):  # 30, not 20: since D_clsf learns (He init), G also fits the classification term
        last = solver.train_step()
    assert last["phase"] == "gan" and {"g_gan", "g_clsf", "cyc_l1", "cyc_ssim"} <= set(last)
    assert last["cyc_l1"] < 0.7 * min(o["cyc_l1"] for o in first)


def test_classifier_warm_up_trains_only_d(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("clsf_warmup_steps=2"), sample_slices, None)
    g_before = [p.clone() for p in solver.G.parameters()]
    outs = [solver.train_step() for _ in range(2)]
    assert [o["phase"] for o in outs] == ["clsf", "clsf"] and "loss_g" not in outs[0]
    assert all(torch.equal(a, b) for a, b in zip(g_before, solver.G.parameters()))
    assert solver.train_step()["phase"] == "gan"


def test_a_fixed_generator_trains_only_d(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("clsf_warmup_steps=0", "freeze_g=true"), sample_slices, None)
    g0 = {k: v.clone() for k, v in solver.G.state_dict().items()}
    d0 = {k: v.clone() for k, v in solver.D.state_dict().items()}
    out = [solver.train_step() for _ in range(2)]
    assert all("loss_d" in o and "loss_g" not in o for o in out)
    assert all(torch.equal(v, solver.G.state_dict()[k]) for k, v in g0.items())
    assert any(not torch.equal(v, solver.D.state_dict()[k]) for k, v in d0.items())


def test_input_dropout_nulls_target_and_keeps_an_input(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("batch_size=8", "input_dropout_max_extra=2"), sample_slices, None)
    counts = set()
    for _ in range(5):
        _, target, available, *_ = solver.sample()
        assert not available[torch.arange(8), target].any()
        assert (available.sum(1) >= 1).all()
        counts |= set(available.sum(1).tolist())
    assert counts == {1, 2}  # sometimes one more input nulled besides the target
    single = Solver(tiny_cfg("method=single_input", "batch_size=8"), sample_slices, None)
    assert (single.sample()[2].sum(1) == 1).all()
    never = Solver(tiny_cfg("batch_size=8", "input_dropout_p=0.0"), sample_slices, None)
    assert all((never.sample()[2].sum(1) == 2).all() for _ in range(3))  # all other inputs kept


def test_kill_and_resume_gives_the_same_next_losses(tiny_cfg, sample_slices, tmp_path):
    cfg = tiny_cfg("steps=6", "clsf_warmup_steps=2")
    reference = Solver(cfg, sample_slices, None, out_dir=str(tmp_path / "a"))
    expected = [reference.train_step() for _ in range(6)]
    first = Solver(cfg, sample_slices, None, out_dir=str(tmp_path / "b"))
    for _ in range(3):
        first.train_step()
    path = first.save("latest.pt")
    del first  # the "killed" process
    resumed = Solver.from_checkpoint(str(path), sample_slices, None, out_dir=str(tmp_path / "b"))
    assert resumed.step == 3
    got = [resumed.train_step() for _ in range(3)]
    assert got == expected[3:]  # bit-identical on CPU
    for a, b in zip(reference.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_a_new_learning_rate_applies_it(tiny_cfg, sample_slices, tmp_path):
    cfg = tiny_cfg("steps=4", "clsf_warmup_steps=0", "lr_decay_every=2", "lr_decay=0.5")
    first = Solver(cfg, sample_slices, None, out_dir=str(tmp_path))
    for _ in range(3):
        first.train_step()
    path = first.save("latest.pt")
    same = Solver.from_checkpoint(str(path), sample_slices, None, out_dir=str(tmp_path))
    assert same.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)  # tiny lr 1e-3, one decay
    faster = Solver.from_checkpoint(str(path), sample_slices, None, tiny_cfg(
        "steps=4", "clsf_warmup_steps=0", "lr_decay_every=2", "lr_decay=0.5", "lr_g=4e-3"), out_dir=str(tmp_path))
    assert faster.opt_g.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.5)  # new base, same decay position
    assert faster.opt_d.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    faster.train_step()
    faster.train_step()  # the schedule keeps decaying from the new base
    assert faster.opt_g.param_groups[0]["lr"] == pytest.approx(4e-3 * 0.25)


def test_train_loop_writes_log_curves_and_checkpoints(tiny_cfg, sample_slices, tmp_path):
    solver = Solver(tiny_cfg("steps=4", "val_every=2", "clsf_warmup_steps=1"), sample_slices, sample_slices,
                    out_dir=str(tmp_path / "run"))
    solver.train()
    run = tmp_path / "run"
    assert {"log.csv", "val.csv", "latest.pt", "best.pt", "curves.png"} <= {p.name for p in run.iterdir()}
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("step,")
    assert "mean_nmse" in (run / "val.csv").read_text()


def test_resuming_a_log_from_older_code_keeps_columns_aligned(tiny_cfg, sample_slices, tmp_path):
    """A log.csv written before the direct_l2 column existed: the resumed run's rows go under the file's header
    (the new column appended), and old rows keep their values (not shifted: no row one field too long)."""
    import csv

    from training.collagan_train.run_logs import LOG_FIELDS

    run = tmp_path / "run"
    run.mkdir()
    old_fields = [f for f in LOG_FIELDS if f != "direct_l2"]
    with open(run / "log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_fields)
        writer.writeheader()
        writer.writerow({f: (0 if f == "step" else 0.5) for f in old_fields})  # kept: not after the start
    solver = Solver(tiny_cfg("steps=2", "clsf_warmup_steps=0", "val_every=100"), sample_slices, None,
                    out_dir=str(run))
    solver.train()
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == old_fields + ["direct_l2"] and all(len(r) == len(rows[0]) for r in rows)
    records = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert records[0]["step"] == "0" and records[0]["direct_l2"] == "" and records[0]["cyc_l1"] == "0.5"
    assert [r["step"] for r in records[1:]] == ["1", "2"] and all(r["loss_g"] for r in records[1:])


@pytest.mark.parametrize("method", ["no_mcc", "no_ssim"])
def test_ablation_methods_run(tiny_cfg, sample_slices, method):
    solver = Solver(tiny_cfg(f"method={method}", "clsf_warmup_steps=0"), sample_slices, None)
    out = solver.train_step()
    if method == "no_mcc":
        assert "cyc_l1" not in out and out["direct_l1"] > 0 and out["direct_ssim"] > 0
    else:
        assert out["cyc_l1"] > 0 and out["cyc_ssim"] == 0.0


def test_bf16_autocast_and_channels_last_step(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("bf16=true", "channels_last=true", "clsf_warmup_steps=0"), sample_slices, None)
    out = solver.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k != "phase")
    assert solver.G.out.weight.is_contiguous(memory_format=torch.channels_last)


def test_bf16_autocast_by_default_only_where_the_cpu_multiplies_bf16(tiny_cfg, sample_slices, monkeypatch):
    import training.collagan_train.precision as precision

    for native in (False, True):  # emulated bf16 made a training step 20x slower than fp32 on an AVX2-only CPU
        monkeypatch.setattr(precision, "torch_native_bf16", lambda native=native: native)
        solver = Solver(tiny_cfg("bf16=null"), sample_slices, None)
        with solver.autocast():
            assert torch.is_autocast_enabled("cpu") == native
    with Solver(tiny_cfg("bf16=false"), sample_slices, None).autocast():
        assert not torch.is_autocast_enabled("cpu")  # as asked, whatever the CPU


def test_init_g_warm_starts_only_the_generator(tiny_cfg, sample_slices, tmp_path):
    donor = Solver(tiny_cfg("method=l1", "seed=3"), sample_slices, None, out_dir=str(tmp_path / "donor"))
    donor.train_step()
    ckpt = donor.save("latest.pt")
    fresh = Solver(tiny_cfg(), sample_slices, None)
    seeded = Solver(tiny_cfg(f"init_g={ckpt}"), sample_slices, None)
    assert all(torch.equal(a, b) for a, b in zip(seeded.G.state_dict().values(), donor.G.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(seeded.D.state_dict().values(), fresh.D.state_dict().values()))
    assert seeded.step == 0 and seeded.train_step()["phase"] == "clsf"  # its own warm-up and schedule


def test_init_g_refuses_a_different_architecture(tiny_cfg, sample_slices, tmp_path):
    donor = Solver(tiny_cfg("g_base=8"), sample_slices, None, out_dir=str(tmp_path / "donor"))
    ckpt = donor.save("latest.pt")
    with pytest.raises(ValueError, match="g_base"):
        Solver(tiny_cfg(f"init_g={ckpt}", "g_base=4"), sample_slices, None)


def test_init_g_from_a_plain_generator_fits_the_voxel_prior(tiny_cfg, sample_slices, tmp_path):
    donor = Solver(tiny_cfg("method=l1"), sample_slices, None, out_dir=str(tmp_path / "donor"))
    ckpt = donor.save("latest.pt")
    seeded = Solver(tiny_cfg(f"init_g={ckpt}", "g_voxel_prior=true"), sample_slices, None)
    assert seeded.G.prior.coef.abs().sum() > 0  # fitted on the training slices
    assert float(seeded.G.out.weight.abs().sum()) == 0.0  # starts as the voxel regression
    shared = {k: v for k, v in seeded.G.state_dict().items() if not k.startswith(("prior.", "out."))}
    assert all(torch.equal(v, donor.G.state_dict()[k]) for k, v in shared.items())
    out = seeded.train_step()
    assert out["phase"] == "clsf" and seeded.G.voxel_prior


def test_ema_weights_average_g_survive_resume_and_are_exported(tiny_cfg, sample_slices, tmp_path):
    from training.collagan_train.export import export_checkpoint

    solver = Solver(tiny_cfg("method=l1", "ema_decay=0.5", "w_direct_l2=1.0"), sample_slices, None,
                    out_dir=str(tmp_path / "run"))
    start = [p.clone() for p in solver.G_ema.parameters()]
    out = [solver.train_step() for _ in range(3)][-1]
    assert "direct_l2" in out
    live, avg = list(solver.G.parameters()), list(solver.G_ema.parameters())
    moved = [not torch.equal(a, s) for a, s in zip(avg, start)]
    assert any(moved) and not all(torch.equal(a, b) for a, b in zip(avg, live))  # between start and G
    ckpt = solver.save("latest.pt")
    resumed = Solver.from_checkpoint(str(ckpt), sample_slices, None)
    assert all(torch.equal(a, b) for a, b in zip(resumed.G_ema.parameters(), avg))
    model = export_checkpoint(str(ckpt), str(tmp_path / "m.pt"), optimize=False)
    images, target, available, *_ = solver.sample()
    x = build_input(images, available, target)
    loaded = torch.jit.load(str(model))
    with torch.no_grad():
        assert torch.allclose(loaded(x), solver.G_ema.eval()(x), atol=1e-5)


def test_head_only_loss_ignores_everything_outside_the_mask(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("method=l1", "head_only_loss=true"), sample_slices, None)
    images, target, available, masks, lesions, scale = solver.sample()
    solver.sample = lambda: (images, target, available, torch.zeros_like(masks), lesions, scale)
    assert solver.train_step()["direct_l1"] == 0.0  # no head: the output is never compared with anything
    solver.sample = lambda: (images, target, available, masks, lesions, scale)
    assert solver.train_step()["direct_l1"] > 0.0


def test_resume_needs_no_warm_start_file(tiny_cfg, sample_slices, tmp_path):
    # A committed stage-2 checkpoint names its stage-1 init_g, which a fresh clone does not have.
    seed = Solver(tiny_cfg("method=l2"), sample_slices, None, out_dir=str(tmp_path / "seed")).save("seed.pt")
    staged = Solver(tiny_cfg("method=l2", "g_voxel_prior=true", f"init_g={seed}"), sample_slices, None,
                    out_dir=str(tmp_path / "staged"))
    staged.train_step()
    path = staged.save("latest.pt")
    seed.unlink()
    resumed = Solver.from_checkpoint(str(path), sample_slices, None, out_dir=str(tmp_path / "staged"))
    assert resumed.step == 1 and resumed.cfg.init_g == str(seed)  # kept for the card's lineage
    for a, b in zip(staged.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)


def test_enhancement_into_a_contrast_the_model_lacks_is_refused(tiny_cfg, sample_slices):
    with pytest.raises(ValueError, match="aug_enhance_contrast"):
        Solver(tiny_cfg("aug_enhance_p=0.5", "aug_enhance_contrast=t1ce"), sample_slices, None)


def test_pooled_identity_term_is_logged(tiny_cfg, sample_slices):
    solver = Solver(tiny_cfg("method=l1", "w_identity_pooled=1", "batch_size=4"), sample_slices, None)
    assert "identity_pooled" in solver.train_step()


def test_the_training_modules_examples_hold():
    import doctest

    from training.collagan_train import cohort_report, losses, run_records, sampling, validation

    for module in (cohort_report, losses, run_records, sampling, validation):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
