"""``ssrseg reproduce`` end to end on a tiny fake VOC in the real layout (random-weight
backbones, a few images per split, four iterations): every stage's outputs, the report against
the paper, resume without redoing finished stages, and a changed configuration redoing exactly
the stages it affects."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import parallel_fakes
from reproduce_fakes import REPO, fake_voc_world
from ssrseg.cli import main
from ssrseg.config import load_config
from ssrseg.protocol import plan as rplan
from ssrseg.protocol import reproduce as rp
from ssrseg.protocol import stages as rstages
from ssrseg.protocol.report import measured, table


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return fake_voc_world(tmp_path_factory.mktemp("repro"))


def voc_cfg(world: dict[str, Any], *extra: str) -> Any:
    return load_config(REPO / "configs" / "voc.yaml", [*world["overrides"], *extra])


PLAN = rplan.ReproducePlan(device="cpu", progress=False, panels=1, crf="on")


@pytest.fixture(scope="module")
def full_run(world: dict[str, Any]) -> dict[str, Any]:
    """One complete run (every stage), shared by the tests that read or copy it."""
    out = world["base"] / "run"
    report = rp.run_reproduce(voc_cfg(world), out, PLAN)
    return {"out": out, "report": report}


def _state(out: Path, stage: str) -> dict[str, Any]:
    return json.loads((out / stage / "stage.json").read_text())


def test_every_stage_writes_usable_outputs(full_run: dict[str, Any], world: dict) -> None:
    out, report = full_run["out"], full_run["report"]
    for stage in ("seeds", "train", "cmpa", "eval", "export"):
        state = _state(out, stage)
        assert state["status"] == "done" and state["wall_s"] >= 0
        assert state["peak_memory"]["cpu_rss_mb"] > 0
    # checkpoint folder, label PNGs and metrics JSON usable on their own
    assert (out / "train" / "last").read_text().strip() == "ckpt_4"
    assert sorted(p.name for p in (out / "seeds" / "labels").glob("*.png")) == [
        "2007_000001.png",
        "2007_000002.png",
        "2007_000003.png",
    ]
    # the seed row "+ PAR" rescored from its PNGs with `ssrseg evaluate`
    pred = out / "seeds" / "labels"
    args = ["evaluate", "--pred", str(pred), "--root", str(world["base"] / "data"), "--quiet"]
    assert main([*args, "--split", "train", "--out", str(out / "rescored.json")]) == 0
    rescored = json.loads((out / "rescored.json").read_text())
    seeds = measured(report, "table3_raw")
    assert seeds["+ PAR (pseudo labels)"]["miou"] == pytest.approx(100 * rescored["miou"])
    # ... and equal to what `ssrseg pseudo-labels` writes for the same configuration
    pl = out / "pseudo_labels"
    voc_yaml = str(REPO / "configs" / "voc.yaml")
    cmd = ["pseudo-labels", "--config", voc_yaml, "--split", "train", "--out", str(pl)]
    assert main([*cmd, "--no-progress", *world["overrides"], "cam.projected=false"]) == 0
    for png in pred.glob("*.png"):
        ours, theirs = (np.asarray(Image.open(p)) for p in (png, pl / png.name))
        assert np.array_equal(ours, theirs), png.name
    # val predictions of both CRF modes rescored the same way
    for key, row in (("no_crf", "SSR without CRF"), ("crf", "SSR with CRF")):
        dest = out / f"val_{key}.json"
        assert main([*args, "--pred", str(out / "eval" / "pred" / key), "--out", str(dest)]) == 0
        score = 100 * json.loads(dest.read_text())["miou"]
        assert measured(report, "segmentation")[row]["miou"] == pytest.approx(score)
    # the VOC test export: both archives hold one PNG per test id in the server's layout
    for key in ("no_crf", "crf"):
        with tarfile.open(out / "export" / key / "results.tar.gz") as tar:
            names = sorted(tar.getnames())
        prefix = "results/VOC2012/Segmentation/comp6_test_cls/"
        assert [n for n in names if n.endswith(".png")] == [
            prefix + "2009_000001.png",
            prefix + "2009_000002.png",
        ]


def test_report_sets_every_number_beside_the_papers(full_run: dict[str, Any]) -> None:
    out, report = full_run["out"], full_run["report"]
    t3 = table(report, "table3_cmpa")
    assert t3 is not None
    sgc = next(r for r in t3["rows"] if r["name"] == "+ SGC mask")
    assert sgc["paper"] == {"precision": 87.9, "recall": 89.1, "miou": 78.7}
    assert sgc["diff"]["miou"] == pytest.approx(sgc["measured"]["miou"] - 78.7)
    t4 = measured(report, "table4")
    assert t4["raw CLIP CAM"] == measured(report, "table3_raw")["initial CAM"]
    assert t4["CMPA CAM"] == measured(report, "table3_cmpa")["initial CAM"]
    summary = {r["name"]: r for r in report["summary"]}
    val = summary["val mIoU, with CRF"]
    assert val["paper"] == 79.5 and val["diff"] == pytest.approx(val["measured"] - 79.5)
    assert summary["val mIoU, without CRF"]["paper"] == 78.2
    assert summary["test mIoU, with CRF"]["paper"] == 79.6
    assert "export/crf/results.tar.gz" in summary["test mIoU, with CRF"]["note"]
    share = summary["share of fully supervised (with CRF)"]
    assert share["measured"] == pytest.approx(100 * val["measured"] / 81.6)
    # VOC val is the paper's protocol itself: no in-distribution stage, no second share, no gap
    assert "eval_in_distribution" not in report["stages"]
    assert not [name for name in summary if "share gap" in name or "split:" in name]
    # split sizes compared with the paper's, as warnings (fake data)
    warning = "train_aug has 5 images where the paper uses 10,582"
    assert any(warning in w for w in report["warnings"])
    assert report["check"]["splits"]["training"]["size"] == 5
    md = (out / "report.md").read_text()
    for text in ("Table 3, CMPA-projected space", "| + SGC mask |", "78.7", "79.5", "Stages"):
        assert text in md
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["config_hash"] == report["config_hash"] and len(report["config_hash"]) == 12
    assert on_disk["environment"]["versions"]["torch"]
    for fig in report["figures"]:
        assert (out / fig).is_file()
    assert "figures/rows_vs_paper.png" in report["figures"]


def test_rerun_reuses_every_finished_stage(
    full_run: dict[str, Any], world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(run: Any, resumed: bool) -> dict:
        raise AssertionError("a finished stage ran again")

    for stage in rp.STAGE_FUNCTIONS:
        monkeypatch.setitem(rp.STAGE_FUNCTIONS, stage, refuse)
    report = rp.run_reproduce(voc_cfg(world), full_run["out"], PLAN)
    assert report["summary"] == full_run["report"]["summary"]
    assert report["stages"]["train"]["status"].startswith("reused")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.iterations=5", {"train", "cmpa", "eval", "export"}),
        ("sgc.theta=0.6", {"seeds", "train", "cmpa", "eval", "export"}),
        ("infer.flip=false", {"eval", "export"}),
        ("crf.bilateral_srgb=6", {"eval", "export"}),
        ("data.num_workers=2", set()),
    ],
)
def test_changed_config_redoes_exactly_the_affected_stages(
    full_run: dict[str, Any], world: dict, override: str, expected: set[str]
) -> None:
    run = rplan.Run(voc_cfg(world, override), full_run["out"], PLAN, rplan.resolve_device("cpu"),
                 (False, True))  # fmt: skip
    status = rplan.plan_work(run)
    assert {s for s, v in status.items() if v == "run"} == expected


def test_changed_inference_reruns_eval_only(
    full_run: dict[str, Any], world: dict, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(full_run["out"], out)
    before = {s: _state(out, s)["token"] for s in ("seeds", "train", "cmpa", "eval", "export")}
    rp.run_reproduce(voc_cfg(world, "infer.flip=false"), out, PLAN)
    after = {s: _state(out, s)["token"] for s in before}
    assert [s for s in before if before[s] != after[s]] == ["eval", "export"]
    assert _state(out, "eval")["record"]["config"]["infer"]["flip"] is False
    # the new setting reached the segmenter (not the one saved with the checkpoint)
    assert json.loads((out / "eval" / "metrics.json").read_text())["infer"]["flip"] is False
    assert json.loads((full_run["out"] / "eval" / "metrics.json").read_text())["infer"]["flip"]


def test_stages_option_needs_finished_inputs(full_run: dict[str, Any], world: dict) -> None:
    out = full_run["out"]
    # eval alone on a new training configuration: train is stale, so eval cannot run
    plan = rplan.ReproducePlan(device="cpu", progress=False, stages=("eval",))
    with pytest.raises(rplan.ReproduceError, match="add train to --stages"):
        rp.run_reproduce(voc_cfg(world, "train.iterations=6"), out, plan)
    with pytest.raises(rplan.ReproduceError, match="unknown stage"):
        rp.run_reproduce(voc_cfg(world), out, rplan.ReproducePlan(stages=("evaluate",)))


def test_kill_inside_training_resumes_without_redoing_seeds(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrseg.engine.train import Trainer

    out = tmp_path / "run"
    plan = rplan.ReproducePlan(device="cpu", progress=False, panels=0, crf="off",
                            stages=("seeds", "train"))  # fmt: skip
    real_step = Trainer.train_step

    def dies_at_step_3(self: Trainer, batch: dict) -> dict:
        if self.step == 2:  # the checkpoint of step 2 is written; the process dies
            raise KeyboardInterrupt("killed")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        rp.run_reproduce(voc_cfg(world), out, plan)
    assert _state(out, "seeds")["status"] == "done"
    assert _state(out, "train")["status"] == "running"
    assert (out / "train" / "last").read_text().strip() == "ckpt_2"
    seeds_token = _state(out, "seeds")["token"]

    monkeypatch.setattr(Trainer, "train_step", real_step)
    monkeypatch.setitem(rp.STAGE_FUNCTIONS, "seeds", lambda run, resumed: 1 / 0)
    rp.run_reproduce(voc_cfg(world), out, plan)
    train = _state(out, "train")
    assert train["status"] == "done" and train["resumed"] is True
    assert _state(out, "seeds")["token"] == seeds_token
    steps = [
        json.loads(x)["step"] for x in (out / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first attempt, 3-4 after the resume


def test_missing_weights_stop_before_any_work(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSRSEG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cfg = voc_cfg(world, "backbone.clip=clip_vit_b16.openai", f"backbone.dino={tmp_path}/no.pth")
    with pytest.raises(rplan.ReproduceError) as exc:
        rp.run_reproduce(cfg, out, PLAN)
    text = str(exc.value)
    assert "ViT-B-16.pt" in text and "openaipublic.azureedge.net" in text
    assert str(tmp_path / "cache" / "ViT-B-16.pt") in text
    assert "ssrseg weights fetch clip_vit_b16.openai" in text
    assert f"{tmp_path}/no.pth: no such file" in text
    assert not any((out / s).exists() for s in rplan.WORK_STAGES)


def test_missing_dataset_parts_stop_before_any_work(world: dict, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(world["base"] / "data", data)
    voc = data / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000002.png").unlink()
    (voc / "Annotations" / "2010_000001.xml").unlink()
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    out = tmp_path / "run"
    with pytest.raises(rplan.ReproduceError) as exc:
        rp.run_reproduce(voc_cfg(world, f"data.root={data}"), out, PLAN)
    text = str(exc.value)
    assert str(voc / "JPEGImages" / "2007_000002.jpg") in text  # VOC's own extension
    assert str(voc / "Annotations" / "2010_000001.xml") in text
    assert str(voc / "ImageSets" / "Segmentation" / "val.txt") in text
    assert "split list file not found" in text and "docs/datasets.md" in text
    assert not any((out / s).exists() for s in rplan.WORK_STAGES)


def test_cli_reports_the_problem(world: dict, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["reproduce", "--config", str(REPO / "configs" / "voc.yaml"),
            "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--device", "cpu",
            *world["overrides"][:2]]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ssrseg reproduce: error: cannot start" in err
    assert f"{tmp_path / 'nothing'}: no JPEGImages folder" in err


def test_torchrun_launch_and_resume(
    full_run: dict[str, Any], world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--gpus 2 trains through `torchrun -m ssrseg.cli train`, resuming an existing run."""
    out = tmp_path / "run"
    shutil.copytree(full_run["out"] / "train", out / "train")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: Any) -> Any:
        calls.append(cmd)
        return type("P", (), {"returncode": 0})()

    monkeypatch.setattr(rstages.subprocess, "run", fake_run)
    cfg = voc_cfg(world)
    plan = rplan.ReproducePlan(device="cpu", gpus=2)
    run = rplan.Run(cfg, out, plan, rplan.resolve_device("cpu"), (False,))
    result = rstages.train_into(run, cfg, out / "train", gpus=2)
    assert result["effective_batch"] == 4 and result["checkpoint"] == "train/ckpt_4"
    cmd = calls[0]
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m"]  # fmt: skip
    assert cmd[7:9] == ["ssrseg.cli", "train"]
    assert cmd[cmd.index("--resume") + 1] == str(out / "train")
    written = load_config(cmd[cmd.index("--config") + 1])
    assert written == cfg


