"""The CPU runtimes: the bundled model's ONNX export on ONNX Runtime and OpenVINO gives the TorchScript path's
imputation, the choice of ``auto`` is measured once and remembered, the model input has one layout in NumPy and
torch, bad requests are refused in one line, and imputation runs without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from CollaGANImputeLib import Cancelled, InputError, ModelError, hardware, load_model, runtime, runtime_choice
from CollaGANImputeLib.acceleration import resolve_precision
from CollaGANImputeLib.contract import ModelCard, model_input, read_card, save_model, save_onnx, sha256_of
from CollaGANImputeLib.evaluate import score_imputation
from CollaGANImputeLib.inference import impute_slices
from CollaGANImputeLib.models import bundled_models, default_model
from CollaGANImputeLib.pipeline import impute_case, read_case
from core_fixtures import CONTRASTS, REPO, TinyGenerator, child_env

ONNX_RUNTIMES = [pytest.param(name, marks=pytest.mark.skipif(not hardware.installed(name), reason=f"{name} absent"))
                 for name in runtime.ONNX_RUNTIMES]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bundled():
    return default_model()


def test_model_input_is_the_same_in_numpy_and_torch():
    rng = np.random.default_rng(0)
    images = rng.random((3, 4, 8, 6), dtype=np.float32)
    available = np.array([[True, True, False, True], [False, True, True, True], [True, False, True, False]])
    target = np.array([2, 0, 3])
    x = model_input(images, available, target)
    expected = model_input(torch.from_numpy(images), torch.from_numpy(available), torch.from_numpy(target))
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    np.testing.assert_array_equal(x, expected.numpy())


def test_bundled_model_lists_its_onnx_export_with_the_same_card(bundled):
    [entry] = [m for m in bundled_models() if m.default]
    assert bundled.onnx == entry.path.with_suffix(".onnx") and bundled.onnx_sha256 == entry.onnx_sha256
    assert read_card(bundled.onnx).to_json() == bundled.card.to_json() == read_card(bundled.path).to_json()


@pytest.fixture(scope="module")
def sample_images(sample_case, bundled):
    return read_case(sample_case, bundled.card.contrasts)


@pytest.fixture(scope="module")
def torch_scores(bundled, sample_images):
    """The TorchScript path's fp32 scores of t1c from t1n+t2f on the sample case: the reference."""
    return score_imputation(bundled, sample_images, "t1c", ["t1n", "t2f"], precision="fp32", runtime="torch").scores


@pytest.mark.parametrize("precision", ["fp32", "auto"])
@pytest.mark.parametrize("name", ONNX_RUNTIMES)
def test_onnx_runtimes_score_as_the_torchscript_path_on_the_sample_case(bundled, sample_images, torch_scores, name,
                                                                        precision):
    scores = score_imputation(bundled, sample_images, "t1c", ["t1n", "t2f"], precision=precision,
                              runtime=name).scores
    assert abs(scores["ssim"] - torch_scores["ssim"]) <= 0.002
    assert abs(scores["nmse"] / torch_scores["nmse"] - 1) <= 0.01


def test_auto_measures_once_and_remembers_per_machine(bundled, tiny_model_path, monkeypatch, tmp_path):
    measured = []
    real_measure = runtime_choice.measure
    monkeypatch.setattr(runtime_choice, "measure", lambda model, names, precision="auto": measured.extend(names) or
                        real_measure(model, names, precision, rounds=2))
    choice = runtime_choice.choose_runtime(bundled, "auto", "cpu", "auto")
    expected = ["torch"] + [r for r in runtime.ONNX_RUNTIMES if hardware.installed(r)]
    assert measured == expected and choice in expected
    cache = json.loads((tmp_path / "cache" / "runtimes.json").read_text())
    [entry] = cache.values()
    assert entry["fastest"] == choice and set(entry["ms_per_slice"]) == set(expected)
    assert min(entry["ms_per_slice"], key=entry["ms_per_slice"].get) == choice
    measured.clear()
    assert runtime_choice.choose_runtime(bundled, "auto", "cpu", "auto") == choice and measured == []  # remembered
    # A model without an ONNX export runs on torch without measuring anything.
    assert runtime_choice.choose_runtime(load_model(tiny_model_path), "auto", "cpu") == "torch" and measured == []