def test_config_subset_is_the_stage_view() -> None:
    cfg = load_config(REPO / "configs" / "voc.yaml")
    seeds = rplan.config_subset(cfg, *rplan.STAGE_CONFIG["seeds"])
    assert "projected" not in seeds["cam"] and "logit_scale" in seeds["cam"]
    assert {"dataset", "root", "tag_file"} <= set(seeds["data"])
    assert not {"train_split", "crop_size", "num_workers"} & set(seeds["data"])
    assert "train" not in seeds and seeds["sgc"]["theta"] == cfg.sgc.theta
    ev = rplan.config_subset(cfg, *rplan.STAGE_CONFIG["eval"])
    assert ev["data"] == {"dataset": "voc", "root": cfg.data.root, "val_split": "val"}
    assert np.isclose(ev["crf"]["bilateral_srgb"], 5.0)


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_two_ranks_equal_one_process_and_resume(
    full_run: dict[str, Any], world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seeds, cmpa, eval and export on 2 torchrun ranks (gloo; training reused from the
    1-process run): the same tables, PNG bytes and metrics as one process; then a 2-rank
    resume of an eval stage killed half-way (PNGs missing, state `running`) ends the same."""
    # the ranks with this process's torch thread count: float reductions may differ between
    # thread counts (docs/reproduce.md), and the reference ran here
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    plain_env = parallel_fakes.env
    monkeypatch.setattr(parallel_fakes, "env", lambda: {**plain_env(), **threads})

    ref = full_run["out"]
    work = ("seeds", "cmpa", "eval", "export")
    fresh, killed = tmp_path / "fresh", tmp_path / "killed"
    for dest in (fresh, killed):
        shutil.copytree(ref, dest)
    for stage in work:
        shutil.rmtree(fresh / stage)
    state = _state(killed, "eval")
    state["status"] = "running"
    (killed / "eval" / "stage.json").write_text(json.dumps(state))
    gone = sorted((killed / "eval" / "pred" / "crf").glob("*.png"))[:1]
    gone += sorted((killed / "eval" / "pred" / "no_crf").glob("*.png"))[1:]
    for png in gone:
        png.unlink()
    (killed / "eval" / "metrics.json").unlink()
    args = ["reproduce", "--config", str(REPO / "configs" / "voc.yaml"), "--device", "cpu",
            "--crf", "on", "--panels", "1", "--no-progress", "--gpus", "1"]  # fmt: skip
    out = parallel_fakes.run_torchrun(
        [
            [*args, "--out", str(fresh), "--stages", ",".join(work), *world["overrides"]],
            [*args, "--out", str(killed), "--stages", "eval", *world["overrides"]],
        ],
        tmp_path,
    )
    assert "2 processes" in out and "[eval] resumed" in out
    for run in (fresh, killed):
        report = json.loads((run / "report.json").read_text())
        for key in ("table3_raw", "table3_cmpa", "table4", "segmentation"):
            assert measured(report, key) == measured(full_run["report"], key), (run, key)
    for stage in work:
        assert _pngs(fresh / stage) == _pngs(ref / stage), stage
        metrics = fresh / stage / "metrics.json"
        if metrics.is_file():
            assert metrics.read_text() == (ref / stage / "metrics.json").read_text()
        state = _state(fresh, stage)
        assert state["status"] == "done"
        assert state["result"] == _state(ref, stage)["result"], stage
    assert _pngs(killed / "eval") == _pngs(ref / "eval")
    assert (killed / "eval" / "metrics.json").read_text() == (
        ref / "eval" / "metrics.json"
    ).read_text()
    for key in ("no_crf", "crf"):  # the archives hold the same files
        with tarfile.open(fresh / "export" / key / "results.tar.gz") as tar:
            assert len([n for n in tar.getnames() if n.endswith(".png")]) == 2


def test_gpus_option_relaunches_the_protocol_under_torchrun(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ssrseg reproduce --gpus 2` outside torchrun starts itself again on 2 ranks with the
    same options (every stage data-parallel); a failed job exits 2 naming the run folder."""
    from ssrseg.commands import reproduce as cmd_reproduce

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: Any) -> Any:
        calls.append(cmd)
        return type("P", (), {"returncode": 1 if len(calls) > 1 else 0})()

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("subprocess.run", fake_run)
    out = tmp_path / "run"
    args = ["reproduce", "--config", str(REPO / "configs" / "voc.yaml"), "--out", str(out),
            "--gpus", "2", "--device", "cpu", "--stages", "eval", "--crf-workers", "0",
            "--no-progress", "infer.scales=[1.0]"]  # fmt: skip
    assert main(args) == 0
    head = [cmd_reproduce.sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", "2", "-m", "ssrseg.cli", "reproduce"]  # fmt: skip
    cmd = calls[0]
    assert cmd[: len(head)] == head
    rest = cmd[len(head) :]
    pairs = dict(zip(rest[:-2:2], rest[1:-2:2], strict=True))
    assert pairs == {"--config": str(REPO / "configs" / "voc.yaml"), "--out": str(out),
                     "--gpus": "2", "--device": "cpu", "--stages": "eval", "--crf": "auto",
                     "--panels": "6", "--crf-workers": "0"}  # fmt: skip
    assert rest[-2:] == ["--no-progress", "infer.scales=[1.0]"]
    assert not out.exists()  # the ranks make the folder, not the launcher
    assert main(args) == 2


def test_eval_failure_names_the_process_and_image(world: dict, tmp_path: Path) -> None:
    """An error while one image of a process's share is predicted stops the stage with a
    message naming the process (here `shard 0/2`) and that image; nothing half-written."""
    from ssrseg.engine.distributed import DistContext, StageContext, StageError
    from ssrseg.engine.shard import parse_shard

    class Broken:
        num_classes, crf_cfg = 21, None

        def predict(self, image: Any, **kw: Any) -> Any:
            raise RuntimeError("boom")

    shard = parse_shard("0/2")
    view = StageContext(DistContext(), shard, shard)
    dataset = rplan.open_dataset(voc_cfg(world), "val", labels=False)
    with pytest.raises(StageError, match=r"^2008_00000[12] \(shard 0/2\): RuntimeError: boom$"):
        rstages.evaluate_into(Broken(), dataset, (False, True), tmp_path, [0, 1], False, view)
    assert not any(tmp_path.rglob("*"))


def test_gpus_two_trains_on_the_ranks_like_torchrun_train(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ssrseg reproduce --gpus 2` (the whole protocol under torchrun, gloo on the CPU) trains
    on its 2 ranks: the checkpoint equals `torchrun --nproc_per_node 2 -m ssrseg.cli train`
    with the same config (train_into's launch outside a torchrun job), tensor for tensor."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    env = {**parallel_fakes.env(), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ssrseg.cli", "reproduce", "--config",
            str(REPO / "configs" / "voc.yaml"), "--out", str(out), "--gpus", "2", "--device",
            "cpu", "--crf", "off", "--stages", "train,eval", "--no-progress",
            *world["overrides"]]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    train = _state(out, "train")["result"]
    assert train["gpus"] == 2 and train["effective_batch"] == 4
    cfg = voc_cfg(world)
    ref = tmp_path / "ref"
    plan = rplan.ReproducePlan(device="cpu", progress=False, gpus=2)
    run = rplan.Run(cfg, ref, plan, rplan.resolve_device("cpu"), (False,))
    for key in ("PYTHONPATH", "OMP_NUM_THREADS"):  # the launched torchrun: this tree, 1 thread
        monkeypatch.setenv(key, env[key])
    rstages.train_into(run, cfg, ref / "train", gpus=2)
    weights = "ckpt_4/model.safetensors"
    ours, theirs = (load_file(str(d / "train" / weights)) for d in (out, ref))
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