@pytest.mark.parametrize("name", ONNX_RUNTIMES)
def test_onnx_runtime_reports_progress_per_batch_and_stops_between_batches(bundled, name):
    rng = np.random.default_rng(1)
    inputs = {c: rng.random((6, 200, 180), dtype=np.float32) for c in ("t1n", "t2f")}
    seen = []
    whole = impute_slices(bundled, inputs, "t1c", batch_size=4, progress=lambda d, t: seen.append((d, t)),
                          runtime=name, precision="fp32")
    assert seen == [(4, 6), (6, 6)] and whole.shape == (6, 200, 180) and whole.dtype == np.float32
    one_by_one = impute_slices(bundled, inputs, "t1c", batch_size=1, runtime=name, precision="fp32")
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)  # results do not depend on the batch size
    stop = threading.Event()
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        stop.set()

    with pytest.raises(Cancelled):
        impute_slices(bundled, inputs, "t1c", batch_size=2, progress=progress, cancel=stop, runtime=name)
    assert calls == [2]


@pytest.mark.parametrize("name", ONNX_RUNTIMES)
def test_onnx_engines_run_a_batch_side_by_side_with_each_slice_as_alone(bundled, name):
    runner = runtime.compile_onnx(str(bundled.onnx), bundled.onnx_sha256, name, "fp32", 2, 2)
    assert len(runner.engines) == 2  # one single-threaded engine per thread
    x = np.zeros((5, 6, 256, 256), dtype=np.float32)
    x[:, :2] = np.random.default_rng(2).random((5, 2, 256, 256), dtype=np.float32)
    x[:, 5] = 1
    batch = runner(x)
    alone = np.concatenate([runner(x[i:i + 1]) for i in range(5)])
    reversed_batch = runner(np.ascontiguousarray(x[::-1]))[::-1]
    np.testing.assert_array_equal(batch, alone)  # bit for bit: whichever engine ran a slice, whatever the batch
    np.testing.assert_array_equal(batch, reversed_batch)
    assert len({float(np.abs(batch[i]).sum()) for i in range(5)}) == 5  # every slice its own output, in order
    results: dict[int, np.ndarray] = {}
    callers = [threading.Thread(target=lambda k=k: results.__setitem__(k, runner(x[k:k + 3]))) for k in (0, 2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    np.testing.assert_array_equal(results[0], batch[0:3])  # two callers at once each get their own slices
    np.testing.assert_array_equal(results[2], batch[2:5])


@pytest.mark.parametrize("name", ONNX_RUNTIMES)
def test_each_onnx_engine_is_first_called_on_the_callers_thread(bundled, name):
    # Two threads making a runtime's first NumPy call at once can deadlock in its bindings (seen with OpenVINO):
    # every engine's first call is made on the caller's thread, one after the other; later ones in parallel.
    compiled = runtime.compile_onnx(str(bundled.onnx), bundled.onnx_sha256, name, "fp32", 2, 2)
    calls: list[tuple[int, str]] = []

    def recorded(k: int):
        def run(x: np.ndarray) -> np.ndarray:
            calls.append((k, threading.current_thread().name))
            return compiled.engines[k](x)
        return run

    runner = runtime.OnnxRunner(name, "fp32", 2, [recorded(0), recorded(1)])
    x = np.zeros((4, 6, 256, 256), dtype=np.float32)
    x[:, 5] = 1
    runner(x)
    main = threading.current_thread().name
    assert calls[:2] == [(0, main), (1, main)]
    calls.clear()
    runner(x)
    assert {k for k, _ in calls} == {0, 1} and all(thread != main for _, thread in calls)  # then side by side


@pytest.mark.skipif(not hardware.installed("openvino"), reason="openvino absent")
def test_openvino_keeps_compiled_models_in_the_cache_folder(tiny_with_onnx, tmp_path, monkeypatch):
    compile_anew = runtime.compile_onnx.__wrapped__  # past the per-process cache, as a new command would
    model, x = tiny_with_onnx, np.random.default_rng(3).random((2, 6, 32, 32), dtype=np.float32)
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "kept"))
    first = compile_anew(str(model.onnx), model.onnx_sha256, "openvino", "fp32", 1, 1)(x)
    assert any((tmp_path / "kept" / "openvino").iterdir())
    np.testing.assert_array_equal(compile_anew(str(model.onnx), model.onnx_sha256, "openvino", "fp32", 1, 1)(x), first)
    (tmp_path / "a file").write_text("")  # a cache folder that cannot be made: compiled without keeping
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "a file"))
    assert runtime.openvino_cache() is None
    np.testing.assert_array_equal(compile_anew(str(model.onnx), model.onnx_sha256, "openvino", "fp32", 1, 1)(x), first)


@pytest.fixture
def tiny_with_onnx(tmp_path):
    """The tiny generator as a TorchScript file with its ONNX export beside it (the same weights and card)."""
    torch.manual_seed(0)
    generator = TinyGenerator()
    path = tmp_path / "models" / "tiny.pt"
    path.parent.mkdir()
    save_model(generator, ModelCard(name="tiny-test", contrasts=CONTRASTS, licence="test only"), path)
    save_onnx(generator, load_model(path).card, path.with_suffix(".onnx"), torch.rand(2, 6, 32, 32))
    return load_model(path)


@pytest.mark.parametrize("name", ["torch", *ONNX_RUNTIMES])
def test_sidecars_say_what_ran_the_model(tiny_with_onnx, phantom_case, tmp_path, name):
    """The synthetic volume's and the uncertainty map's sidecars name the runtime that ran, the precision it
    ran at (never 'auto') and the SHA-256 of the file it ran: the ONNX export's, or the TorchScript file's."""
    model = tiny_with_onnx
    written = impute_case(phantom_case, model, out_dir=tmp_path / "out", targets=["t1c"], device="cpu",
                          runtime=name, uncertainty=True, montage=False)
    ran = model.path if name == "torch" else model.onnx
    precision = (resolve_precision("auto", torch.device("cpu")) if name == "torch"
                 else runtime.resolve_onnx_precision(name, "auto"))
    for kind in ("synthetic", "uncertainty"):
        sidecar = written["t1c"].with_name(f"case-001-t1c-{kind}-collagan.json")
        record = json.loads(sidecar.read_text())
        assert record["collagan_runtime"] == name and record["collagan_device"] == "cpu"
        assert record["collagan_runtime_file"] == ran.name and record["collagan_runtime_sha256"] == sha256_of(ran)
        assert record["collagan_precision"] == precision != "auto"
    assert model.sha256 != model.onnx_sha256  # the two files differ: the recorded hash tells which ran


def test_refusals_say_what_to_do(bundled, tiny_model_path):
    inputs = {"t1n": np.zeros((1, 32, 32), np.float32)}
    with pytest.raises(InputError, match="Unknown runtime 'tensorrt'; use one of auto, torch, onnxruntime"):
        impute_slices(bundled, inputs, "t1c", runtime="tensorrt")
    with pytest.raises(ModelError, match="no ONNX export beside tiny.pt.*--runtime torch"):
        impute_slices(load_model(tiny_model_path), inputs, "t1c", runtime="onnxruntime")
    with pytest.raises(InputError, match="does not run bf16 on the CPU: use --precision fp32"):
        impute_slices(bundled, inputs, "t1c", runtime="onnxruntime", precision="bf16")
    with pytest.raises(InputError, match="runs on the CPU: use --device cpu"):
        impute_slices(bundled, inputs, "t1c", runtime="openvino", device="cuda")


def test_onnx_beside_a_model_must_carry_its_card(tiny_model_path, bundled, tmp_path):
    model = tmp_path / "tiny.pt"
    model.write_bytes(tiny_model_path.read_bytes())
    model.with_suffix(".onnx").write_bytes(bundled.onnx.read_bytes())  # another model's export
    with pytest.raises(ModelError, match="does not carry the card of tiny.pt.*export both again"):
        load_model(model)


def test_cards_are_read_and_models_loaded_without_torch(bundled):
    """read_card reads the card alone (zip member, ONNX metadata); load_model without torch keeps the ONNX file."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from CollaGANImputeLib.contract import load_model, read_card\n"
            f"pt = {str(bundled.path)!r}\n"
            "print(read_card(pt).name, read_card(pt[:-3] + '.onnx').name)\n"
            "model = load_model(pt)\n"
            "print(model.module, model.onnx.name, 'torch' in sys.modules and sys.modules['torch'] is not None)")
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO / "CollaGANImpute"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [bundled.card.name, bundled.card.name, "None", bundled.onnx.name, "False"]


def test_demo_runs_without_torch(tmp_path):
    """The CLI demo in a process where ``import torch`` fails: ONNX Runtime or OpenVINO imputes, and every
    volume written is labelled synthetic."""
    if not any(hardware.installed(r) for r in runtime.ONNX_RUNTIMES):
        pytest.skip("no ONNX runtime installed")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from CollaGANImputeLib.cli import main\n"
            f"sys.exit(main(['demo', '--out', {str(tmp_path / 'out')!r}, '--threads', '1']))")
    env = {**os.environ, runtime.CACHE_ENV: str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "CollaGANImpute"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runtime onnxruntime (chosen)" in done.stderr or "runtime openvino (chosen)" in done.stderr
    volumes = sorted((tmp_path / "out").glob("*-synthetic-collagan.nii.gz"))
    assert [v.name.split("-")[-3] for v in volumes] == ["t1c", "t1n", "t2f"]
    for volume in volumes:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(volume))
        reader.ReadImageInformation()
        assert "SYNTHETIC" in reader.GetMetaData("descrip").upper()
        assert json.loads(volume.with_name(volume.name.replace(".nii.gz", ".json")).read_text())["collagan_synthetic"]


@pytest.mark.parametrize("name", ONNX_RUNTIMES)
def test_cpu_imputation_on_an_onnx_runtime_imports_neither_torch_nor_onnx(phantom_case, tmp_path, name):
    """torch and onnx are installed, yet the CLI loads the bundled model (card read from the archive, listed
    SHA-256s checked), imputes on an ONNX runtime and labels the output synthetic without importing either."""
    for contrast in ("t1c", "seg"):
        (phantom_case / f"case-001-{contrast}.nii.gz").unlink()
    out = tmp_path / "out"
    code = ("import sys\n"
            "from CollaGANImputeLib.cli import main\n"
            f"status = main(['impute', {str(phantom_case)!r}, '--target', 't1c', '--runtime', {name!r}, "
            f"'--threads', '1', '--out', {str(out)!r}])\n"
            "print(status, 'torch' in sys.modules, 'onnx' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=child_env(**{runtime.CACHE_ENV: str(tmp_path / "cache")}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["0", "False", "False"], done.stdout[-2000:]
    assert f"runtime {name} (asked for)" in done.stderr and ", 1 thread)" in done.stderr
    record = json.loads((out / "case-001-t1c-synthetic-collagan.json").read_text())
    assert record["collagan_runtime"] == name and record["collagan_runtime_file"].endswith(".onnx")
    assert sitk.ReadImage(str(out / "case-001-t1c-synthetic-collagan.nii.gz")).GetSize() == (40, 48, 12)


def test_the_torchscript_module_loads_on_first_use(bundled, tiny_model_path):
    """load_model reads the card alone; the module is loaded (and its weights checked) when first used, once."""
    model = load_model(tiny_model_path)
    assert model.has_module and model.loader is not None
    module = model.module
    assert isinstance(module, torch.jit.ScriptModule) and model.module is module and model.loader is None
    assert runtime_choice.torch_usable(model)


def test_threads_set_before_torch_is_imported_reach_it_when_a_model_is_loaded(tiny_model_path):
    """``--threads`` does not import torch; the first model loaded for torch gives torch those threads."""
    code = ("import sys\n"
            "from CollaGANImputeLib import hardware\n"
            "from CollaGANImputeLib.contract import load_model\n"
            "hardware.set_num_threads(1)\n"
            f"model = load_model({str(tiny_model_path)!r})\n"
            "print('torch' in sys.modules)\n"
            "model.module\n"
            "import torch\n"
            "print(torch.get_num_threads(), hardware.num_threads())")
    assert _python(code).split() == ["False", "1", "1"]


def test_auto_asks_torch_about_cuda_only_where_an_nvidia_driver_is_loaded(monkeypatch, tmp_path):
    """Without the driver's files a GPU cannot be usable: ``auto`` is the CPU without asking torch (whose answer
    here is forced to yes, so that asking it would show); with them, torch is asked as before."""
    monkeypatch.setattr(hardware.platform, "system", lambda: "Linux")
    monkeypatch.setattr(hardware, "NVIDIA_DRIVER_VERSION", tmp_path / "proc" / "version")
    monkeypatch.setattr(hardware, "DEVICE_FILES", tmp_path / "dev")
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not hardware.nvidia_driver_loaded()
    assert runtime_choice.wants_cuda("auto") is False and str(hardware.resolve_device("auto")) == "cpu"
    assert runtime_choice.wants_cuda("cuda:0") is True
    (tmp_path / "dev" / "nvidiactl").touch()
    assert hardware.nvidia_driver_loaded() and runtime_choice.wants_cuda("auto") is True
    (tmp_path / "dev" / "nvidiactl").unlink()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module\n")
    assert runtime_choice.wants_cuda("auto") is True


def test_the_cpu_asked_for_by_name_does_not_import_torch():
    """``--device cpu`` on an ONNX runtime spares torch's import (over a second of every CLI run), as ``auto``
    without an NVIDIA driver does; once torch is loaded, its callers get torch's device."""
    code = ("import sys\n"
            "from CollaGANImputeLib.hardware import resolve_device\n"
            "print(repr(resolve_device('cpu')), 'torch' in sys.modules)\n"
            "import torch\n"
            "print(repr(resolve_device('cpu')), repr(resolve_device(torch.device('cpu'))))")
    assert _python(code).splitlines() == ["'cpu' False", "device(type='cpu') device(type='cpu')"]


def _python(code: str) -> str:
    """The standard output of ``code`` run in a fresh interpreter (which must succeed)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not hardware.installed("openvino"), reason="openvino absent")
def test_openvino_models_freed_in_any_order_leave_signals_handled(bundled):
    """Two compiled OpenVINO models freed in the order they were made, then a handled signal: the process goes on
    (each compile on a Core of its own used to leave the thread's alternate signal stack unmapped: a segfault).
    Threads asking for the Core at once get the same one."""
    code = ("import gc, os, signal\n"
            "from CollaGANImputeLib import runtime\n"
            "from CollaGANImputeLib.models import default_model\n"
            "from concurrent.futures import ThreadPoolExecutor\n"
            "with ThreadPoolExecutor(4) as pool:  # the first callers at once get one Core\n"
            "    print(len({id(c) for c in pool.map(lambda _: runtime.openvino_core(), range(4))}))\n"
            "model = default_model()\n"
            "first = runtime.onnx_runner(model, 'openvino', 'fp32', engines=1)\n"
            "runtime.compile_onnx.cache_clear()  # the second is compiled anew\n"
            "second = runtime.onnx_runner(model, 'openvino', 'fp32', engines=1)\n"
            "runtime.compile_onnx.cache_clear()\n"
            "del first; gc.collect()\n"
            "del second; gc.collect()\n"
            "signal.signal(signal.SIGUSR1, lambda *_: print('handled', flush=True))\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('went on', flush=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=child_env(OMP_NUM_THREADS="1"))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["1", "handled", "went", "on"]
